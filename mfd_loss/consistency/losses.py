"""Consistency-model losses: AYT's direction-replacement (tangent) loss and the pixel baselines.

Notation (METHOD.md Sec. 5): D_t = f_theta(x_t, t) is the prediction (with grad), D_r the target
(stop-gradient), w_b = 1 / (t_b - r_b) the per-sample weight, B the batch size, d a feature distance.

* **Tangent loss** (Kim, Cha & Ye 2025, "Align Your Tangent", arXiv:2510.00658, Sec. 4):

      g_b = d d(D_t,b, D_r,b) / d D_t,b              (feature network frozen: gradient w.r.t. the input only)
      g^_b = g_b / max(||g_b||_2, eps)              ("normalized"; "raw" keeps g_b)
      L = mean_b [ w_b * 1/2 * || D_t,b - stopgrad(D_t,b - g^_b) ||^2 ]

  so dL / dD_t,b = w_b g^_b / B exactly: ECT's step size (w_b times a unit vector) with the direction taken
  from the feature distance. Any positive rescaling of d leaves the update unchanged. The paper's L has the
  constant value w_b / 2; :func:`tangent_loss` returns the same gradient with the value mean_b w_b d_b, so a
  host that logs "the loss" sees progress. :class:`TangentLoss` is the same as an ``nn.Module``.
* **Pseudo-Huber** (Song & Dhariwal 2023, "Improved Techniques for Training Consistency Models", iCT, Sec. 3.3):
  sqrt(||x - y||^2 + c^2) - c with c = 0.00054 sqrt(d) (d = C H W); ECT (Geng et al. 2024) uses c = 0, the
  plain L2 norm ||x - y||, whose gradient is a unit vector.
* **Blend** (off in the paper): L_ECT + lambda * ramp(step) * L with a linear ramp (5k iterations).

:func:`~mfd_loss.consistency.objectives.build_objective` turns these into the objective a training script
uses (:mod:`mfd_loss.consistency.objectives`).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor, nn

from ..distance import REDUCTIONS, reduce

__all__ = ["ICT_HUBER_CONSTANT", "DIRECTIONS", "pseudo_huber", "squared_l2", "tangent_loss", "TangentLoss", "ramp",
           "blend_losses"]

#: iCT's pseudo-Huber constant per sqrt(dimension): c = 0.00054 * sqrt(C * H * W) (0.03 at 3x32x32).
ICT_HUBER_CONSTANT = 0.00054
DIRECTIONS = ("normalized", "raw")


def _check_options(direction: str, reduction: str = "mean", eps: float = 1e-5) -> None:
    """The tangent loss's options: a known direction and reduction, a positive eps (ValueError otherwise)."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if not eps > 0:
        raise ValueError(f"eps must be positive, got {eps}")


def _check_pair(prediction: Tensor, target: Tensor, weight: Tensor | None) -> None:
    for name, x in (("prediction", prediction), ("target", target)):
        if not isinstance(x, Tensor) or not x.is_floating_point() or x.ndim < 2:
            what = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"{name} must be a floating tensor of shape (N, ...) e.g. (N, C, H, W), got {what}")
    if prediction.shape != target.shape:
        raise ValueError(f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} must have the same shape")
    if weight is not None and (not isinstance(weight, Tensor) or weight.shape != prediction.shape[:1]):
        shape = tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__
        raise ValueError(f"weight must be a tensor of shape (N,) = ({prediction.shape[0]},), got {shape}")


def _weighted(values: Tensor, weight: Tensor | None, reduction: str) -> Tensor:
    if weight is not None:
        values = values * weight.to(values)
    return reduce(values, reduction)


