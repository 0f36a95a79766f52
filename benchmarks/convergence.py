"""Convergence of consistency models: MFD (AYT) against pseudo-Huber (ECT), L2 and LPIPS, side by side.

Runs the reference loop ``examples/train_consistency_model.py`` for every (data set, batch size, loss, seed)
of a configuration and records the Fréchet distance of 1-step and 2-step samples of the EMA network against
training iterations and training wall-clock (evaluation and checkpoint time excluded). The Fréchet distance
is FID when Inception weights are cached, otherwise ``FD_cnn-<dataset>`` on a small classifier trained first
by ``benchmarks/fd_classifier.py`` (never called FID). The headline is the share of ECT's iterations
(and wall-clock) that each other loss needs to reach ECT's final 1-step quality (AYT reports about 1/10 on
CIFAR-10 at batch 128, METHOD.md Sec. 6), from the mean curve over seeds, and AYT at batch 16 against ECT at
batch 128.

Three regimes (``--config``):

* **training from scratch** - ``cpu`` (80 iterations of a 0.18 M-parameter U-Net, an hour on 2 cores),
  ``gpu`` (the paper's network and 400k iterations), ``smoke``;
* **consistency tuning** (the paper's regime: ECT tunes a pretrained EDM denoiser, AYT replaces ECT's update
  direction) - ``tune-cpu``, ``tune-gpu``, ``tune-smoke``. First a denoiser per data set is trained with
  ``examples/train_diffusion_model.py`` (cached and resumable; its Heun-sampler FD, the ceiling the one-step
  models aim at, is recorded), then every run starts from its EMA weights (``--init``). ECT's settings:
  q = 256, stage 0, w = 1/(t - r), RAdam. Losses: pseudo-Huber c = 0 (ECT), AYT with the shipped map, AYT with
  a random-init map of the same architecture (the control: does the manifold training matter?), AYT with
  the squared feature distance, LPIPS with AYT's direction (left out, with the reason, while its weights are
  absent);
* **consistency distillation** from the same teacher (``--teacher``: one Heun step of the teacher's ODE from t
  to r) - ``distill-cpu``, ``distill-gpu``, ``distill-smoke``, on CIFAR-10: MFD as a loss value
  (``--direction raw``), MFD with AYT's direction, pseudo-Huber, L2 and LPIPS.

Every run lives in ``--work/<config>/<dataset>-bs<B>-<loss>-seed<S>`` and resumes exactly when the benchmark
is interrupted and restarted; finished runs are read, not rerun. ``--shard K/N`` trains only every N-th run
(the denoisers and FD classifiers are shared and trained under a file lock by whichever shard gets there
first), so N processes with one thread each can share a machine; a final call without ``--shard`` reads
every finished run and writes the results:

    benchmarks/results/convergence-<config>.json   every evaluation of every run, the environment, the notes
    benchmarks/results/convergence-<config>.md     tables (mean ± standard error over seeds), copied into
                                                   benchmarks/README.md by benchmarks/update_readme.py
    benchmarks/results/convergence-<config>.png    FD against iterations (top) and training wall-clock (bottom)
    benchmarks/results/convergence-<config>-samples-<data>-bs<B>.png   the final 1-step samples of every loss

Rerun:  python benchmarks/convergence.py --config tune-cpu     (see benchmarks/README.md for the 2-core launch)
GPU:    python benchmarks/convergence.py --config tune-gpu --device cuda
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import functools
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "examples"))

from _common import (  # noqa: E402
    RESULTS, environment, lpips_with_weights, markdown_table, parse_ints, pyplot, resolve_device, write_json,
)

import _training  # noqa: E402
import train_consistency_model as ct  # noqa: E402
import train_diffusion_model as dm  # noqa: E402
import fd_classifier as fdc  # noqa: E402

# ------------------------------------------------------------------------------------- configurations
_TINY_UNET = ["--channels", "16", "--channel-mult", "1,2", "--num-blocks", "1", "--attention", "none"]
_SMOKE_UNET = ["--channels", "8", "--channel-mult", "1,2", "--num-blocks", "1", "--attention", "none"]
_DDPMPP = ["--channels", "128", "--channel-mult", "2,2,2", "--num-blocks", "4", "--attention", "16"]
_TUNE_LOSSES = "pseudo-huber,mfd,mfd-random,mfd-squared,lpips"
_DISTILL_LOSSES = "mfd-value,mfd,mfd-random,pseudo-huber,l2,lpips"

# The denoisers that tuning and distillation start from (examples/train_diffusion_model.py arguments).
DENOISERS: dict[str, dict[str, Any]] = {
    "smoke": {"steps": 2, "batch_size": 4, "eval_every": 2, "fd_samples": 16,
              "train": [*_SMOKE_UNET, "--dropout", "0", "--sampler-steps", "4", "--num-samples", "4"]},
    # CPU sizing (OMP_NUM_THREADS=1, 0.18 M-parameter U-Net, measured: 0.073 CPU-s/step at batch 16 and 0.55 at
    # batch 128, so ~0.28 at batch 64; one network evaluation 1.8 ms per image): 10,000 steps at batch 64 = 2,800 s,
    # plus 3 Heun evaluations (35 evaluations x 2,000 images x 1.8 ms = 126 s each) = ~3,200 CPU-s, about an
    # hour per data set; the two data sets train side by side, one per core (--shard 0/2 and 1/2). MNIST takes
    # 5,000 steps (320 k images, 5 epochs of the easier data set), so both shards reach the tuning runs at
    # about the same time. Dropout 0: a 0.18 M-parameter network underfits 50k images; Adam 1e-3 as EDM's CIFAR-10 recipe.
    "cpu": {"steps": 10_000, "steps_by_dataset": {"mnist": 5000}, "batch_size": 64, "eval_every": 5000,
            "fd_samples": 2000,
            "train": [*_TINY_UNET, "--dropout", "0", "--optimizer", "adam", "--lr", "1e-3", "--ema-decay", "0.999",
                      "--num-samples", "64"]},
    "gpu": {"steps": 400_000, "batch_size": 512, "eval_every": 50_000, "fd_samples": 10_000,
            "train": [*_DDPMPP, "--dropout", "0.13", "--optimizer", "adam", "--lr", "1e-3", "--ema-decay", "0.9999"]},
}

# Per-configuration settings and examples/train_consistency_model.py arguments (the same for every loss).
# "mode": scratch | tune (--init the denoiser) | distill (--init and --teacher the denoiser).
# "shared": the folder (under --work) holding the FD classifiers and denoisers, shared by configurations.
CONFIGS: dict[str, dict[str, Any]] = {
    "smoke": {"mode": "scratch", "datasets": "cifar10", "batch_sizes": "4", "seeds": "0", "steps": 2, "eval_every": 1,
              "fd_samples": 16, "fd_real": 64, "fd_classifier_steps": 2, "losses": "mfd,pseudo-huber,lpips",
              "train": [*_SMOKE_UNET, "--optimizer", "adam", "--lr", "1e-3", "--ema-decay", "0.99", "--num-samples", "4"]},
    "cpu": {"mode": "scratch", "datasets": "cifar10,mnist", "batch_sizes": "16,128", "seeds": "0,1", "steps": 80,
            "eval_every": 20, "fd_samples": 500, "fd_real": 2000, "fd_classifier_steps": 600,
            "losses": "mfd,pseudo-huber,lpips",
            "train": [*_TINY_UNET, "--optimizer", "adam", "--lr", "1e-3", "--ema-decay", "0.99", "--num-samples", "16"]},
    "gpu": {"mode": "scratch", "datasets": "cifar10,mnist", "batch_sizes": "16,128", "seeds": "0,1,2", "steps": 400_000,
            "eval_every": 10_000, "fd_samples": 10_000, "fd_real": 0, "fd_classifier_steps": 5000,
            "losses": "mfd,pseudo-huber,lpips",
            "train": [*_DDPMPP, "--dropout", "0.2", "--optimizer", "radam", "--lr", "1e-4", "--ema-decay", "0.9999"]},
    "tune-smoke": {"mode": "tune", "denoiser": "smoke", "shared": "tuning-smoke", "datasets": "cifar10",
                   "batch_sizes": "4", "seeds": "0", "steps": 2, "eval_every": 2, "fd_samples": 16, "fd_real": 64,
                   "fd_classifier_steps": 2, "losses": _TUNE_LOSSES,
                   "train": [*_SMOKE_UNET, "--dropout", "0", "--optimizer", "radam", "--lr", "1e-3", "--ema-decay", "0.9",
                             "--num-samples", "4"]},
    # Budget of tune-cpu: about 100 min of 2 cores = 12,000 CPU-s, run as two one-thread shards. Measured CPU-s per
    # step (OMP_NUM_THREADS=1, this 0.18 M-parameter U-Net, shipped 2.3 M-parameter 'cifar10' map), batch 16 / 128:
    #   pseudo-Huber 0.10 / 0.92, MFD 0.134 / 1.11 (random-init and squared MFD cost the same as MFD).
    # One iteration of all runs: per (data set, seed) 0.10 + 3 x 0.134 + 0.92 + 3 x 1.11 = 4.75 CPU-s; x 2 data sets
    # x 2 seeds = 19 CPU-s. 300 iterations = 5,700 CPU-s. Evaluation: 6 points (every 60 iterations, and at 0) x
    # 5,000 samples x 3 network evaluations (1-step + 2-step) x 1.8 ms + FD features ~ 32 s a point, x 6 x 32 runs
    # = 6,100 CPU-s. Total ~ 11,800 CPU-s = 3.3 CPU-h, ~1.7 h on 2 cores after the denoisers (~0.5 h on 2 cores).
    # LPIPS runs are added only when its weights exist.
    # EMA 0.99 (a ~100-iteration average, 1/3 of the run; ECT's 0.9999 is for 400k iterations), dropout 0 (as the
    # denoiser), RAdam at 3e-4 (the paper's 1e-4 is for 400k iterations of a 56 M-parameter network).
    "tune-cpu": {"mode": "tune", "denoiser": "cpu", "shared": "tuning-cpu", "datasets": "cifar10,mnist",
                 "batch_sizes": "16,128", "seeds": "0,1", "steps": 300, "eval_every": 60, "fd_samples": 5000,
                 "fd_real": 10_000, "fd_classifier_steps": 1500, "losses": _TUNE_LOSSES,
                 "train": [*_TINY_UNET, "--dropout", "0", "--optimizer", "radam", "--lr", "3e-4", "--ema-decay", "0.99",
                           "--num-samples", "64"]},
    "tune-gpu": {"mode": "tune", "denoiser": "gpu", "shared": "tuning-gpu", "datasets": "cifar10,mnist",
                 "batch_sizes": "16,128", "seeds": "0,1", "steps": 400_000, "eval_every": 50_000, "fd_samples": 10_000,
                 "fd_real": 0, "fd_classifier_steps": 5000, "losses": _TUNE_LOSSES,
                 "train": [*_DDPMPP, "--dropout", "0.2", "--optimizer", "radam", "--lr", "1e-4", "--ema-decay", "0.9999"]},
    "distill-smoke": {"mode": "distill", "denoiser": "smoke", "shared": "tuning-smoke", "datasets": "cifar10",
                      "batch_sizes": "4", "seeds": "0", "steps": 2, "eval_every": 2, "fd_samples": 16, "fd_real": 64,
                      "fd_classifier_steps": 2, "losses": _DISTILL_LOSSES,
                      "train": [*_SMOKE_UNET, "--dropout", "0", "--optimizer", "adam", "--lr", "1e-3",
                                "--ema-decay", "0.9", "--num-samples", "4"]},
    # Budget of distill-cpu (CIFAR-10, the tune-cpu teacher): the teacher's Heun step adds two no-grad network
    # evaluations per step (+0.045 / +0.4 CPU-s at batch 16 / 128). One iteration of all runs: per seed
    # 2 x 0.145 + 2 x 0.18 (batch 16) + 2 x 1.32 + 2 x 1.51 (batch 128) = 6.3 CPU-s, x 2 seeds = 12.6 CPU-s;
    # 300 iterations = 3,800 CPU-s, evaluation 6 x 32 s x 16 runs = 3,100 CPU-s: ~6,900 CPU-s = 1.9 CPU-h,
    # ~1 h on 2 cores. Measured: the 16 runs without the random-init control took 83 min as two one-thread
    # shards (batch-128 MFD steps ran at 2.5 s wall with both shards busy, 1.7x the estimate), its 4 runs 26 min
    # more. Adam at 4e-4 as Song et al. 2023's CIFAR-10 distillation (not RAdam: its first steps are
    # un-normalised momentum steps, and the value losses - MFD as a value, L2 - have un-normalised gradients).
    "distill-cpu": {"mode": "distill", "denoiser": "cpu", "shared": "tuning-cpu", "datasets": "cifar10",
                    "batch_sizes": "16,128", "seeds": "0,1", "steps": 300, "eval_every": 60, "fd_samples": 5000,
                    "fd_real": 10_000, "fd_classifier_steps": 1500, "losses": _DISTILL_LOSSES,
                    "train": [*_TINY_UNET, "--dropout", "0", "--optimizer", "adam", "--lr", "4e-4",
                              "--ema-decay", "0.99", "--num-samples", "64"]},
    "distill-gpu": {"mode": "distill", "denoiser": "gpu", "shared": "tuning-gpu", "datasets": "cifar10",
                    "batch_sizes": "16,128", "seeds": "0,1", "steps": 400_000, "eval_every": 50_000,
                    "fd_samples": 10_000, "fd_real": 0, "fd_classifier_steps": 5000, "losses": _DISTILL_LOSSES,
                    "train": [*_DDPMPP, "--dropout", "0.2", "--optimizer", "adam", "--lr", "4e-4",
                              "--ema-decay", "0.9999"]},
}
LOSSES = {"mfd": ["--loss", "mfd"], "pseudo-huber": ["--loss", "pseudo-huber", "--huber-c", "0"],
          "lpips": ["--loss", "lpips"], "l2": ["--loss", "l2"],
          "mfd-random": ["--loss", "mfd", "--mfd-init", "random"],
          "mfd-squared": ["--loss", "mfd", "--mfd-distance", "squared"],
          "mfd-value": ["--loss", "mfd", "--direction", "raw"]}
LABELS = {"mfd": "MFD (AYT)", "pseudo-huber": "pseudo-Huber c=0 (ECT)", "lpips": "LPIPS (AYT direction)",
          "l2": "L2", "mfd-random": "MFD random-init map (AYT)", "mfd-squared": "MFD squared (AYT)",
          "mfd-value": "MFD as loss value"}
REFERENCE = "pseudo-huber"  # the loss every other one is measured against (ECT)
# Distillation has no ECT: there the reference is the plain pseudo-Huber c=0 distance to the teacher-step target.
_DISTILL_LABELS = {"pseudo-huber": "pseudo-Huber c=0"}


def label(loss: str, mode: str) -> str:
    """Table and legend name of ``loss`` in a benchmark of ``mode`` (scratch, tune or distill)."""
    return (_DISTILL_LABELS if mode == "distill" else {}).get(loss, LABELS[loss])


def reference_name(mode: str) -> str:
    """Short name of the reference loss in table headers: ECT, or pseudo-Huber in distillation."""
    return "pseudo-Huber" if mode == "distill" else "ECT"


# Every run of a benchmark decodes the same archives: decode each (data set, split) once per process.
_training.load_images = fdc.load_images = functools.lru_cache(maxsize=4)(_training.load_images)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", choices=sorted(CONFIGS), default="cpu", help="settings (see above)")
    p.add_argument("--datasets", default=None, help="comma list (default: the configuration's)")
    p.add_argument("--batch-sizes", default=None, help="comma list (default: the configuration's)")
    p.add_argument("--seeds", default=None, help="comma list (default: the configuration's)")
    p.add_argument("--steps", type=int, default=None, help="iterations per run (default: the configuration's)")
    p.add_argument("--losses", default=None,
                   help=f"comma list from {sorted(LOSSES)} (default: the configuration's); lpips is left out, with "
                        f"the reason recorded, when its weights are absent")
    p.add_argument("--shard", default=None, metavar="K/N", help="train only runs K, K+N, K+2N, ... and write no results")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--work", default="runs/bench-convergence", help="folder of the training runs (resumable)")
    p.add_argument("--out", default=None, help="result JSON (default benchmarks/results/convergence-<config>.json)")
    p.add_argument("--no-plot", action="store_true", help="skip the PNGs")
    args = p.parse_args(argv)
    preset = CONFIGS[args.config]
    args.datasets = tuple((args.datasets or preset["datasets"]).split(","))
    args.batch_sizes = parse_ints(args.batch_sizes or preset["batch_sizes"])
    args.seeds = parse_ints(args.seeds or preset["seeds"])
    args.steps = args.steps or preset["steps"]
    args.losses = tuple(v for v in (args.losses or preset["losses"]).split(",") if v)
    unknown = [v for v in args.losses if v not in LOSSES]
    if unknown:
        p.error(f"unknown losses {unknown}; choose from {sorted(LOSSES)}")
    if args.shard is not None:
        try:
            k, n = (int(v) for v in args.shard.split("/"))
        except ValueError:
            p.error(f"--shard must look like K/N (e.g. 0/2), got {args.shard!r}")
        if not 0 <= k < n:
            p.error(f"--shard K/N needs 0 <= K < N, got {args.shard!r}")
        args.shard = (k, n)
    return args


# ------------------------------------------------------------------------------- runs and prerequisites
@contextlib.contextmanager
def exclusive(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (a lock file beside it) against other shards; released on exit or death."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def read_log(folder: Path) -> list[dict[str, Any]]:
    log = folder / "log.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.is_file() else []


def finished(folder: Path, steps: int) -> bool:
    """True when the run's log holds its final evaluation."""
    return any(e.get("eval", {}).get("step") == steps for e in read_log(folder))


