"""Training and reading the runs of the convergence benchmark (resumable; finished runs are read, not rerun)."""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
from pathlib import Path
from typing import Any, Iterator

import torch

import _training
import fd_classifier as fdc
import train_consistency_model as ct
import train_diffusion_model as dm
from convergence_config import CONFIGS, DENOISERS, LOSSES


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


def fd_classifier(dataset: str, home: Path, steps: int, device: torch.device, committed: bool = False) -> Path:
    """The Fréchet-distance network's folder: the committed ``benchmarks/metrics/fd-<dataset>`` when ``committed``,
    else a small one trained once per data set into ``home`` (skipped if present; toy and legacy configurations).

    Raises:
        FileNotFoundError: ``committed`` and the committed classifier is missing (the message says how to make it).
    """
    if committed:
        folder = _training.METRICS / f"fd-{dataset}"
        if not (folder / "model.safetensors").is_file():
            raise FileNotFoundError(f"no committed FD classifier at {folder}: run benchmarks/evidence_run.sh (or "
                                    f"benchmarks/fd_classifier.py --dataset {dataset} --out {folder})")
        return folder
    folder = home / f"fd-{dataset}"
    with exclusive(folder):
        if not (folder / "model.safetensors").is_file():
            fdc.main(fdc.parse_args(["--dataset", dataset, "--out", str(folder), "--epochs", "1", "--batch-size", "64",
                                     "--train-limit", str(64 * steps), "--test-limit", "1000", "--widths", "8,16,32,64",
                                     "--device", device.type]))
    return folder


def denoiser(args: argparse.Namespace, dataset: str, home: Path, classifier: Path) -> dict[str, Any]:
    """Train (or resume, or just read) the EDM denoiser of a data set; returns its checkpoint and final evaluation."""
    spec = DENOISERS[CONFIGS[args.config]["denoiser"]]
    if "pretrained" in spec:  # a committed teacher: read its card, never train
        path = _training.METRICS.parent.parent / spec["pretrained"].format(dataset=dataset)
        if not path.is_file():
            raise FileNotFoundError(f"no committed teacher at {path}: run benchmarks/evidence_run.sh")
        card = json.loads((path.parent / "config.json").read_text())
        grid = path.parent / card["last_eval"].get("grid_heun", "-")
        final = {**card["last_eval"], "grid_heun": str(grid) if grid.is_file() else None}
        return {"checkpoint": str(path), "weights": spec["pretrained"].format(dataset=dataset), "steps": card["steps"], "batch_size": card["recipe"]["batch_size"],
                "train_args": spec["train"], "sha256": card["sha256"], "final_eval": final}
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
            classifier: Path, teacher: str | None, lr: float | None = None) -> tuple[list[dict[str, Any]], float | None]:
    """Train (or resume, or just read) one run; returns its evaluation entries and mean seconds per step."""
    preset = CONFIGS[args.config]
    if not finished(folder, args.steps):
        argv = ["--dataset", dataset, "--out", str(folder), "--batch-size", str(batch), "--seed", str(seed),
                "--steps", str(args.steps), "--eval-every", str(preset["eval_every"]),
                "--checkpoint-every", str(preset["eval_every"]), "--log-every", str(preset["eval_every"]),
                "--fd-samples", str(preset["fd_samples"]), "--fd-real", str(preset["fd_real"]),
                "--fd-network", "auto", "--fd-classifier", str(classifier), "--device", args.device_obj.type,
                "--no-progress", *LOSSES[loss], *preset["train"]]
        if lr is not None:
            argv += ["--lr", str(lr)]
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

