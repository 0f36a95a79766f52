"""Continuous-time consistency models with MFD: the JVP-based objective of METHOD.md Sec. 5b.

A continuous-time consistency model (sCM: Lu & Song 2024; the r -> t limit of ECT: Geng et al. 2024) replaces
the second evaluation at a nearby noise level by the derivative of the model along the probability-flow ODE.
In EDM's sigma parameterisation (x_sigma = x0 + sigma eps), per sample b:

    v_b       = dx/dsigma                     teacher: (x - D_teacher(x, sigma)) / sigma; training: eps
    T_b       = d/dsigma Phi(f(x(sigma), sigma)) = J_Phi J_f (v_b, 1)     one forward-mode JVP, no grad
    T^_b      = T_b / (rms(T_b) + c),  c = 0.1                            rms over all entries of the sample
    L         = mean_b [ w_b <Phi(f(x_b, sigma_b)), stopgrad(T^_b)> ],  w_b = 1 / sigma_b

so dL / d f_b = w_b J_Phi^T T^_b / B: the step pushes Phi(f) against the direction in which it moves along
the ODE, the continuous limit of AYT's discrete update with the squared feature distance (both point along
J_Phi^T (Phi(D_t) - Phi(D_r)) to first order in t - r; only the normalisations differ). Phi is every tap of the
MFD's feature map, flattened and concatenated (raw features); with ``distance=None`` Phi is the identity and
this is the pixel-space (sCM-style) objective, whose gradient is w_b (df/dsigma) / (rms + c).

The value of the loss is not the surrogate's (which says nothing about progress) but mean_b ||T_b||_2, the
speed at which Phi(f) still changes along the ODE per unit sigma: 0 for an exact consistency model, and in
pixel space the r -> t limit of ECT's logged value ||D_t - D_r|| / (t - r).

References:
    METHOD.md Sec. 5b (the authors' continuous-time variant of AYT); B. Kim, B. Cha, J. C. Ye, "Align Your
    Tangent", arXiv:2510.00658; C. Lu, Y. Song, "Simplifying, Stabilizing and Scaling Continuous-Time
    Consistency Models", arXiv:2410.11081 (sCM: tangent normalisation, JVP under no-grad); Z. Geng et al.,
    "Consistency Models Made Easy", arXiv:2406.14548 (ECT, the discrete objective whose limit this is).
"""

from __future__ import annotations

import contextlib
from typing import Callable, NamedTuple

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..distance import REDUCTIONS, _to_resolution, check_pair, reduce
from ..loss import ManifoldFeatureDistance

__all__ = ["TANGENT_C", "ContinuousOutput", "feature_vector", "teacher_velocity", "feature_tangent_loss",
           "continuous_consistency_loss", "ContinuousConsistencyLoss"]

#: The tangent-normalisation constant c of T / (rms(T) + c) (sCM, Lu & Song 2024; METHOD.md Sec. 5b).
TANGENT_C = 0.1

Model = Callable[[Tensor, Tensor], Tensor]


class ContinuousOutput(NamedTuple):
    """What the continuous-time objective returns.

    Attributes:
        loss: float32 (float64 for float64 inputs) scalar, or (N,) with ``reduction="none"``, to call
            ``.backward()`` on; its value is the reduced ||T_b||, its gradient the surrogate's.
        prediction: (N, C, H, W) f(x, sigma), carrying the graph to the model (reuse it, e.g. for logging).
        tangent_norm: (N,) detached ||T_b||_2, the feature-space speed along the ODE (what to log).
    """

    loss: Tensor
    prediction: Tensor
    tangent_norm: Tensor


