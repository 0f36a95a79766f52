"""Held-out evaluation of a feature map: per-label R^2 and MSE of its perturbation-label regression."""

from __future__ import annotations

import math
import warnings
from typing import Any, Iterable

import torch
from torch import Tensor

from ..feature_maps import TapFeatureMap
from ..perturbations import Perturbations
from .data import _generator
from .datasets import to_model_range

__all__ = ["regression_metrics", "format_r2", "evaluate_feature_map"]


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