def stop_if_interrupted(summary: dict[str, Any]) -> None:
    """End the benchmark (status 130/143) when SIGINT/SIGTERM stopped a run: it checkpointed, a rerun resumes it."""
    code = _training.exit_code(summary)
    if code:
        raise SystemExit(code)


def fd_classifier(dataset: str, home: Path, steps: int, device: torch.device) -> Path:
    """The Fréchet-distance network's folder, trained once per data set into ``home`` (skipped if present)."""
    folder = home / f"fd-{dataset}"
    with exclusive(folder):
        if not (folder / "model.safetensors").is_file():
            fdc.main(fdc.parse_args(["--dataset", dataset, "--out", str(folder), "--epochs", "1", "--batch-size", "64",
                                     "--train-limit", str(64 * steps), "--widths", "8,16,32,64",
                                     "--device", device.type]))
    return folder


def denoiser(args: argparse.Namespace, dataset: str, home: Path, classifier: Path) -> dict[str, Any]:
    """Train (or resume, or just read) the EDM denoiser of a data set; returns its checkpoint and final evaluation."""
    spec = DENOISERS[CONFIGS[args.config]["denoiser"]]
    steps = spec.get("steps_by_dataset", {}).get(dataset, spec["steps"])
    folder = home / f"denoiser-{dataset}"
    with exclusive(folder):
        if not finished(folder, steps):
            argv = ["--dataset", dataset, "--out", str(folder), "--steps", str(steps),
                    "--batch-size", str(spec["batch_size"]), "--eval-every", str(spec["eval_every"]),
                    "--checkpoint-every", str(spec["eval_every"]), "--log-every", str(spec["eval_every"]),
                    "--fd-samples", str(spec["fd_samples"]), "--fd-real", str(CONFIGS[args.config]["fd_real"]),
                    "--fd-network", "auto", "--fd-classifier", str(classifier), "--device", args.device_obj.type,
                    "--no-progress", *spec["train"]]
            if (folder / "checkpoint.pt").is_file():
                argv.append("--resume")
            stop_if_interrupted(dm.main(dm.parse_args(argv)))
    final = [e["eval"] for e in read_log(folder) if "eval" in e][-1]
    return {"checkpoint": str(folder / "checkpoint.pt"), "steps": steps, "batch_size": spec["batch_size"],
            "train_args": spec["train"], "final_eval": final}


