"""Training a feature map by self-supervised perturbation-parameter regression (METHOD.md Sec. 3).

Objective: mean squared error between the map's K outputs and the label vector of random perturbations
applied to real images; RAdam, no weight decay, BatchNorm in train mode; each op switched on per sample
with probability p, ramped linearly from 0 to ``p_max`` over ``ramp_steps`` (paper: 0.15 over 50k of 400k
iterations, batch 512, lr 1e-4).

Resume is exact: the data order of each epoch and the perturbations of each step are derived from
(seed, epoch) and (seed, step), and the checkpoint holds the model, the optimiser and the step, so a run
stopped at any checkpoint and resumed produces bit-identical weights to one that never stopped.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from .checkpoint import load_checkpoint, save_checkpoint
from .feature_maps import FeatureMapConfig, VGGFeatureMap
from .perturbations import LabelSpec, Perturbations, label_spec
from .serialization import save_feature_map

__all__ = ["TrainConfig", "regression_metrics", "evaluate_feature_map", "train_feature_map", "export_run"]

CHECKPOINT_NAME = "checkpoint.pt"
LOG_NAME = "log.jsonl"


@dataclass
class TrainConfig:
    """Recipe of a feature-map training run (stored in the checkpoint and the exported ``config.json``).

    Attributes:
        steps: optimiser steps in total.
        batch_size: images per step.
        lr: RAdam learning rate.
        p_max: final per-op probability that a perturbation is on.
        ramp_steps: steps over which p rises linearly from 0 to p_max.
        spec: perturbation preset or op names.
        seed: seeds initialisation, data order and perturbations.
        eval_every: steps between held-out evaluations (0 = only at the end).
        eval_size: held-out images used by each evaluation.
        eval_p: per-op probability during evaluation (defaults to p_max).
        checkpoint_every: steps between checkpoints.
    """

    steps: int = 400_000
    batch_size: int = 512
    lr: float = 1e-4
    p_max: float = 0.15
    ramp_steps: int = 50_000
    spec: str | list[str] = "all"
    seed: int = 0
    eval_every: int = 1000
    eval_size: int = 2000
    eval_p: float | None = None
    checkpoint_every: int = 500

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "checkpoint_every", "eval_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0.0 <= self.p_max <= 1.0:
            raise ValueError(f"p_max must lie in [0, 1], got {self.p_max}")
        if self.ramp_steps < 0 or self.eval_every < 0:
            raise ValueError("ramp_steps and eval_every must be non-negative")

    def probability(self, step: int) -> float:
        """Per-op probability used at (0-based) step."""
        if self.ramp_steps == 0:
            return self.p_max
        return self.p_max * min(1.0, (step + 1) / self.ramp_steps)


def _mix(*values: int) -> int:
    """A 63-bit seed derived from integers (splitmix64-style), stable across runs and platforms."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (v + 0x9E3779B97F4A7C15 + (h << 6) + (h >> 2))) & 0xFFFFFFFFFFFFFFFF
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (h ^ (h >> 31)) & 0x7FFFFFFFFFFFFFFF


def _generator(*values: int) -> torch.Generator:
    return torch.Generator().manual_seed(_mix(*values))


def batch_indices(step: int, batch_size: int, num_images: int, seed: int) -> Tensor:
    """Indices of the images used at step: a fresh permutation per epoch, seeded by (seed, epoch)."""
    start = step * batch_size
    out, position = [], start
    while position < start + batch_size:
        epoch, offset = divmod(position, num_images)
        take = min(num_images - offset, start + batch_size - position)
        perm = torch.randperm(num_images, generator=_generator(seed, 1, epoch))
        out.append(perm[offset:offset + take])
        position += take
    return torch.cat(out)


def regression_metrics(prediction: Tensor, target: Tensor, names: Iterable[str]) -> dict[str, dict[str, float]]:
    """Per-label R^2 = 1 - SSE / SST and MSE of (N, K) predictions against (N, K) labels."""
    prediction, target = prediction.double(), target.double()
    sse = (prediction - target).pow(2).sum(0)
    sst = (target - target.mean(0)).pow(2).sum(0)
    r2 = torch.where(sst > 0, 1 - sse / sst.clamp_min(1e-30), torch.full_like(sse, math.nan))
    mse = sse / target.shape[0]
    names = list(names)
    return {"r2": dict(zip(names, r2.tolist())), "mse": dict(zip(names, mse.tolist()))}