def feature_vector(distance: ManifoldFeatureDistance | None, images: Tensor) -> Tensor:
    """Phi(images): all taps of the MFD's feature map, flattened and concatenated per sample (raw features).

    The images go through the MFD's own input handling first (``normalize`` / a map's ``data_range`` mapped
    onto the network range; ``resize="tiles"`` or ``"antialias"``; the map's dtype outside autocast), so
    Phi sees what :class:`~mfd_loss.MFD` compares. Differentiable and JVP-safe (no in-place op, no value check).

    Args:
        distance: an :class:`~mfd_loss.MFD`, or None for the identity (pixel space).
        images: (N, C, H, W) float images in the MFD's input range ([-1, 1] by default).

    Returns:
        (N, P) features in the feature map's dtype (P = the sum of the taps' sizes, times the tiles per image);
        ``images.flatten(1)`` when ``distance`` is None.

    Raises:
        TypeError: ``distance`` is neither an MFD nor None.
        ValueError: shapes the feature map cannot serve (see :class:`~mfd_loss.MFD`).
    """
    if distance is None:
        return images.flatten(1)
    if not isinstance(distance, ManifoldFeatureDistance):
        raise TypeError(f"distance must be an mfd_loss.MFD or None (pixel space), got {type(distance).__name__}")
    fmap = distance._frozen.on(images.device)
    check_pair(fmap, images, images, None, distance.resize)
    network = tuple(fmap.config.input_range)
    if distance._input_range != network:
        (lo, hi), (net_lo, net_hi) = distance._input_range, network
        images = (images - lo) * ((net_hi - net_lo) / (hi - lo)) + net_lo
    n = images.shape[0]
    images = _to_resolution(images, tuple(fmap.config.resolution), distance.resize)
    if images.device.type == "meta" or not torch.is_autocast_enabled(images.device.type):
        images = images.to(next(fmap.parameters()).dtype)
    return torch.cat([tap.flatten(1) for tap in fmap(images)], dim=1).reshape(n, -1)


@torch.no_grad()
def teacher_velocity(teacher: Model, x: Tensor, sigma: Tensor) -> Tensor:
    """The probability-flow ODE velocity dx/dsigma = (x - D_teacher(x, sigma)) / sigma, without gradient.

    Args:
        teacher: a denoiser ``teacher(x, sigma)`` (EDM parameterisation, e.g. :class:`~mfd_loss.consistency.EDMDenoiser`).
        x: (N, C, H, W) noisy inputs x_sigma.
        sigma: (N,) positive noise levels.

    Returns:
        tensor like x (the teacher's dtype promoted with x's).

    References:
        Karras et al. 2022 (EDM), Eq. 4; METHOD.md Sec. 5b step 2.
    """
    return (x - teacher(x, sigma)) / sigma.view((-1,) + (1,) * (x.ndim - 1))


