"""Random draws shared by the samplers: all from an explicit generator, on that generator's device."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["gate", "uniform", "normal"]


def _device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def uniform(n: int, low: float, high: float, generator: torch.Generator | None) -> Tensor:
    """(n,) float32 samples from U[low, high)."""
    u = torch.rand(n, generator=generator, device=_device(generator))
    return low + (high - low) * u


def normal(shape: int | tuple[int, ...], generator: torch.Generator | None) -> Tensor:
    """float32 standard normal samples."""
    shape = (shape,) if isinstance(shape, int) else shape
    return torch.randn(shape, generator=generator, device=_device(generator))


def gate(n: int, p: float, generator: torch.Generator | None) -> Tensor:
    """(n,) bool, each True with probability p. Always consumes n draws, whatever p is,
    so the random stream (and so every other parameter) does not depend on p."""
    if not 0.0 <= p <= 1.0 or math.isnan(p):
        raise ValueError(f"a perturbation probability must lie in [0, 1], got {p}")
    return torch.rand(n, generator=generator, device=_device(generator)) < p
