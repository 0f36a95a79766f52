"""Degradation perturbations: Gaussian blur, mixup with another image, additive noise.

Definitions: METHOD.md Sec. 3, labels 12-14 (Kim, Cha & Ye 2025, App. B). Applied after the geometric
warp and colour matrix, in the order blur, mixup, noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from ._random import gate, normal, uniform

__all__ = ["DegradationParams", "sample_degradation", "apply_degradation", "gaussian_blur"]

_MAX_SIGMA = 3.0
_MAX_NOISE = 0.5


@dataclass(frozen=True)
class DegradationParams:
    """Per-sample degradation parameters; a switched-off op holds its neutral value (0).

    Attributes:
        blur_sigma: (N,) Gaussian standard deviation in pixels, in (0, 3] when on.
        mixup_lambda: (N,) mixing weight in [0, 0.5].
        partner: (N,) long, index of the other sample mixed in (its perturbed image); never the sample
            itself when N > 1.
        noise_std: (N,) noise level s in [0, 0.5).
        noise: (N, C, H, W) unit-RMS Gaussian noise pattern of each sample.
    """

    blur_sigma: Tensor
    mixup_lambda: Tensor
    partner: Tensor
    noise_std: Tensor
    noise: Tensor

    def labels(self) -> dict[str, Tensor]:
        """Label entries of each op, (N, k) float32."""
        return {
            "blur": self.blur_sigma[:, None],
            "mixup": self.mixup_lambda[:, None],
            "noise": self.noise_std[:, None],
        }

    def to(self, device: torch.device | str) -> "DegradationParams":
        return DegradationParams(*(t.to(device) for t in (self.blur_sigma, self.mixup_lambda, self.partner,
                                                           self.noise_std, self.noise)))


def sample_degradation(
    shape: tuple[int, int, int, int], *, p: Mapping[str, float], generator: torch.Generator | None = None
) -> DegradationParams:
    """Draw degradation parameters for a batch of the given (N, C, H, W) shape.

    Raises:
        ValueError: mixup is enabled (p > 0) and N < 2, since the partner must be another sample.
    """
    n = shape[0]
    if p.get("mixup", 0.0) > 0 and n < 2:
        raise ValueError("mixup needs a batch of at least 2 images (the partner is another sample); "
                         "use a larger batch or set the mixup probability to 0")
    on = {op: gate(n, p.get(op, 0.0), generator) for op in ("blur", "mixup", "noise")}
    sigma = _MAX_SIGMA * (1.0 - uniform(n, 0.0, 1.0, generator))  # (0, 3]: never 0
    lam = 0.5 * (1.0 - (1.0 - uniform(n, 0.0, 1.0, generator)) ** (1.0 / 3.0))  # 0.5 * Beta(1, 3), inverse CDF
    offset = torch.randint(1, max(n, 2), (n,), generator=generator, device=sigma.device)
    partner = (torch.arange(n, device=sigma.device) + offset) % max(n, 1)
    level = uniform(n, 0.0, _MAX_NOISE, generator)
    noise = normal(tuple(shape), generator)
    noise = noise / noise.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt()
    zero = torch.zeros_like(sigma)
    return DegradationParams(
        blur_sigma=torch.where(on["blur"], sigma, zero),
        mixup_lambda=torch.where(on["mixup"], lam, zero),
        partner=partner,
        noise_std=torch.where(on["noise"], level, zero),
        noise=noise,
    )


def gaussian_blur(x: Tensor, sigma: Tensor) -> Tensor:
    """Separable Gaussian blur with a different sigma per sample (reflect padding).

    Args:
        x: (N, C, H, W) float images.
        sigma: (N,) standard deviations in pixels; 0 leaves the sample unchanged (the kernel becomes
            a unit impulse; no 0/0 is ever formed).

    Returns:
        (N, C, H, W) blurred images.
    """
    n, c, h, w = x.shape
    radius = min(math.ceil(3 * _MAX_SIGMA), h - 1, w - 1)
    taps = torch.arange(-radius, radius + 1, device=x.device, dtype=torch.float32)
    safe = sigma.to(x.device, torch.float32).clamp_min(1e-6)[:, None]
    kernel = torch.exp(-0.5 * (taps[None, :] / safe) ** 2)
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (N*C, 2r+1)
    flat = x.float().reshape(1, n * c, h, w)
    flat = F.pad(flat, (radius, radius, radius, radius), mode="reflect")
    flat = F.conv2d(flat, kernel[:, None, None, :], groups=n * c)
    flat = F.conv2d(flat, kernel[:, None, :, None], groups=n * c)
    return flat.reshape(n, c, h, w).to(x.dtype)


def apply_degradation(x: Tensor, params: DegradationParams) -> Tensor:
    """Blur, then mix with the partner's image, then add noise (METHOD.md Sec. 3).

    Mixup uses the batch after the blur on both sides: x_b <- x_b + lambda_b (x_partner(b) - x_b), so the
    partner enters with its own warp, colour transform and blur, never as a clean image.

    Args:
        x: (N, C, H, W) float images (already warped / colour-transformed).
        params: from :func:`sample_degradation` for this shape.

    Returns:
        (N, C, H, W) degraded images, same dtype.
    """
    params = params.to(x.device)
    if bool((params.blur_sigma > 0).any()):
        x = torch.where((params.blur_sigma > 0)[:, None, None, None], gaussian_blur(x, params.blur_sigma), x)
    lam = params.mixup_lambda[:, None, None, None].to(x.dtype)
    x = x + lam * (x[params.partner] - x)
    return x + params.noise_std[:, None, None, None].to(x.dtype) * params.noise.to(x.dtype)
