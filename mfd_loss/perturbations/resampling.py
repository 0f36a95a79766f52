"""Identity-exact, anti-aliased resampling for the geometric warp (METHOD.md Sec. 3, "Resampling").

The warp runs on a 2x supersampled copy of the (reflect-padded) image:

    pad (reflect) -> upsample 2x -> sample bilinearly at the warped positions -> downsample 2x -> crop

Up- and downsampling use the low-pass filter h of an orthogonal wavelet (a symlet): upsampling is the
transposed strided convolution with sqrt(2) h, downsampling the strided convolution with h / sqrt(2).
Orthogonality, sum_n h[n] h[n + 2k] = delta_k, makes ``downsample(upsample(x)) == x`` exactly (to float
rounding), so a warp with neutral parameters, or an integer-pixel translation (an even shift on the 2x
grid), returns its input. The 2x grid holds content up to twice the original Nyquist frequency, so
zoom-outs down to a factor of 1/2 and rotations (which move the spectrum's corners past Nyquist) are
low-passed by the downsampling filter instead of aliasing.

The symlet is built here from first principles (Daubechies' spectral factorisation, choosing the roots
that make the phase most nearly linear): I. Daubechies, *Ten Lectures on Wavelets*, SIAM 1992, Sec. 6.1
and 8.1.
"""

from __future__ import annotations

import functools
import itertools
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["symlet_lowpass", "upsample2x", "downsample2x", "reflect_pad"]

#: Vanishing moments of the symlet used by the warp (12 taps).
SYMLET_ORDER = 6


@functools.lru_cache(maxsize=None)
def symlet_lowpass(order: int = SYMLET_ORDER) -> tuple[float, ...]:
    """Low-pass filter of the least-asymmetric orthogonal Daubechies wavelet with ``order`` vanishing moments.

    Returns:
        2 * order coefficients h with sum(h) = sqrt(2) and sum(h[n] h[n + 2k]) = delta_k, in the orientation
        whose energy comes first (the smaller group delay). For order 6 that is the authors' orientation,
        first taps (0.01540, 0.00349, -0.11799, -0.04831, 0.49105, 0.78764, ...) (METHOD.md Sec. 3; the
        ``dec_lo`` of PyWavelets' ``sym6``). Its time reverse is exact at the identity too, but turns every
        scale, rotation and stretch into the authors' warp conjugated by a 180-degree turn of the image
        (perturbation pipeline 2 used it).

    Raises:
        ValueError: order < 1.

    References:
        I. Daubechies, *Ten Lectures on Wavelets*, SIAM 1992: |H(w)|^2 = 2 cos^(2p)(w/2) P(sin^2(w/2)) with
        P(y) = sum_{k<p} C(p-1+k, k) y^k (Sec. 6.1); the symlet keeps, of each reciprocal root pair of P, the
        member that makes the phase closest to linear (Sec. 8.1).
    """
    if order < 1:
        raise ValueError(f"order must be >= 1, got {order}")
    p = order
    coeffs = [math.comb(p - 1 + k, k) for k in range(p)]  # P(y), increasing powers
    y_roots = np.roots(coeffs[::-1]) if p > 1 else np.array([])
    # each root y of P gives z + 1/z = 2 - 4y; a real y or a conjugate pair is one binary choice
    groups = [y for y in y_roots if abs(y.imag) < 1e-12 or y.imag > 0]
    best, best_err = None, math.inf
    omega = np.linspace(0.0, 0.9 * math.pi, 256)
    for choice in itertools.product((0, 1), repeat=len(groups)):
        zeros: list[complex] = [-1.0] * p
        for y, pick in zip(groups, choice):
            z = np.roots([1.0, -(2.0 - 4.0 * y), 1.0])[pick]
            zeros += [z.real] if abs(y.imag) < 1e-12 else [z, np.conj(z)]
        h = np.real(np.poly(zeros))
        h = h * (math.sqrt(2.0) / h.sum())
        phase = np.unwrap(np.angle(np.polyval(h[::-1], np.exp(-1j * omega))))
        slope = np.polyfit(omega, phase, 1)
        err = float(np.abs(phase - np.polyval(slope, omega)).max())
        if err < best_err - 1e-12:
            best, best_err = h, err
    # a filter and its time reverse are equally linear in phase; keep the one whose energy comes first
    centre = lambda taps: float(np.sum(np.arange(taps.size) * taps**2))  # noqa: E731
    if centre(best[::-1]) < centre(best):
        best = best[::-1]
    return tuple(float(v) for v in best)


