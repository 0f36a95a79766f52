"""Convergence of consistency training: MFD (AYT) against pseudo-Huber (ECT) and LPIPS, side by side.

Runs the reference loop ``examples/train_consistency_model.py`` for every (data set, batch size, loss, seed)
of a configuration and records the Fréchet distance of 1-step and 2-step samples of the EMA network against
training iterations and training wall-clock (evaluation time excluded). The Fréchet distance is FID when
Inception weights are cached, otherwise ``FD_cnn-<dataset>`` on a small classifier trained first by
``examples/train_fd_classifier.py`` (never called FID). The headline is the share of pseudo-Huber's
iterations that MFD needs to reach pseudo-Huber's final quality (AYT reports about 1/10 on CIFAR-10 at
batch 128, METHOD.md Sec. 6), from the mean curve over seeds.

Configurations (``--config``):

* ``cpu`` (the default; under an hour on 2 CPU cores): a 0.2 M-parameter U-Net trained from scratch with
  Adam 1e-3 and EMA 0.99 for a few hundred images per step budget, batch 16 and 128, CIFAR-10 and MNIST,
  2 seeds. It shows how the losses compare at the very start of training, nothing about the paper's regime.
* ``gpu``: the paper's settings (DDPM++-size U-Net, RAdam 1e-4, EMA 0.9999, dropout 0.2, 400k iterations,
  batch 16 and 128, 3 seeds, FD on 10k samples every 10k iterations). Days per run on one GPU; run
  configurations separately with ``--datasets/--batch-sizes/--seeds`` and ``torchrun`` if needed.
* ``smoke``: seconds-long run of every code path (CI).

Every run lives in ``--work/<config>/<dataset>-bs<B>-<loss>-seed<S>`` and resumes exactly when the benchmark
is interrupted and restarted; finished runs are read, not rerun.

Rerun:  python benchmarks/convergence.py            (writes benchmarks/results/convergence-cpu.{json,png,md})
GPU:    python benchmarks/convergence.py --config gpu --device cuda
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "examples"))

from _common import (  # noqa: E402
    RESULTS, environment, lpips_with_weights, markdown_table, parse_ints, pyplot, resolve_device, write_json,
)

import train_consistency_model as ct  # noqa: E402
import train_fd_classifier as fdc  # noqa: E402

# Per-configuration arguments of examples/train_consistency_model.py (the same for every loss).
CONFIGS: dict[str, dict[str, Any]] = {
    "smoke": {"datasets": "cifar10", "batch_sizes": "4", "seeds": "0", "steps": 2, "eval_every": 1,
              "fd_samples": 16, "fd_real": 64, "fd_classifier_steps": 2,
              "train": ["--channels", "8", "--channel-mult", "1,2", "--num-blocks", "1", "--attention", "none",
                        "--optimizer", "adam", "--lr", "1e-3", "--ema-decay", "0.99", "--num-samples", "4"]},
    "cpu": {"datasets": "cifar10,mnist", "batch_sizes": "16,128", "seeds": "0,1", "steps": 80, "eval_every": 20,
            "fd_samples": 500, "fd_real": 2000, "fd_classifier_steps": 600,
            "train": ["--channels", "16", "--channel-mult", "1,2", "--num-blocks", "1", "--attention", "none",
                      "--optimizer", "adam", "--lr", "1e-3", "--ema-decay", "0.99", "--num-samples", "16"]},
    "gpu": {"datasets": "cifar10,mnist", "batch_sizes": "16,128", "seeds": "0,1,2", "steps": 400_000,
            "eval_every": 10_000, "fd_samples": 10_000, "fd_real": 0, "fd_classifier_steps": 5000,
            "train": ["--channels", "128", "--channel-mult", "2,2,2", "--num-blocks", "4", "--attention", "16",
                      "--dropout", "0.2", "--optimizer", "radam", "--lr", "1e-4", "--ema-decay", "0.9999"]},
}
LOSSES = {"mfd": ["--loss", "mfd"], "pseudo-huber": ["--loss", "pseudo-huber", "--huber-c", "0"],
          "lpips": ["--loss", "lpips"]}
LABELS = {"mfd": "MFD (AYT)", "pseudo-huber": "pseudo-Huber c=0 (ECT)", "lpips": "LPIPS (AYT direction)"}


# Every run of a benchmark decodes the same archives: decode each (data set, split) once per process.
ct.load_images = fdc.load_images = functools.lru_cache(maxsize=4)(ct.load_images)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", choices=sorted(CONFIGS), default="cpu", help="settings (see above)")
    p.add_argument("--datasets", default=None, help="comma list (default: the configuration's)")
    p.add_argument("--batch-sizes", default=None, help="comma list (default: the configuration's)")
    p.add_argument("--seeds", default=None, help="comma list (default: the configuration's)")
    p.add_argument("--steps", type=int, default=None, help="iterations per run (default: the configuration's)")
    p.add_argument("--losses", default="mfd,pseudo-huber,lpips",
                   help="comma list; lpips is left out, with the reason recorded, when its weights are absent")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--work", default="runs/bench-convergence", help="folder of the training runs (resumable)")
    p.add_argument("--out", default=None, help="result JSON (default benchmarks/results/convergence-<config>.json)")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")
    args = p.parse_args(argv)
    preset = CONFIGS[args.config]
    args.datasets = tuple((args.datasets or preset["datasets"]).split(","))
    args.batch_sizes = parse_ints(args.batch_sizes or preset["batch_sizes"])
    args.seeds = parse_ints(args.seeds or preset["seeds"])
    args.steps = args.steps or preset["steps"]
    args.losses = tuple(v for v in args.losses.split(",") if v)
    unknown = [v for v in args.losses if v not in LOSSES]
    if unknown:
        p.error(f"unknown losses {unknown}; choose from {sorted(LOSSES)}")
    return args


def fd_classifier(dataset: str, work: Path, steps: int, device: torch.device) -> Path:
    """The Fréchet-distance network's folder, trained once per data set into ``work`` (skipped if present)."""
    folder = work / f"fd-{dataset}"
    if not (folder / "model.safetensors").is_file():
        fdc.main(fdc.parse_args(["--dataset", dataset, "--out", str(folder), "--steps", str(steps),
                                 "--device", device.type]))
    return folder


