"""Colour perturbations: brightness, contrast, hue rotation, saturation.

The four ops are composed into one affine colour matrix per sample, applied as
x <- A x + b on every pixel. Definitions: METHOD.md Sec. 3, labels 7-11 (Kim, Cha & Ye 2025, App. B).
Images are in [-1, 1], so "grey" is the line r = g = b through the origin; hue rotates about it and
saturation scales the distance from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import torch
from torch import Tensor

from ._random import gate, normal, uniform

__all__ = ["ColourParams", "sample_colour", "apply_colour"]

_BRIGHTNESS_STEP = 0.2  # add 0.2 w
_CONTRAST_STEP = 0.5  # factor 2^(0.5 w)


@dataclass(frozen=True)
class ColourParams:
    """Per-sample colour parameters; a switched-off op holds its neutral value (0).

    Attributes:
        brightness_w: (N,) offset 0.2 w added to every channel.
        contrast_w: (N,) contrast factor 2^(0.5 w); the image is scaled about 0, the mid-grey of [-1, 1].
        hue_theta: (N,) hue rotation angle in radians about the grey axis.
        saturation_w: (N,) chroma factor 2^w.
        active: (N,) bool, True when any colour op is on for the sample.
    """

    brightness_w: Tensor
    contrast_w: Tensor
    hue_theta: Tensor
    saturation_w: Tensor
    active: Tensor

    def labels(self) -> dict[str, Tensor]:
        """Label entries of each op, (N, k) float32."""
        return {
            "brightness": self.brightness_w[:, None],
            "contrast": self.contrast_w[:, None],
            "hue": torch.stack([torch.cos(self.hue_theta) - 1.0, torch.sin(self.hue_theta)], 1),
            "saturation": self.saturation_w[:, None],
        }

    def to(self, device: torch.device | str) -> "ColourParams":
        return ColourParams(*(t.to(device) for t in (self.brightness_w, self.contrast_w, self.hue_theta,
                                                      self.saturation_w, self.active)))


def sample_colour(n: int, *, p: Mapping[str, float], generator: torch.Generator | None = None) -> ColourParams:
    """Draw colour parameters for n samples (see :func:`~mfd_loss.perturbations.sample_geometric`)."""
    on = {op: gate(n, p.get(op, 0.0), generator) for op in ("brightness", "contrast", "hue", "saturation")}
    brightness = normal(n, generator)
    contrast = normal(n, generator)
    hue = uniform(n, -math.pi, math.pi, generator)
    saturation = normal(n, generator)
    zero = torch.zeros_like(brightness)
    return ColourParams(
        brightness_w=torch.where(on["brightness"], brightness, zero),
        contrast_w=torch.where(on["contrast"], contrast, zero),
        hue_theta=torch.where(on["hue"], hue, zero),
        saturation_w=torch.where(on["saturation"], saturation, zero),
        active=on["brightness"] | on["contrast"] | on["hue"] | on["saturation"],
    )


def colour_matrix(params: ColourParams, channels: int) -> Tensor:
    """(N, C+1, C+1) homogeneous matrix: saturation . hue . contrast . brightness (METHOD.md Sec. 3).

    Contrast scales about 0 (mid-grey of [-1, 1]); hue rotates about the luma axis (1, 1, 1)/sqrt(3)
    through 0 (Rodrigues' formula); saturation scales the component orthogonal to that axis.

    Args:
        params: colour parameters.
        channels: C; hue and saturation need C == 3.
    """
    n, device = params.brightness_w.shape[0], params.brightness_w.device
    eye = torch.eye(channels + 1, device=device).repeat(n, 1, 1)
    offset = _BRIGHTNESS_STEP * params.brightness_w
    bright = eye.clone()
    bright[:, :channels, channels] = offset[:, None]
    c = torch.pow(2.0, _CONTRAST_STEP * params.contrast_w)
    contrast = eye.clone()
    contrast[:, :channels, :channels] *= c[:, None, None]
    m = contrast @ bright
    if channels == 3:
        v = torch.full((3, 1), 1.0 / math.sqrt(3.0), device=device)
        grey = v @ v.T  # projector onto the grey axis
        cross = torch.tensor([[0.0, -1.0, 1.0], [1.0, 0.0, -1.0], [-1.0, 1.0, 0.0]], device=device) / math.sqrt(3.0)
        cos, sin = torch.cos(params.hue_theta)[:, None, None], torch.sin(params.hue_theta)[:, None, None]
        hue = eye.clone()
        hue[:, :3, :3] = grey + cos * (torch.eye(3, device=device) - grey) + sin * cross  # Rodrigues' formula
        s = torch.pow(2.0, params.saturation_w)[:, None, None]
        sat = eye.clone()
        sat[:, :3, :3] = grey + s * (torch.eye(3, device=device) - grey)
        m = sat @ hue @ m
    return m


def apply_colour(x: Tensor, params: ColourParams) -> Tensor:
    """Apply each sample's composed colour transform.

    Args:
        x: (N, C, H, W) float images in [-1, 1].
        params: from :func:`sample_colour`.

    Returns:
        (N, C, H, W) images, same dtype; samples with no colour op on are returned unchanged.

    Raises:
        ValueError: hue or saturation is on for some sample and C != 3.
    """
    params = params.to(x.device)
    if not bool(params.active.any()):
        return x
    channels = x.shape[1]
    if channels != 3 and bool(((params.hue_theta != 0) | (params.saturation_w != 0)).any()):
        raise ValueError(
            f"hue and saturation perturbations need 3-channel RGB images, got {channels} channel(s); "
            "use a preset without them (e.g. 'geometric+degradation') or brightness/contrast only"
        )
    xf = x.float()
    m = colour_matrix(params, channels)
    out = torch.einsum("nij,njhw->nihw", m[:, :channels, :channels], xf) + m[:, :channels, channels, None, None]
    return torch.where(params.active[:, None, None, None], out.to(x.dtype), x)
