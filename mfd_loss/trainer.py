"""Training a feature map by self-supervised perturbation-parameter regression (METHOD.md Sec. 3).

Objective: mean squared error between the map's K outputs and the label vector of random perturbations
applied to real images; RAdam, no weight decay, BatchNorm in train mode; each op switched on per sample
with probability p, ramped linearly from 0 to ``p_max`` over the first ``ramp_fraction`` of the run (paper:
0.15 over 50k of 400k iterations = 1/8, batch 512, lr 1e-4; :data:`RECIPES` ``"paper"``).

Resume is exact: the data order of each epoch and the perturbations of each step are derived from
(seed, epoch) and (seed, step), and the checkpoint holds the model, the optimiser, the loss scaler and
the step, so a run stopped at a checkpoint and resumed gives bit-identical weights to one that never
stopped. Under ``torchrun`` every process draws the same global batch and perturbations, keeps its own
slice for the forward/backward pass, and BatchNorm statistics span the global batch, so K processes
reproduce one process with the same global batch (up to float summation order). The checkpoint also
holds a fingerprint of the training data (:func:`data_fingerprint`), so resuming on other data is refused.
"""

from __future__ import annotations

import csv
import hashlib
import math
import os
import time
import warnings
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from .checkpoint import load_checkpoint, save_checkpoint
from .distributed import init_distributed, max_over_processes, use_global_batchnorm
from .feature_maps import FeatureMapConfig, TapFeatureMap, build_feature_map
from .datasets import to_model_range
from .image_sources import collate_images, open_image_source
from .interrupt import StopRequested, stop_reason
from .perturbations import LabelSpec, Perturbations, label_spec
from .serialization import save_feature_map

__all__ = ["TrainConfig", "RECIPES", "recipe_settings", "default_spec", "default_device", "data_fingerprint",
           "regression_metrics", "evaluate_feature_map", "train_feature_map", "export_run"]

CHECKPOINT_NAME = "checkpoint.pt"
TRAIN_LOG = "log.csv"
EVAL_LOG = "eval.csv"
PRECISIONS = ("fp32", "bf16", "fp16")
MIN_PERTURBED_PER_OP = 10  # fewer expected perturbed held-out images per op than this: per-label R^2 is unreliable


