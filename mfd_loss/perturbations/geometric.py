"""Geometric perturbations: isotropic scale, rotation, anisotropic scale, sub-pixel translation.

All four are composed into one 3x3 matrix per sample and applied with a single warp
(reflect padding, bicubic resampling on a 2x supersampled grid followed by 2x2 box averaging,
which anti-aliases the minifications this family produces). Definitions: METHOD.md Sec. 3,
labels 0-6 (Kim, Cha & Ye 2025, App. B).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from ._random import gate, normal, uniform

__all__ = ["GeometricParams", "sample_geometric", "apply_geometric"]

_SCALE_STEP = 0.2  # scale factor 2^(0.2 w)
_SHIFT_STEP = 0.125  # shift = w * 0.125 * image size


@dataclass(frozen=True)
class GeometricParams:
    """Per-sample geometric parameters; a switched-off op holds its neutral value (0).

    Attributes:
        scale_w: (N,) isotropic scale exponent w; factor 2^(0.2 w).
        theta: (N,) rotation angle in radians; positive turns the content clockwise on screen
            (the standard rotation matrix in pixel coordinates with x right and y down), so
            theta = pi/2 matches ``torch.rot90(x, -1, (-2, -1))``.
        aniso_w: (N,) anisotropic scale exponent; factors (2^(0.2 w), 2^(-0.2 w)).
        aniso_r: (N,) angle in radians of the anisotropic scaling axes.
        shift: (N, 2) translation (x, y) in units of 0.125 * image width / height.
        active: (N,) bool, True when any geometric op is on for the sample.
    """

    scale_w: Tensor
    theta: Tensor
    aniso_w: Tensor
    aniso_r: Tensor
    shift: Tensor
    active: Tensor

    def labels(self) -> dict[str, Tensor]:
        """Label entries of each op, (N, k) float32."""
        return {
            "scale": self.scale_w[:, None],
            "rotation": torch.stack([torch.cos(self.theta) - 1.0, torch.sin(self.theta)], 1),
            "anisotropic_scale": torch.stack(
                [self.aniso_w * torch.cos(self.aniso_r), self.aniso_w * torch.sin(self.aniso_r)], 1
            ),
            "translation": self.shift,
        }

    def to(self, device: torch.device | str) -> "GeometricParams":
        return GeometricParams(*(t.to(device) for t in (self.scale_w, self.theta, self.aniso_w,
                                                         self.aniso_r, self.shift, self.active)))


def sample_geometric(n: int, *, p: Mapping[str, float], generator: torch.Generator | None = None) -> GeometricParams:
    """Draw geometric parameters for n samples.

    Args:
        n: batch size.
        p: probability that each op is on, keyed by op name; missing ops are off.
        generator: source of randomness; parameters live on its device (CPU when None).

    Returns:
        :class:`GeometricParams` with neutral values where an op is off.
    """
    on = {op: gate(n, p.get(op, 0.0), generator) for op in ("scale", "rotation", "anisotropic_scale", "translation")}
    scale_w = normal(n, generator)
    theta = uniform(n, -math.pi, math.pi, generator)
    aniso_w = normal(n, generator)
    aniso_r = uniform(n, -math.pi, math.pi, generator)
    aniso_rotated = gate(n, 0.5, generator)
    shift = normal((n, 2), generator)
    zero = torch.zeros_like(scale_w)
    return GeometricParams(
        scale_w=torch.where(on["scale"], scale_w, zero),
        theta=torch.where(on["rotation"], theta, zero),
        aniso_w=torch.where(on["anisotropic_scale"], aniso_w, zero),
        aniso_r=torch.where(on["anisotropic_scale"] & aniso_rotated, aniso_r, zero),
        shift=torch.where(on["translation"][:, None], shift, torch.zeros_like(shift)),
        active=on["scale"] | on["rotation"] | on["anisotropic_scale"] | on["translation"],
    )


def _rotation(angle: Tensor) -> Tensor:
    c, s = torch.cos(angle), torch.sin(angle)
    return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)


def content_matrix(params: GeometricParams, height: int, width: int) -> Tensor:
    """(N, 3, 3) matrix mapping source pixel positions to destination positions.

    Coordinates are in pixels, centred on the image centre (x right, y down). The composition is
    translate . rotate . anisotropic-scale . isotropic-scale.
    """
    n = params.scale_w.shape[0]
    dtype, device = torch.float32, params.scale_w.device
    iso = torch.pow(2.0, _SCALE_STEP * params.scale_w)
    a = torch.pow(2.0, _SCALE_STEP * params.aniso_w)
    axes = _rotation(params.aniso_r)
    diag = torch.diag_embed(torch.stack([a, 1.0 / a], -1))
    linear = _rotation(params.theta) @ (axes @ diag @ axes.transpose(-1, -2)) * iso[:, None, None]
    m = torch.eye(3, dtype=dtype, device=device).repeat(n, 1, 1)
    m[:, :2, :2] = linear
    m[:, 0, 2] = params.shift[:, 0] * _SHIFT_STEP * width
    m[:, 1, 2] = params.shift[:, 1] * _SHIFT_STEP * height
    return m


def apply_geometric(x: Tensor, params: GeometricParams) -> Tensor:
    """Warp each image by its composed geometric transform.

    Args:
        x: (N, C, H, W) float images, any range.
        params: from :func:`sample_geometric` (moved to x's device here).

    Returns:
        (N, C, H, W) warped images, same dtype; samples with no geometric op on are returned unchanged.
    """
    params = params.to(x.device)
    if not bool(params.active.any()):
        return x
    n, _, h, w = x.shape
    m = content_matrix(params, h, w)
    # grid_sample wants destination -> source in normalised coordinates: N^-1 M^-1 N, N = diag(w/2, h/2).
    to_pixels = torch.diag(torch.tensor([w / 2.0, h / 2.0, 1.0], device=x.device))
    to_unit = torch.diag(torch.tensor([2.0 / w, 2.0 / h, 1.0], device=x.device))
    theta = (to_unit @ torch.linalg.inv(m) @ to_pixels)[:, :2, :]
    grid = F.affine_grid(theta, [n, 1, 2 * h, 2 * w], align_corners=False)
    warped = F.grid_sample(x.float(), grid, mode="bicubic", padding_mode="reflection", align_corners=False)
    warped = F.avg_pool2d(warped, 2).to(x.dtype)
    return torch.where(params.active[:, None, None, None], warped, x)
