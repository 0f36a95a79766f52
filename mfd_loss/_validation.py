"""Checks on image tensors shared by the feature maps and the distance (one place, one wording)."""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor

__all__ = ["InputRangeWarning", "check_images", "check_finite_and_range"]


class InputRangeWarning(UserWarning):
    """Inputs look like they are in a different value range than the loss expects."""


def check_images(x: Tensor, *, channels: int, min_size: int, name: str = "input") -> None:
    """Raise a ValueError unless x is a floating (N, C, H, W) batch the feature map can serve.

    Args:
        x: the tensor to check.
        channels: C the feature map takes.
        min_size: smallest H and W the feature map can serve.
        name: how the tensor is called in the message.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4:
        hint = " (add a batch dimension with x.unsqueeze(0))" if x.ndim == 3 else ""
        raise ValueError(f"{name} must be a 4-D (N, C, H, W) tensor, got shape {tuple(x.shape)}{hint}")
    if not x.is_floating_point():
        raise ValueError(
            f"{name} must be a floating-point tensor, got {x.dtype}; convert images with "
            "x.float() / 127.5 - 1 for uint8 data in [0, 255]"
        )
    if x.shape[1] != channels:
        if x.shape[-1] == channels:
            raise ValueError(
                f"{name} has shape {tuple(x.shape)}, which looks channels-last (N, H, W, C); this feature map "
                f"takes (N, C, H, W) with C = {channels}: pass x.permute(0, 3, 1, 2)"
            )
        raise ValueError(f"{name} has {x.shape[1]} channel(s) (shape {tuple(x.shape)}); this feature map "
                         f"takes {channels}-channel images (N, {channels}, H, W)")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (N = 0)")
    h, w = x.shape[-2:]
    if h < min_size or w < min_size:
        raise ValueError(f"{name} is {h}x{w} pixels; this feature map needs at least {min_size}x{min_size} "
                         "(it halves the resolution at each of its pooling stages)")


def check_finite_and_range(x: Tensor, *, expected: tuple[float, float], name: str = "input") -> None:
    """Raise on NaN/Inf; warn (InputRangeWarning) when x clearly uses another convention.

    One device synchronisation. Slight overshoot of ``expected`` (normal for consistency-model
    outputs during training) never warns.

    Raises:
        ValueError: x contains NaN or Inf.
    """
    lo, hi = (float(v) for v in torch.aminmax(x.detach().float()))
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"{name} contains NaN or Inf values; check the model output (e.g. with "
                         "torch.isfinite(x).all()) before computing the loss")
    exp_lo, exp_hi = expected
    span = exp_hi - exp_lo
    if hi > exp_hi + 4 * span and lo >= exp_lo - 0.1 * span:
        warnings.warn(
            f"{name} spans [{lo:.3g}, {hi:.3g}], which looks like 8-bit data in [0, 255], but "
            f"[{exp_lo:g}, {exp_hi:g}] is expected; convert with x / 127.5 - 1 (or x / 255 with normalize=True)",
            InputRangeWarning, stacklevel=3,
        )
    elif exp_lo < 0 and lo >= 0 and hi <= 1.0 and hi - lo > 0.05:
        warnings.warn(
            f"{name} spans [{lo:.3g}, {hi:.3g}], which looks like data in [0, 1], but [{exp_lo:g}, {exp_hi:g}] "
            "is expected; pass normalize=True or convert with x * 2 - 1",
            InputRangeWarning, stacklevel=3,
        )
    elif exp_lo >= 0 and lo < exp_lo - 0.25 * span:
        warnings.warn(
            f"{name} spans [{lo:.3g}, {hi:.3g}], which looks like data in [-1, 1], but normalize=True "
            f"declares [{exp_lo:g}, {exp_hi:g}]; drop normalize=True",
            InputRangeWarning, stacklevel=3,
        )
