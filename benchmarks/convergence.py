"""Convergence of consistency models: MFD (AYT) against pseudo-Huber (ECT), L2 and LPIPS, side by side.

Runs the reference loop ``examples/train_consistency_model.py`` for every (data set, batch size, loss, seed)
of a configuration and records the Fréchet distance of 1-step and 2-step samples of the EMA network against
training iterations and training wall-clock (evaluation and checkpoint time excluded). The Fréchet distance
is FID when Inception weights are cached, otherwise ``FD_<net>`` in a classifier's features
(``benchmarks/fd_classifier.py``; never called FID): the committed ``benchmarks/metrics/fd-<dataset>`` for the
``evidence-*`` configurations, a small one trained first for the others. The headline is the share of ECT's iterations
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
* **issue 19's protocol** - ``evidence-sweep-cpu`` (learning rates 1e-4 and 3e-4, seed 0), then
  ``evidence-tune-cpu`` and ``evidence-distill-cpu`` (ECT, AYT, AYT with a random-init map, L2; 3 paired seeds)
  from the committed teacher (``benchmarks/teachers/<dataset>``), with the metric's reference rows
  (``fd_references.py``), 95 % confidence intervals, paired differences to ECT and iterations to ECT's final
  only where ECT improved by >= 10 %; results record ``maps``, ``metric`` and ``references`` and are refused
  from a dirty tree; ``evidence-smoke`` in CI;
* **consistency distillation** from the same teacher (``--teacher``: one Heun step of the teacher's ODE from t
  to r) - ``distill-cpu``, ``distill-gpu``, ``distill-smoke``, on CIFAR-10: MFD as a loss value
  (``--direction raw``), MFD with AYT's direction, pseudo-Huber, L2 and LPIPS;
* **continuous time** (METHOD.md Sec. 5b) - ``continuous-gpu``, ``continuous-smoke``: distillation from the same
  teacher with the JVP-based objective in MFD's feature space and in pixel space (sCM-style) against discrete
  AYT and pseudo-Huber, 3 seeds (not run yet: it needs a GPU).

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

The code is split along its seams: ``convergence_config.py`` (settings), ``convergence_runs.py`` (training and
reading runs), ``convergence_stats.py`` (statistics), ``convergence_report.py`` (tables and figures).

Rerun:  python benchmarks/convergence.py --config tune-cpu     (see benchmarks/README.md for the 2-core launch)
GPU:    python benchmarks/convergence.py --config tune-gpu --device cuda
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "examples"))

from _common import (  # noqa: E402
    RESULTS, environment, lpips_with_weights, map_record, parse_ints, resolve_device, write_json,
)

import _training  # noqa: E402
import fd_classifier as fdc  # noqa: E402
from convergence_config import CONFIGS, LOSSES  # noqa: E402
from convergence_report import _ratio, plot, plot_samples, report  # noqa: E402,F401
from convergence_runs import denoiser, fd_classifier, run_one  # noqa: E402
from convergence_stats import cross_batch, mean_curve, steps_to_reach, summarise  # noqa: E402,F401

# Every run of a benchmark decodes the same archives: decode each (data set, split) once per process.
_training.load_images = fdc.load_images = functools.lru_cache(maxsize=4)(_training.load_images)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", choices=sorted(CONFIGS), default="cpu", help="settings (see above)")
    p.add_argument("--datasets", default=None, help="comma list (default: the configuration's)")
    p.add_argument("--batch-sizes", default=None, help="comma list (default: the configuration's)")
    p.add_argument("--seeds", default=None, help="comma list (default: the configuration's)")
    p.add_argument("--lrs", default=None, help="comma list of learning rates, one group each (default: the "
                                               "configuration's; none: the train arguments' own --lr)")
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
    lrs = args.lrs or preset.get("lrs")
    args.lrs = tuple(float(v) for v in lrs.split(",")) if lrs else (None,)
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



# ------------------------------------------------------------------------------------------------ main
def _run_folder(work: Path, dataset: str, batch: int, loss: str, seed: int, lr: float | None) -> Path:
    return work / (f"{dataset}-bs{batch}-{loss}-seed{seed}" if lr is None else
                   f"{dataset}-bs{batch}-lr{lr:g}-{loss}-seed{seed}")


def records(args: argparse.Namespace, losses: list[str], classifiers: dict[str, Path],
            references: dict[str, dict]) -> dict[str, Any]:
    """What produced the numbers: ``maps`` {loss: {name, sha256}}, ``metric`` {name, dataset, sha256,
    test_accuracy} and ``references`` (rows; per data set when several), without absolute paths."""
    from fd_metric import file_sha256

    maps: dict[str, dict[str, Any]] = {}
    for loss in losses:
        argv = LOSSES[loss]
        if "mfd" not in argv:
            continue
        for dataset in args.datasets:  # train_consistency_model.py's map: --mfd-pretrained, else the data set's
            if "random" in argv:
                entry = {"name": f"{dataset} architecture, random init (seed 0)", "sha256": None}
            else:
                entry = map_record(dataset)
            maps.setdefault(loss, {})[dataset] = entry
    metrics = {}
    for dataset, folder in classifiers.items():
        config = json.loads((folder / "config.json").read_text())
        metrics[dataset] = {"name": "FD_" + config.get("name", folder.name), "dataset": dataset,
                            "sha256": config.get("sha256") or file_sha256(folder / "model.safetensors"),
                            "test_accuracy": config.get("test_accuracy")}
    single = len(args.datasets) == 1
    return {"maps": {k: v[args.datasets[0]] for k, v in maps.items()} if single else maps,
            "metric": metrics[args.datasets[0]] if single else metrics,
            "references": (references.get(args.datasets[0]) if single else references) or None}


def main(argv: list[str] | None = None) -> dict | None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.device_obj = resolve_device(args.device)
    preset = CONFIGS[args.config]
    work = Path(args.work) / args.config
    home = Path(args.work) / preset.get("shared", args.config)
    out = Path(args.out) if args.out else RESULTS / f"convergence-{args.config}.json"
    commit = environment(args.device_obj)["git_commit"] or ""
    if "smoke" not in args.config and args.shard is None and commit.endswith("+dirty"):
        raise SystemExit(f"the working tree has uncommitted changes ({commit}): commit them first, so that the "
                         f"results record the code that produced them")
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
        classifiers[dataset] = fd_classifier(dataset, home, preset["fd_classifier_steps"] if "fd_classifier_steps"
                                             in preset else 0, args.device_obj, preset.get("metric") == "committed")
        if preset["mode"] != "scratch":
            denoisers[dataset] = denoiser(args, dataset, home, classifiers[dataset])
    started = time.monotonic()
    jobs = [(d, b, lr, loss, s) for d in args.datasets for b in args.batch_sizes for lr in args.lrs for loss in losses
            for s in args.seeds]
    groups: dict[tuple, dict[str, Any]] = {}
    for index, (dataset, batch, lr, loss, seed) in enumerate(jobs):
        if args.shard is not None and index % args.shard[1] != args.shard[0]:
            continue
        teacher = denoisers[dataset]["checkpoint"] if dataset in denoisers else None
        evals, speed = run_one(args, dataset, batch, loss, seed, _run_folder(work, dataset, batch, loss, seed, lr),
                               classifiers[dataset], teacher, lr)
        group = groups.setdefault((dataset, batch, lr), {"dataset": dataset, "batch_size": batch, "lr": lr,
                                                         "runs": {}, "seconds_per_step": {}})
        group["runs"].setdefault(loss, []).append(evals)
        group["seconds_per_step"].setdefault(loss, []).append(speed)
    if args.shard:
        print(f"shard {args.shard[0]}/{args.shard[1]} done in {time.monotonic() - started:.0f} s; "
              f"rerun without --shard when every shard has finished to write the results")
        return None
    references = {}
    if preset.get("references"):
        for dataset in args.datasets:
            references[dataset] = reference_rows(dataset, home, classifiers[dataset], preset, denoisers.get(dataset))
    config = {k: v for k, v in vars(args).items() if k not in ("device_obj", "work", "out")}
    config.update({k: preset[k] for k in ("mode", "eval_every", "fd_samples", "fd_real")})
    config["train_args"] = preset["train"]
    result: dict[str, Any] = {"environment": environment(args.device_obj, torch.float32), "config": config,
                              "losses_run": losses, "notes": notes,
                              "denoisers": denoisers,
                              **records(args, losses, classifiers, references), "groups": []}
    for group in groups.values():
        group["seconds_per_step"] = {k: sum(s for s in v if s) / max(1, sum(1 for s in v if s))
                                     for k, v in group["seconds_per_step"].items()}
        group["metric"] = group["runs"][losses[0]][0][0]["metric"]
        result["groups"].append(group)
    result["metric_label"] = result["groups"][0]["metric"]
    result["summary"] = summarise(result)
    result["cross_batch"] = cross_batch(result)
    result["seconds"] = round(time.monotonic() - started, 1)
    if not args.no_plot:
        plot(result, out.with_suffix(".png"))
        result["sample_grids"] = plot_samples(result, out.with_suffix(""))
    write_json(out, portable(result, {str(Path(args.work).resolve()): "$WORK", str(out.parent.resolve()) + "/": "",
                                      str(HERE.parent) + "/": ""}))
    table = report(result)
    out.with_suffix(".md").write_text(table + "\n")
    print(f"\n{table}\n\nwrote {out} ({result['seconds']} s)")
    return result


def portable(value: Any, prefixes: dict[str, str]) -> Any:
    """``value`` with every string that starts with an absolute prefix rewritten (``--work`` -> ``$WORK``, the
    checkout -> relative), so committed results hold no absolute paths."""
    if isinstance(value, dict):
        return {k: portable(v, prefixes) for k, v in value.items()}
    if isinstance(value, list):
        return [portable(v, prefixes) for v in value]
    if isinstance(value, str):
        for prefix, replacement in prefixes.items():
            if value.startswith(prefix):
                return replacement + value[len(prefix):]
    return value


def reference_rows(dataset: str, home: Path, classifier: Path, preset: dict[str, Any],
                   teacher: dict[str, Any] | None) -> dict[str, Any]:
    """The metric's reference rows for a data set with the runs' sample count, computed once into ``home``."""
    import fd_references

    cache = home / f"references-{dataset}-{preset['fd_samples']}.json"
    if not cache.is_file():
        rows = fd_references.references(dataset, classifier, preset["fd_samples"], fd_real=preset["fd_real"],
                                        teacher=teacher["checkpoint"] if teacher else None,
                                        kid_subset_size=min(1000, preset["fd_samples"]))
        write_json(cache, rows)
    return json.loads(cache.read_text())


if __name__ == "__main__":
    main()

