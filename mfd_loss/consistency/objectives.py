"""Consistency-model training objectives: one object per ``--loss`` choice, built by name.

:func:`build_objective` maps a name (``"mfd"``, ``"lpips"``, ``"pseudo-huber"``, ``"l2"``) to a ready
:class:`ConsistencyObjective`, the one place a training script's ``--loss`` flag goes through. The losses it
combines (AYT's tangent loss, pseudo-Huber, the blend) are in :mod:`mfd_loss.consistency.losses`; the LPIPS
baseline (Zhang et al. 2018) is :class:`LPIPSDistance`.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Callable, NamedTuple

import torch
from torch import Tensor, nn

from .losses import _check_options, _weighted, blend_losses, pseudo_huber, squared_l2, tangent_loss

__all__ = ["LPIPSDistance", "ObjectiveOutput", "ConsistencyObjective", "OBJECTIVES", "build_objective"]


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
    from ..loss import MFD

    mfd = MFD(pretrained=options["mfd_pretrained"], distance=options["mfd_distance"])
    if options["mfd_init"] == "random":  # the control: the same architecture, untrained (seeded, reproducible)
        from ..diagnostics import random_init_like

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
