"""Architecture description of a feature map, stored in ``config.json`` as ``"architecture"``."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping

__all__ = ["VGG_PLANS", "RESNET_PLANS", "FeatureMapConfig", "default_num_stages"]

#: Conv plans of the VGG family (Simonyan & Zisserman 2015): output channels of each 3x3 conv, "M" = 2x2 max-pool.
VGG_PLANS: dict[str, tuple[int | str, ...]] = {
    "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg13": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    "vgg19": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"),
}

#: Basic blocks per stage of the ResNet family (He et al. 2016), CIFAR-style 3x3 stem, widths 64-128-256-512.
RESNET_PLANS: dict[str, tuple[int, ...]] = {
    "resnet10": (1, 1, 1, 1),
    "resnet18": (2, 2, 2, 2),
    "resnet34": (3, 4, 6, 3),
}


def max_stages(arch: str) -> int:
    return VGG_PLANS[arch].count("M") if arch in VGG_PLANS else len(RESNET_PLANS[arch])


def min_input_size(arch: str, num_stages: int) -> int:
    """Smallest H and W a network can serve: each VGG stage halves; ResNet stages after the first halve."""
    return 2 ** num_stages if arch in VGG_PLANS else 2 ** (num_stages - 1)


def default_num_stages(arch: str, resolution: tuple[int, int]) -> int:
    """As many stages as the architecture has and the resolution allows (e.g. VGG: 5 at 32 px, 4 at 28 px)."""
    fit = int(math.floor(math.log2(min(resolution))))
    fit = fit if arch in VGG_PLANS else fit + 1
    return max(1, min(max_stages(arch), fit))


@dataclass(frozen=True)
class FeatureMapConfig:
    """Architecture of a feature map.

    Attributes:
        arch: a key of :data:`VGG_PLANS` (``"vgg11"`` ... ``"vgg19"``) or :data:`RESNET_PLANS`
            (``"resnet10"``, ``"resnet18"``, ``"resnet34"``).
        width: channel multiplier of every conv (0.5 = half width); at least 8 channels each.
        in_channels: C of the input (3 RGB, 1 grayscale, 4+ latents).
        num_labels: K, the number of regression outputs (15 for the full perturbation set).
        resolution: (H, W) the map was trained at; the distance refuses other sizes.
        input_range: (low, high) value range the network itself takes, [-1, 1] by default.
        num_stages: stages kept (each ends in a tap); None = as many as ``resolution`` allows.
        data_range: (low, high) range of the float data the map was trained from (``mfd-loss train
            --input-range``), which training mapped linearly onto ``input_range``; :class:`~mfd_loss.MFD` takes
            inputs in this range and applies the same mapping. None (images, uint8 data): inputs in ``input_range``.

    Raises:
        ValueError: unknown arch, non-positive width/channels/labels, or a resolution too small.
    """

    arch: str = "vgg16"
    width: float = 1.0
    in_channels: int = 3
    num_labels: int = 15
    resolution: tuple[int, int] = (32, 32)
    input_range: tuple[float, float] = (-1.0, 1.0)
    num_stages: int | None = None
    data_range: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.arch not in VGG_PLANS and self.arch not in RESNET_PLANS:
            raise ValueError(f"unknown feature-map architecture {self.arch!r}; choose one of "
                             f"{list(VGG_PLANS) + list(RESNET_PLANS)}")
        if not self.width > 0:
            raise ValueError(f"width must be positive, got {self.width}")
        if self.in_channels < 1 or self.num_labels < 1:
            raise ValueError("in_channels and num_labels must be at least 1")
        object.__setattr__(self, "resolution", tuple(int(v) for v in self.resolution))
        object.__setattr__(self, "input_range", tuple(float(v) for v in self.input_range))
        if self.data_range is not None:
            object.__setattr__(self, "data_range", tuple(float(v) for v in self.data_range))
            if len(self.data_range) != 2 or not self.data_range[0] < self.data_range[1]:
                raise ValueError(f"data_range must be (low, high) with low < high, got {self.data_range}")
        stages = default_num_stages(self.arch, self.resolution) if self.num_stages is None else int(self.num_stages)
        if not 1 <= stages <= max_stages(self.arch):
            raise ValueError(f"{self.arch} has 1 to {max_stages(self.arch)} stages, got num_stages={stages}")
        object.__setattr__(self, "num_stages", stages)
        need = min_input_size(self.arch, stages)
        if min(self.resolution) < need:
            raise ValueError(f"{self.arch} with {stages} stages needs inputs of at least {need}x{need}; got "
                             f"resolution {self.resolution} (use fewer stages: num_stages)")

    @property
    def min_size(self) -> int:
        """Smallest H and W the network can serve."""
        return min_input_size(self.arch, self.num_stages)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["resolution"], d["input_range"] = list(self.resolution), list(self.input_range)
        if self.data_range is None:
            del d["data_range"]  # files of maps trained on images stay as they were
        else:
            d["data_range"] = list(self.data_range)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "FeatureMapConfig":
        """Inverse of :meth:`to_dict`.

        Raises:
            ValueError: keys this version does not know.
        """
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown feature-map config keys {sorted(unknown)}; expected a subset of {sorted(known)}")
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items()})