def run_one(args: argparse.Namespace, dataset: str, batch: int, loss: str, seed: int, folder: Path,
            classifier: Path, teacher: str | None) -> tuple[list[dict[str, Any]], float | None]:
    """Train (or resume, or just read) one run; returns its evaluation entries and mean seconds per step."""
    preset = CONFIGS[args.config]
    if not finished(folder, args.steps):
        argv = ["--dataset", dataset, "--out", str(folder), "--batch-size", str(batch), "--seed", str(seed),
                "--steps", str(args.steps), "--eval-every", str(preset["eval_every"]),
                "--checkpoint-every", str(preset["eval_every"]), "--log-every", str(preset["eval_every"]),
                "--fd-samples", str(preset["fd_samples"]), "--fd-real", str(preset["fd_real"]),
                "--fd-network", "auto", "--fd-classifier", str(classifier), "--device", args.device_obj.type,
                "--no-progress", *LOSSES[loss], *preset["train"]]
        if teacher is not None:
            argv += ["--init", teacher] + (["--teacher", teacher] if preset["mode"] == "distill" else [])
        if (folder / "checkpoint.pt").is_file():
            argv.append("--resume")
        stop_if_interrupted(ct.main(ct.parse_args(argv)))
    entries = read_log(folder)
    evals: dict[int, dict[str, Any]] = {}
    for entry in (e["eval"] for e in entries if "eval" in e):
        # a run resumed after a crash may log an evaluation twice: the later one is the run's own
        fd = {k.rsplit("_", 1)[1]: v for k, v in entry.items() if k.startswith(("FD", "FID")) and k[-5:] in ("1step", "2step")}
        metric = next(k.rsplit("_", 1)[0] for k in entry if k.startswith(("FD", "FID")))
        evals[entry["step"]] = {"step": entry["step"], "train_seconds": entry.get("train_seconds"), "metric": metric,
                                "grid_1step": entry.get("grid_1step"), **fd}
    steps_logged = [e for e in entries if "seconds_per_step" in e]
    return [evals[s] for s in sorted(evals)], (
        sum(e["seconds_per_step"] for e in steps_logged) / len(steps_logged) if steps_logged else None)


