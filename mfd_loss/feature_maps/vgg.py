"""VGG with BatchNorm: the paper's feature-map family (METHOD.md Sec. 2; Kim, Cha & Ye 2025, Sec. 4.1)."""

from __future__ import annotations

from torch import nn

from .base import TapFeatureMap, scaled
from .config import VGG_PLANS, FeatureMapConfig

__all__ = ["VGGFeatureMap"]


class VGGFeatureMap(TapFeatureMap):
    """VGG-BN regressor whose stage outputs are the manifold features.

    Stages of (3x3 conv, pad 1 -> BatchNorm -> ReLU)* each ending in a 2x2 max-pool, then global average
    pooling and Linear(C_last -> K). Taps: every max-pool output and the head.

    Args:
        config: the architecture (:class:`FeatureMapConfig` with a VGG ``arch``).

    Shape:
        input (N, C, H, W) in ``config.input_range`` with H, W >= 2^num_stages (32 for 5 stages);
        tap i is (N, C_i, H / 2^(i+1), W / 2^(i+1)); the head tap is (N, K, 1, 1). VGG16 at 32x32:
        64x16x16, 128x8x8, 256x4x4, 512x2x2, 512x1x1, Kx1x1 (about 14.7 M parameters with K = 15).

    Examples:
        >>> import torch
        >>> fmap = VGGFeatureMap(FeatureMapConfig(arch="vgg11", width=0.25)).eval()
        >>> [tuple(t.shape[1:]) for t in fmap(torch.zeros(2, 3, 32, 32))]
        [(16, 16, 16), (32, 8, 8), (64, 4, 4), (128, 2, 2), (128, 1, 1), (15, 1, 1)]
    """

    architectures = tuple(VGG_PLANS)

    def __init__(self, config: FeatureMapConfig = FeatureMapConfig()):
        super().__init__()
        if config.arch not in VGG_PLANS:
            raise ValueError(f"VGGFeatureMap needs a VGG arch, got {config.arch!r}")
        self.config = config
        stages, current, channels = [], [], config.in_channels
        for item in VGG_PLANS[config.arch]:
            if len(stages) == config.num_stages:
                break
            if item == "M":
                current.append(nn.MaxPool2d(2))
                stages.append(nn.Sequential(*current))
                current = []
            else:
                out = scaled(int(item), config.width)
                current += [nn.Conv2d(channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
                channels = out
        self.stages = nn.ModuleList(stages)
        self.head = nn.Linear(channels, config.num_labels)
        self.reset_parameters()
