"""Consistency-model training objectives: AYT's direction-replacement (tangent) loss and its baselines.

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

:func:`build_objective` maps a name (``"mfd"``, ``"lpips"``, ``"pseudo-huber"``, ``"l2"``) to a ready
:class:`ConsistencyObjective`, the one place a training script's ``--loss`` flag goes through.
"""

from __future__ import annotations

import math
import os
import warnings
from typing import Any, Callable, NamedTuple

import torch
from torch import Tensor, nn

from .distance import REDUCTIONS, reduce

__all__ = [
    "ICT_HUBER_CONSTANT", "DIRECTIONS", "pseudo_huber", "squared_l2", "tangent_loss", "TangentLoss", "ramp",
    "blend_losses",
    "LPIPSDistance", "ObjectiveOutput", "ConsistencyObjective", "OBJECTIVES", "build_objective",
]

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

    Computes g_b = d d(D_t,b, D_r,b) / d D_t,b with ``torch.autograd.grad`` w.r.t. a detached copy of the
    prediction (no graph is kept, and no parameter of the distance receives a gradient or a ``.grad``), then

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
    with torch.enable_grad():  # also under torch.no_grad(): the direction is needed for the value too
        probe = prediction.detach().requires_grad_(True)
        distance = distance_fn(probe, target.detach())
        if not isinstance(distance, Tensor) or distance.shape != prediction.shape[:1]:
            shape = tuple(distance.shape) if isinstance(distance, Tensor) else type(distance).__name__
            raise ValueError(f"distance_fn must return per-sample values of shape (N,) = ({prediction.shape[0]},), "
                             f"got {shape}; use reduction='none' on loss modules such as MFD")
        if not distance.requires_grad:
            raise ValueError("distance_fn's value does not depend differentiably on the prediction")
        (grad,) = torch.autograd.grad(distance.sum(), probe)
    grad = grad.float().flatten(1)
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


class LPIPSDistance(nn.Module):
    """LPIPS (Zhang et al. 2018) through the ``lpips`` package, frozen, returning per-sample values (N,).

    Inputs in [-1, 1], (N, 3, H, W) or (N, 1, H, W) (grey images are repeated to 3 channels); used at the
    images' own size (no upsampling), as in AYT's LPIPS baseline.

    Args:
        net: LPIPS backbone, ``"vgg"``, ``"alex"`` or ``"squeeze"``.
        pretrained_backbone: False builds a randomly initialised backbone (for tests only: the values mean
            nothing). True needs torchvision's ImageNet weights of the backbone.
        allow_download: when the backbone weights are not in the torch hub cache, let torchvision download
            them (False: fail at once with the message below).

    Raises:
        ImportError: the ``lpips`` package is missing (``pip install lpips``).
        RuntimeError: the backbone's ImageNet weights are neither in the torch hub cache nor downloadable; the
            message names the file and where to put it.
    """

    def __init__(self, net: str = "vgg", pretrained_backbone: bool = True, allow_download: bool = True):
        super().__init__()
        try:
            import lpips
        except ImportError as err:
            raise ImportError("the LPIPS baseline needs the lpips package: pip install lpips "
                              "(or pip install 'mfd-loss[examples]')") from err
        if net not in ("vgg", "alex", "squeeze"):
            raise ValueError(f"net must be 'vgg', 'alex' or 'squeeze', got {net!r}")
        url, cached = _backbone_weights(net)
        if pretrained_backbone and not allow_download and not os.path.isfile(cached):
            raise RuntimeError(_lpips_weights_message(net, "downloads are switched off (allow_download=False)"))
        try:
            with warnings.catch_warnings():  # lpips passes torchvision's deprecated pretrained= argument
                warnings.simplefilter("ignore", UserWarning)
                model = lpips.LPIPS(net=net, pnet_rand=not pretrained_backbone, verbose=False)
        except Exception as err:  # urllib / OSError / RuntimeError from torchvision's weight download
            raise RuntimeError(_lpips_weights_message(net, f"{type(err).__name__}: {err}")) from err
        self.lpips = model.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> "LPIPSDistance":
        super().train(mode)
        self.lpips.eval()
        return self

    def forward(self, prediction: Tensor, target: Tensor) -> Tensor:
        if prediction.shape[1] == 1:
            prediction, target = prediction.expand(-1, 3, -1, -1), target.expand(-1, 3, -1, -1)
        return self.lpips(prediction, target, normalize=False).flatten().float()