# ------------------------------------------------------------------------------------------- analysis
def mean_curve(runs: list[list[dict]], key: str) -> tuple[list[int], list[float], list[float]]:
    """Steps, mean and standard error over seeds of one metric.

    Raises:
        ValueError: the seeds were not evaluated at the same steps.
    """
    steps = [e["step"] for e in runs[0]]
    for run in runs[1:]:
        if [e["step"] for e in run] != steps:
            raise ValueError(f"the seeds of one loss were evaluated at different steps ({steps} and "
                             f"{[e['step'] for e in run]}): delete the run folder that lacks an evaluation "
                             f"(under --work) and rerun to train it again")
    values = torch.tensor([[e[key] for e in run] for run in runs], dtype=torch.float64)
    sem = values.std(0) / math.sqrt(values.shape[0]) if values.shape[0] > 1 else torch.zeros(values.shape[1])
    return steps, values.mean(0).tolist(), sem.tolist()


def mean_clock(runs: list[list[dict]]) -> list[float]:
    """Training seconds at each evaluation, averaged over seeds."""
    return [sum(e["train_seconds"] or 0.0 for e in column) / len(column) for column in zip(*runs)]


def interpolate(xs: list[float], ys: list[float], x: float) -> float:
    """Piecewise-linear y(x) on increasing xs (clamped at the ends)."""
    for i in range(1, len(xs)):
        if x <= xs[i]:
            return ys[i - 1] + (ys[i] - ys[i - 1]) * (x - xs[i - 1]) / ((xs[i] - xs[i - 1]) or 1)
    return ys[-1]


