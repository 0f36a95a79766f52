"""mfd-loss: the Manifold Feature Distance (MFD) of "Align Your Tangent" as a PyTorch loss.

>>> from mfd_loss import MFD
>>> loss_fn = MFD(pretrained="cifar10")          # doctest: +SKIP
>>> loss = loss_fn(prediction, target)           # (N,) per-sample values, inputs in [-1, 1]  # doctest: +SKIP

The package is laid out by concern; imports flow from the outer folders to the core, never back:

- the core: :mod:`mfd_loss.loss` (the :class:`MFD` module), :mod:`mfd_loss.distance`,
  :mod:`mfd_loss.feature_maps`, :mod:`mfd_loss.perturbations`, :mod:`mfd_loss.diagnostics`;
- :mod:`mfd_loss.hub`: pretrained maps as files and on the Hugging Face Hub (used by the core's
  ``MFD(pretrained=...)`` and ``save_pretrained`` / ``from_pretrained``);
- :mod:`mfd_loss.training`: training your own feature map;
- :mod:`mfd_loss.consistency`: consistency models with the AYT loss (ECT helpers, objectives, samplers);
- :mod:`mfd_loss.cli`: the ``mfd-loss`` command.
"""

from . import _deprecated
from ._validation import InputRangeWarning
from .distance import manifold_feature_distance
from .feature_maps import FeatureMapConfig, VGGFeatureMap, build_feature_map
from .loss import MFD, ManifoldFeatureDistance
from .perturbations import LabelSpec, Perturbations, label_spec
from .hub.pretrained import list_pretrained, load_pretrained
from .hub.serialization import load_feature_map, save_feature_map
from .training.config import TrainConfig
from .training.datasets import load_sample_images
from .training.loop import train_feature_map
from . import consistency, diagnostics
from .consistency.losses import TangentLoss, pseudo_huber, tangent_loss

__version__ = "0.3.0"

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
    "save_feature_map",
    "load_feature_map",
    "TrainConfig",
    "train_feature_map",
    "load_sample_images",
    "tangent_loss",
    "TangentLoss",
    "pseudo_huber",
]

# mfd-loss 0.2 import paths (mfd_loss.trainer, mfd_loss.pretrained, mfd_loss.download_pretrained, ...) keep
# working until 0.4, with a DeprecationWarning naming the new path.
_deprecated.install()
__getattr__ = _deprecated.package_getattr