def _check(x: Tensor, sigma: Tensor, velocity: Tensor, weight: Tensor | None, c: float, reduction: str,
           validate_args: bool, names: tuple[str, str] = ("x", "velocity")) -> None:
    """Shapes always (metadata only); with ``validate_args`` also sigma > 0 and finite inputs (one sync)."""
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.ndim < 2:
        raise ValueError(f"{names[0]} must be a floating (N, C, H, W) tensor, got "
                         f"{getattr(x, 'shape', type(x).__name__)}")
    if not isinstance(velocity, Tensor) or velocity.shape != x.shape:
        raise ValueError(f"{names[1]} must have {names[0]}'s shape {tuple(x.shape)} (a derivative along the ODE), "
                         f"got {tuple(getattr(velocity, 'shape', ()))}")
    for name, value in (("sigma", sigma), ("weight", weight)):
        if value is not None and (not isinstance(value, Tensor) or value.shape != x.shape[:1]):
            raise ValueError(f"{name} must be a tensor of shape (N,) = ({x.shape[0]},), got "
                             f"{tuple(getattr(value, 'shape', ())) if isinstance(value, Tensor) else type(value).__name__}")
    if not c > 0:
        raise ValueError(f"c must be positive (the rms floor of the tangent normalisation), got {c}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if validate_args:
        if not bool((sigma > 0).all()):
            raise ValueError("sigma must be positive: the objective weights by 1 / sigma and the ODE starts at "
                             "sigma > 0 (sample it log-normally, e.g. mfd_loss.consistency.sample_noise_levels)")
        if not bool(torch.isfinite(x).all() & torch.isfinite(velocity).all()):
            raise ValueError(f"{names[0]} or {names[1]} contains NaN or Inf values")


def _tangent_pass(device: torch.device) -> contextlib.ExitStack:
    """What the JVP pass runs under: no grad; a forked RNG (CPU and ``device``), restored afterwards so the
    prediction replays the same dropout draw; SDPA's math backend, the only one with forward-mode AD (PyTorch's
    flash and memory-efficient kernels raise NotImplementedError under ``jvp``); autocast off: forward-mode AD
    under autocast fails where an op autocast keeps in float32 (GroupNorm) feeds a convolution (PyTorch 2.14:
    the tangent keeps float32 while the primal is cast), and fp16 tangents overflow."""
    stack = contextlib.ExitStack()
    stack.enter_context(torch.no_grad())
    devices = [] if device.type == "cpu" else [device]
    stack.enter_context(torch.random.fork_rng(devices, device_type=device.type if devices else "cuda"))
    stack.enter_context(sdpa_kernel(SDPBackend.MATH))
    if torch.amp.is_autocast_available(device.type):
        stack.enter_context(torch.autocast(device.type, enabled=False))
    return stack


def _surrogate(features: Tensor, tangent: Tensor, weight: Tensor, c: float, reduction: str) -> tuple[Tensor, Tensor]:
    """Value ||T_b||, gradient w_b T^_b w.r.t. the features (in float32, float64 for float64 input)."""
    dtype = torch.promote_types(tangent.dtype, torch.float32)
    tangent, features = tangent.detach().to(dtype), features.to(dtype)
    norm = tangent.norm(dim=1)
    t_hat = tangent / (norm / tangent.shape[1] ** 0.5 + c)[:, None]
    pull = ((features - features.detach()) * t_hat).sum(1)  # exactly 0 in value, w_b T^_b in gradient
    return reduce(norm + weight.to(dtype) * pull, reduction), norm


def feature_tangent_loss(
    prediction: Tensor,
    tangent: Tensor,
    sigma: Tensor,
    distance: ManifoldFeatureDistance | None,
    *,
    weight: Tensor | None = None,
    c: float = TANGENT_C,
    reduction: str = "mean",
    validate_args: bool = True,
) -> ContinuousOutput:
    """The objective for a host that already computes the pixel tangent df/dsigma (e.g. an sCM code base).

    Maps the host's tangent into feature space with one JVP through Phi alone, T = J_Phi(prediction) tangent
    (no grad, autocast off, at least float32), then applies the normalisation and surrogate of
    :func:`continuous_consistency_loss`.

    Args:
        prediction: (N, C, H, W) f(x, sigma) with grad (the graph to the model).
        tangent: (N, C, H, W) df/dsigma along the ODE at the same point and dropout draw (no grad needed; a
            TrigFlow/rectified-flow host converts its d/dt by the chain rule, e.g. divides by dsigma/dt).
        sigma: (N,) positive noise levels (EDM sigma).
        distance: an :class:`~mfd_loss.MFD`, or None for the pixel-space objective (T = tangent).
        weight: (N,) per-sample weights w_b; None uses 1 / sigma (METHOD.md Sec. 5b).
        c: the rms floor of the tangent normalisation (> 0).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        validate_args: check sigma > 0 and finite prediction and tangent (one host synchronisation).

    Returns:
        :class:`ContinuousOutput` (its ``prediction`` is the one passed in).

    Raises:
        ValueError: prediction not a floating (N, ...) tensor, tangent not shaped like it, sigma or weight not
            (N,), c <= 0, unknown reduction, shapes the MFD cannot serve; with ``validate_args``, sigma <= 0 or
            non-finite values.
        TypeError: ``distance`` is neither an MFD nor None.
    """
    _check(prediction, sigma, tangent, weight, c, reduction, validate_args, names=("prediction", "tangent"))
    dtype = torch.promote_types(prediction.dtype, torch.float32)  # a bf16 prediction's tangent is not rounded
    with _tangent_pass(prediction.device):
        _, feature_tangent = torch.func.jvp(lambda y: feature_vector(distance, y), (prediction.detach().to(dtype),),
                                            (tangent.detach().to(dtype),))
    loss, norm = _surrogate(feature_vector(distance, prediction), feature_tangent,
                            1.0 / sigma if weight is None else weight, c, reduction)
    return ContinuousOutput(loss, prediction, norm)


def continuous_consistency_loss(
    model: Model,
    x: Tensor,
    sigma: Tensor,
    velocity: Tensor,
    distance: ManifoldFeatureDistance | None,
    *,
    weight: Tensor | None = None,
    c: float = TANGENT_C,
    reduction: str = "mean",
    validate_args: bool = True,
) -> ContinuousOutput:
    """Continuous-time consistency objective with MFD (METHOD.md Sec. 5b): one JVP, then one forward with grad.

    1. Under ``torch.no_grad`` and a forked RNG, ``torch.func.jvp`` of (x, sigma) -> Phi(model(x, sigma)) at
       (x, sigma) along (velocity, 1) gives the feature tangent T (N, P). The RNG (CPU and x's device) is then
       restored, so the prediction below draws the same dropout masks as the JVP did. This pass runs
       ``F.scaled_dot_product_attention`` on its math backend, the only one with forward-mode AD (PyTorch's
       flash and memory-efficient kernels raise NotImplementedError under ``jvp``), and with autocast off, in
       the model's own dtype (PyTorch's forward-mode AD fails under autocast when GroupNorm feeds a
       convolution, and fp16 tangents overflow); the prediction keeps the host's attention and autocast.
    2. prediction = model(x, sigma) with grad; the loss's gradient w.r.t. it is w_b J_Phi^T T^_b / B
       (``reduction="mean"``), T^_b = T_b / (rms(T_b) + c); its value is the reduced ||T_b||_2.

    Time variables other than EDM's sigma: pass a wrapper in sigma. TrigFlow (x_t = cos t x0 + sin t z,
    z ~ N(0, s_d^2 I)) has sigma = s_d tan t and x_sigma = x_t / cos t, so ``model = lambda x, s: f_trig(x * cos(t),
    t)`` with ``t = atan(s / s_d)``; rectified flow (x_s = (1 - s) x0 + s eps) has sigma = s / (1 - s) and
    ``model = lambda x, sig: f_rf(x / (1 + sig), sig / (1 + sig))``. The JVP differentiates through the wrapper,
    so T is the derivative in sigma; only the weighting (``weight``) is yours to choose.

    Args:
        model: the consistency model f(x, sigma) -> (N, C, H, W), e.g. an :class:`~mfd_loss.consistency.EDMDenoiser`
            in train mode; it must be JVP-safe (no in-place op on an input, no ``.item()``). Attention outside
            ``F.scaled_dot_product_attention`` (xformers, flash-attn) needs a kernel with a JVP of its own. A
            ``DistributedDataParallel`` model works: the JVP runs through its ``.module`` (DDP's buffer broadcast
            is an in-place copy that ``torch.func`` refuses), the prediction through the wrapper, which
            all-reduces the gradients.
        x: (N, C, H, W) noisy inputs x_sigma = x0 + sigma eps.
        sigma: (N,) positive noise levels (EDM sigma).
        velocity: (N, C, H, W) dx/dsigma of the probability-flow ODE at x: :func:`teacher_velocity` for
            distillation, eps for consistency training.
        distance: an :class:`~mfd_loss.MFD` (Phi = its map's taps, through the MFD's input handling; its own
            value checks are not run), or None for the pixel-space (sCM-style) objective.
        weight: (N,) per-sample weights w_b; None uses 1 / sigma.
        c: the rms floor of the tangent normalisation (0.1 as in sCM and the authors' code).
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"`` (N,).
        validate_args: check sigma > 0 and finite x, velocity (one host synchronisation); False keeps the call
            free of data-dependent branches.

    Returns:
        :class:`ContinuousOutput` (loss, prediction, tangent_norm).

    Raises:
        ValueError: x not a floating (N, ...) tensor, velocity not shaped like x, sigma or weight not (N,),
            c <= 0, unknown reduction, shapes the MFD cannot serve; with ``validate_args``, sigma <= 0 or
            non-finite x / velocity.
        TypeError: ``distance`` is neither an MFD nor None.

    Examples:
        >>> model = lambda x, s: x / (1 + s[:, None, None, None] ** 2)
        >>> x, eps = torch.zeros(2, 3, 8, 8), torch.ones(2, 3, 8, 8)
        >>> out = continuous_consistency_loss(model, x + 0.5 * eps, torch.full((2,), 0.5), eps, None)
        >>> round(out.loss.item(), 4)                    # ||df/dsigma|| = ||eps (1 - s^2) / (1 + s^2)^2|| = 0.48 sqrt(192)
        6.6511

    References:
        METHOD.md Sec. 5b; Lu & Song 2024 (sCM), Sec. 4 (tangent normalisation, JVP); Geng et al. 2024 (ECT);
        Kim, Cha & Ye 2025 (AYT), Sec. 4.
    """
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device) if not isinstance(sigma, Tensor) else sigma
    if sigma.ndim == 0:
        sigma = sigma.expand(x.shape[:1])
    _check(x, sigma, velocity, weight, c, reduction, validate_args)
    x, velocity, sigma = x.detach(), velocity.detach().to(x.dtype), sigma.detach()
    # DDP's forward broadcasts buffers in place, which torch.func forbids: the JVP runs through the wrapped module
    inner = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    with _tangent_pass(x.device):
        _, tangent = torch.func.jvp(lambda x_, s_: feature_vector(distance, inner(x_, s_)), (x, sigma),
                                    (velocity, torch.ones_like(sigma)))
    prediction = model(x, sigma)
    loss, norm = _surrogate(feature_vector(distance, prediction), tangent, 1.0 / sigma if weight is None else weight,
                            c, reduction)
    return ContinuousOutput(loss, prediction, norm)


