"""``ManifoldFeatureDistance`` (alias ``MFD``): the loss module users drop in where LPIPS was."""

from __future__ import annotations

import copy
import os
from typing import Any

import torch
from torch import Tensor, nn

from ._validation import InputRangeWarning, check_finite_and_range, warn_at_caller
from .distance import DISTANCES, REDUCTIONS, RESIZE_MODES, check_pair, manifold_feature_distance
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
        resize: serving sizes other than the map's resolution is an explicit opt-in. None (default): other sizes
            raise. ``"tiles"`` (recommended when H and W are multiples of the map's size): the map runs on the
            non-overlapping tiles of its own size and the tiles' distances are averaged; it kept the trained map's
            tangent alignment at 64 and 128 px (``benchmarks/resolution.py``), at T times the compute for T tiles.
            ``"antialias"``: both inputs are resized to the map's resolution (bilinear, antialiased) first; any
            size, the cost of one native call, but blind to detail finer than the map's resolution and less
            aligned in that measurement.
        validate_args: check input values on every call: NaN/Inf raise, inputs clearly in another range warn.
            This costs one host synchronisation per call; with False (shape checks still run) the call has no
            data-dependent branch, so ``torch.compile(fullgraph=True)``, ``torch.export`` and
            ``torch.func.vmap`` capture it (as torchmetrics' ``validate_args``).

    Shape:
        prediction, target: (N, C, H, W) with C and (H, W) those of the feature map (3 and 32x32 for
        ``"cifar10"``; other sizes with ``resize``). Values in [-1, 1] ([0, 1] with ``normalize=True``; a map
        trained on other float data, e.g. latents, takes the range recorded as ``config.data_range``).
        Output: (N,) float32, or a scalar.

    Raises:
        ValueError: unknown ``distance``/``reduction``; both or neither of ``pretrained``/``feature_map``;
            bad input shapes, channel counts, NHWC layout, sizes, weights or NaN/Inf at call time.
        KeyError: unknown pretrained name.
        TypeError: ``feature_map`` is not a feature map (an nn.Module with a ``config``).

    Warns:
        InputRangeWarning: inputs clearly in [0, 1] or [0, 255] while [-1, 1] is expected (or the reverse
            with ``normalize=True``), or far outside the map's range (e.g. raw latents). Slight overshoot never
            warns. Shown once per instance, at the caller's line.

    Device: the module follows ``.to(device)``; when called with inputs on another device (a loss held by an
    object that is not an ``nn.Module``, such as openai/consistency_models' ``KarrasDenoiser``), it moves its
    feature map to the inputs' device on that first call, and later calls pay nothing.

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
        *,
        resize: str | None = None,
        validate_args: bool = True,
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
        self._init_call_contract(resize, validate_args)

    def train(self, mode: bool = True) -> "ManifoldFeatureDistance":
        """Set this module's mode; the feature map stays in eval mode whatever ``mode`` is."""
        super().train(mode)
        self.feature_map.eval()
        return self

    def _init_call_contract(self, resize: str | None, validate_args: bool) -> None:
        """Check and store the call-time options (resolution, value checks) and the range the inputs are in."""
        if resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
        config = self.feature_map.config
        network = tuple(config.input_range)
        data = tuple(getattr(config, "data_range", None) or network)
        if self.normalize and data != (-1.0, 1.0):
            raise ValueError(f"normalize=True means inputs in [0, 1] for a map that takes [-1, 1], but this map was "
                             f"trained on data in {list(data)} (its config's data_range): pass inputs in that range "
                             "and drop normalize=True")
        self.resize = resize
        self.validate_args = bool(validate_args)
        self._input_range = (0.0, 1.0) if self.normalize else data  # what callers pass
        self._range_warned = False  # InputRangeWarning is shown once per instance

    def forward(self, prediction: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        """Distance between prediction and target.

        Inputs in another value range than the map's network range (``normalize=True``: [0, 1]; a map trained
        on float data: its ``config.data_range``) are mapped linearly onto it first, as in training. On its
        first call with inputs on another device, the module moves its feature map there (once: later calls
        on that device cost nothing), so a loss held by an object that is no ``nn.Module`` follows the data.

        Args:
            prediction: (N, C, H, W) float; the gradient flows to it.
            target: (N, C, H, W) float, same shape; computed without autograd unless it requires grad.
            weight: optional (N,) per-sample weights (e.g. the consistency-model weighting 1 / (t - r)).

        Returns:
            float32 (N,) for ``reduction="none"``, else a scalar.

        Raises:
            ValueError: see the class; with ``validate_args=False`` the NaN/Inf check is skipped.

        Warns:
            InputRangeWarning: once per instance, attributed to the caller's line.
        """
        fmap = self.feature_map
        if isinstance(prediction, Tensor) and isinstance(target, Tensor) and prediction.device == target.device:
            parameter = next(fmap.parameters(), None)
            if parameter is not None and parameter.device != prediction.device:
                fmap.to(prediction.device)  # once; a Python check on later calls
        check_pair(fmap, prediction, target, weight, self.resize)
        if self.validate_args and prediction.device.type != "meta":
            for name, x in (("prediction", prediction), ("target", target)):
                message = check_finite_and_range(x, expected=self._input_range, name=name, normalize=self.normalize)
                if message is not None and not self._range_warned:
                    self._range_warned = True
                    warn_at_caller(message + " (shown once per MFD instance)", InputRangeWarning)
        network = tuple(fmap.config.input_range)
        if self._input_range != network:
            (lo, hi), (net_lo, net_hi) = self._input_range, network
            scale = (net_hi - net_lo) / (hi - lo)
            prediction, target = ((x - lo) * scale + net_lo for x in (prediction, target))
        return manifold_feature_distance(
            fmap, prediction, target, distance=self.distance, weight=weight, reduction=self.reduction,
            resize=self.resize, check_values=False,
        )

    def extra_repr(self) -> str:
        extra = (f", resize={self.resize!r}" if self.resize else "") + ("" if self.validate_args else ", validate_args=False")
        return f"distance={self.distance!r}, normalize={self.normalize}, reduction={self.reduction!r}{extra}"


MFD = ManifoldFeatureDistance
