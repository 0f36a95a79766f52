"""``ManifoldFeatureDistance`` (alias ``MFD``): the loss module users drop in where LPIPS was."""

from __future__ import annotations

import copy
import os
from typing import Any

import torch
from torch import Tensor, nn

from ._validation import check_finite_and_range
from .distance import DISTANCES, REDUCTIONS, manifold_feature_distance
from .hub import LossHubMixin
from .pretrained import load_pretrained

__all__ = ["ManifoldFeatureDistance", "MFD"]


class ManifoldFeatureDistance(LossHubMixin, nn.Module):
    """Manifold Feature Distance between predictions and targets (METHOD.md Sec. 4).

    The feature map is frozen (no parameter requires grad, so a parent's optimiser can never update it)
    and locked in eval mode (a parent's ``.train()`` leaves its BatchNorm statistics untouched); gradients
    flow to the inputs only. The module follows ``.to(device)`` and accepts fp32/fp16/bf16 inputs and
    ``torch.autocast``; each sample's value is independent of the rest of the batch.

    Args:
        pretrained: a registered name (``"cifar10"``, see :func:`mfd_loss.list_pretrained`), a Hugging Face Hub
            repo ``"org/repo"`` or ``"org/repo@revision"`` (downloaded once into the Hub cache; see
            ``docs/hub.md``), a local folder with ``model.safetensors`` + ``config.json`` or such a file, or None
            when ``feature_map`` is given. ``ManifoldFeatureDistance.from_pretrained`` adds ``revision=``,
            ``cache_dir=``, ``local_files_only=`` and ``token=``; ``save_pretrained`` / ``push_to_hub`` publish.
        feature_map: use this network instead (a deep copy is frozen; the caller's module is left as is).
        distance: ``"group"`` (default; per-(tap, channel) group-L2, the authors' form) or ``"squared"``
            (the squared feature distance written in the paper's prose).
        normalize: True when inputs are in [0, 1] (they are mapped to [-1, 1]); default False: [-1, 1].
        reduction: ``"none"`` (default) -> shape (N,); ``"mean"`` / ``"sum"`` -> scalar.

    Shape:
        prediction, target: (N, C, H, W) with C and (H, W) those of the feature map (3 and 32x32 for
        ``"cifar10"``). Output: (N,) float32, or a scalar.

    Raises:
        ValueError: unknown ``distance``/``reduction``; both or neither of ``pretrained``/``feature_map``;
            bad input shapes, channel counts, NHWC layout, sizes, weights or NaN/Inf at call time.
        KeyError: unknown pretrained name.
        TypeError: ``feature_map`` is not a feature map (an nn.Module with a ``config``).

    Warns:
        InputRangeWarning: inputs clearly in [0, 1] or [0, 255] while [-1, 1] is expected (or the reverse
            with ``normalize=True``). Slight overshoot never warns.

    Examples:
        >>> from mfd_loss import MFD, VGGFeatureMap, FeatureMapConfig
        >>> loss_fn = MFD(pretrained=None, feature_map=VGGFeatureMap(FeatureMapConfig(arch="vgg11", width=0.25)))
        >>> x = torch.zeros(4, 3, 32, 32, requires_grad=True)
        >>> loss_fn(x, torch.full((4, 3, 32, 32), 0.1)).shape
        torch.Size([4])

    References:
        B. Kim, B. Cha, J. C. Ye, "Align Your Tangent: Training Better Consistency Models via
        Manifold-Aligned Tangents", arXiv:2510.00658, Sec. 4.
    """

    def __init__(
        self,
        pretrained: str | os.PathLike | None = "cifar10",
        feature_map: nn.Module | None = None,
        distance: str = "group",
        normalize: bool = False,
        reduction: str = "none",
    ):
        super().__init__()
        if distance not in DISTANCES:
            raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        if feature_map is not None and pretrained not in (None, "cifar10"):
            raise ValueError("pass either pretrained= or feature_map=, not both")
        if feature_map is None and pretrained is None:
            raise ValueError("pass pretrained= (a name such as 'cifar10', or a path) or feature_map=")
        self.config: dict[str, Any] = {}
        if feature_map is None:
            feature_map, self.config = load_pretrained(pretrained)
        else:
            config = getattr(feature_map, "config", None)
            if not isinstance(feature_map, nn.Module) or not all(
                    hasattr(config, a) for a in ("in_channels", "resolution", "input_range")):
                raise TypeError("feature_map must be an nn.Module with a `config` (in_channels, resolution, "
                                "input_range) that returns a list of taps, e.g. mfd_loss.VGGFeatureMap or a map "
                                "loaded with mfd_loss.load_feature_map")
            feature_map = copy.deepcopy(feature_map)
        self.feature_map = feature_map.eval().requires_grad_(False)
        self.distance = distance
        self.normalize = bool(normalize)
        self.reduction = reduction

    def train(self, mode: bool = True) -> "ManifoldFeatureDistance":
        """Set this module's mode; the feature map stays in eval mode whatever ``mode`` is."""
        super().train(mode)
        self.feature_map.eval()
        return self

    def forward(self, prediction: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        """Distance between prediction and target.

        Args:
            prediction: (N, C, H, W) float; the gradient flows to it.
            target: (N, C, H, W) float, same shape; computed without autograd unless it requires grad.
            weight: optional (N,) per-sample weights (e.g. the consistency-model weighting 1 / (t - r)).

        Returns:
            float32 (N,) for ``reduction="none"``, else a scalar.
        """
        if self.normalize:
            for name, x in (("prediction", prediction), ("target", target)):
                if isinstance(x, Tensor) and x.is_floating_point():
                    check_finite_and_range(x, expected=(0.0, 1.0), name=name)
            prediction, target = prediction * 2 - 1, target * 2 - 1
        return manifold_feature_distance(
            self.feature_map, prediction, target, distance=self.distance, weight=weight,
            reduction=self.reduction, check_range=not self.normalize,
        )

    def extra_repr(self) -> str:
        return f"distance={self.distance!r}, normalize={self.normalize}, reduction={self.reduction!r}"


MFD = ManifoldFeatureDistance