@torch.no_grad()
def evaluate_feature_map(
    feature_map: VGGFeatureMap,
    images: Tensor,
    perturbations: Perturbations,
    *,
    p: float,
    seed: int = 12345,
    batch_size: int = 500,
) -> dict[str, Any]:
    """Per-label R^2 and MSE on perturbed held-out images (fixed perturbations for a given seed).

    Args:
        feature_map: the map (evaluated in eval mode; its previous mode is restored).
        images: (N, C, H, W) uint8 held-out images.
        perturbations: the pipeline whose labels the map regresses.
        p: per-op probability of each perturbation during evaluation.
        seed: seeds the evaluation perturbations, so numbers are comparable across checkpoints.

    Returns:
        ``{"r2": {label: value}, "mse": {label: value}, "mse_mean": float, "num_images": N, "p": p}``.
    """
    was_training = feature_map.training
    feature_map.eval()
    device = next(feature_map.parameters()).device
    preds, targets = [], []
    for i in range(0, images.shape[0], batch_size):
        x = images[i:i + batch_size].to(device).float() / 127.5 - 1.0
        xp, labels = perturbations(x, generator=_generator(seed, 2, i), p=p)
        preds.append(feature_map.predict_labels(xp).float().cpu())
        targets.append(labels.cpu())
    feature_map.train(was_training)
    metrics = regression_metrics(torch.cat(preds), torch.cat(targets), perturbations.spec.labels)
    metrics["mse_mean"] = float(sum(metrics["mse"].values()) / len(metrics["mse"]))
    metrics.update(num_images=int(images.shape[0]), p=p)
    return metrics


