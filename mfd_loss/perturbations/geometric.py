"""Geometric perturbations: isotropic scale, rotation, anisotropic scale, sub-pixel translation.

All four are composed into one 3x3 matrix per sample (scale, then rotation, then anisotropic scale along
axes fixed in the output frame, then translation) and applied with a single warp: reflect padding, 2x
symlet upsampling, bilinear sampling and the matching 2x downsampling (:mod:`.resampling`), which is exact
at the identity and anti-aliases the zoom-outs and rotations this family produces. Definitions: METHOD.md Sec. 3,
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
from .resampling import downsample2x, filter_delay, reflect_pad, symlet_length, upsample2x

__all__ = ["GeometricParams", "sample_geometric", "apply_geometric"]

_SCALE_STEP = 0.2  # scale factor 2^(0.2 w)
_SHIFT_STEP = 0.125  # shift = w * 0.125 * image size
_FILTER_MARGIN = 4  # extra padding (pixels) for the support of the 12-tap resampling filter


@dataclass(frozen=True)
class GeometricParams:
    """Per-sample geometric parameters; a switched-off op holds its neutral value (0).

    Attributes:
        scale_w: (N,) isotropic scale exponent w; factor 2^(0.2 w).
        theta: (N,) rotation angle in radians; positive turns the content counter-clockwise on screen
            (the authors' sign): theta = pi/2 turns it the way ``torch.rot90(x, 1, (-2, -1))`` does, though
            not pixel for pixel (the anti-aliased resampler low-passes a quarter turn).
        aniso_w: (N,) anisotropic scale exponent; factors (2^(0.2 w), 2^(-0.2 w)).
        aniso_r: (N,) angle in radians of the anisotropic scaling axes, fixed in the output frame (same sign
            as ``theta``).
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
    """(N, 2, 2) rotation in pixel coordinates (x right, y down) with the authors' sign: positive angles
    turn the content counter-clockwise on screen, the way ``torch.rot90(x, 1, (-2, -1))`` does."""
    c, s = torch.cos(angle), torch.sin(angle)
    return torch.stack([torch.stack([c, s], -1), torch.stack([-s, c], -1)], -2)


def content_matrix(params: GeometricParams, height: int, width: int) -> Tensor:
    """(N, 3, 3) float64 matrix mapping source pixel positions to destination positions.

    Coordinates are in pixels, centred on the image centre (x right, y down). The content is scaled,
    then rotated, then stretched along axes fixed in the output frame, then translated (METHOD.md Sec. 3):
    M = translate . anisotropic-scale . rotate . isotropic-scale.
    """
    n = params.scale_w.shape[0]
    p = [t.double() for t in (params.scale_w, params.theta, params.aniso_w, params.aniso_r, params.shift)]
    scale_w, theta, aniso_w, aniso_r, shift = p
    iso = torch.pow(2.0, _SCALE_STEP * scale_w)
    a = torch.pow(2.0, _SCALE_STEP * aniso_w)
    axes = _rotation(aniso_r)
    stretch = axes @ torch.diag_embed(torch.stack([a, 1.0 / a], -1)) @ axes.transpose(-1, -2)
    linear = stretch @ _rotation(theta) * iso[:, None, None]
    m = torch.eye(3, dtype=torch.float64, device=scale_w.device).repeat(n, 1, 1)
    m[:, :2, :2] = linear
    m[:, 0, 2] = shift[:, 0] * _SHIFT_STEP * width
    m[:, 1, 2] = shift[:, 1] * _SHIFT_STEP * height
    return m


def _footprint(inverse: Tensor, height: int, width: int) -> Tensor:
    """(N, 2, 2) [[x_min, x_max], [y_min, y_max]] of the source positions the warp reads, in pixels
    centred on the image centre.

    The downsampling filter reads the warped 2x grid up to ``_FILTER_MARGIN`` pixels beyond the output
    frame, so the frame is widened by that much before it is mapped back to the source.
    """
    ex, ey = (width - 1) / 2.0 + _FILTER_MARGIN, (height - 1) / 2.0 + _FILTER_MARGIN
    corners = torch.tensor([[-ex, -ey, 1.0], [ex, -ey, 1.0], [-ex, ey, 1.0], [ex, ey, 1.0]],
                           dtype=inverse.dtype, device=inverse.device)
    src = torch.einsum("nij,kj->nik", inverse, corners)[:, :2]  # (N, 2, 4)
    return torch.stack([src.amin(-1), src.amax(-1)], -1)


def warp(x: Tensor, matrix: Tensor) -> Tensor:
    """Warp (N, C, H, W) float images by per-sample (N, 3, 3) content matrices (see :func:`content_matrix`).

    Reflect padding (edge pixel not repeated), 2x symlet upsampling, bilinear sampling, matching 2x
    downsampling (:mod:`~mfd_loss.perturbations.resampling`): exact at the identity and for integer-pixel
    translations, anti-aliased for zoom-outs and rotations. Only each sample's source footprint (plus the
    filters' support) is upsampled. Returns float32 (N, C, H, W).
    """
    n, c, h, w = x.shape
    inverse = torch.linalg.inv(matrix.double())
    centre = torch.tensor([(w - 1) / 2.0, (h - 1) / 2.0], dtype=torch.float64, device=x.device)
    box = _footprint(inverse, h, w) + centre[None, :, None]  # pixel indices of the unpadded image
    lo = torch.floor(box[..., 0]).long() - _FILTER_MARGIN  # (N, 2) window origin (x, y)
    size = (torch.ceil(box[..., 1]).long() + _FILTER_MARGIN - lo + 1).amax(0)  # (2,) window (width, height)
    extent = torch.cat([lo, lo + size[None] - 1]).cpu()
    pad = max(0, -int(extent[:, 0].min()), -int(extent[:, 1].min()),
              int(extent[:, 0].max()) - (w - 1), int(extent[:, 1].max()) - (h - 1))
    padded = reflect_pad(x.float(), pad)
    sw, sh = int(size[0]), int(size[1])
    cols = (lo[:, 0, None] + pad + torch.arange(sw, device=x.device))[:, None, :]
    rows = (lo[:, 1, None] + pad + torch.arange(sh, device=x.device))[:, :, None]
    window = padded[torch.arange(n, device=x.device)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)
    up = upsample2x(window)
    uh, uw = up.shape[-2:]
    delay = filter_delay()
    # Only the part of the warped 2x grid that the downsampling of the output frame reads is sampled:
    # (2H + L - 2) x (2W + L - 2) points; point m holds output pixel position (m - delay) / 2, centred.
    length = symlet_length()
    ys = (torch.arange(2 * h + length - 2, dtype=torch.float64, device=x.device) - delay) / 2 - (h - 1) / 2.0
    xs = (torch.arange(2 * w + length - 2, dtype=torch.float64, device=x.device) - delay) / 2 - (w - 1) / 2.0
    coeff = inverse[:, :2, :, None, None]
    src_x = coeff[:, 0, 0] * xs + coeff[:, 0, 1] * ys[:, None] + coeff[:, 0, 2]
    src_y = coeff[:, 1, 0] * xs + coeff[:, 1, 1] * ys[:, None] + coeff[:, 1, 2]
    # source positions -> indices of the upsampled window -> grid_sample's normalised coordinates
    ix = 2 * (src_x + (w - 1) / 2.0 - lo[:, 0, None, None]) + delay
    iy = 2 * (src_y + (h - 1) / 2.0 - lo[:, 1, None, None]) + delay
    grid = torch.stack([(2 * ix + 1) / uw - 1, (2 * iy + 1) / uh - 1], -1).float()
    warped = F.grid_sample(up, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    return downsample2x(warped)


def apply_geometric(x: Tensor, params: GeometricParams) -> Tensor:
    """Warp each image by its composed geometric transform (:func:`warp` of :func:`content_matrix`).

    Args:
        x: (N, C, H, W) float images, any range.
        params: from :func:`sample_geometric` (moved to x's device here).

    Returns:
        (N, C, H, W) warped images, same dtype; samples with no geometric op on are returned unchanged,
        and a switched-on op with neutral parameters returns its input to float rounding (~1e-6).
    """
    params = params.to(x.device)
    index = params.active.nonzero().flatten()
    if index.numel() == 0:
        return x
    sub = GeometricParams(*(t[index] for t in (params.scale_w, params.theta, params.aniso_w, params.aniso_r,
                                                 params.shift, params.active)))
    warped = warp(x[index], content_matrix(sub, *x.shape[-2:]))
    return x.index_copy(0, index, warped.to(x.dtype))
