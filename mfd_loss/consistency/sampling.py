"""Solvers of the probability-flow ODE of an EDM denoiser: single steps and EDM's Heun sampler.

With the variance-exploding schedule of EDM (x_sigma = x0 + sigma * n), the probability-flow ODE in the noise
level sigma reads

    dx / dsigma = (x - D(x, sigma)) / sigma

(Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models", EDM, Eq. 4 with
sigma(t) = t, s(t) = 1). :func:`ode_step` takes one Euler or Heun step of it from sigma = t to sigma = r: the
teacher step of consistency distillation (Song et al. 2023, "Consistency Models", Sec. 4). :func:`heun_sample`
is EDM's deterministic sampler (EDM Algorithm 1: Heun's second-order method on the noise levels of
:func:`edm_sigmas`, an Euler step into sigma = 0); 18 levels, i.e. 35 network evaluations, on CIFAR-10.

Every function takes the denoiser as a callable ``denoiser(x, sigma)`` with sigma of shape (N,), e.g.
:class:`mfd_loss.consistency.EDMDenoiser`, and computes in float32.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

__all__ = ["SOLVERS", "SIGMA_MIN", "edm_sigmas", "ode_step", "heun_sample"]

Denoiser = Callable[[Tensor, Tensor], Tensor]

SOLVERS = ("heun", "euler")
SIGMA_MIN = 0.002


def edm_sigmas(num_steps: int = 18, sigma_min: float = SIGMA_MIN, sigma_max: float = 80.0, rho: float = 7.0,
               *, device: torch.device | str | None = None) -> Tensor:
    """EDM's noise levels sigma_i = (s_max^(1/rho) + i / (n - 1) (s_min^(1/rho) - s_max^(1/rho)))^rho, then 0.

    Args:
        num_steps: number of positive levels n (>= 2); EDM uses 18 on CIFAR-10.
        sigma_min: the last positive level (0.002).
        sigma_max: the first level (80).
        rho: the schedule's curvature (7: smaller steps at low noise).

    Returns:
        float64 (num_steps + 1,) tensor, decreasing from sigma_max to sigma_min, with a final 0.

    Raises:
        ValueError: num_steps < 2, not 0 < sigma_min < sigma_max, or rho <= 0.

    Examples:
        >>> s = edm_sigmas(18)
        >>> s.shape, round(float(s[0]), 3), round(float(s[-2]), 3), float(s[-1])
        (torch.Size([19]), 80.0, 0.002, 0.0)

    References:
        Karras et al. 2022 (EDM), Eq. 5 and Table 1.
    """
    if num_steps < 2:
        raise ValueError(f"num_steps must be at least 2, got {num_steps}")
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min} and {sigma_max}")
    if rho <= 0:
        raise ValueError(f"rho must be positive, got {rho}")
    i = torch.arange(num_steps, dtype=torch.float64, device=device)
    hi, lo = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    sigmas = (hi + i / (num_steps - 1) * (lo - hi)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def _per_sample(value: Tensor | float, x: Tensor, name: str) -> Tensor:
    value = torch.as_tensor(value, device=x.device, dtype=torch.float32)
    if value.ndim == 0:
        value = value.expand(x.shape[0])
    if value.shape != x.shape[:1]:
        raise ValueError(f"{name} must be a scalar or have shape (N,) = ({x.shape[0]},), got {tuple(value.shape)}")
    return value


@torch.no_grad()
def ode_step(denoiser: Denoiser, x: Tensor, t: Tensor | float, r: Tensor | float, solver: str = "heun") -> Tensor:
    """One step of the probability-flow ODE dx/dsigma = (x - D(x, sigma)) / sigma from sigma = t to sigma = r.

    Euler: x_r = x + (r - t) d(x, t), d = (x - D(x, sigma)) / sigma (local error O((t - r)^2)).
    Heun:  x' = the Euler step, then x_r = x + (r - t) (d(x, t) + d(x', r)) / 2 (local error O((t - r)^3));
    where r = 0 the correction would divide by zero and Heun takes the Euler step, as EDM Algorithm 1 does
    (D(x, t) is then the step's result: x_0 = D(x_t, t)).

    Args:
        denoiser: callable ``denoiser(x, sigma)`` with sigma (N,), returning the denoised estimate like x.
        x: (N, C, H, W) points at noise level t.
        t: (N,) or scalar, positive current noise levels.
        r: (N,) or scalar target levels, 0 <= r < t (integrating towards the data).
        solver: ``"heun"`` (Song et al. 2023's consistency-distillation teacher step) or ``"euler"``.

    Returns:
        float32 tensor like x: the points at level r. 1 network evaluation for Euler, 2 for Heun.

    Raises:
        ValueError: unknown solver, shapes that do not match x, or r outside [0, t).

    References:
        Karras et al. 2022 (EDM), Eq. 4 and Algorithm 1; Song et al. 2023 ("Consistency Models"), Eq. 6 and Sec. 4.
    """
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    x = x.float()
    t, r = _per_sample(t, x, "t"), _per_sample(r, x, "r")
    if bool((t <= 0).any()) or bool((r < 0).any()) or bool((r >= t).any()):
        raise ValueError("ode_step needs 0 <= r < t for every sample (t > 0)")
    view = (-1,) + (1,) * (x.ndim - 1)
    d = (x - denoiser(x, t).float()) / t.view(view)
    x_next = x + (r - t).view(view) * d
    if solver == "euler":
        return x_next
    positive = r > 0
    if not bool(positive.any()):
        return x_next
    d_next = (x_next - denoiser(x_next, r.clamp_min(1e-20)).float()) / r.clamp_min(1e-20).view(view)
    heun = x + (r - t).view(view) * (d + d_next) / 2
    return torch.where(positive.view(view), heun, x_next)


@torch.no_grad()
def heun_sample(denoiser: Denoiser, noise: Tensor, num_steps: int = 18, sigma_min: float = SIGMA_MIN,
                sigma_max: float = 80.0, rho: float = 7.0) -> Tensor:
    """EDM's deterministic sampler: Heun steps through :func:`edm_sigmas`, the last (into 0) an Euler step.

    Args:
        denoiser: callable ``denoiser(x, sigma)``, e.g. a trained EDM denoiser.
        noise: (N, C, H, W) standard normal z; the chain starts at x = sigma_max * z.
        num_steps: positive noise levels (18 in EDM on CIFAR-10: 2 * 18 - 1 = 35 network evaluations).
        sigma_min: last positive noise level (see :func:`edm_sigmas`).
        sigma_max: first noise level.
        rho: curvature of the noise levels.

    Returns:
        float32 (N, C, H, W) samples in the data range (about [-1, 1]; not clamped).

    References:
        Karras et al. 2022 (EDM), Algorithm 1 (deterministic sampling); Algorithm 2 without churn (S_churn = 0).
    """
    sigmas = edm_sigmas(num_steps, sigma_min, sigma_max, rho).tolist()
    x = noise.float() * sigmas[0]
    for t, r in zip(sigmas[:-1], sigmas[1:]):
        x = ode_step(denoiser, x, t, r, "heun")
    return x