def default_device() -> str:
    """``"cuda"`` when a CUDA device is available, else ``"cpu"``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_spec(channels: int) -> str:
    """The perturbation preset that makes sense for a channel count: ``"all"`` for RGB, ``"grayscale"``
    (geometric, brightness, contrast, degradation) for 1-2 channels, ``"geometric+degradation"`` for
    4+ channels (latents, where colour ops have no meaning)."""
    return "all" if channels == 3 else "grayscale" if channels < 3 else "geometric+degradation"


@dataclass
class TrainConfig:
    """Recipe of a feature-map training run (stored in the checkpoint and the exported ``config.json``).

    Attributes:
        steps: optimiser steps in total (may be changed when resuming; the ramp keeps the length in steps it had when
            the run started, so a resumed run follows the schedule an uninterrupted one would).
        batch_size: images per step, over all processes.
        lr: RAdam learning rate.
        lr_decay_fraction: share of ``steps`` at the end over which the learning rate falls from ``lr`` to 0 along a
            half cosine (0: constant, the paper's recipe). Counted from the end, so raising ``steps`` when resuming
            before the decay began postpones it.
        p_max: final per-op probability that a perturbation is on.
        ramp_fraction: share of ``steps`` over which p rises linearly from 0 to p_max (paper: 50k of 400k = 1/8),
            so that every run ends at p_max whatever its length.
        ramp_steps: an absolute ramp length in steps instead of ``ramp_fraction`` (None: use the fraction).
        spec: perturbation preset, op names, or ``"auto"`` (:func:`default_spec` of the channel count).
        seed: seeds initialisation, data order, held-out split and perturbations.
        eval_every: steps between held-out evaluations (0 = only at the end).
        eval_size: held-out images used by each evaluation.
        eval_p: per-op probability during evaluation (defaults to p_max).
        eval_fraction: share of the training source held out when no separate evaluation data is given.
        checkpoint_every: steps between checkpoints.
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` (autocast; fp16 adds a gradient scaler; for GPUs).
    """

    steps: int = 400_000
    batch_size: int = 512
    lr: float = 1e-4
    lr_decay_fraction: float = 0.0
    p_max: float = 0.15
    ramp_fraction: float = 0.125
    ramp_steps: int | None = None
    spec: str | list[str] = "auto"
    seed: int = 0
    eval_every: int = 1000
    eval_size: int = 2000
    eval_p: float | None = None
    eval_fraction: float = 0.02
    checkpoint_every: int = 500
    precision: str = "fp32"

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "checkpoint_every", "eval_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0.0 <= self.p_max <= 1.0:
            raise ValueError(f"p_max must lie in [0, 1], got {self.p_max}")
        if not 0.0 <= self.lr_decay_fraction <= 1.0:
            raise ValueError(f"lr_decay_fraction must lie in [0, 1], got {self.lr_decay_fraction}")
        if not 0.0 <= self.ramp_fraction <= 1.0:
            raise ValueError(f"ramp_fraction must lie in [0, 1], got {self.ramp_fraction}")
        if (self.ramp_steps is not None and self.ramp_steps < 0) or self.eval_every < 0:
            raise ValueError("ramp_steps and eval_every must be non-negative")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must lie in [0, 1), got {self.eval_fraction}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")

    @property
    def ramp_length(self) -> int:
        """Steps of the 0 -> p_max ramp: ``ramp_steps`` when set, else ``round(ramp_fraction * steps)``."""
        return self.ramp_steps if self.ramp_steps is not None else round(self.ramp_fraction * self.steps)

    def learning_rate(self, step: int) -> float:
        """Learning rate of (0-based) step: ``lr`` until the last ``lr_decay_fraction * steps`` steps, then a half
        cosine down to 0 (I. Loshchilov & F. Hutter, SGDR, ICLR 2017, Eq. 5, one cycle)."""
        decay = round(self.lr_decay_fraction * self.steps)
        start = self.steps - decay
        if decay == 0 or step < start:
            return self.lr
        return 0.5 * self.lr * (1.0 + math.cos(math.pi * min(1.0, (step - start) / decay)))

    def probability(self, step: int) -> float:
        """Per-op probability used at (0-based) step: p_max * min(1, (step + 1) / ramp_length)."""
        ramp = self.ramp_length
        return self.p_max if ramp == 0 else self.p_max * min(1.0, (step + 1) / ramp)


# Named recipes: values of TrainConfig fields plus the architecture ("arch", "width"). "default" is
# TrainConfig() with FeatureMapConfig(); "paper" is the authors' CIFAR-10 recipe (Kim, Cha & Ye 2025, App. B),
# meant for a GPU (bf16 autocast). docs/training.md lists both; tests/test_cli.py checks that they agree.
RECIPES: dict[str, dict[str, Any]] = {
    "default": {},
    "paper": {"arch": "vgg16", "width": 1.0, "steps": 400_000, "batch_size": 512, "lr": 1e-4, "p_max": 0.15,
              "ramp_fraction": 0.125, "ramp_steps": None, "precision": "bf16"},
    # Chosen by benchmarks/feature_map_training.py (CPU, equal time and equal images): the shipped cifar10 map's.
    "cpu": {"arch": "vgg11", "width": 0.5, "steps": 20_000, "batch_size": 128, "lr": 5e-4, "p_max": 0.15,
            "ramp_fraction": 0.125, "ramp_steps": None, "precision": "fp32", "eval_every": 2500},
    # The cpu recipe run 3x longer with a cosine learning-rate decay over the last 30 %: the cifar10 map of
    # pipeline 3 (mfd-loss 0.3). Raise --steps when resuming before the decay begins to train longer still.
    "cpu-long": {"arch": "vgg11", "width": 0.5, "steps": 60_000, "batch_size": 128, "lr": 5e-4,
                 "lr_decay_fraction": 0.3, "p_max": 0.15, "ramp_fraction": 0.125, "ramp_steps": None,
                 "precision": "fp32", "eval_every": 5000},
}


def recipe_settings(name: str) -> dict[str, Any]:
    """Every TrainConfig field and the architecture (``arch``, ``width``) of a named recipe.

    Raises:
        ValueError: an unknown recipe name.
    """
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose one of {sorted(RECIPES)}")
    base = FeatureMapConfig()
    return {**asdict(TrainConfig()), "arch": base.arch, "width": base.width, **RECIPES[name]}


def _checkpoint_ramp_length(state: dict[str, Any]) -> int:
    """The ramp length (steps) of a checkpoint's run: recorded when the run started; in checkpoints written
    before it was recorded, resolved from the stored recipe (whose absolute ``ramp_steps`` is the ramp when it
    has no ``ramp_fraction``, as in checkpoints written before ramp fractions existed)."""
    if "ramp_length" in state:
        return int(state["ramp_length"])
    recipe = state["recipe"]
    if "ramp_fraction" not in recipe or recipe.get("ramp_steps") is not None:
        return int(recipe["ramp_steps"])
    return round(recipe["ramp_fraction"] * recipe["steps"])


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


class StepBatchSampler(Sampler[list[int]]):
    """Index lists of the global batch of each step from ``start`` to ``steps``.

    Epoch e visits ``indices`` in the order of a permutation seeded by (seed, e); step s takes positions
    [s * B, (s + 1) * B) of the concatenated epochs, so any step's batch is known without replaying.
    """

    def __init__(self, indices: Sequence[int], batch_size: int, seed: int, start: int, steps: int):
        self.indices = torch.as_tensor(list(indices))
        self.batch_size, self.seed, self.start, self.steps = batch_size, seed, start, steps
        self._epoch, self._perm = -1, torch.empty(0, dtype=torch.long)

    def __len__(self) -> int:
        return max(0, self.steps - self.start)

    def batch(self, step: int) -> list[int]:
        n = len(self.indices)
        out, position, end = [], step * self.batch_size, (step + 1) * self.batch_size
        while position < end:
            epoch, offset = divmod(position, n)
            if epoch != self._epoch:
                self._epoch, self._perm = epoch, torch.randperm(n, generator=_generator(self.seed, 1, epoch))
            take = min(n - offset, end - position)
            out.append(self.indices[self._perm[offset:offset + take]])
            position += take
        return torch.cat(out).tolist()

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start, self.steps):
            yield self.batch(step)


def split_held_out(num_images: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Deterministic (train, held-out) index split; round(fraction * N) held out (at least 2 when fraction > 0,
    so that mixup always finds a partner among the held-out images)."""
    held = 0 if fraction == 0 else max(2, round(fraction * num_images))
    if held >= num_images - 1:
        raise ValueError(f"cannot hold out {held} of {num_images} images; lower eval_fraction or pass eval_data")
    perm = torch.randperm(num_images, generator=_generator(seed, 4)).tolist()
    return sorted(perm[held:]), sorted(perm[:held])


def regression_metrics(prediction: Tensor, target: Tensor, names: Iterable[str]) -> dict[str, Any]:
    """Per-label R^2 = 1 - SSE / SST and MSE of (N, K) predictions against (N, K) labels.

    R^2 of a label whose variance over the evaluation set is (close to) zero, e.g. because no image had that
    perturbation switched on, is undefined: its value is NaN, ``"undefined"`` maps the label to the reason,
    and a ``UserWarning`` names the labels.

    Returns:
        ``{"r2": {label: float}, "mse": {label: float}, "undefined": {label: reason}}``.
    """
    prediction, target = prediction.double(), target.double()
    n = target.shape[0]
    sse = (prediction - target).pow(2).sum(0)
    sst = (target - target.mean(0)).pow(2).sum(0)
    defined = sst > 1e-12 * n
    r2 = torch.where(defined, 1 - sse / sst.clamp_min(1e-30), torch.full_like(sse, math.nan))
    names = list(names)
    undefined = {name: f"constant over the {n} evaluation images (variance {float(v) / n:.1e}): no image had "
                       "this perturbation on"
                 for name, ok, v in zip(names, defined.tolist(), sst.tolist()) if not ok}
    if undefined:
        warnings.warn(f"per-label R^2 is undefined for {len(undefined)} of {len(names)} labels "
                      f"({', '.join(undefined)}): constant over the {n} evaluation images; evaluate on more "
                      "images (--eval-size, --eval-fraction, --eval-data) or at a larger p", UserWarning, stacklevel=2)
    return {"r2": dict(zip(names, r2.tolist())), "mse": dict(zip(names, (sse / n).tolist())), "undefined": undefined}


def format_r2(r2: dict[str, float | None], digits: int = 2) -> str:
    """``label=value`` pairs, with ``undefined`` in place of NaN or None (how a config.json stores it)."""
    return " ".join(f"{k}={'undefined' if v is None or v != v else f'{float(v):.{digits}f}'}" for k, v in r2.items())


@torch.no_grad()
def evaluate_feature_map(
    feature_map: TapFeatureMap,
    images: Tensor,
    perturbations: Perturbations,
    *,
    p: float,
    seed: int = 12345,
    batch_size: int = 500,
) -> dict[str, Any]:
    """Per-label R^2 and MSE on perturbed held-out images (the same perturbations for a given seed).

    Args:
        feature_map: the map (evaluated in eval mode; its previous mode is restored).
        images: (N, C, H, W) held-out images, uint8 in [0, 255] or float in [-1, 1].
        perturbations: the pipeline whose labels the map regresses.
        p: per-op probability of each perturbation during evaluation.
        seed: seeds the evaluation perturbations, so numbers are comparable across checkpoints.

    Returns:
        ``{"r2": {label: value}, "mse": {label: value}, "undefined": {label: reason}, "mse_mean": float,
        "num_images": N, "p": p}`` (see :func:`regression_metrics` for undefined R^2).

    Raises:
        ValueError: fewer than 2 images (R^2 needs a spread, mixup a partner).
    """
    if images.shape[0] < 2:
        raise ValueError(f"per-label R^2 needs at least 2 held-out images, got {images.shape[0]}")
    was_training = feature_map.training
    feature_map.eval()
    device = next(feature_map.parameters()).device
    preds, targets = [], []
    starts = list(range(0, images.shape[0], batch_size))
    if len(starts) > 1 and images.shape[0] - starts[-1] == 1:
        starts.pop()  # no 1-image chunk: mixup needs a partner, so the last image joins the previous chunk
    for i, end in zip(starts, starts[1:] + [images.shape[0]]):
        x = images[i:end].to(device)
        x = to_model_range(x) if x.dtype == torch.uint8 else x.float()
        xp, labels = perturbations(x, generator=_generator(seed, 2, i), p=p)
        preds.append(feature_map.predict_labels(xp).float().cpu())
        targets.append(labels.cpu())
    feature_map.train(was_training)
    metrics: dict[str, Any] = regression_metrics(torch.cat(preds), torch.cat(targets), perturbations.spec.labels)
    metrics["mse_mean"] = float(sum(metrics["mse"].values()) / len(metrics["mse"]))
    metrics.update(num_images=int(images.shape[0]), p=p)
    return metrics


class _CsvLog:
    """Append rows to a CSV file, writing the header when the file is new."""

    def __init__(self, path: Path, fields: list[str]):
        self.path, self.fields = path, fields

    def drop_after(self, step: int) -> None:
        """Remove rows of steps after ``step``: work a crash lost since the checkpoint, redone on resume."""
        if not self.path.exists():
            return
        with open(self.path, newline="") as fh:
            rows = list(csv.DictReader(fh))
        kept = [row for row in rows if int(row["step"]) <= step]
        if len(kept) < len(rows):
            with open(self.path, "w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=self.fields, extrasaction="ignore")
                writer.writeheader()
                writer.writerows(kept)

    def write(self, row: dict[str, Any]) -> None:
        new = not self.path.exists()
        with open(self.path, "a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=self.fields, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(row)


def _autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def data_fingerprint(dataset: Dataset, source: str, samples: int = 8) -> dict[str, Any]:
    """What identifies a training set across runs: its size and a SHA-256 of a few of its images.

    Args:
        dataset: a Dataset of images (see :func:`mfd_loss.image_sources.open_image_source`).
        source: a description of where the images came from (recorded, not compared).
        samples: how many images, evenly spaced over the index range, are hashed (with dtype and shape).

    Returns:
        ``{"source": str, "num_images": N, "sample_indices": [...], "sample_sha256": hex}``.
    """
    n = len(dataset)
    indices = sorted({round(i * (n - 1) / max(1, samples - 1)) for i in range(min(samples, n))})
    digest = hashlib.sha256()
    for i in indices:
        image = collate_images([dataset[i]]).contiguous().cpu()
        digest.update(f"{image.dtype} {tuple(image.shape)}".encode())
        digest.update(image.flatten().view(torch.uint8).numpy().tobytes())
    return {"source": source, "num_images": n, "sample_indices": indices, "sample_sha256": digest.hexdigest()}


def _describe_source(data: Any) -> str:
    if isinstance(data, (str, os.PathLike)):
        return str(data)
    if isinstance(data, Tensor) or hasattr(data, "shape"):
        return f"{type(data).__name__} of shape {tuple(data.shape)}"
    return type(data).__name__


def _prepare_data(
    data: Any, eval_data: Any, config: TrainConfig, input_range: tuple[float, float] | None, **source_kwargs: Any
) -> tuple[Dataset, list[int], Tensor | None, tuple[int, int, int]]:
    """Open the sources, split off held-out images when needed, check the image shape."""
    dataset = open_image_source(data, split="train", **source_kwargs)
    if len(dataset) < 2:
        raise ValueError(f"need at least 2 training images, got {len(dataset)}")
    if eval_data is None and config.eval_fraction > 0:
        train_idx, held_idx = split_held_out(len(dataset), config.eval_fraction, config.seed)
        held_idx = held_idx[:config.eval_size]
        eval_images = to_model_range(collate_images([dataset[i] for i in held_idx]), input_range)
    else:
        train_idx = list(range(len(dataset)))
        eval_images = None
        if eval_data is not None:
            eval_set = open_image_source(eval_data, split="test", **source_kwargs)
            n = min(len(eval_set), config.eval_size)
            eval_images = to_model_range(collate_images([eval_set[i] for i in range(n)]), input_range)
    probe = to_model_range(collate_images([dataset[i] for i in train_idx[:2]]), input_range)
    shape = tuple(probe.shape[1:])
    if eval_images is not None and tuple(eval_images.shape[1:]) != shape:
        raise ValueError(f"evaluation images are {tuple(eval_images.shape[1:])} but training images are {shape}")
    return dataset, train_idx, eval_images, shape


def _fit_architecture(base: FeatureMapConfig, channels: int, num_labels: int, size: tuple[int, int]) -> FeatureMapConfig:
    """The base architecture for this data: its stage count when the size allows it, else as many as fit."""
    fields = {**base.to_dict(), "num_labels": num_labels, "in_channels": channels, "resolution": size}
    try:
        return FeatureMapConfig(**fields)
    except ValueError:
        return FeatureMapConfig(**{**fields, "num_stages": None})


def train_feature_map(
    data: Any,
    out_dir: str | os.PathLike,
    *,
    config: TrainConfig = TrainConfig(),
    architecture: FeatureMapConfig | None = None,
    eval_data: Any = None,
    input_range: tuple[float, float] | None = None,
    resume: bool = True,
    max_minutes: float | None = None,
    device: str | torch.device | None = None,
    num_workers: int = 0,
    dataset: dict[str, Any] | None = None,
    export_dtype: torch.dtype = torch.float32,
    progress: bool = True,
    source_kwargs: dict[str, Any] | None = None,
) -> tuple[TapFeatureMap, dict[str, Any]]:
    """Train (or resume training) a feature map, then export it.

    Run single-process, or the same code under ``torchrun --nproc-per-node K`` (DDP; gloo on CPU, NCCL on
    CUDA). Writes into out_dir (rank 0 only): ``checkpoint.pt`` (atomically, every ``checkpoint_every``
    steps, on SIGTERM/SIGINT, at ``max_minutes`` and at the end), ``log.csv`` (step, loss, p, images/s; a row
    every 30 s, at each checkpoint and when stopping),
    ``eval.csv`` (per-label R^2 of each evaluation) and, when ``config.steps`` is reached, the exported map
    (``model.safetensors`` + ``config.json``, loadable with ``MFD(pretrained=out_dir)``).

    Args:
        data: training images: ``"cifar10"`` / ``"mnist"`` (project archives), ``"torchvision:NAME"``, a folder
            of images, a ``.npy``/``.npz`` file, an (N, C, H, W) tensor/array, or any ``Dataset`` of images
            (see :func:`mfd_loss.image_sources.open_image_source`). Channels 1, 3 or more; any size >= the
            architecture's minimum; all images one size.
        out_dir: run folder.
        config: the recipe (see :class:`TrainConfig`).
        architecture: feature-map family and width; ``in_channels``, ``num_labels`` and ``resolution`` are
            taken from the data and the spec. Default: VGG16-BN at full width.
        eval_data: held-out images (same forms as ``data``; named sets use their test split); default: a
            ``config.eval_fraction`` share of ``data`` is held out.
        input_range: value range of float data, e.g. (0, 1); uint8 data is [0, 255]. Checked on every batch.
        resume: continue from out_dir/checkpoint.pt when it exists (the recipe must match, except ``steps``, and
            the data must be the same: see :func:`data_fingerprint`). The ramp keeps the length it had when the
            run started, in steps, whatever ``steps`` becomes.
        max_minutes: stop (with a checkpoint) after this much wall-clock time; rerun to resume.
        device: where to train (``"cpu"``, ``"cuda"``; under torchrun each process takes ``cuda:LOCAL_RANK``);
            default: :func:`default_device` (CUDA when available).
        num_workers: DataLoader worker processes (useful for image folders).
        dataset: description stored in ``config.json`` (name, split, size, ...).
        export_dtype: storage dtype of the exported weights.
        progress: show a tqdm bar (rank 0).
        source_kwargs: extra arguments of ``open_image_source`` (``root``, ``download``, ``channels``, ``size``, ...).

    Returns:
        (feature map on ``device``, summary with ``step``, ``finished``, ``stopped_by`` (None, ``"SIGINT"``,
        ``"SIGTERM"`` or ``"max_minutes"``), ``images_seen``, ``train_seconds``, ``metrics``).

    Raises:
        ValueError: empty or mixed-size data, values outside ``input_range``, CUDA asked for but not available,
            a spec that needs RGB for
            non-RGB data, a batch size not divisible by the number of processes, fewer than 2 held-out images,
            or a checkpoint written with a different recipe/architecture or on different data.

    Warns:
        UserWarning: the held-out set is too small for per-label R^2 (fewer than 10 images expected with each
            perturbation on), or an evaluation found labels with undefined R^2.
    """
    device = torch.device(default_device() if device is None else device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but torch.cuda.is_available() is False (no GPU, or a CPU-only "
                         "torch build); use device='cpu' (--device cpu) or install a CUDA build of torch")
    ctx = init_distributed(device)
    out_dir = Path(out_dir)
    source, train_idx, eval_images, (channels, height, width) = _prepare_data(
        data, eval_data, config, input_range, **(source_kwargs or {}))
    fingerprint = data_fingerprint(source, getattr(source, "description", None) or _describe_source(data))
    eval_p = config.p_max if config.eval_p is None else config.eval_p
    if eval_images is not None:
        if eval_images.shape[0] < 2:
            raise ValueError(f"per-label R^2 needs at least 2 held-out images, got {eval_images.shape[0]}; pass more "
                             "eval_data (--eval-data) or set eval_fraction=0 (--eval-fraction 0) to skip evaluation")
        expected = eval_images.shape[0] * eval_p
        if expected < MIN_PERTURBED_PER_OP:
            warnings.warn(f"the held-out set has {eval_images.shape[0]} images: at p = {eval_p:g} about "
                          f"{expected:.1f} of them have each perturbation on, too few for per-label R^2 (want >= "
                          f"{MIN_PERTURBED_PER_OP}); hold out more (eval_size / eval_fraction, --eval-size / "
                          "--eval-fraction) or pass eval_data (--eval-data)", UserWarning, stacklevel=2)
    spec = label_spec(default_spec(channels) if config.spec == "auto" else config.spec)
    if spec.needs_rgb and channels != 3:
        raise ValueError(f"the perturbation spec {list(spec.ops)} has RGB-only ops (hue, saturation) but the images "
                         f"have {channels} channel(s); use spec='auto' or '{default_spec(channels)}'")
    if "mixup" in spec.ops and config.batch_size < 2:
        raise ValueError("the mixup perturbation needs batch_size >= 2 (its partner is another image of the batch)")
    if config.batch_size % ctx.world_size:
        raise ValueError(f"batch_size {config.batch_size} is not divisible by the {ctx.world_size} processes")
    arch = _fit_architecture(architecture or FeatureMapConfig(), channels, spec.num_labels, (height, width))
    if input_range is not None and collate_images([source[train_idx[0]]]).is_floating_point():
        # float data (e.g. latents) was mapped from input_range onto [-1, 1]: record it, MFD applies it at call time
        arch = FeatureMapConfig(**{**arch.to_dict(), "data_range": tuple(input_range)})
    perturbations = Perturbations(spec, p=config.p_max)
    ckpt_path = out_dir / CHECKPOINT_NAME

    torch.manual_seed(_mix(config.seed, 0))
    model = build_feature_map(arch).to(ctx.device).train()
    optimizer = torch.optim.RAdam(model.parameters(), lr=config.lr, weight_decay=0.0)
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=config.precision == "fp16")
    step, train_seconds, last_eval = 0, 0.0, None
    ramp_length = config.ramp_length  # fixed when the run starts: a resume keeps it whatever `steps` becomes
    if resume and ckpt_path.exists():
        state = load_checkpoint(ckpt_path)
        saved_arch = FeatureMapConfig.from_dict(state["architecture"]).to_dict()
        changed = {"architecture"} if saved_arch != arch.to_dict() else set()
        now = asdict(config)
        ramp_length = _checkpoint_ramp_length(state)
        # a checkpoint without ramp_fraction has an absolute ramp_steps as its only ramp setting: any ramp
        # setting resumes it with that ramp, except another explicit ramp_steps
        absolute = "ramp_fraction" not in state["recipe"]
        kept = {"steps", "ramp_fraction", "ramp_steps"} if absolute else {"steps"}
        changed |= {f"recipe.{k}" for k in now if k not in kept and state["recipe"].get(k, now[k]) != now[k]}
        if absolute and config.ramp_steps is not None and config.ramp_steps != ramp_length:
            changed.add("recipe.ramp_steps")
        if changed:
            values = "; ".join(f"{k}: {state['recipe'].get(k[7:])!r} in the checkpoint, {now[k[7:]]!r} now"
                               for k in sorted(changed) if k.startswith("recipe."))
            raise ValueError(f"{ckpt_path} was written with a different {sorted(changed)}" +
                             (f" ({values})" if values else "") +
                             "; use another out_dir, the original settings, or resume=False to start over")
        saved_pipeline = LabelSpec.from_dict(state["label_spec"]).pipeline
        if saved_pipeline != spec.pipeline:
            raise ValueError(f"{ckpt_path} was trained with perturbation pipeline {saved_pipeline} and this mfd-loss "
                             f"implements pipeline {spec.pipeline} (see docs/how-it-works.md); its labels would change "
                             "meaning mid-run: start a new run in another folder (--out) or over this one (--no-resume)")
        saved = state.get("data_fingerprint")
        if saved and (saved["num_images"], saved["sample_sha256"]) != (fingerprint["num_images"],
                                                                         fingerprint["sample_sha256"]):
            raise ValueError(f"{ckpt_path} is a run on other data: {saved['source']} ({saved['num_images']} images), "
                             f"not {fingerprint['source']} ({fingerprint['num_images']} images, other content); "
                             "resume with the original data (--data), or start a new run in another folder (--out) "
                             "or over this one (resume=False, --no-resume)")
        model.load_state_dict(state["model"], strict=True)
        optimizer.load_state_dict(state["optimizer"])
        if "scaler" in state:
            scaler.load_state_dict(state["scaler"])
        step, train_seconds, last_eval = state["step"], state["train_seconds"], state.get("last_eval")
    schedule = replace(config, ramp_steps=ramp_length)  # the p schedule of this run
    net = model
    if ctx.distributed:
        net = torch.nn.parallel.DistributedDataParallel(use_global_batchnorm(model, ctx.device),
                                                        device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
    shard = slice(ctx.rank * config.batch_size // ctx.world_size, (ctx.rank + 1) * config.batch_size // ctx.world_size)
    loader = DataLoader(source, batch_sampler=StepBatchSampler(train_idx, config.batch_size, config.seed, step, config.steps),
                        collate_fn=collate_images, num_workers=num_workers, persistent_workers=False)
    recipe = asdict(config)
    description = {"source": fingerprint["source"], **(dataset or {}), "num_images": len(train_idx),
                   "channels": channels, "resolution": [height, width],
                   "input_range": list(input_range) if input_range else "uint8 [0, 255]"}

    def checkpoint() -> None:
        if ctx.is_main:
            save_checkpoint(ckpt_path, {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                "step": step, "train_seconds": train_seconds, "recipe": recipe, "ramp_length": ramp_length,
                "architecture": arch.to_dict(),
                "label_spec": spec.to_dict(), "dataset": description, "last_eval": last_eval,
                "data_fingerprint": fingerprint,
            })

    train_log = _CsvLog(out_dir / TRAIN_LOG, ["step", "loss", "p", "images_per_second", "train_seconds"])
    eval_log = _CsvLog(out_dir / EVAL_LOG, ["step", "mse_mean"] + [f"r2_{n}" for n in spec.labels])
    if ctx.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        train_log.drop_after(step)
        eval_log.drop_after(step)
    started = last_log = time.monotonic()
    running, running_n, log_images, halt_code = 0.0, 0, 0, 0
    bar = tqdm(total=config.steps, initial=step, disable=not (progress and ctx.is_main), desc="feature map", unit="step")
    with StopRequested() as stop:
        for batch in loader:
            x = to_model_range(batch, input_range).to(ctx.device)
            xp, labels = perturbations(x, generator=_generator(config.seed, 3, step), p=schedule.probability(step))
            for group in optimizer.param_groups:
                group["lr"] = config.learning_rate(step)
            with _autocast(ctx.device, config.precision):
                prediction = net(xp[shard])[-1].flatten(1)
            loss = F.mse_loss(prediction.float(), labels[shard])
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            step += 1
            running, running_n, log_images = running + loss.item(), running_n + 1, log_images + config.batch_size
            bar.update(1)
            out_of_time = max_minutes is not None and (time.monotonic() - started) > 60 * max_minutes
            halt_code = max_over_processes(stop.signum if stop.flag else 1 if out_of_time else 0, ctx.device)
            save_now = step % config.checkpoint_every == 0 or step == config.steps or halt_code
            now = time.monotonic()
            if ctx.is_main and (now - last_log > 30 or save_now):
                row = {"step": step, "loss": running / running_n, "p": schedule.probability(step - 1),
                       "images_per_second": log_images / (now - last_log),
                       "train_seconds": train_seconds + now - started}
                train_log.write(row)
                bar.set_postfix(loss=f"{row['loss']:.4f}", p=f"{row['p']:.3f}")
                running, running_n, log_images, last_log = 0.0, 0, 0, now
            if ctx.is_main and eval_images is not None and (
                    (config.eval_every and step % config.eval_every == 0) or step == config.steps):
                last_eval = evaluate_feature_map(model, eval_images, perturbations, p=eval_p)
                eval_log.write({"step": step, "mse_mean": last_eval["mse_mean"],
                                **{f"r2_{k}": v for k, v in last_eval["r2"].items()}})
                bar.write(f"step {step}: held-out mse {last_eval['mse_mean']:.4f}, R^2 {format_r2(last_eval['r2'])}")
            if save_now:
                train_seconds += time.monotonic() - started
                started = time.monotonic()
                checkpoint()
            if halt_code:
                break
    bar.close()
    finished = step >= config.steps
    stopped_by = None if finished else stop_reason(halt_code)
    summary = {"step": step, "finished": finished, "stopped_by": stopped_by, "images_seen": step * config.batch_size,
               "train_seconds": round(train_seconds, 1), "metrics": last_eval}
    if ctx.distributed:
        dist.barrier()
    if finished and ctx.is_main:
        export_run(out_dir, out_dir, dtype=export_dtype)
    return model.eval(), summary


def fp16_relative_change(feature_map: TapFeatureMap, images: Tensor) -> float:
    """Largest relative change of per-sample MFD values when the weights are stored in float16.

    Compares the map against a copy whose floating tensors went through float16, on pairs made by
    shifting the (N, C, H, W) ``images`` (uint8 or float in [-1, 1]) by one pixel (a small residual).
    """
    from .distance import manifold_feature_distance

    rounded = build_feature_map(feature_map.config)
    rounded.load_state_dict({k: (v.half().float() if v.is_floating_point() else v)
                             for k, v in feature_map.state_dict().items()})
    x = to_model_range(images) if images.dtype == torch.uint8 else images.float()
    y = torch.roll(x, 1, dims=-1)
    with torch.no_grad():
        exact = manifold_feature_distance(feature_map.eval(), x, y, check_values=False)
        approx = manifold_feature_distance(rounded.eval(), x, y, check_values=False)
    return float(((approx - exact).abs() / exact).max())


def export_run(
    run_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    dtype: torch.dtype = torch.float32,
    eval_images: Tensor | None = None,
    eval_name: str | None = None,
    dataset: dict[str, Any] | None = None,
    notes: list[str] | None = None,
) -> dict[str, Any]:
    """Export the model of a run's checkpoint as ``model.safetensors`` + ``config.json``.

    Works on finished and unfinished runs (the recipe records ``steps_done``). The exported
    ``config.json`` carries the dataset, the recipe, the training time and the held-out metrics.

    Args:
        run_dir: folder holding ``checkpoint.pt``.
        out_dir: destination folder (may equal run_dir).
        dtype: storage dtype; with float16 the largest relative change of MFD values caused by the
            rounding is measured (on eval_images, else the packaged CIFAR-10 sample for 32x32 RGB maps)
            and recorded as ``fp16_storage_max_relative_mfd_change``.
        eval_images: (M, C, H, W) held-out images (uint8, or float in [-1, 1]); when given, per-label
            R^2/MSE are computed on all of them (else the run's last evaluation is used).
        eval_name: description of eval_images stored with the metrics (e.g. "cifar10 test, 10000 images").
        dataset: description of the training data; default: the one stored in the checkpoint.
        notes: free-text remarks stored as ``notes`` (rendered in the model card).

    Returns:
        the exported config dict (without schema fields).

    Raises:
        FileNotFoundError: no checkpoint in run_dir.
    """
    state = load_checkpoint(Path(run_dir) / CHECKPOINT_NAME)
    arch = FeatureMapConfig.from_dict(state["architecture"])
    spec = LabelSpec.from_dict(state["label_spec"])
    config = TrainConfig(**state["recipe"])
    model = build_feature_map(arch)
    model.load_state_dict(state["model"], strict=True)
    model.eval()
    metrics = state.get("last_eval")
    if eval_images is not None:
        p = config.p_max if config.eval_p is None else config.eval_p
        metrics = evaluate_feature_map(model, eval_images, Perturbations(spec, p=p), p=p)
    if metrics is not None and eval_name:
        metrics = {**metrics, "images": eval_name}
    step = state["step"]
    recipe = {**asdict(config), "objective": "MSE on the perturbation label vector", "optimizer": "RAdam",
              "weight_decay": 0.0, "ramp_length": _checkpoint_ramp_length(state), "steps_done": step,
              "images_seen": step * config.batch_size,
              "train_seconds": round(state["train_seconds"], 1), "torch": torch.__version__}
    metadata: dict[str, Any] = {"dataset": dataset if dataset is not None else state.get("dataset", {}),
                                "recipe": recipe}
    if metrics is not None:
        metadata["metrics"] = {"held_out": metrics}
    if notes:
        metadata["notes"] = list(notes)
    if dtype == torch.float16 and (eval_images is not None or (arch.in_channels, arch.resolution) == (3, (32, 32))):
        from .datasets import load_sample_images

        sample = eval_images[:256] if eval_images is not None else load_sample_images()[0]
        metadata["fp16_storage_max_relative_mfd_change"] = fp16_relative_change(model, sample)
    save_feature_map(model, out_dir, label_spec=spec, metadata=metadata, dtype=dtype)
    return {"architecture": arch.to_dict(), **metadata}
