"""The Manifold Feature Distance as a function of (feature map, prediction, target).

METHOD.md Sec. 4 (Kim, Cha & Ye 2025, Eq. for d_phi): per sample,

    group form:    d(x, y) = sum_taps sum_channels [ sqrt( sum_{h,w} (phi_lc(x) - phi_lc(y))^2 + eps^2 ) - eps ]
    squared form:  d(x, y) = sum_taps || phi_l(x) - phi_l(y) ||_2^2

with eps = 1e-5, unit weights and no channel normalisation. The group form is a group-L2 (L_{2,1}) norm with
one group per (tap, channel); on 1x1 taps it is an L1 norm. The differences and reductions are computed in
float32 whatever the input dtype, so the gradient at prediction == target is exactly 0 (finite) under
fp16/bf16 and autocast, where eps^2 = 1e-10 would underflow.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._validation import check_finite_and_range, check_images

__all__ = ["DISTANCES", "EPS", "manifold_feature_distance", "reduce"]

DISTANCES = ("group", "squared")
REDUCTIONS = ("none", "mean", "sum")
EPS = 1e-5


def _check_pair(feature_map: nn.Module, prediction: Tensor, target: Tensor, weight: Tensor | None) -> None:
    config = feature_map.config
    for name, x in (("prediction", prediction), ("target", target)):
        check_images(x, channels=config.in_channels, min_size=getattr(feature_map, "min_size", 1), name=name)
    if prediction.shape != target.shape:
        raise ValueError(f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} must have the same shape")
    size = tuple(prediction.shape[-2:])
    if size != tuple(config.resolution):
        h, w = config.resolution
        raise ValueError(
            f"this feature map was trained on {h}x{w} images and inputs are {size[0]}x{size[1]}; features at other "
            f"sizes are out of distribution. Resize first, e.g. torch.nn.functional.interpolate(x, size=({h}, {w}), "
            "mode='bilinear', antialias=True), or train a feature map at your resolution (mfd-loss train)"
        )
    if weight is not None and (not isinstance(weight, Tensor) or weight.shape != prediction.shape[:1]):
        shape = tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__
        raise ValueError(f"weight must be a tensor of shape (N,) = ({prediction.shape[0]},), got {shape}")


def reduce(values: Tensor, reduction: str) -> Tensor:
    """Reduce per-sample values (N,) with ``"none"`` (keep (N,)), ``"mean"`` or ``"sum"`` (scalars)."""
    if reduction == "none":
        return values
    if reduction == "mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def _tap_distance(a: Tensor, b: Tensor, distance: str) -> Tensor:
    diff = (a.float() - b.float()).flatten(2)  # (N, C, H*W) in float32
    if distance == "group":
        return (torch.sqrt(diff.pow(2).sum(-1) + EPS**2) - EPS).sum(-1)
    return diff.pow(2).sum((1, 2))


def manifold_feature_distance(
    feature_map: nn.Module,
    prediction: Tensor,
    target: Tensor,
    *,
    distance: str = "group",
    weight: Tensor | None = None,
    reduction: str = "none",
    check_range: bool = True,
) -> Tensor:
    """MFD between two image batches under a (frozen) feature map.

    The target's features are computed once, without autograd, unless the target itself requires grad.

    Args:
        feature_map: a feature map (e.g. :class:`~mfd_loss.VGGFeatureMap`) in eval mode; must expose
            ``config`` (``in_channels``, ``resolution``, ``input_range``) and optionally ``min_size``.
        prediction: (N, C, H, W) float tensor (fp32/fp16/bf16), values in the map's input range
            ([-1, 1] by default); the gradient is meant for it.
        target: (N, C, H, W) same shape.
        distance: ``"group"`` (default, the authors' group-L2 form) or ``"squared"``.
        weight: optional (N,) per-sample weights multiplied in before the reduction.
        reduction: ``"none"`` -> (N,), ``"mean"`` or ``"sum"`` -> scalar.
        check_range: raise on NaN/Inf and warn about inputs in another range (one device sync).

    Returns:
        float32 tensor of shape (N,) or a scalar; values >= 0, 0 when prediction == target.

    Raises:
        ValueError: wrong rank, channel count (including NHWC layout), size other than the map's
            resolution, shape mismatch, bad weight shape, NaN/Inf, unknown distance or reduction.

    Examples:
        >>> from mfd_loss import VGGFeatureMap, FeatureMapConfig
        >>> fmap = VGGFeatureMap(FeatureMapConfig(arch="vgg11", width=0.25)).eval()
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
        >>> d = manifold_feature_distance(fmap, x, x.flip(-1))
        >>> d.shape, bool((d > 0).all()), manifold_feature_distance(fmap, x, x).abs().max().item()
        (torch.Size([2]), True, 0.0)

    References:
        B. Kim, B. Cha, J. C. Ye, "Align Your Tangent: Training Better Consistency Models via
        Manifold-Aligned Tangents", arXiv:2510.00658, Sec. 4 (the MFD d_phi).
    """
    if distance not in DISTANCES:
        raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    _check_pair(feature_map, prediction, target, weight)
    if check_range:
        expected = tuple(feature_map.config.input_range)
        check_finite_and_range(prediction, expected=expected, name="prediction")
        check_finite_and_range(target, expected=expected, name="target")
    if not torch.is_autocast_enabled(prediction.device.type):
        dtype = next(feature_map.parameters()).dtype
        prediction, target = prediction.to(dtype), target.to(dtype)
    with torch.set_grad_enabled(torch.is_grad_enabled() and target.requires_grad):
        target_taps = feature_map(target)
    prediction_taps = feature_map(prediction)
    values = sum(_tap_distance(a, b, distance) for a, b in zip(prediction_taps, target_taps))
    if weight is not None:
        values = values * weight.to(values)
    return reduce(values, reduction)