def pseudo_huber(
    prediction: Tensor,
    target: Tensor,
    c: float | None = None,
    *,
    weight: Tensor | None = None,
    reduction: str = "none",
) -> Tensor:
    """Per-sample pseudo-Huber distance sqrt(||x - y||_2^2 + c^2) - c, computed in float32.

    Args:
        prediction: (N, ...) float tensor (fp32/fp16/bf16); the gradient is meant for it.
        target: same shape (detach it yourself when it is a stop-gradient target).
        c: the constant. None: iCT's c = 0.00054 * sqrt(d), d = elements per sample (0.0299 at 3x32x32).
            0: ECT's plain L2 norm ||x - y||_2, whose gradient (x - y) / ||x - y|| is a unit vector; at x == y
            the gradient is defined as 0 (finite), not NaN.
        weight: optional (N,) per-sample weights (e.g. 1 / (t - r)).
        reduction: ``"none"`` -> (N,), ``"mean"`` / ``"sum"`` -> scalar.

    Returns:
        float32 (N,) values >= 0 (0 where x == y), or a scalar.

    Raises:
        ValueError: shape mismatch, non-floating input, bad weight shape, c < 0, unknown reduction.

    Examples:
        >>> x = torch.zeros(2, 3, 4, 4)
        >>> pseudo_huber(x + 0.5, x, c=0.0)             # sqrt(48 * 0.25)
        tensor([3.4641, 3.4641])

    References:
        Song & Dhariwal 2023, "Improved Techniques for Training Consistency Models" (iCT), Sec. 3.3;
        Geng et al. 2024, "Consistency Models Made Easy" (ECT), c = 0.
    """
    _check_pair(prediction, target, weight)
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    dim = prediction[0].numel()
    c = ICT_HUBER_CONSTANT * math.sqrt(dim) if c is None else float(c)
    if c < 0:
        raise ValueError(f"c must be non-negative, got {c}")
    squared = (prediction.float() - target.float()).flatten(1).pow(2).sum(1)
    if c > 0:
        values = torch.sqrt(squared + c * c) - c
    else:
        # sqrt has an infinite derivative at 0; route exact zeros through a constant so the gradient there is 0.
        positive = squared > 0
        values = torch.where(positive, torch.sqrt(torch.where(positive, squared, torch.ones_like(squared))), 0.0)
    return _weighted(values, weight, reduction)


def squared_l2(
    prediction: Tensor, target: Tensor, *, weight: Tensor | None = None, reduction: str = "none"
) -> Tensor:
    """Per-sample mean squared error mean_i (x_i - y_i)^2 (the squared-L2 metric of the original consistency
    models, Song et al. 2023, divided by the number of elements), computed in float32.

    Returns:
        float32 (N,) or a scalar.
    """
    _check_pair(prediction, target, weight)
    values = (prediction.float() - target.float()).flatten(1).pow(2).mean(1)
    return _weighted(values, weight, reduction)