def steps_to_reach(steps: list[int], values: list[float], level: float) -> float | None:
    """First (linearly interpolated) iteration at which a curve gets down to ``level``; None if never."""
    for i, v in enumerate(values):
        if v <= level:
            if i == 0:
                return float(steps[0])
            s0, s1, v0 = steps[i - 1], steps[i], values[i - 1]
            return s0 + (s1 - s0) * (v0 - level) / (v0 - v)
    return None


def reach(runs: list[list[dict]], reference: list[list[dict]], sampler: str) -> dict[str, float | None]:
    """Iterations (and wall-clock) ``runs`` need to reach the final mean FD of ``reference``, as shares of its total.

    When the reference ends no better than it started (a tuning run that lost quality), every run "reaches" it at
    iteration 0 and a share would read as an infinite speed-up: then the shares are None and
    ``reference_improved`` is False (the tables say so instead of printing a ratio).
    """
    steps, values, _ = mean_curve(runs, sampler)
    ref_steps, ref_values, _ = mean_curve(reference, sampler)
    if ref_values[-1] >= ref_values[0]:
        return {"steps": None, "iteration_ratio": None, "time_ratio": None, "reference_improved": False}
    at = steps_to_reach(steps, values, ref_values[-1])
    ref_total = mean_clock(reference)[-1]
    return {"steps": at, "reference_improved": True, "iteration_ratio": None if at is None else at / ref_steps[-1],
            "time_ratio": None if at is None or not ref_total else interpolate(steps, mean_clock(runs), at) / ref_total}


