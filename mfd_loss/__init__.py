"""mfd-loss: the Manifold Feature Distance (MFD) of "Align Your Tangent" as a PyTorch loss.

>>> from mfd_loss import MFD
>>> loss_fn = MFD(pretrained="cifar10")          # doctest: +SKIP
>>> loss = loss_fn(prediction, target)           # (N,) per-sample values, inputs in [-1, 1]  # doctest: +SKIP
"""

from ._validation import InputRangeWarning
from .datasets import load_sample_images
from .distance import manifold_feature_distance
from .feature_maps import FeatureMapConfig, VGGFeatureMap, build_feature_map
from .loss import MFD, ManifoldFeatureDistance
from .perturbations import LabelSpec, Perturbations, label_spec
from .pretrained import download_pretrained, list_pretrained, load_pretrained
from .serialization import load_feature_map, save_feature_map
from .trainer import TrainConfig, train_feature_map
from . import consistency, diagnostics, sampling
from .objectives import TangentLoss, pseudo_huber, tangent_loss

__version__ = "0.2.0"

__all__ = [
    "ManifoldFeatureDistance",
    "MFD",
    "manifold_feature_distance",
    "InputRangeWarning",
    "VGGFeatureMap",
    "FeatureMapConfig",
    "build_feature_map",
    "Perturbations",
    "LabelSpec",
    "label_spec",
    "list_pretrained",
    "load_pretrained",
    "download_pretrained",
    "save_feature_map",
    "load_feature_map",
    "TrainConfig",
    "train_feature_map",
    "load_sample_images",
    "tangent_loss",
    "TangentLoss",
    "pseudo_huber",
    "consistency",
    "diagnostics",
    "sampling",
]