def _backbone_weights(net: str) -> tuple[str, str]:
    """URL of torchvision's ImageNet weights for an LPIPS backbone and the torch hub cache path they load from."""
    import torchvision

    enum = {"vgg": "VGG16_Weights", "alex": "AlexNet_Weights", "squeeze": "SqueezeNet1_1_Weights"}[net]
    url = getattr(torchvision.models, enum).IMAGENET1K_V1.url
    return url, os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))


def _lpips_weights_message(net: str, reason: str) -> str:
    url, path = _backbone_weights(net)
    return (f"LPIPS ({net}) needs torchvision's ImageNet weights of its backbone, which are not in the torch hub "
            f"cache and could not be downloaded ({reason}). Download {url} on a machine with network access and "
            f"place it at {path} (the folder follows $TORCH_HOME), then rerun; or pick another loss (mfd, "
            "pseudo-huber, l2).")


class ObjectiveOutput(NamedTuple):
    """What a :class:`ConsistencyObjective` returns.

    Attributes:
        loss: scalar to call ``.backward()`` on.
        distance: (N,) float32 detached per-sample discrepancy between prediction and target under the
            objective's own distance (unweighted): MFD / LPIPS value, pseudo-Huber value or mean squared error.
            Its weighted mean is the number to watch for progress.
    """

    loss: Tensor
    distance: Tensor


class ConsistencyObjective(nn.Module):
    """A consistency-training loss: ``objective(prediction, target, weight, step) -> ObjectiveOutput``.

    Either a pixel loss (``pixel="pseudo-huber"`` or ``"l2"``; loss = mean_b w_b * value_b) or the tangent
    loss of a feature distance (``distance`` given; optionally blended with ECT's loss). In both cases the loss
    value is mean_b w_b * distance_b (blended: ECT's value plus lambda * ramp * that), so it can be logged.

    Args:
        name: label for logs.
        distance: feature distance (an nn.Module or callable (x, y) -> (N,)); None for pixel losses.
        pixel: ``"pseudo-huber"`` or ``"l2"`` when ``distance`` is None.
        huber_c: pseudo-Huber constant (None: iCT's 0.00054 sqrt(d); 0: ECT).
        direction: ``"normalized"`` or ``"raw"`` (feature distances only).
        blend: None (the tangent loss alone, as in the paper) or lambda: pseudo-Huber(c=0) + lambda * ramp * tangent.
        ramp_steps: length of the blend's linear ramp.

    Shape:
        prediction, target: (N, C, H, W); weight: (N,) or None.
    """

    def __init__(
        self,
        name: str,
        *,
        distance: nn.Module | Callable[[Tensor, Tensor], Tensor] | None = None,
        pixel: str | None = None,
        huber_c: float | None = 0.0,
        direction: str = "normalized",
        blend: float | None = None,
        ramp_steps: int = 5000,
    ):
        super().__init__()
        if (distance is None) == (pixel is None):
            raise ValueError("give exactly one of distance= (a feature distance) and pixel= ('pseudo-huber' or 'l2')")
        if pixel not in (None, "pseudo-huber", "l2"):
            raise ValueError(f"pixel must be 'pseudo-huber' or 'l2', got {pixel!r}")
        _check_options(direction)
        if blend is not None and blend < 0:
            raise ValueError(f"blend must be None or non-negative, got {blend}")
        self.name = name
        self.distance = distance
        self.pixel = pixel
        self.huber_c = huber_c
        self.direction = direction
        self.blend = blend
        self.ramp_steps = int(ramp_steps)

    def forward(self, prediction: Tensor, target: Tensor, weight: Tensor | None = None, step: int = 0) -> ObjectiveOutput:
        target = target.detach()
        if self.distance is None:
            if self.pixel == "l2":
                values = squared_l2(prediction, target)
            else:
                values = pseudo_huber(prediction, target, self.huber_c)
            return ObjectiveOutput(_weighted(values, weight, "mean"), values.detach())
        loss, distance = tangent_loss(prediction, target, self.distance, weight, direction=self.direction,
                                      return_distance=True)
        if self.blend is not None:
            ect = pseudo_huber(prediction, target, 0.0, weight=weight, reduction="mean")
            loss = blend_losses(ect, loss, step=step, scale=self.blend, ramp_steps=self.ramp_steps)
        return ObjectiveOutput(loss, distance)

    def extra_repr(self) -> str:
        if self.distance is None:
            return f"name={self.name!r}, pixel={self.pixel!r}" + (f", c={self.huber_c}" if self.pixel != "l2" else "")
        return f"name={self.name!r}, direction={self.direction!r}, blend={self.blend}"


