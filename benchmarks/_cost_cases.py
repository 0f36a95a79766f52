"""The cases of benchmarks/cost.py: what each name measures, built as (prediction, target) -> scalar loss."""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch
import torch.nn.functional as F

from _common import lpips_with_weights

CASES = {
    "mfd-cifar10": "MFD cifar10",
    "mfd-cifar10-novalidate": "MFD cifar10, validate_args=False",
    "floor-cifar10": "floor: cifar10 map, 2 fwd + input bwd",
    "ayt-cifar10": "AYT tangent loss (MFD cifar10)",
    "mfd-mnist": "MFD mnist (1 channel)",
    "floor-mnist": "floor: mnist map, 2 fwd + input bwd",
    "lpips-vgg": "LPIPS-VGG",
    "lpips-alex": "LPIPS-Alex",
    "lpips-vgg@224": "LPIPS-VGG @224",
    "lpips-alex@224": "LPIPS-Alex @224",
    "pseudo-huber": "pseudo-Huber (iCT c)",
    "l2": "L2 (MSE)",
}
SMOKE_CASES = ("mfd-cifar10", "mfd-cifar10-novalidate", "floor-cifar10", "ayt-cifar10", "lpips-alex", "pseudo-huber", "l2")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
LPIPS_RANDOM = "random (ImageNet weights absent; same compute)"
Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def input_shape(case: str, resolution: int) -> tuple[int, int, int]:
    """(C, H, W) of a case's inputs: the mnist map takes 1 channel."""
    return (1 if case.endswith("mnist") else 3, resolution, resolution)


VALIDATE_OFF = "-novalidate"


def floor_of(case: str) -> str:
    """The floor case an MFD case is compared with (``mfd-cifar10-novalidate`` -> ``floor-cifar10``)."""
    return "floor-" + case[4:].removesuffix(VALIDATE_OFF)


def build_mfd(name: str, size: int, seed: int, notes: list[str], validate_args: bool = True):
    """The shipped MFD map ``name`` if ``size`` is its resolution, else a seeded random map of its config."""
    from mfd_loss import MFD
    from mfd_loss.feature_maps import build_feature_map

    mfd = MFD(pretrained=name, validate_args=validate_args)
    config = mfd.feature_map.config
    if tuple(config.resolution) == (size, size):
        notes.append(f"shipped {name} weights")
        return mfd
    torch.manual_seed(seed)
    notes.append(f"random weights, {name} config at {size}x{size} (same compute)")
    fmap = build_feature_map(dataclasses.replace(config, resolution=(size, size)))
    return MFD(pretrained=None, feature_map=fmap, validate_args=validate_args)


def build_lpips(net: str, notes: list[str]):
    """LPIPS with the ImageNet backbone when cached, else a random backbone (noted)."""
    from mfd_loss.consistency import LPIPSDistance

    model, _ = lpips_with_weights(net)
    if model is not None:
        notes.append("lpips_backbone: imagenet")
        return model
    notes.append(f"lpips_backbone: {LPIPS_RANDOM}")
    return LPIPSDistance(net=net, pretrained_backbone=False)


def build_case(case: str, size: int, seed: int, device: torch.device) -> tuple[Loss, list[str]]:
    """A callable (prediction, target) -> scalar loss for ``case`` at input size ``size``, and notes on it."""
    from mfd_loss.consistency import pseudo_huber, squared_l2, tangent_loss

    notes: list[str] = []
    kind, _, rest = case.partition("-")
    if kind in ("mfd", "floor", "ayt"):
        validate = not rest.endswith(VALIDATE_OFF)
        if not validate:
            notes.append("validate_args=False: no NaN/Inf or range check, no host synchronisation")
        mfd = build_mfd(rest.removesuffix(VALIDATE_OFF), size, seed, notes, validate).to(device)
        if kind == "mfd":
            return lambda p, t: mfd(p, t).sum(), notes
        if kind == "ayt":
            return lambda p, t: tangent_loss(p, t, mfd, reduction="mean"), notes
        fmap = mfd.feature_map

        def floor(p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                fmap(t)
            return sum(tap.float().sum() for tap in fmap(p))

        return floor, notes
    if kind == "lpips":
        net, _, upsample = rest.partition("@")
        model = build_lpips(net, notes).to(device)
        if not upsample:
            return lambda p, t: model(p, t).sum(), notes
        side = int(upsample)
        notes.append(f"bilinear upsampling to {side}x{side} inside the timed region")

        def resized(p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            up = [F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False) for x in (p, t)]
            return model(*up).sum()

        return resized, notes
    if case == "pseudo-huber":
        return lambda p, t: pseudo_huber(p, t, reduction="sum"), notes
    if case == "l2":
        return lambda p, t: squared_l2(p, t, reduction="sum"), notes
    raise ValueError(f"unknown case {case!r}; choose from {', '.join(CASES)}")


def make_inputs(batch: int, shape: tuple[int, ...], seed: int, device: torch.device):
    """Seeded (prediction, target) in [-1, 1], the same for every case of this batch size and shape."""
    g = torch.Generator().manual_seed(seed)
    pair = [torch.rand(batch, *shape, generator=g) * 2 - 1 for _ in range(2)]
    return pair[0].to(device), pair[1].to(device)