def symlet_length() -> int:
    """L, the number of taps of the resampling filter."""
    return len(symlet_lowpass())


@functools.lru_cache(maxsize=None)
def filter_delay() -> float:
    """Where a sample's content lands on the 2x grid: the filter's group delay over the passband [0, pi/2]
    (least-squares slope of its phase), rounded to a multiple of 1/2 so that the 2x grid is symmetric about
    the image centre and quarter turns map grid points onto grid points."""
    h = np.asarray(symlet_lowpass())
    omega = np.linspace(1e-3, math.pi / 2, 128)
    phase = np.unwrap(np.angle(np.polyval(h[::-1], np.exp(-1j * omega))))
    slope = -np.polyfit(omega, phase, 1)[0]
    return round(2 * slope) / 2


@functools.lru_cache(maxsize=16)
def _upsampling_matrix(size: int, device: torch.device) -> Tensor:
    """(2 size + L - 2, size) matrix U with U[2i + j, i] = sqrt(2) h[j]: the transposed strided convolution."""
    h = torch.tensor(symlet_lowpass(), dtype=torch.float32, device=device) * math.sqrt(2.0)
    taps = h.numel()
    u = torch.zeros(2 * size + taps - 2, size, dtype=torch.float32, device=device)
    rows = 2 * torch.arange(size, device=device)[None, :] + torch.arange(taps, device=device)[:, None]
    u[rows, torch.arange(size, device=device)[None, :].expand(taps, size)] = h[:, None].expand(taps, size)
    return u


def upsample2x(x: Tensor) -> Tensor:
    """(..., H, W) -> (..., 2H + L - 2, 2W + L - 2), L = filter length; sample i lands at 2i + delay.

    The transposed strided convolution with sqrt(2) h along each axis, written as a product with a banded
    matrix (the same numbers; on CPUs several times faster than single-channel convolutions).
    """
    uh, uw = _upsampling_matrix(x.shape[-2], x.device), _upsampling_matrix(x.shape[-1], x.device)
    return uh @ x.float() @ uw.T


def downsample2x(x: Tensor) -> Tensor:
    """Inverse of :func:`upsample2x` on its output size: (..., 2H + L - 2, 2W + L - 2) -> (..., H, W).

    The strided convolution with h / sqrt(2) along each axis, i.e. the product with U^T / 2.
    """
    taps = symlet_length()
    h, w = (x.shape[-2] - taps + 2) // 2, (x.shape[-1] - taps + 2) // 2
    uh, uw = _upsampling_matrix(h, x.device), _upsampling_matrix(w, x.device)
    return (uh.T @ x.float() @ uw) / 4.0


def reflect_pad(x: Tensor, pad: int) -> Tensor:
    """Reflect-pad (..., 2, 1, 0, 1, 2, ...: the edge pixel is not repeated) by ``pad`` on every side.

    ``F.pad(mode="reflect")`` allows at most size - 1 per call; larger pads repeat it, which continues the
    same mirror extension (period 2 (size - 1)).
    """
    while pad > 0:
        step = min(pad, x.shape[-1] - 1, x.shape[-2] - 1)
        if step < 1:
            raise ValueError(f"cannot reflect-pad an image of size {tuple(x.shape[-2:])}")
        x = F.pad(x, (step, step, step, step), mode="reflect")
        pad -= step
    return x
