"""The Manifold Feature Distance as a function of (feature map, prediction, target).

METHOD.md Sec. 4 (Kim, Cha & Ye 2025, Eq. for d_phi): per sample,

    group form:    d(x, y) = sum_taps sum_channels [ sqrt( sum_{h,w} (phi_lc(x) - phi_lc(y))^2 + eps^2 ) - eps ]
    squared form:  d(x, y) = sum_taps || phi_l(x) - phi_l(y) ||_2^2

with eps = 1e-5, unit weights and no channel normalisation. The group form is a group-L2 (L_{2,1}) norm with
one group per (tap, channel); on 1x1 taps it is an L1 norm. The differences and reductions are computed in
float32 (float64 for a float64 map) whatever the input dtype, so the gradient at prediction == target is exactly 0
(finite) under fp16/bf16 and autocast, where eps^2 = 1e-10 would underflow.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._validation import InputRangeWarning, check_finite_and_range, check_images, warn_at_caller

__all__ = ["DISTANCES", "RESIZE_MODES", "EPS", "manifold_feature_distance", "reduce"]

DISTANCES = ("group", "squared")
REDUCTIONS = ("none", "mean", "sum")
EPS = 1e-5


RESIZE_MODES = (None, "antialias", "tiles")


def check_pair(feature_map: nn.Module, prediction: Tensor, target: Tensor, weight: Tensor | None,
               resize: str | None) -> None:
    """The shape, device and weight checks of a call (metadata only: no device synchronisation)."""
    config = feature_map.config
    min_size = 1  # without resize the size must be the map's own (checked below, with what to do); with it, any
    for name, x in (("prediction", prediction), ("target", target)):
        check_images(x, channels=config.in_channels, min_size=min_size, name=name)
    if prediction.shape != target.shape:
        raise ValueError(f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} must have the same shape")
    if prediction.device != target.device:
        raise ValueError(f"prediction is on {prediction.device} but target is on {target.device}; move both to one "
                         "device")
    size, (h, w) = tuple(prediction.shape[-2:]), config.resolution
    if size != (h, w):
        if resize is None:
            raise ValueError(
                f"this feature map was trained on {h}x{w} images and inputs are {size[0]}x{size[1]}; features at "
                f"other sizes are out of distribution. {_pad_hint(size, (h, w))}Opt in to serving other sizes with "
                f"resize='tiles' (the map applied to non-overlapping {h}x{w} tiles, recommended when the size is a "
                f"multiple of {h}x{w}) or resize='antialias' (inputs resized to {h}x{w}; any size), see docs/api.md, "
                "or train a feature map at your resolution (mfd-loss train)"
            )
        if resize == "tiles" and (size[0] % h or size[1] % w):
            raise ValueError(f"resize='tiles' needs a size that is a multiple of the map's {h}x{w}, got "
                             f"{size[0]}x{size[1]}; crop or pad to a multiple, or use resize='antialias'")
    if weight is not None and (not isinstance(weight, Tensor) or weight.shape != prediction.shape[:1]):
        shape = tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__
        raise ValueError(f"weight must be a tensor of shape (N,) = ({prediction.shape[0]},), got {shape}")
    parameter = next(feature_map.parameters(), None)
    if parameter is not None and parameter.device != prediction.device:
        raise ValueError(f"the feature map is on {parameter.device} but the inputs are on {prediction.device}; move "
                         f"the map with feature_map.to({str(prediction.device)!r}) (the MFD module does this by "
                         "itself on its first call)")


def _pad_hint(size: tuple[int, int], resolution: tuple[int, int]) -> str:
    """For inputs smaller than the map: the exact padding call that brings them to its size."""
    (height, width), (h, w) = size, resolution
    if height > h or width > w:
        return ""
    top, left = (h - height) // 2, (w - width) // 2
    pad = (left, w - width - left, top, h - height - top)
    return (f"Smaller images: pad them to {h}x{w} with their background, as the map's training images were, e.g. "
            f"torch.nn.functional.pad(x, {pad}, value=-1) for a black background in [-1, 1] (the packaged 'mnist' "
            f"map was trained on 28x28 digits padded so). ")


def _to_resolution(x: Tensor, resolution: tuple[int, int], resize: str | None) -> Tensor:
    """x at the map's resolution: unchanged, resized (antialiased bilinear), or cut into (N * T) tiles."""
    if tuple(x.shape[-2:]) == resolution or resize is None:
        return x
    if resize == "antialias":
        out = F.interpolate(x.float(), size=resolution, mode="bilinear", align_corners=False, antialias=True)
        return out.to(x.dtype)
    n, c, height, width = x.shape
    h, w = resolution
    tiles = x.reshape(n, c, height // h, h, width // w, w).permute(0, 2, 4, 1, 3, 5)
    return tiles.reshape(-1, c, h, w)


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
    dtype = torch.float64 if a.dtype == torch.float64 else torch.float32  # half precision is reduced in float32
    diff = (a.to(dtype) - b.to(dtype)).flatten(2)  # (N, C, H*W)
    if distance == "group":
        return (torch.sqrt(diff.pow(2).sum(-1) + EPS**2) - EPS).sum(-1)
    return diff.pow(2).sum((1, 2))


def _in_float64(feature_map: nn.Module):
    """The map applied with float64 copies of its weights (made per call; the map itself is never converted)."""
    tensors = {name: t.double() if t.is_floating_point() else t
               for name, t in (*feature_map.named_parameters(), *feature_map.named_buffers())}
    return lambda x: torch.func.functional_call(feature_map, tensors, (x,))


def manifold_feature_distance(
    feature_map: nn.Module,
    prediction: Tensor,
    target: Tensor,
    *,
    distance: str = "group",
    weight: Tensor | None = None,
    reduction: str = "none",
    resize: str | None = None,
    check_values: bool = True,
) -> Tensor:
    """MFD between two image batches under a (frozen) feature map.

    The target's features are computed once, without autograd, unless the target itself requires grad.
    The feature map must be on the inputs' device (:class:`~mfd_loss.MFD` moves its map there by itself).

    Args:
        feature_map: a feature map (e.g. :class:`~mfd_loss.VGGFeatureMap`) in eval mode; must expose
            ``config`` (``in_channels``, ``resolution``, ``input_range``) and optionally ``min_size``.
        prediction: (N, C, H, W) float tensor (fp32/fp16/bf16), values in the map's input range
            ([-1, 1] by default); the gradient is meant for it.
        target: (N, C, H, W) same shape.
        distance: ``"group"`` (default, the authors' group-L2 form) or ``"squared"``.
        weight: optional (N,) per-sample weights multiplied in before the reduction.
        reduction: ``"none"`` -> (N,), ``"mean"`` or ``"sum"`` -> scalar.
        resize: inputs whose size differs from the map's ``config.resolution``: None (default) raises;
            ``"tiles"`` cuts both into non-overlapping tiles of the map's size (H and W must be multiples of it)
            and averages the tiles' distances (recommended: it kept the map's tangent alignment at 64 and 128 px,
            see ``benchmarks/results/resolution-cpu.md``); ``"antialias"`` resizes both to the map's resolution
            (bilinear, antialiased; any size, but blind to detail finer than the map's resolution).
        check_values: raise on NaN/Inf and warn (:class:`~mfd_loss.InputRangeWarning`) about inputs clearly in
            another range than ``config.input_range``. Costs one host synchronisation and prevents
            ``torch.export`` and ``torch.func.vmap`` from capturing the call; False skips it (shape checks always
            run). Skipped while ``torch.compile`` traces the call (``torch.compiler.is_compiling()``). Under
            Python's default warning filter the warning shows once per call site (its text does not depend on the
            batch).

    Returns:
        float32 tensor of shape (N,) or a scalar (float64 for float64 inputs, computed in float64 throughout, e.g.
        for torch.autograd.gradcheck); values >= 0, 0 when prediction == target.

    Raises:
        ValueError: wrong rank, channel count (including NHWC layout), size other than the map's
            resolution (without ``resize``), shape mismatch, bad weight shape, NaN/Inf, inputs and map on
            different devices, unknown distance, reduction or resize mode.

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
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
    check_pair(feature_map, prediction, target, weight, resize)
    if check_values and not torch.compiler.is_compiling():  # data-dependent: skipped under torch.compile
        expected = tuple(feature_map.config.input_range)
        messages = [check_finite_and_range(x, expected=expected, name=name)
                    for name, x in (("prediction", prediction), ("target", target))]
        message = next((m for m in messages if m is not None), None)
        if message is not None:
            warn_at_caller(message, InputRangeWarning)
    n, resolution = prediction.shape[0], tuple(feature_map.config.resolution)
    prediction, target = _to_resolution(prediction, resolution, resize), _to_resolution(target, resolution, resize)
    network = feature_map
    if prediction.device.type == "meta" or not torch.is_autocast_enabled(prediction.device.type):
        dtype = next(feature_map.parameters()).dtype
        if prediction.dtype == target.dtype == torch.float64 and dtype != torch.float64:
            network = _in_float64(feature_map)  # float64 end to end (torch.autograd.gradcheck)
        else:
            prediction, target = prediction.to(dtype), target.to(dtype)
    with torch.set_grad_enabled(torch.is_grad_enabled() and target.requires_grad):
        target_taps = network(target)
    prediction_taps = network(prediction)
    values = sum(_tap_distance(a, b, distance) for a, b in zip(prediction_taps, target_taps))
    if values.shape[0] != n:  # resize="tiles": the mean over each sample's tiles
        values = values.view(n, -1).mean(1)
    if weight is not None:
        values = values * weight.to(values)
    return reduce(values, reduction)