class _StopRequested:
    """Turns SIGTERM/SIGINT into a flag so the loop can write a checkpoint before exiting."""

    def __init__(self) -> None:
        self.flag = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "_StopRequested":
        if hasattr(signal, "SIGTERM"):
            try:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                self._previous.clear()
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.flag = True

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def train_feature_map(
    train_images: Tensor,
    out_dir: str | os.PathLike,
    *,
    config: TrainConfig = TrainConfig(),
    architecture: FeatureMapConfig | None = None,
    eval_images: Tensor | None = None,
    resume: bool = True,
    max_minutes: float | None = None,
    device: str | torch.device = "cpu",
    dataset: dict[str, Any] | None = None,
    export_dtype: torch.dtype = torch.float32,
    progress: bool = True,
) -> tuple[VGGFeatureMap, dict[str, Any]]:
    """Train (or resume training) a feature map and export it.

    Writes into out_dir: ``checkpoint.pt`` (atomically, every ``checkpoint_every`` steps, on SIGTERM/SIGINT
    and at the end), ``log.jsonl`` (one JSON line per log/eval event), and on completion the exported map
    (``model.safetensors`` + ``config.json``).

    Args:
        train_images: (N, C, H, W) uint8 training images in [0, 255].
        out_dir: run folder.
        config: the recipe.
        architecture: feature-map architecture; ``num_labels``, ``in_channels`` and ``resolution`` are
            filled in from the spec and the data. Default: VGG16-BN at full width.
        eval_images: (M, C, H, W) uint8 held-out images; default: none (no R^2 evaluation).
        resume: continue from out_dir/checkpoint.pt when it exists (the recipe must match).
        max_minutes: stop (with a checkpoint) after this much wall-clock time; resume later.
        device: where to train.
        dataset: description stored in config.json (name, split, size, ...).
        export_dtype: storage dtype of the exported weights.
        progress: show a tqdm bar.

    Returns:
        (feature map, summary dict with ``step``, ``finished``, ``images_seen``, ``train_seconds``, ``metrics``).

    Raises:
        ValueError: images are not uint8 (N, C, H, W), too few images for a batch, or the checkpoint in
        out_dir was written with a different recipe/architecture.
    """
    if train_images.dtype != torch.uint8 or train_images.ndim != 4:
        raise ValueError(f"train_images must be uint8 (N, C, H, W) in [0, 255], got {train_images.dtype} "
                         f"{tuple(train_images.shape)}")
    num_images = train_images.shape[0]
    if num_images < 2:
        raise ValueError("need at least 2 training images")
    spec = label_spec(config.spec)
    perturbations = Perturbations(spec, p=config.p_max)
    arch = architecture or FeatureMapConfig()
    arch = FeatureMapConfig(**{**arch.to_dict(), "num_labels": spec.num_labels, "in_channels": train_images.shape[1],
                               "resolution": tuple(train_images.shape[-2:])})
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = out_dir / CHECKPOINT_NAME

    torch.manual_seed(_mix(config.seed, 0))
    model = VGGFeatureMap(arch).to(device).train()
    optimizer = torch.optim.RAdam(model.parameters(), lr=config.lr, weight_decay=0.0)
    step, train_seconds, history = 0, 0.0, []
    if resume and ckpt_path.exists():
        state = load_checkpoint(ckpt_path)
        saved = {"recipe": state["recipe"], "architecture": state["architecture"]}
        now = {"recipe": asdict(config), "architecture": arch.to_dict()}
        changed = {k for k in ("architecture",) if saved[k] != now[k]}
        changed |= {f"recipe.{k}" for k in now["recipe"] if k != "steps" and saved["recipe"].get(k) != now["recipe"][k]}
        if changed:
            raise ValueError(f"{ckpt_path} was written with a different {sorted(changed)}; use another out_dir "
                             "or resume=False to start over")
        model.load_state_dict(state["model"], strict=True)
        optimizer.load_state_dict(state["optimizer"])
        step, train_seconds, history = state["step"], state["train_seconds"], state["history"]

    def checkpoint() -> None:
        save_checkpoint(ckpt_path, {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
            "train_seconds": train_seconds, "history": history, "recipe": asdict(config),
            "architecture": arch.to_dict(), "label_spec": spec.to_dict(), "dataset": dataset or {},
        })

    def log(entry: dict[str, Any]) -> None:
        history.append(entry)
        with open(out_dir / LOG_NAME, "a") as fh:
            fh.write(json.dumps(entry) + "\n")

    eval_p = config.p_max if config.eval_p is None else config.eval_p
    eval_subset = eval_images[:config.eval_size] if eval_images is not None else None
    started = time.monotonic()
    bar = tqdm(total=config.steps, initial=step, disable=not progress, desc="feature map", unit="step")
    running, running_n, last_log = 0.0, 0, time.monotonic()
    with _StopRequested() as stop:
        while step < config.steps:
            idx = batch_indices(step, config.batch_size, num_images, config.seed)
            x = train_images[idx].to(device).float() / 127.5 - 1.0
            xp, labels = perturbations(x, generator=_generator(config.seed, 3, step), p=config.probability(step))
            loss = F.mse_loss(model.predict_labels(xp), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            running += loss.item()
            running_n += 1
            bar.update(1)
            now = time.monotonic()
            if now - last_log > 30 or step == config.steps:
                elapsed = now - started
                bar.set_postfix(loss=f"{running / running_n:.4f}", p=f"{config.probability(step - 1):.3f}")
                log({"step": step, "loss": running / running_n, "p": config.probability(step - 1),
                     "train_seconds": train_seconds + elapsed})
                running, running_n, last_log = 0.0, 0, now
            evaluate_now = eval_subset is not None and (
                (config.eval_every and step % config.eval_every == 0) or step == config.steps)
            if evaluate_now:
                metrics = evaluate_feature_map(model, eval_subset, perturbations, p=eval_p)
                log({"step": step, "eval": metrics})
                bar.write(f"step {step}: eval mse {metrics['mse_mean']:.4f}, R^2 " +
                          " ".join(f"{k}={v:.2f}" for k, v in metrics["r2"].items()))
            out_of_time = max_minutes is not None and (time.monotonic() - started) > 60 * max_minutes
            if step % config.checkpoint_every == 0 or step == config.steps or stop.flag or out_of_time:
                train_seconds += time.monotonic() - started
                started = time.monotonic()
                checkpoint()
            if stop.flag or out_of_time:
                break
    bar.close()
    finished = step >= config.steps
    evals = [h["eval"] for h in history if "eval" in h]
    summary = {"step": step, "finished": finished, "images_seen": step * config.batch_size,
               "train_seconds": round(train_seconds, 1), "metrics": evals[-1] if evals else None}
    if finished:
        export_run(out_dir, out_dir, dtype=export_dtype)
    return model.eval(), summary


def fp16_relative_change(feature_map: VGGFeatureMap, images: Tensor) -> float:
    """Largest relative change of per-sample MFD values when the weights are stored in float16.

    Compares the map against a copy whose floating tensors went through float16, on pairs made by
    shifting the (N, C, H, W) uint8 ``images`` by one pixel (a typical small residual).
    """
    from .distance import manifold_feature_distance

    rounded = VGGFeatureMap(feature_map.config)
    rounded.load_state_dict({k: (v.half().float() if v.is_floating_point() else v)
                             for k, v in feature_map.state_dict().items()})
    x = images.float() / 127.5 - 1.0
    y = torch.roll(x, 1, dims=-1)
    with torch.no_grad():
        exact = manifold_feature_distance(feature_map.eval(), x, y, check_range=False)
        approx = manifold_feature_distance(rounded.eval(), x, y, check_range=False)
    return float(((approx - exact).abs() / exact).max())


def export_run(
    run_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    dtype: torch.dtype = torch.float32,
    eval_images: Tensor | None = None,
    eval_name: str | None = None,
    dataset: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Export the model of a run's checkpoint as ``model.safetensors`` + ``config.json``.

    Works on finished and unfinished runs (the recipe records ``steps_done``). The exported
    ``config.json`` carries the dataset, the recipe, the training time and the held-out metrics.

    Args:
        run_dir: folder holding ``checkpoint.pt``.
        out_dir: destination folder (may equal run_dir).
        dtype: storage dtype; with float16 the largest relative change of MFD values caused by the
            rounding is measured on eval_images (or the packaged sample) and recorded.
        eval_images: (M, C, H, W) uint8 held-out images; when given, per-label R^2/MSE are computed on
            all of them and stored under ``metrics["held_out"]`` (else the run's last evaluation is used).
        eval_name: description of eval_images stored with the metrics (e.g. "cifar10 test, 10000 images").
        dataset: description of the training data; default: the one stored in the checkpoint.

    Returns:
        the exported config dict.
    """
    state = load_checkpoint(Path(run_dir) / CHECKPOINT_NAME)
    arch = FeatureMapConfig.from_dict(state["architecture"])
    spec = LabelSpec.from_dict(state["label_spec"])
    config = TrainConfig(**state["recipe"])
    model = VGGFeatureMap(arch)
    model.load_state_dict(state["model"], strict=True)
    model.eval()
    evals = [h["eval"] for h in state["history"] if "eval" in h]
    metrics = evals[-1] if evals else None
    if eval_images is not None:
        p = config.p_max if config.eval_p is None else config.eval_p
        metrics = evaluate_feature_map(model, eval_images, Perturbations(spec, p=p), p=p)
    if metrics is not None and eval_name:
        metrics = {**metrics, "images": eval_name}
    step = state["step"]
    recipe = {**asdict(config), "objective": "MSE on the perturbation label vector", "optimizer": "RAdam",
              "weight_decay": 0.0, "steps_done": step, "images_seen": step * config.batch_size,
              "train_seconds": round(state["train_seconds"], 1), "torch": torch.__version__}
    metadata: dict[str, Any] = {"dataset": dataset if dataset is not None else state.get("dataset", {}),
                                "recipe": recipe}
    if metrics is not None:
        metadata["metrics"] = {"held_out": metrics}
    if dtype == torch.float16 and (eval_images is not None or (arch.in_channels, arch.resolution) == (3, (32, 32))):
        from .datasets import load_sample_images

        sample = eval_images[:256] if eval_images is not None else load_sample_images()[0]
        metadata["fp16_storage_max_relative_mfd_change"] = fp16_relative_change(model, sample)
    save_feature_map(model, out_dir, label_spec=spec, metadata=metadata, dtype=dtype)
    return {"architecture": arch.to_dict(), **metadata}