def run_one(args: argparse.Namespace, dataset: str, batch: int, loss: str, seed: int, folder: Path,
            classifier: Path) -> tuple[list[dict[str, Any]], float | None]:
    """Train (or resume, or just read) one run; returns its evaluation entries and mean seconds per step."""
    preset = CONFIGS[args.config]
    log = folder / "log.jsonl"
    done = log.is_file() and any(json.loads(line).get("eval", {}).get("step") == args.steps
                                 for line in log.read_text().splitlines() if line.strip())
    if not done:
        argv = ["--dataset", dataset, "--out", str(folder), "--batch-size", str(batch), "--seed", str(seed),
                "--steps", str(args.steps), "--eval-every", str(preset["eval_every"]),
                "--checkpoint-every", str(preset["eval_every"]), "--log-every", str(preset["eval_every"]),
                "--fd-samples", str(preset["fd_samples"]), "--fd-real", str(preset["fd_real"]),
                "--fd-network", "auto", "--fd-classifier", str(classifier), "--device", args.device_obj.type,
                "--no-progress", *LOSSES[loss], *preset["train"]]
        if (folder / "checkpoint.pt").is_file():
            argv.append("--resume")
        ct.main(ct.parse_args(argv))
    entries = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    evals, seen = [], set()
    for entry in (e["eval"] for e in entries if "eval" in e):
        if entry["step"] in seen:  # a resumed run may log the interrupted evaluation twice
            continue
        seen.add(entry["step"])
        fd = {k.rsplit("_", 1)[1]: v for k, v in entry.items() if k.startswith(("FD", "FID")) and k[-5:] in ("1step", "2step")}
        metric = next(k.rsplit("_", 1)[0] for k in entry if k.startswith(("FD", "FID")))
        evals.append({"step": entry["step"], "train_seconds": entry.get("train_seconds"), "metric": metric, **fd})
    steps_logged = [e for e in entries if "seconds_per_step" in e]
    return evals, (sum(e["seconds_per_step"] for e in steps_logged) / len(steps_logged) if steps_logged else None)


def mean_curve(runs: list[list[dict]], key: str) -> tuple[list[int], list[float], list[float]]:
    """Steps, mean and standard error over seeds of one metric (runs share their evaluation steps)."""
    steps = [e["step"] for e in runs[0]]
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