def tangent_loss(
    prediction: Tensor,
    target: Tensor,
    distance_fn: Callable[[Tensor, Tensor], Tensor],
    weight: Tensor | None = None,
    *,
    direction: str = "normalized",
    eps: float = 1e-5,
    reduction: str = "mean",
    return_distance: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """AYT's direction-replacement loss: value mean_b w_b d_b, gradient w.r.t. the prediction w_b g^_b / B.

    Computes g_b = d d(D_t,b, D_r,b) / d D_t,b with ``torch.func.vjp`` w.r.t. a detached copy of the
    prediction (no graph is kept, and no parameter of the distance receives a gradient or a ``.grad``; unlike
    ``torch.autograd.grad`` it lets ``torch.compile(fullgraph=True)`` capture the whole loss), then

        g^_b = g_b / max(||g_b||_2, eps)   (direction="normalized"; "raw" uses g_b as is)
        L_b = w_b [ stopgrad(d_b) + <D_t,b - stopgrad(D_t,b), g^_b> ],   reduced over b.

    The second term is exactly 0 in value (x - x = 0 in floating point) and carries the gradient: dL_b / dD_t,b
    is w_b g^_b exactly, the gradient of the paper's surrogate w_b 1/2 || D_t,b - stopgrad(D_t,b - g^_b) ||^2,
    whose value is the constant w_b / 2. The value here is the weighted distance w_b d_b instead, so loss
    logs, loss quartiles and loss-aware samplers of the host see progress. With ``reduction="mean"`` the
    gradient w.r.t. D_t,b is w_b g^_b / B.

    Args:
        prediction: D_t, (N, ...) float tensor (fp32/fp16/bf16, inside or outside ``torch.autocast``) carrying
            the graph to the model.
        target: D_r, same shape; treated as stop-gradient (detached here).
        distance_fn: any callable (prediction, target) -> (N,) per-sample distances, differentiable w.r.t. its
            first argument, e.g. :class:`~mfd_loss.MFD` (``reduction="none"``), LPIPS, or a pixel distance.
            It is called once, on the detached target (MFD then makes one no-grad pass on it).
        weight: optional (N,) per-sample weights w_b (ECT: 1 / (t - r)); None means 1.
        direction: ``"normalized"`` (AYT: unit direction per sample over all its elements) or ``"raw"``
            (the unnormalised feature-distance gradient g_b).
        eps: floor of ||g_b|| in the normalisation (1e-5); where g_b = 0 (prediction == target) the update is 0.
        reduction: ``"mean"`` (default; gradient w_b g^_b / B), ``"sum"`` (w_b g^_b) or ``"none"`` -> (N,).
        return_distance: also return the unweighted distance values d(D_t,b, D_r,b), detached, float32 (N,).

    Returns:
        float32 loss whose value is the reduced w_b d_b (scalar, or (N,) for ``reduction="none"``); with
        ``return_distance``, (loss, distance).

    Raises:
        ValueError: shape mismatch, bad weight shape, unknown direction/reduction, eps <= 0, a distance_fn that
            does not return shape (N,), or whose value does not depend differentiably on the prediction.

    Examples:
        >>> sq = lambda x, y: (x - y).flatten(1).pow(2).sum(1)
        >>> x = torch.zeros(2, 3, 4, 4, requires_grad=True)
        >>> y = torch.ones(2, 3, 4, 4)
        >>> loss = tangent_loss(x, y, sq, reduction="sum")
        >>> loss.item()                                   # sum_b d_b = 2 * 48
        96.0
        >>> loss.backward()
        >>> x.grad.flatten(1).norm(dim=1)                 # unit step per sample
        tensor([1.0000, 1.0000])

    References:
        B. Kim, B. Cha, J. C. Ye, "Align Your Tangent: Training Better Consistency Models via Manifold-Aligned
        Tangents", arXiv:2510.00658, Sec. 4 (the direction-replacement objective on top of ECT).
    """
    _check_pair(prediction, target, weight)
    _check_options(direction, reduction, eps)
    target = target.detach()

    def per_sample_distance(probe: Tensor) -> Tensor:
        distance = distance_fn(probe, target)
        if not isinstance(distance, Tensor) or distance.shape != prediction.shape[:1]:
            shape = tuple(distance.shape) if isinstance(distance, Tensor) else type(distance).__name__
            raise ValueError(f"distance_fn must return per-sample values of shape (N,) = ({prediction.shape[0]},), "
                             f"got {shape}; use reduction='none' on loss modules such as MFD")
        if not distance.requires_grad:
            raise ValueError("distance_fn's value does not depend differentiably on the prediction")
        return distance

    # torch.func.vjp rather than torch.autograd.grad: the same gradient, and torch.compile(fullgraph=True) captures it
    with torch.enable_grad():  # also under torch.no_grad(): the direction is needed for the value too
        distance, pullback = torch.func.vjp(per_sample_distance, prediction.detach())
        (grad,) = pullback(torch.ones_like(distance))
    grad = grad.detach().float().flatten(1)  # a constant direction: no graph to the distance's parameters
    if direction == "normalized":
        grad = grad / grad.norm(dim=1, keepdim=True).clamp_min(eps)
    flat = prediction.float().flatten(1)
    distance = distance.detach().float()
    values = distance + ((flat - flat.detach()) * grad).sum(1)  # value d_b; gradient g^_b, both exact
    loss = _weighted(values, weight, reduction)
    if return_distance:
        return loss, distance
    return loss


class TangentLoss(nn.Module):
    """:func:`tangent_loss` as a loss module: ``TangentLoss(distance)(prediction, target, weight=None)``.

    Drops in where a host expects a loss module (Lightning, openai/consistency_models' ``KarrasDenoiser``,
    ``ConsistencyObjective``): the value is the weighted feature distance mean_b w_b d_b (what to log), the
    gradient w.r.t. the prediction is AYT's w_b g^_b / B (Kim, Cha & Ye 2025, Sec. 4).

    Adds no parameters of its own; a distance that is an ``nn.Module`` is a submodule (so ``.to(device)``
    reaches it), and :class:`~mfd_loss.MFD` keeps its frozen feature map out of optimisers.

    Args:
        distance: per-sample distance (prediction, target) -> (N,), e.g. ``MFD("cifar10")`` (reduction
            ``"none"``), LPIPS, or a pixel distance.
        direction: ``"normalized"`` (AYT) or ``"raw"``.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.
        eps: floor of ||g_b|| in the normalisation.

    Shape:
        prediction, target: (N, ...) as the distance takes them; weight: (N,) or None. Output: float32 scalar,
        or (N,) for ``reduction="none"``.

    Raises:
        ValueError: unknown direction or reduction, eps <= 0 (at construction); call-time errors of
            :func:`tangent_loss`.

    Examples:
        >>> loss_fn = TangentLoss(lambda x, y: (x - y).flatten(1).pow(2).sum(1))
        >>> x = torch.zeros(2, 3, 4, 4, requires_grad=True)
        >>> loss = loss_fn(x, torch.ones(2, 3, 4, 4), weight=torch.tensor([1.0, 3.0]))
        >>> loss.item()                                   # mean(w * 48)
        96.0
    """

    def __init__(self, distance: nn.Module | Callable[[Tensor, Tensor], Tensor], *, direction: str = "normalized",
                 reduction: str = "mean", eps: float = 1e-5):
        super().__init__()
        if not callable(distance):
            raise ValueError(f"distance must be a callable (prediction, target) -> (N,), got {type(distance).__name__}")
        _check_options(direction, reduction, eps)
        self.distance = distance
        self.direction, self.reduction, self.eps = direction, reduction, float(eps)

    def forward(self, prediction: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        return tangent_loss(prediction, target, self.distance, weight, direction=self.direction, eps=self.eps,
                            reduction=self.reduction)

    def extra_repr(self) -> str:
        return f"direction={self.direction!r}, reduction={self.reduction!r}, eps={self.eps:g}"


def ramp(step: int, ramp_steps: int) -> float:
    """Linear ramp min(1, step / ramp_steps) in [0, 1]; 1 when ramp_steps == 0.

    Raises:
        ValueError: negative step or ramp_steps.
    """
    if step < 0 or ramp_steps < 0:
        raise ValueError("step and ramp_steps must be non-negative")
    return 1.0 if ramp_steps == 0 else min(1.0, step / ramp_steps)


def blend_losses(pixel: Tensor, tangent: Tensor, *, step: int, scale: float = 1.0, ramp_steps: int = 5000) -> Tensor:
    """The AYT blend L_ECT + scale * ramp(step) * L_tangent (off in the paper's runs; 5k-iteration ramp).

    Args:
        pixel: the ECT loss value (scalar or (N,)).
        tangent: the tangent loss value (same shape).
        step: 0-based training iteration.
        scale: lambda, the tangent loss's final weight (>= 0).
        ramp_steps: iterations of the linear 0 -> 1 ramp.
    """
    if scale < 0:
        raise ValueError(f"scale must be non-negative, got {scale}")
    return pixel + scale * ramp(step, ramp_steps) * tangent