def summarise(result: dict) -> list[dict[str, Any]]:
    """Per (data set, batch size, sampler): final FD of each loss and each loss's reach of the reference's final."""
    rows = []
    for group in result["groups"]:
        for sampler in ("1step", "2step"):
            curves = {loss: mean_curve(runs, sampler) for loss, runs in group["runs"].items()}
            row = {"dataset": group["dataset"], "batch_size": group["batch_size"], "sampler": sampler,
                   "metric": group["metric"], "final": {loss: c[1][-1] for loss, c in curves.items()},
                   "final_sem": {loss: c[2][-1] for loss, c in curves.items()},
                   "seeds": {loss: len(runs) for loss, runs in group["runs"].items()}, "reach": {}}
            if REFERENCE in group["runs"]:
                row["reach"] = {loss: reach(runs, group["runs"][REFERENCE], sampler)
                                for loss, runs in group["runs"].items() if loss != REFERENCE}
            rows.append(row)
    return rows


def cross_batch(result: dict, small: int = 16, large: int = 128) -> list[dict[str, Any]]:
    """Each loss at batch ``small`` against the reference (ECT) at batch ``large`` (1-step): finals and iterations to
    reach the reference's final."""
    rows = []
    for dataset in dict.fromkeys(g["dataset"] for g in result["groups"]):
        groups = {g["batch_size"]: g for g in result["groups"] if g["dataset"] == dataset}
        if small not in groups or large not in groups or REFERENCE not in groups[large]["runs"]:
            continue
        reference = groups[large]["runs"][REFERENCE]
        for loss, runs in groups[small]["runs"].items():
            rows.append({"dataset": dataset, "loss": loss, "batch_size": small, "reference_batch_size": large,
                         "final": mean_curve(runs, "1step")[1][-1], "final_sem": mean_curve(runs, "1step")[2][-1],
                         "reference_final": mean_curve(reference, "1step")[1][-1],
                         "reach": reach(runs, reference, "1step")})
    return rows


