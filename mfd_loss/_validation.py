"""Checks on image tensors shared by the feature maps and the distance (one place, one wording).

Two kinds of checks, with different costs:

* **shape checks** (:func:`check_images`): rank, dtype, channels, layout, size. They read only tensor
  metadata, so they cost nothing on the device and never break graph capture; they always run.
* **value checks** (:func:`check_finite_and_range`): NaN/Inf and the value range. They read the data, which is
  one host synchronisation per call on a GPU and a data-dependent branch that ``torch.compile(fullgraph=True)``,
  ``torch.export`` and ``torch.func.vmap`` cannot capture. ``MFD(validate_args=False)`` (or
  ``manifold_feature_distance(..., check_values=False)``) turns them off.
"""

from __future__ import annotations

import math
import os
import sys
import warnings

import torch
from torch import Tensor

__all__ = ["InputRangeWarning", "check_images", "check_finite_and_range", "warn_at_caller"]

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__)) + os.sep


class InputRangeWarning(UserWarning):
    """Inputs look like they are in a different value range than the loss expects."""


def warn_at_caller(message: str, category: type[Warning]) -> None:
    """``warnings.warn`` attributed to the first frame outside mfd-loss and torch: the user's line.

    The stack level is found by walking the frames, so it is right whether the loss was called directly,
    through ``nn.Module.__call__`` (with or without hooks) or through :func:`mfd_loss.tangent_loss`.
    """
    frame, level = sys._getframe(1), 2  # stacklevel 2 is the frame that called this function
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith((_PACKAGE_DIR, _TORCH_DIR)):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)


def check_images(x: Tensor, *, channels: int, min_size: int, name: str = "input") -> None:
    """Raise a ValueError unless x is a floating (N, C, H, W) batch the feature map can serve.

    Reads metadata only (no device synchronisation, safe under graph capture).

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


def check_finite_and_range(x: Tensor, *, expected: tuple[float, float], name: str = "input",
                           normalize: bool = False) -> str | None:
    """Raise on NaN/Inf; return a warning message when x clearly uses another value convention.

    One device synchronisation (``torch.aminmax``). Slight overshoot of ``expected`` (normal for
    consistency-model outputs during training) never counts. The message does not embed the batch's values,
    so Python's default warning filter shows it once per call site; the caller decides whether and where to
    warn (:class:`~mfd_loss.MFD` warns once per instance, at the user's line).

    Args:
        x: the tensor to check.
        expected: (low, high) range the loss takes.
        name: how the tensor is called in the message.
        normalize: the caller declared [0, 1] inputs with ``normalize=True`` (changes the advice given).

    Returns:
        None when the range looks right, else the text of an :class:`InputRangeWarning`.

    Raises:
        ValueError: x contains NaN or Inf.
    """
    lo, hi = (float(v) for v in torch.aminmax(x.detach().float()))
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"{name} contains NaN or Inf values; check the model output (e.g. with "
                         "torch.isfinite(x).all()) before computing the loss")
    exp_lo, exp_hi = expected
    span = exp_hi - exp_lo
    declared = f"[{exp_lo:g}, {exp_hi:g}] is expected"
    if hi > exp_hi + 4 * span and lo >= exp_lo - 0.1 * span:
        fix = ("x / 255 with normalize=True" if normalize else "x / 127.5 - 1 (or x / 255 with normalize=True)"
               if (exp_lo, exp_hi) == (-1.0, 1.0) else f"a rescaling to [{exp_lo:g}, {exp_hi:g}]")
        return f"{name} looks like 8-bit data in [0, 255], but {declared}; convert with {fix}"
    if exp_lo < 0 and lo >= 0 and hi <= 1.0 and hi - lo > 0.05:
        return (f"{name} looks like data in [0, 1], but {declared}; "
                + ("pass normalize=True or convert with x * 2 - 1" if (exp_lo, exp_hi) == (-1.0, 1.0)
                   else f"rescale to [{exp_lo:g}, {exp_hi:g}]"))
    if normalize and lo < exp_lo - 0.25 * span:
        return f"{name} looks like data in [-1, 1], but normalize=True declares [0, 1]; drop normalize=True"
    if hi > exp_hi + span or lo < exp_lo - span:
        return (f"{name} reaches far outside the range the feature map was trained on ({declared}); raw latents "
                "or unscaled data? Scale them as the map's training data were (its config.json records the "
                "training data_range)")
    return None
