"""Feature maps: networks trained to regress perturbation parameters, whose activations define the MFD.

``forward`` returns the *taps* the distance compares: every stage output and the K-dimensional head.
"""

from __future__ import annotations

from typing import Any, Mapping

from .base import TapFeatureMap
from .config import RESNET_PLANS, VGG_PLANS, FeatureMapConfig, default_num_stages
from .resnet import ResNetFeatureMap
from .vgg import VGGFeatureMap

__all__ = ["VGG_PLANS", "RESNET_PLANS", "FeatureMapConfig", "TapFeatureMap", "VGGFeatureMap", "ResNetFeatureMap",
           "build_feature_map", "default_num_stages"]


def build_feature_map(config: FeatureMapConfig | Mapping[str, Any]) -> TapFeatureMap:
    """Construct an untrained feature map of the configured family (VGG or ResNet).

    Raises:
        ValueError: an invalid config (see :class:`FeatureMapConfig`).
    """
    if not isinstance(config, FeatureMapConfig):
        config = FeatureMapConfig.from_dict(config)
    return VGGFeatureMap(config) if config.arch in VGG_PLANS else ResNetFeatureMap(config)
