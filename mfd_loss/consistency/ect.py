"""Easy Consistency Tuning (ECT) helpers: noise levels, the t -> r mapping, weights, EDM preconditioning, sampling.

The setting AYT trains in (METHOD.md Sec. 5; Geng et al. 2024, "Consistency Models Made Easy", ECT):

* noise level                 t = exp(N(P_mean, P_std^2)),  P_mean = -1.1, P_std = 2.0
* second (smaller) level      r = max(0, t * (1 - q^-(stage+1) * (1 + k * sigmoid(-b * t)))),  q = 256, k = 8, b = 1
* per-sample weight           w = 1 / (t - r)
* the same noise for both     x_t = x0 + t * eps,  x_r = x0 + r * eps
* EDM preconditioning         D(x, sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, c_noise(sigma)) with
                              c_skip = s_d^2 / (sigma^2 + s_d^2),  c_out = sigma s_d / sqrt(sigma^2 + s_d^2),
                              c_in = 1 / sqrt(sigma^2 + s_d^2),  c_noise = ln(sigma) / 4,  s_d = 0.5
                              (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative
                              Models", EDM, Table 1). c_skip(0) = 1 and c_out(0) = 0, so D(x, 0) = x: the consistency
                              boundary condition holds at sigma = 0.
* diffusion pre-training      sigma = exp(N(-1.2, 1.2^2)), loss weight (sigma^2 + s_d^2) / (sigma s_d)^2 (EDM Sec. 5):
                              the denoiser that consistency tuning starts from and distillation learns from
* distillation target         x_r = one teacher ODE step from t to r (Heun or Euler, :mod:`mfd_loss.consistency.sampling`), then
                              D_theta(x_r, r) under stop-gradient (Song et al. 2023, Sec. 4)
* sampling                    1 step: D(sigma_max * z, sigma_max); 2 steps: x = D(sigma_max * z, sigma_max), then
                              D(x + sigma_mid * z', sigma_mid) with sigma_mid = 0.821 (ECT's CIFAR-10 setting;
                              Song et al. 2023, "Consistency Models", Algorithm 1).

All functions work on any device and dtype and take explicit ``torch.Generator`` objects for randomness.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
from torch import Tensor, nn

from .sampling import ode_step

__all__ = [
    "P_MEAN", "P_STD", "SIGMA_DATA", "SIGMA_MAX", "SIGMA_MID",
    "sample_noise_levels", "r_from_t", "consistency_weight", "Preconditioning", "edm_preconditioning",
    "EDMDenoiser", "one_step_sample", "two_step_sample",
    "EDM_P_MEAN", "EDM_P_STD", "edm_loss_weight", "distillation_target",
]

P_MEAN = -1.1
P_STD = 2.0
SIGMA_DATA = 0.5
SIGMA_MAX = 80.0
SIGMA_MID = 0.821
EDM_P_MEAN = -1.2
EDM_P_STD = 1.2


def sample_noise_levels(
    n: int,
    generator: torch.Generator | None = None,
    mean: float = P_MEAN,
    std: float = P_STD,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Log-normal noise levels t = exp(mean + std * z), z ~ N(0, 1) (ECT / EDM training distribution).

    Args:
        n: number of levels (>= 1).
        generator: the source of randomness (on ``device``); None uses the global RNG.
        mean: P_mean of ln t (ECT on CIFAR-10: -1.1).
        std: P_std of ln t (ECT on CIFAR-10: 2.0).
        device: of the result (default: the generator's device).
        dtype: of the result (default: float32).

    Returns:
        (n,) tensor of positive noise levels.

    Raises:
        ValueError: n < 1 or std < 0.

    Examples:
        >>> t = sample_noise_levels(4, torch.Generator().manual_seed(0))
        >>> t.shape, bool((t > 0).all())
        (torch.Size([4]), True)

    References:
        Karras et al. 2022 (EDM), Sec. 5; Geng et al. 2024 (ECT), Sec. 3.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if std < 0:
        raise ValueError(f"std must be non-negative, got {std}")
    if device is None:
        device = generator.device if generator is not None else "cpu"
    z = torch.randn(n, generator=generator, device=device, dtype=torch.float32)
    return torch.exp(mean + std * z).to(dtype)


def r_from_t(t: Tensor, q: float = 256.0, k: float = 8.0, b: float = 1.0, stage: int = 0) -> Tensor:
    """ECT's mapping from the noise level t to the smaller level r of the consistency pair.

        r = max(0, t * (1 - q^-(stage+1) * (1 + k * sigmoid(-b * t))))

    so (t - r) / t = q^-(stage+1) (1 + k sigmoid(-b t)): at stage 0 with q = 256, k = 8, b = 1 the gap is
    between 1/256 (large t) and 5/256 (t -> 0) of t. ECT raises ``stage`` during training to shrink the gap;
    AYT keeps stage = 0 for the whole run.

    Args:
        t: noise levels, any shape, positive.
        q: gap shrink factor per stage (> 1).
        k: shape of the sigmoid that widens the gap at small t (k >= 0).
        b: shape of the sigmoid that widens the gap at small t.
        stage: non-negative integer.

    Returns:
        r with t's shape and dtype, 0 <= r < t.

    Raises:
        ValueError: q <= 1, k < 0 or stage < 0.

    Examples:
        >>> r_from_t(torch.tensor([0.0, 1.0]))
        tensor([0.0000, 0.9877])

    References:
        Geng et al. 2024, "Consistency Models Made Easy" (ECT), Sec. 3.3, the mapping function.
    """
    if q <= 1:
        raise ValueError(f"q must be greater than 1, got {q}")
    if k < 0:
        raise ValueError(f"k must be non-negative, got {k}")
    if stage < 0:
        raise ValueError(f"stage must be non-negative, got {stage}")
    ratio = q ** (-(stage + 1)) * (1.0 + k * torch.sigmoid(-b * t))
    return (t * (1.0 - ratio)).clamp_min(0.0)


def consistency_weight(t: Tensor, r: Tensor, *, validate_args: bool = True) -> Tensor:
    """ECT's per-sample loss weight w = 1 / (t - r).

    Args:
        t: the larger noise level of each pair, any shape.
        r: the smaller one, the same shape, r < t.
        validate_args: check t > r (one host synchronisation per call on a GPU). False skips it, as does
            ``torch.compile`` while tracing (``torch.compiler.is_compiling()``), so a compiled loss captures it.

    Raises:
        ValueError: some t <= r (the pair would have no gap); only when checked.

    Examples:
        >>> consistency_weight(torch.tensor([2.0]), torch.tensor([1.5]))
        tensor([2.])
    """
    gap = t - r
    if validate_args and not torch.compiler.is_compiling() and bool((gap <= 0).any()):
        raise ValueError("consistency_weight needs t > r for every sample")
    return 1.0 / gap


def edm_loss_weight(sigma: Tensor, sigma_data: float = SIGMA_DATA) -> Tensor:
    """EDM's denoising-loss weight lambda(sigma) = (sigma^2 + s_d^2) / (sigma s_d)^2.

    With the preconditioning of :func:`edm_preconditioning` it equals 1 / c_out(sigma)^2, so the weighted loss
    lambda ||D(x0 + sigma n, sigma) - x0||^2 is the network's own error with unit weight at every sigma.

    Args:
        sigma: positive noise levels, any shape.
        sigma_data: standard deviation of the data (0.5 for images in [-1, 1]).

    Returns:
        weights shaped like sigma.

    Raises:
        ValueError: some sigma <= 0.

    Examples:
        >>> edm_loss_weight(torch.tensor([0.5]))
        tensor([8.])

    References:
        Karras et al. 2022 (EDM), Sec. 5 and Table 1 (training: ln sigma ~ N(-1.2, 1.2^2)).
    """
    if bool((sigma <= 0).any()):
        raise ValueError("edm_loss_weight needs positive noise levels")
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


class Preconditioning(NamedTuple):
    """EDM preconditioning coefficients, each shaped like sigma."""

    c_skip: Tensor
    c_out: Tensor
    c_in: Tensor
    c_noise: Tensor


def edm_preconditioning(sigma: Tensor, sigma_data: float = SIGMA_DATA) -> Preconditioning:
    """EDM's coefficients c_skip, c_out, c_in, c_noise (Karras et al. 2022, Table 1).

        c_skip = s_d^2 / (sigma^2 + s_d^2), c_out = sigma s_d / sqrt(sigma^2 + s_d^2),
        c_in = 1 / sqrt(sigma^2 + s_d^2),   c_noise = ln(sigma) / 4

    ``c_noise`` is computed from sigma clamped to at least 1e-20, so sigma = 0 (where D(x, 0) = x) gives a
    finite value.

    Args:
        sigma: noise levels, any shape, >= 0.
        sigma_data: standard deviation of the data (0.5 for images in [-1, 1]).

    Returns:
        :class:`Preconditioning` of tensors shaped like sigma.

    Examples:
        >>> p = edm_preconditioning(torch.tensor([0.0, 0.5]))
        >>> p.c_skip, p.c_out
        (tensor([1.0000, 0.5000]), tensor([0.0000, 0.3536]))
    """
    if sigma_data <= 0:
        raise ValueError(f"sigma_data must be positive, got {sigma_data}")
    total = sigma**2 + sigma_data**2
    c_skip = sigma_data**2 / total
    c_out = sigma * sigma_data / total.sqrt()
    c_in = total.rsqrt()
    c_noise = sigma.clamp_min(1e-20).log() / 4
    return Preconditioning(c_skip, c_out, c_in, c_noise)


class EDMDenoiser(nn.Module):
    """Wrap a raw network F(x, c_noise) into the preconditioned denoiser D(x, sigma) of EDM / ECT.

    D(x, sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, c_noise(sigma)), computed in float32 around
    the network (the network itself may run under autocast; float64 inputs stay float64). JVP-safe:
    ``torch.func.jvp`` through it along (dx, dsigma) gives the derivative along the ODE.

    Args:
        net: module called as ``net(x_in, c_noise)`` with x_in (N, C, H, W) and c_noise (N,), returning (N, C, H, W).
        sigma_data: standard deviation of the data.

    Shape:
        x: (N, C, H, W); sigma: (N,) or a scalar tensor / float; output like x, float32 (float64 for float64 x).
    """

    def __init__(self, net: nn.Module, sigma_data: float = SIGMA_DATA):
        super().__init__()
        self.net = net
        self.sigma_data = float(sigma_data)

    def forward(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        x = x if x.dtype == torch.float64 else x.float()  # float64 stays (JVP and finite-difference checks)
        sigma = torch.as_tensor(sigma, device=x.device, dtype=x.dtype)
        if sigma.ndim == 0:
            sigma = sigma.expand(x.shape[0])
        if sigma.shape != x.shape[:1]:
            raise ValueError(f"sigma must be a scalar or have shape (N,) = ({x.shape[0]},), got {tuple(sigma.shape)}")
        c = edm_preconditioning(sigma, self.sigma_data)
        view = (-1,) + (1,) * (x.ndim - 1)
        out = self.net(c.c_in.view(view) * x, c.c_noise)
        return c.c_skip.view(view) * x + c.c_out.view(view) * out.to(x.dtype)


Denoiser = Callable[[Tensor, Tensor], Tensor]


def _levels(value: float, like: Tensor) -> Tensor:
    return torch.full((like.shape[0],), float(value), device=like.device, dtype=torch.float32)


@torch.no_grad()
def one_step_sample(denoiser: Denoiser, noise: Tensor, sigma_max: float = SIGMA_MAX) -> Tensor:
    """One-step consistency sampling: D(sigma_max * z, sigma_max).

    Args:
        denoiser: callable ``denoiser(x, sigma)`` with sigma of shape (N,), e.g. an :class:`EDMDenoiser`.
        noise: (N, C, H, W) standard normal z.
        sigma_max: the largest noise level (80 for EDM / ECT).

    Returns:
        (N, C, H, W) samples in the data range (about [-1, 1]; not clamped).

    References:
        Song et al. 2023, "Consistency Models", Algorithm 1 (one step).
    """
    return denoiser(noise * sigma_max, _levels(sigma_max, noise))


@torch.no_grad()
def two_step_sample(
    denoiser: Denoiser,
    noise: Tensor,
    sigma_max: float = SIGMA_MAX,
    sigma_mid: float = SIGMA_MID,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Two-step consistency sampling: x = D(sigma_max z, sigma_max); return D(x + sigma_mid z', sigma_mid).

    Args:
        denoiser: callable ``denoiser(x, sigma)``.
        noise: (N, C, H, W) standard normal z for the first step.
        sigma_max: first noise level.
        sigma_mid: intermediate level (0.821 for CIFAR-10 in ECT).
        generator: draws z' (on noise's device); None uses the global RNG.

    Returns:
        (N, C, H, W) samples.

    Raises:
        ValueError: sigma_mid not in (0, sigma_max).

    References:
        Song et al. 2023, "Consistency Models", Algorithm 1 (multistep sampling); Geng et al. 2024 (ECT), 2-step FID.
    """
    if not 0 < sigma_mid < sigma_max:
        raise ValueError(f"sigma_mid must lie in (0, sigma_max={sigma_max}), got {sigma_mid}")
    x = denoiser(noise * sigma_max, _levels(sigma_max, noise))
    z = torch.randn(noise.shape, generator=generator, device=noise.device, dtype=x.dtype)
    return denoiser(x + sigma_mid * z, _levels(sigma_mid, noise))


