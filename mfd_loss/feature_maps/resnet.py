"""ResNet feature maps behind the same tap interface (He et al. 2016, CIFAR-style stem)."""

from __future__ import annotations

from torch import Tensor, nn

from .base import TapFeatureMap, scaled
from .config import RESNET_PLANS, FeatureMapConfig

__all__ = ["ResNetFeatureMap"]


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 conv-BN) shortcut, ReLU after the sum."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(out_channels))

    def forward(self, x: Tensor) -> Tensor:
        y = self.bn2(self.conv2(nn.functional.relu(self.bn1(self.conv1(x)))))
        return nn.functional.relu(y + self.shortcut(x))


class ResNetFeatureMap(TapFeatureMap):
    """ResNet regressor: 3x3 conv-BN-ReLU stem, stages of basic blocks (the first at stride 1, the
    others halving the resolution), global average pooling and Linear(C_last -> K).

    Taps: each stage's output and the head. At 32x32 with width 1: 64x32x32, 128x16x16, 256x8x8,
    512x4x4, Kx1x1.

    Args:
        config: the architecture (:class:`FeatureMapConfig` with a ResNet ``arch``).

    Examples:
        >>> import torch
        >>> fmap = ResNetFeatureMap(FeatureMapConfig(arch="resnet10", width=0.25, num_labels=7)).eval()
        >>> [tuple(t.shape[1:]) for t in fmap(torch.zeros(2, 3, 32, 32))]
        [(16, 32, 32), (32, 16, 16), (64, 8, 8), (128, 4, 4), (7, 1, 1)]
    """

    architectures = tuple(RESNET_PLANS)

    def __init__(self, config: FeatureMapConfig):
        super().__init__()
        if config.arch not in RESNET_PLANS:
            raise ValueError(f"ResNetFeatureMap needs a ResNet arch, got {config.arch!r}")
        self.config = config
        channels = scaled(64, config.width)
        self.stem = nn.Sequential(nn.Conv2d(config.in_channels, channels, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(channels), nn.ReLU(inplace=True))
        stages = []
        for i, blocks in enumerate(RESNET_PLANS[config.arch][:config.num_stages]):
            out = scaled(64 * 2**i, config.width)
            layers = [BasicBlock(channels, out, stride=1 if i == 0 else 2)]
            layers += [BasicBlock(out, out, stride=1) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*layers))
            channels = out
        stages[0] = nn.Sequential(self.stem, *stages[0])
        del self.stem
        self.stages = nn.ModuleList(stages)
        self.head = nn.Linear(channels, config.num_labels)
        self.reset_parameters()