def _build_mfd(options: dict[str, Any]) -> ConsistencyObjective:
    from .loss import MFD

    mfd = MFD(pretrained=options["mfd_pretrained"], distance=options["mfd_distance"])
    if options["mfd_init"] == "random":  # the control: the same architecture, untrained (seeded, reproducible)
        from .diagnostics import random_init_like

        mfd = random_init_like(mfd, seed=0)
    elif options["mfd_init"] != "pretrained":
        raise ValueError(f"mfd_init must be 'pretrained' or 'random', got {options['mfd_init']!r}")
    return ConsistencyObjective("mfd", distance=mfd, direction=options["direction"], blend=options["blend"],
                                ramp_steps=options["ramp_steps"])


def _build_lpips(options: dict[str, Any]) -> ConsistencyObjective:
    return ConsistencyObjective("lpips", distance=LPIPSDistance(options["lpips_net"]), direction=options["direction"],
                                blend=options["blend"], ramp_steps=options["ramp_steps"])


def _build_pseudo_huber(options: dict[str, Any]) -> ConsistencyObjective:
    return ConsistencyObjective("pseudo-huber", pixel="pseudo-huber", huber_c=options["huber_c"])


def _build_l2(options: dict[str, Any]) -> ConsistencyObjective:
    return ConsistencyObjective("l2", pixel="l2")


#: name -> builder; the names a ``--loss`` flag offers.
OBJECTIVES: dict[str, Callable[[dict[str, Any]], ConsistencyObjective]] = {
    "mfd": _build_mfd,
    "lpips": _build_lpips,
    "pseudo-huber": _build_pseudo_huber,
    "l2": _build_l2,
}


def build_objective(
    name: str,
    *,
    direction: str = "normalized",
    blend: float | None = None,
    ramp_steps: int = 5000,
    mfd_pretrained: str | os.PathLike = "cifar10",
    mfd_distance: str = "group",
    mfd_init: str = "pretrained",
    lpips_net: str = "vgg",
    huber_c: float | None = 0.0,
) -> ConsistencyObjective:
    """Build a consistency-training objective by name (the registry behind a ``--loss`` flag).

    ==================  ===============================================================================
    name                objective
    ==================  ===============================================================================
    ``"mfd"``           tangent loss of the MFD (AYT); ``mfd_pretrained``, ``mfd_distance``, ``direction``, ``blend``
    ``"lpips"``         tangent loss of LPIPS (``lpips_net``), same direction options
    ``"pseudo-huber"``  w * pseudo-Huber(c = ``huber_c``): ECT with c = 0 (default), iCT with None
    ``"l2"``            w * mean squared error (original consistency training)
    ==================  ===============================================================================

    ``mfd_init="random"`` keeps the architecture of ``mfd_pretrained`` but not its weights: an untrained map
    (seed 0), the control that tells a learned manifold feature map from any network of that shape.

    Options that do not apply to the chosen name are ignored. Move the result to the training device with
    ``.to(device)``.

    Returns:
        a :class:`ConsistencyObjective`.

    Raises:
        ValueError: unknown name (the message lists the known ones) or invalid options.
        FileNotFoundError / KeyError: MFD weights that cannot be resolved (see :class:`~mfd_loss.MFD`).
        ImportError / RuntimeError: LPIPS without the ``lpips`` package or its backbone weights.

    Examples:
        >>> objective = build_objective("pseudo-huber")
        >>> x = torch.zeros(2, 3, 8, 8, requires_grad=True)
        >>> out = objective(x, torch.ones(2, 3, 8, 8), weight=torch.tensor([1.0, 2.0]))
        >>> round(out.loss.item(), 3), out.distance        # mean(w * ||x - y||), ||x - y|| = sqrt(192)
        (20.785, tensor([13.8564, 13.8564]))
    """
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; choose one of {sorted(OBJECTIVES)}")
    return OBJECTIVES[name]({
        "direction": direction, "blend": blend, "ramp_steps": ramp_steps, "mfd_pretrained": mfd_pretrained,
        "mfd_distance": mfd_distance, "mfd_init": mfd_init, "lpips_net": lpips_net, "huber_c": huber_c,
    })
