"""The recipe of a feature-map training run: :class:`TrainConfig`, the named :data:`RECIPES`, and defaults.

The recipe is stored in the checkpoint and in the exported ``config.json``; see :mod:`mfd_loss.training.loop`
for how a run uses it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

from ..feature_maps import FeatureMapConfig

__all__ = ["TrainConfig", "RECIPES", "recipe_settings", "default_spec", "default_device"]

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