class ContinuousConsistencyLoss(nn.Module):
    """:func:`continuous_consistency_loss` as a module: ``loss_fn(model, x, sigma, velocity, weight=None)``.

    Adds no parameters; an MFD ``distance`` is a submodule, so ``.to(device)`` reaches its (frozen) map.

    Args:
        distance: an :class:`~mfd_loss.MFD`, or None for the pixel-space (sCM-style) objective.
        c: the rms floor of the tangent normalisation (> 0).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        validate_args: see :func:`continuous_consistency_loss`.

    Raises:
        ValueError: c <= 0 or an unknown reduction. TypeError: ``distance`` neither an MFD nor None.
    """

    def __init__(self, distance: ManifoldFeatureDistance | None, *, c: float = TANGENT_C, reduction: str = "mean",
                 validate_args: bool = True):
        super().__init__()
        if distance is not None and not isinstance(distance, ManifoldFeatureDistance):
            raise TypeError(f"distance must be an mfd_loss.MFD or None (pixel space), got {type(distance).__name__}")
        if not c > 0:
            raise ValueError(f"c must be positive, got {c}")
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        self.distance, self.c, self.reduction, self.validate_args = distance, float(c), reduction, bool(validate_args)

    def forward(self, model: Model, x: Tensor, sigma: Tensor, velocity: Tensor,
                weight: Tensor | None = None) -> ContinuousOutput:
        return continuous_consistency_loss(model, x, sigma, velocity, self.distance, weight=weight, c=self.c,
                                           reduction=self.reduction, validate_args=self.validate_args)

    def extra_repr(self) -> str:
        space = "pixel" if self.distance is None else "feature"
        return f"space={space!r}, c={self.c:g}, reduction={self.reduction!r}"
