"""Feature maps: the VGG-with-BatchNorm networks whose activations define the MFD.

METHOD.md Sec. 2 (Kim, Cha & Ye 2025, Sec. 4.1): a VGG-style CNN with BatchNorm, trained from scratch to
regress perturbation parameters. ``forward`` returns the *taps* the distance compares: the output of each
max-pool stage and the K-dimensional regression head (as K channels of size 1x1).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from ._validation import check_images

__all__ = ["VGG_PLANS", "FeatureMapConfig", "VGGFeatureMap", "build_feature_map"]

#: Conv plans (output channels of each 3x3 conv; "M" = 2x2 max-pool) of the VGG family (Simonyan & Zisserman 2015).
VGG_PLANS: dict[str, tuple[int | str, ...]] = {
    "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg13": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    "vgg19": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"),
}


@dataclass(frozen=True)
class FeatureMapConfig:
    """Architecture of a feature map; stored in ``config.json`` as ``"architecture"``.

    Attributes:
        arch: a key of :data:`VGG_PLANS` (``"vgg11"``, ``"vgg13"``, ``"vgg16"``, ``"vgg19"``).
        width: channel multiplier applied to every conv (0.5 = half width); at least 8 channels each.
        in_channels: C of the input images (3 for RGB, 1 for grayscale, more for latents).
        num_labels: K, the number of regression outputs (15 for the full perturbation set).
        resolution: (H, W) the map was trained at. The distance refuses other sizes.
        input_range: (low, high) pixel value range of the training images, [-1, 1] by default.
    """

    arch: str = "vgg16"
    width: float = 1.0
    in_channels: int = 3
    num_labels: int = 15
    resolution: tuple[int, int] = (32, 32)
    input_range: tuple[float, float] = (-1.0, 1.0)

    def __post_init__(self) -> None:
        if self.arch not in VGG_PLANS:
            raise ValueError(f"unknown feature-map architecture {self.arch!r}; choose one of {list(VGG_PLANS)}")
        if not self.width > 0:
            raise ValueError(f"width must be positive, got {self.width}")
        if self.in_channels < 1 or self.num_labels < 1:
            raise ValueError("in_channels and num_labels must be at least 1")
        object.__setattr__(self, "resolution", tuple(int(v) for v in self.resolution))
        object.__setattr__(self, "input_range", tuple(float(v) for v in self.input_range))
        min_size = 2 ** VGG_PLANS[self.arch].count("M")
        if min(self.resolution) < min_size:
            raise ValueError(f"{self.arch} pools {VGG_PLANS[self.arch].count('M')} times and needs inputs of at "
                             f"least {min_size}x{min_size}; got resolution {self.resolution}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["resolution"], d["input_range"] = list(self.resolution), list(self.input_range)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "FeatureMapConfig":
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown feature-map config keys {sorted(unknown)}; expected a subset of {sorted(known)}")
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items()})


class VGGFeatureMap(nn.Module):
    """VGG-BN regressor whose intermediate activations are the manifold features.

    Layers: stages of (3x3 conv, pad 1 -> BatchNorm -> ReLU)* ending in a 2x2 max-pool, then global
    average pooling, flatten and Linear(C_last -> K).

    Args:
        config: the architecture (see :class:`FeatureMapConfig`).

    Shape:
        input: (N, C, H, W) float in ``config.input_range`` ([-1, 1] by default); H, W at least
        2^(number of pools) (32 for every VGG plan).
        output: list of taps; tap i of a pooling stage is (N, C_i, H / 2^(i+1), W / 2^(i+1)); the last
        tap is the head, (N, K, 1, 1). At 32x32 for VGG16: 64x16x16, 128x8x8, 256x4x4, 512x2x2, 512x1x1, Kx1x1.

    Example:
        >>> fmap = VGGFeatureMap(FeatureMapConfig(arch="vgg11", width=0.25)).eval()
        >>> [tuple(t.shape[1:]) for t in fmap(torch.zeros(2, 3, 32, 32))]
        [(16, 16, 16), (32, 8, 8), (64, 4, 4), (128, 2, 2), (128, 1, 1), (15, 1, 1)]
    """

    def __init__(self, config: FeatureMapConfig = FeatureMapConfig()):
        super().__init__()
        self.config = config
        stages, current, channels = [], [], config.in_channels
        for item in VGG_PLANS[config.arch]:
            if item == "M":
                current.append(nn.MaxPool2d(2))
                stages.append(nn.Sequential(*current))
                current = []
            else:
                out = max(8, round(int(item) * config.width))
                current += [nn.Conv2d(channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
                channels = out
        self.stages = nn.ModuleList(stages)
        self.head = nn.Linear(channels, config.num_labels)
        self.min_size = 2 ** len(stages)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)

    @property
    def feature_info(self) -> list[dict[str, Any]]:
        """One entry per tap: name, channels, reduction (stride relative to the input)."""
        info = []
        for i, stage in enumerate(self.stages):
            conv = [m for m in stage if isinstance(m, nn.Conv2d)][-1]
            info.append({"name": f"pool{i + 1}", "channels": conv.out_channels, "reduction": 2 ** (i + 1)})
        info.append({"name": "head", "channels": self.config.num_labels, "reduction": None})
        return info

    def forward(self, x: Tensor) -> list[Tensor]:
        """Return the taps (see the class docstring).

        Raises:
            ValueError: x is not a floating (N, C, H, W) tensor with the right C and H, W >= ``min_size``.
        """
        check_images(x, channels=self.config.in_channels, min_size=self.min_size)
        taps = []
        for stage in self.stages:
            x = stage(x)
            taps.append(x)
        head = self.head(torch.flatten(torch.mean(x, dim=(2, 3)), 1))
        taps.append(head[:, :, None, None])
        return taps

    def predict_labels(self, x: Tensor) -> Tensor:
        """(N, K) regression outputs (the perturbation-parameter estimates)."""
        return self(x)[-1].flatten(1)

    def extra_repr(self) -> str:
        return f"arch={self.config.arch}, width={self.config.width}, labels={self.config.num_labels}"


def build_feature_map(config: FeatureMapConfig | Mapping[str, Any]) -> VGGFeatureMap:
    """Construct an untrained feature map from a config object or its dict form."""
    if not isinstance(config, FeatureMapConfig):
        config = FeatureMapConfig.from_dict(config)
    return VGGFeatureMap(config)