def _ratio(r: dict[str, float | None] | None, steps: int, reference: str = "ECT") -> tuple[str, str]:
    if r is None:
        return "n/a", "n/a"
    if r.get("reference_improved") is False:
        return f"n/a: {reference} ended above its start", "n/a"
    if r["iteration_ratio"] is None:
        return f"not reached in {steps}", "n/a"
    clock = "n/a" if r["time_ratio"] is None else f"{r['time_ratio']:.2f}x"
    return f"{r['iteration_ratio']:.2f}x ({r['steps']:.0f})", clock


def report(result: dict) -> str:
    losses, steps = result["losses_run"], result["config"]["steps"]
    mode = result["config"]["mode"]
    ref = reference_name(mode)
    # one header for several data sets: FD_cnn-cifar10 and FD_cnn-mnist are each data set's own classifier
    metrics = sorted({g["metric"] for g in result["groups"]})
    metric = metrics[0] if len(metrics) == 1 else metrics[0].split("-")[0]
    seeds = len(result["config"]["seeds"])
    parts = []
    if result.get("denoisers"):
        parts.append(markdown_table(
            ["data", "denoiser", "iterations", "batch", f"{metric} Heun, 18 steps (35 evaluations)"],
            [[d, "EDM (train_diffusion_model.py)", v["steps"], v["batch_size"],
              next((f"{x:.1f}" for k, x in v["final_eval"].items() if k.startswith(("FD", "FID"))), "n/a")]
             for d, v in result["denoisers"].items()]))
    parts.append(markdown_table(
        ["data", "batch", "sampler"] + [f"{metric} {label(k, mode)}" for k in losses],
        [[r["dataset"], r["batch_size"], r["sampler"]] +
         [f"{r['final'][k]:.1f} ± {r['final_sem'][k]:.1f}" for k in losses] for r in result["summary"]]))
    others = [k for k in losses if k != REFERENCE]
    if REFERENCE in losses and others:
        rows = []
        for r in result["summary"]:
            if r["sampler"] == "1step":
                for k in others:
                    rows.append([r["dataset"], r["batch_size"], label(k, mode),
                                 f"{r['final'][k] / r['final'][REFERENCE]:.2f}", *_ratio(r["reach"].get(k), steps, ref)])
        parts.append(markdown_table(
            ["data", "batch", "loss", f"final 1-step {metric} / {ref}'s",
             f"iterations to reach {ref}'s final 1-step {metric} (share of {ref}'s)", "same in training wall-clock"],
            rows))
    if result.get("cross_batch"):
        parts.append(markdown_table(
            ["data", "loss at batch 16", f"final 1-step {metric}", f"{ref} at batch 128", "iterations to reach it",
             "wall-clock"],
            [[c["dataset"], label(c["loss"], mode), f"{c['final']:.1f} ± {c['final_sem']:.1f}",
              f"{c['reference_final']:.1f}", *_ratio(c["reach"], steps, ref)] for c in result["cross_batch"]]))
    note = (f"Mean ± standard error over {seeds} seed(s); {result['config']['fd_samples']} samples per Fréchet "
            f"distance; {steps} iterations." + ("" if len(metrics) == 1 else
                                                f" {metric} is {' / '.join(metrics)} on each data set's rows."))
    return "\n\n".join(parts + [note])