def distillation_target(
    student: Denoiser, teacher: Denoiser, x_t: Tensor, t: Tensor, r: Tensor, solver: str = "heun",
) -> Tensor:
    """Consistency-distillation target: the student's output where the teacher's ODE step from t lands at r.

        x_r = ode_step(teacher, x_t, t, r, solver),   target = stopgrad(D_student(x_r, r))   (x_r where r = 0)

    The teacher replaces the shared noise of consistency training (x_r = x0 + r eps) by its own estimate of the
    trajectory through x_t; the pair (D_student(x_t, t), target) then goes to any consistency objective.
    Call it under the same dropout randomness as the prediction (the training example replays the RNG).

    Args:
        student: the online consistency model ``student(x, sigma)``.
        teacher: a pretrained EDM denoiser ``teacher(x, sigma)`` (e.g. from ``examples/train_diffusion_model.py``).
        x_t: (N, C, H, W) noisy inputs at level t.
        t: (N,) positive levels.
        r: (N,) levels with 0 <= r < t.
        solver: ``"heun"`` (Song et al. 2023) or ``"euler"`` (see :func:`mfd_loss.consistency.sampling.ode_step`).

    Returns:
        float32 (N, C, H, W) target, without gradient.

    Raises:
        ValueError: unknown solver or invalid levels (from :func:`mfd_loss.consistency.sampling.ode_step`).

    References:
        Song et al. 2023, "Consistency Models", Algorithm 2 (consistency distillation) and Sec. 4.
    """
    with torch.no_grad():
        x_r = ode_step(teacher, x_t, t, r, solver)
        boundary = (r > 0).view((-1,) + (1,) * (x_t.ndim - 1))
        return torch.where(boundary, student(x_r, r).float(), x_r)