def summarise(result: dict) -> list[dict[str, Any]]:
    """Per (data set, batch size, sampler): final FD of each loss and MFD's iteration ratio to pseudo-Huber."""
    rows = []
    for group in result["groups"]:
        for sampler in ("1step", "2step"):
            curves = {loss: mean_curve(runs, sampler) for loss, runs in group["runs"].items()}
            row = {"dataset": group["dataset"], "batch_size": group["batch_size"], "sampler": sampler,
                   "metric": group["metric"], "final": {loss: c[1][-1] for loss, c in curves.items()},
                   "final_sem": {loss: c[2][-1] for loss, c in curves.items()}}
            if "mfd" in curves and "pseudo-huber" in curves:
                ph_steps, ph_values, _ = curves["pseudo-huber"]
                reach = steps_to_reach(curves["mfd"][0], curves["mfd"][1], ph_values[-1])
                row["mfd_steps_to_ph_final"] = reach
                row["mfd_iteration_ratio"] = None if reach is None else reach / ph_steps[-1]
                # the same in training wall-clock: MFD's seconds at that iteration over pseudo-Huber's total
                mfd_clock = mean_clock(group["runs"]["mfd"])
                ph_total = mean_clock(group["runs"]["pseudo-huber"])[-1]
                row["mfd_time_ratio"] = None if reach is None or not ph_total else \
                    interpolate(curves["mfd"][0], mfd_clock, reach) / ph_total
            rows.append(row)
    return rows


def report(result: dict) -> str:
    losses = result["losses_run"]
    headers = ["data", "batch", "sampler"] + [f"{result['metric']} {LABELS[k]}" for k in losses] + \
              ["MFD iterations to reach pseudo-Huber's final", "same in wall-clock"]
    rows = []
    for r in result["summary"]:
        ratio = r.get("mfd_iteration_ratio")
        reach = "n/a" if "mfd_iteration_ratio" not in r else (
            f"not reached in {result['config']['steps']}" if ratio is None else f"{ratio:.2f}x ({r['mfd_steps_to_ph_final']:.0f})")
        clock = "n/a" if r.get("mfd_time_ratio") is None else f"{r['mfd_time_ratio']:.2f}x"
        rows.append([r["dataset"], r["batch_size"], r["sampler"]] +
                    [f"{r['final'][k]:.1f} ± {r['final_sem'][k]:.1f}" for k in losses] + [reach, clock])
    return markdown_table(headers, rows)


def plot(result: dict, path: Path) -> None:
    plt = pyplot()
    groups = result["groups"]
    fig, axes = plt.subplots(2, len(groups), figsize=(4.2 * len(groups), 7), squeeze=False)
    for col, group in enumerate(groups):
        for row, x_key in enumerate(("step", "train_seconds")):
            ax = axes[row][col]
            for loss, runs in group["runs"].items():
                for sampler, style in (("1step", "-"), ("2step", ":")):
                    _, mean, sem = mean_curve(runs, sampler)
                    xs = [e["step"] for e in runs[0]] if x_key == "step" else mean_clock(runs)
                    line = ax.plot(xs, mean, style, marker="o", markersize=3,
                                   label=f"{LABELS[loss]} {sampler}", color=f"C{list(LOSSES).index(loss)}")[0]
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


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.device_obj = resolve_device(args.device)
    work = Path(args.work) / args.config
    out = Path(args.out) if args.out else RESULTS / f"convergence-{args.config}.json"
    losses = list(args.losses)
    notes = []
    if "lpips" in losses:
        model, reason = lpips_with_weights("vgg")
        if model is None:
            losses.remove("lpips")
            notes.append(f"LPIPS left out: {reason}")
            print(notes[-1])
    config = {k: v for k, v in vars(args).items() if k != "device_obj"}
    config["train_args"] = CONFIGS[args.config]["train"]
    result: dict[str, Any] = {"environment": environment(args.device_obj, torch.float32), "config": config,
                              "losses_run": losses, "notes": notes, "groups": []}
    started = time.monotonic()
    for dataset in args.datasets:
        classifier = fd_classifier(dataset, work, CONFIGS[args.config]["fd_classifier_steps"], args.device_obj)
        for batch in args.batch_sizes:
            group: dict[str, Any] = {"dataset": dataset, "batch_size": batch, "runs": {}, "seconds_per_step": {}}
            for loss in losses:
                runs, speeds = [], []
                for seed in args.seeds:
                    folder = work / f"{dataset}-bs{batch}-{loss}-seed{seed}"
                    evals, speed = run_one(args, dataset, batch, loss, seed, folder, classifier)
                    runs.append(evals)
                    speeds.append(speed)
                group["runs"][loss] = runs
                group["seconds_per_step"][loss] = sum(s for s in speeds if s) / max(1, sum(1 for s in speeds if s))
            group["metric"] = group["runs"][losses[0]][0][0]["metric"]
            result["groups"].append(group)
    result["metric"] = result["groups"][0]["metric"]
    result["summary"] = summarise(result)
    result["seconds"] = round(time.monotonic() - started, 1)
    write_json(out, result)
    table = report(result)
    out.with_suffix(".md").write_text(table + "\n")
    if not args.no_plot:
        plot(result, out.with_suffix(".png"))
    print(f"\n{table}\n\nwrote {out} ({result['seconds']} s)")
    return result


if __name__ == "__main__":
    main()