def plot(result: dict, path: Path) -> None:
    plt = pyplot()
    groups, mode = result["groups"], result["config"]["mode"]
    fig, axes = plt.subplots(2, len(groups), figsize=(4.2 * len(groups), 7), squeeze=False)
    for col, group in enumerate(groups):
        for row, x_key in enumerate(("step", "train_seconds")):
            ax = axes[row][col]
            for loss, runs in group["runs"].items():
                for sampler, style in (("1step", "-"), ("2step", ":")):
                    _, mean, sem = mean_curve(runs, sampler)
                    xs = [e["step"] for e in runs[0]] if x_key == "step" else mean_clock(runs)
                    line = ax.plot(xs, mean, style, marker="o", markersize=3,
                                   label=f"{label(loss, mode)} {sampler}", color=f"C{list(LOSSES).index(loss)}")[0]
                    ax.fill_between(xs, [m - s for m, s in zip(mean, sem)], [m + s for m, s in zip(mean, sem)],
                                    color=line.get_color(), alpha=0.15)
            ax.set_xlabel("iteration" if x_key == "step" else "training wall-clock (s)")
            ax.set_ylabel(group["metric"])
            ax.set_title(f"{group['dataset']}, batch {group['batch_size']}", fontsize=10)
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_samples(result: dict, stem: Path) -> list[str]:
    """One PNG per (data set, batch): the teacher's Heun grid (if any) and each loss's final 1-step grid (seed 0)."""
    plt = pyplot()
    written, mode = [], result["config"]["mode"]
    for group in result["groups"]:
        panels = []
        teacher = result.get("denoisers", {}).get(group["dataset"])
        if teacher and teacher["final_eval"].get("grid_heun"):
            panels.append(("EDM denoiser, Heun 35 evaluations", teacher["final_eval"]["grid_heun"]))
        panels += [(f"{label(loss, mode)}, 1 step", runs[0][-1]["grid_1step"]) for loss, runs in group["runs"].items()]
        panels = [(title, p) for title, p in panels if p and Path(p).is_file()]
        if not panels:
            continue
        fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.6), squeeze=False)
        for ax, (title, p) in zip(axes[0], panels):
            ax.imshow(plt.imread(p), cmap="gray")
            ax.set_title(title, fontsize=8)
            ax.axis("off")
        fig.suptitle(f"{group['dataset']}, batch {group['batch_size']}, after {result['config']['steps']} iterations",
                     fontsize=10)
        fig.tight_layout()
        path = Path(f"{stem}-samples-{group['dataset']}-bs{group['batch_size']}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(str(path))
    return written


# ------------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> dict | None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.device_obj = resolve_device(args.device)
    preset = CONFIGS[args.config]
    work = Path(args.work) / args.config
    home = Path(args.work) / preset.get("shared", args.config)
    out = Path(args.out) if args.out else RESULTS / f"convergence-{args.config}.json"
    losses = list(args.losses)
    notes = []
    if "lpips" in losses:
        model, reason = lpips_with_weights("vgg")
        if model is None:
            losses.remove("lpips")
            notes.append(f"LPIPS left out: {reason}")
            print(notes[-1])
    # prerequisites (FD classifier, denoiser) per data set, each shard starting with a different data set
    datasets = list(args.datasets)
    if args.shard:
        datasets = datasets[args.shard[0] % len(datasets):] + datasets[:args.shard[0] % len(datasets)]
    classifiers, denoisers = {}, {}
    for dataset in datasets:
        classifiers[dataset] = fd_classifier(dataset, home, preset["fd_classifier_steps"], args.device_obj)
        if preset["mode"] != "scratch":
            denoisers[dataset] = denoiser(args, dataset, home, classifiers[dataset])
    started = time.monotonic()
    jobs = [(d, b, loss, s) for d in args.datasets for b in args.batch_sizes for loss in losses for s in args.seeds]
    groups: dict[tuple[str, int], dict[str, Any]] = {}
    for index, (dataset, batch, loss, seed) in enumerate(jobs):
        mine = args.shard is None or index % args.shard[1] == args.shard[0]
        folder = work / f"{dataset}-bs{batch}-{loss}-seed{seed}"
        if not mine:
            continue
        teacher = denoisers[dataset]["checkpoint"] if dataset in denoisers else None
        evals, speed = run_one(args, dataset, batch, loss, seed, folder, classifiers[dataset], teacher)
        group = groups.setdefault((dataset, batch), {"dataset": dataset, "batch_size": batch, "runs": {},
                                                     "seconds_per_step": {}})
        group["runs"].setdefault(loss, []).append(evals)
        group["seconds_per_step"].setdefault(loss, []).append(speed)
    if args.shard:
        print(f"shard {args.shard[0]}/{args.shard[1]} done in {time.monotonic() - started:.0f} s; "
              f"rerun without --shard when every shard has finished to write the results")
        return None
    config = {k: v for k, v in vars(args).items() if k != "device_obj"}
    config.update({k: preset[k] for k in ("mode", "eval_every", "fd_samples", "fd_real")})
    config["train_args"] = preset["train"]
    result: dict[str, Any] = {"environment": environment(args.device_obj, torch.float32), "config": config,
                              "losses_run": losses, "notes": notes, "denoisers": denoisers, "groups": []}
    for group in groups.values():
        group["seconds_per_step"] = {k: sum(s for s in v if s) / max(1, sum(1 for s in v if s))
                                     for k, v in group["seconds_per_step"].items()}
        group["metric"] = group["runs"][losses[0]][0][0]["metric"]
        result["groups"].append(group)
    result["metric"] = result["groups"][0]["metric"]
    result["summary"] = summarise(result)
    result["cross_batch"] = cross_batch(result)
    result["seconds"] = round(time.monotonic() - started, 1)
    if not args.no_plot:
        plot(result, out.with_suffix(".png"))
        result["sample_grids"] = plot_samples(result, out.with_suffix(""))
    write_json(out, result)
    table = report(result)
    out.with_suffix(".md").write_text(table + "\n")
    print(f"\n{table}\n\nwrote {out} ({result['seconds']} s)")
    return result


if __name__ == "__main__":
    main()
