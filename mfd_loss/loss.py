"""``ManifoldFeatureDistance`` (alias ``MFD``): the loss module users drop in where LPIPS was."""

from __future__ import annotations

import copy
import hashlib
import os
import threading
import warnings
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from ._validation import InputRangeWarning, check_finite_and_range, warn_at_caller
from .distance import DISTANCES, REDUCTIONS, RESIZE_MODES, check_pair, manifold_feature_distance
from .hub.mixin import LossHubMixin
from .hub.pretrained import LoadedPretrained, PretrainedReference, open_pretrained
from .hub.serialization import check_finite_weights

__all__ = ["ManifoldFeatureDistance", "MFD"]


class _DefaultName(str):
    """The default ``pretrained="cifar10"``: equal to that string, but told apart from a name the caller passed
    (so ``MFD(feature_map=fm)`` works while ``MFD(pretrained="cifar10", feature_map=fm)`` is an error)."""


_DEFAULT_PRETRAINED = _DefaultName("cifar10")


class _FrozenMap:
    """Holds the feature map out of ``nn.Module``'s registry, so that no host call reaches it (see ``MFD``).

    ``copies`` holds, per device, the copies of the map that ``nn.DataParallel`` replicas use (see
    :class:`_ReplicaMap`); a device or dtype move of the map (``MFD._apply``) drops them."""

    def __init__(self, module: nn.Module):
        self.module = module
        self.copies: dict[torch.device, nn.Module] = {}
        self.lock = threading.Lock()

    def __deepcopy__(self, memo: dict) -> "_FrozenMap":
        return _FrozenMap(copy.deepcopy(self.module, memo))

    @property
    def original(self) -> "_FrozenMap":
        """The holder that owns the map and its copies: this one (a :class:`_ReplicaMap` names its original)."""
        return self

    def on(self, device: torch.device) -> nn.Module:
        """The map, moved to ``device`` when it is elsewhere (once: later calls there only compare devices)."""
        parameter = next(self.module.parameters(), None)
        if parameter is not None and parameter.device != device:
            self.module.to(device)
        return self.module


class _ReplicaMap:
    """What an ``nn.DataParallel`` replica holds: its original's map, never moved.

    The replicas of one forward run in parallel threads, one per GPU, and all see the original's map. Moving
    that shared map to each replica's device (as :meth:`_FrozenMap.on` does) would move it under the other
    threads' feet; a replica instead uses the map itself where it already is, and elsewhere a copy made once
    per device, kept by the original (DataParallel builds new replicas on every forward)."""

    def __init__(self, original: _FrozenMap):
        self.original = original

    @property
    def module(self) -> nn.Module:
        return self.original.module

    def on(self, device: torch.device) -> nn.Module:
        fmap = self.original.module
        parameter = next(fmap.parameters(), None)
        if parameter is None or parameter.device == device:
            return fmap
        with self.original.lock:
            if device not in self.original.copies:
                self.original.copies[device] = copy.deepcopy(fmap).to(device)
            return self.original.copies[device]


def _fingerprint(module: nn.Module) -> str | None:
    """SHA-256 of a module's tensors (names, dtypes, bytes), or None when they cannot be read (meta device)."""
    digest = hashlib.sha256()
    for name, t in module.state_dict().items():
        if t.device.type == "meta":
            return None
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _usable_device(name: str) -> torch.device:
    """The device a map was on when pickled, or the CPU when this machine has no such device."""
    try:
        torch.empty(0, device=name)
    except (RuntimeError, AssertionError):
        return torch.device("cpu")
    return torch.device(name)


class ManifoldFeatureDistance(LossHubMixin, nn.Module):
    """Manifold Feature Distance between predictions and targets (METHOD.md Sec. 4).

    The feature map is frozen and locked in eval mode; gradients flow to the inputs only. It is deliberately
    not a registered submodule (it is reached as ``loss.feature_map``), so nothing a host training loop does
    to a parent module reaches it: ``parent.requires_grad_(True)``, ``.train()``, ``.parameters()`` and
    ``named_parameters()`` (hence optimisers, EMA copies such as diffusers' ``EMAModel`` or ECT's
    ``deepcopy`` + ``lerp_``, DDP's parameter and buffer broadcasts), ``.apply(init_fn)``, ``state_dict()``
    and ``load_state_dict()``. A parent's checkpoint therefore holds no map tensors and round-trips strictly
    with or without an MFD attached; the map of a checkpoint written by mfd-loss 0.1 (keys
    ``*.feature_map.*``) is ignored on loading, never copied in (a ``UserWarning`` says so when it differs
    from this module's map). Device and dtype moves do reach the map: ``parent.to(device)``, ``.cuda()``,
    ``.half()``, ``.bfloat16()`` convert it like any submodule (the distance still reduces in float32).
    Pickling (as ECT snapshots do) stores a named or Hub map as its reference (name / repo, revision,
    SHA-256), a few kilobytes, and reloads and verifies it when unpickled; a map you passed as
    ``feature_map=``, loaded from a local folder, edited, or cast to another dtype is pickled with its
    weights. ``copy.deepcopy`` copies the map in memory. The module follows ``.to(device)`` and accepts fp32/fp16/bf16 inputs and
    ``torch.autocast``; each sample's value is independent of the rest of the batch.

    Args:
        pretrained: a registered name (``"cifar10"``, see :func:`mfd_loss.list_pretrained`), a Hugging Face Hub
            repo ``"org/repo"`` or ``"org/repo@revision"`` (downloaded once into the Hub cache; see
            ``docs/hub.md``), a local folder with ``model.safetensors`` + ``config.json``, a ``.safetensors`` file
            (any name) with that ``config.json`` beside it, or None when ``feature_map`` is given. ``ManifoldFeatureDistance.from_pretrained`` adds ``revision=``,
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
            data-dependent branch, so ``torch.export`` and ``torch.func.vmap`` capture it (as torchmetrics'
            ``validate_args``). Under ``torch.compile`` the value checks are skipped while compiling
            (``torch.compiler.is_compiling()``), whatever this flag: ``torch.compile(MFD(...), fullgraph=True)``
            captures the default module, and the compiled call does not check values (check them eagerly, or
            with ``torch.isfinite`` in your loop, if your model may emit NaN).

    Shape:
        prediction, target: (N, C, H, W) with C and (H, W) those of the feature map (3 and 32x32 for
        ``"cifar10"``; other sizes with ``resize``). Values in [-1, 1] ([0, 1] with ``normalize=True``; a map
        trained on other float data, e.g. latents, takes the range recorded as ``config.data_range``).
        Output: (N,) float32 (float64 for float64 inputs), or a scalar.

    Raises:
        ValueError: unknown ``distance``/``reduction``; both ``pretrained`` (any name or path) and
            ``feature_map`` given, or neither; non-finite (NaN/Inf) weights in ``feature_map``;
            bad input shapes, channel counts, NHWC layout, sizes, weights or NaN/Inf at call time.
        UnknownPretrainedError: unknown pretrained name (a subclass of both ValueError and KeyError).
        TypeError: ``feature_map`` is not a feature map (an nn.Module with a ``config``).

    Warns:
        InputRangeWarning: inputs clearly in [0, 1] or [0, 255] while [-1, 1] is expected (or the reverse
            with ``normalize=True``), or far outside the map's range (e.g. raw latents). Slight overshoot never
            warns. Shown once per instance, at the caller's line.

    Device: the module follows ``.to(device)``; when called with inputs on another device (a loss held by an
    object that is not an ``nn.Module``, such as openai/consistency_models' ``KarrasDenoiser``), it moves its
    feature map to the inputs' device on that first call, and later calls pay nothing. Under ``nn.DataParallel``
    the replica on each further GPU uses a copy of the map made once for that GPU; the shared map never moves.

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
        pretrained: str | os.PathLike | None = _DEFAULT_PRETRAINED,
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
        if feature_map is not None and pretrained is not None and pretrained is not _DEFAULT_PRETRAINED:
            raise ValueError(f"pass either pretrained= or feature_map=, not both (got pretrained={str(pretrained)!r} "
                             "and a feature_map): drop pretrained= to use your map, or feature_map= to load "
                             f"{str(pretrained)!r}")
        if feature_map is None and pretrained is None:
            raise ValueError("pass pretrained= (a name such as 'cifar10', or a path) or feature_map=")
        self.config: dict[str, Any] = {}
        reference = None
        if feature_map is None:
            loaded = open_pretrained(str(pretrained) if isinstance(pretrained, _DefaultName) else pretrained)
            feature_map, self.config, reference = loaded.feature_map, loaded.config, loaded.reference
        else:
            config = getattr(feature_map, "config", None)
            if not isinstance(feature_map, nn.Module) or not all(
                    hasattr(config, a) for a in ("in_channels", "resolution", "input_range")):
                raise TypeError("feature_map must be an nn.Module with a `config` (in_channels, resolution, "
                                "input_range) that returns a list of taps, e.g. mfd_loss.VGGFeatureMap or a map "
                                "loaded with mfd_loss.load_feature_map")
            feature_map = copy.deepcopy(feature_map)
            check_finite_weights(feature_map.state_dict(), "feature_map")
        self._attach(feature_map, reference)
        self.distance = distance
        self.normalize = bool(normalize)
        self.reduction = reduction
        self._init_call_contract(resize, validate_args)

    # ------------------------------------------------------------------ the frozen map and host interplay

    def _attach(self, feature_map: nn.Module, reference: PretrainedReference | None) -> None:
        """Hold the map frozen, in eval mode, outside the module registry; remember where it came from."""
        self._frozen = _FrozenMap(feature_map.eval().requires_grad_(False))
        self._reference = reference
        self._fingerprint = _fingerprint(feature_map) if reference is not None else None

    @property
    def feature_map(self) -> nn.Module:
        """The frozen feature map (eval mode, no parameter requires grad); not a registered submodule."""
        return self._frozen.module

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "feature_map":
            raise AttributeError("an MFD's feature map is fixed when the loss is built; build a new one with "
                                 "MFD(feature_map=...) or MFD(pretrained=...)")
        super().__setattr__(name, value)

    @classmethod
    def _from_loaded(cls, loaded: LoadedPretrained, **options: Any) -> "ManifoldFeatureDistance":
        """The loss around a map loaded by :func:`~mfd_loss.hub.pretrained.open_pretrained` (``from_pretrained``)."""
        loss = cls(feature_map=loaded.feature_map, **options)
        loss.config = loaded.config
        loss._attach(loss.feature_map, loaded.reference)
        return loss

    def train(self, mode: bool = True) -> "ManifoldFeatureDistance":
        """Set this module's mode; the feature map stays in eval mode whatever ``mode`` is."""
        super().train(mode)
        self.feature_map.eval()
        return self

    def _apply(self, fn, recurse: bool = True):
        """``.to()``, ``.cuda()``, ``.half()``, ... reach the (unregistered) map as they would a submodule."""
        super()._apply(fn, recurse)
        if recurse:
            self.feature_map._apply(fn)
            self._frozen.original.copies.clear()  # DataParallel copies of the map before the move are stale
        return self

    def _replicate_for_data_parallel(self) -> "ManifoldFeatureDistance":
        """A replica for ``nn.DataParallel`` that uses a map on its own device, never moving the shared one."""
        replica = super()._replicate_for_data_parallel()
        object.__setattr__(replica, "_frozen", _ReplicaMap(self._frozen.original))
        return replica

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        """Drop map tensors of checkpoints written by mfd-loss 0.1; they never replace this module's map."""
        old = prefix + "feature_map."
        legacy = {k[len(old):]: state_dict.pop(k) for k in [k for k in state_dict if k.startswith(old)]}
        if legacy:
            current = self.feature_map.state_dict()
            same = legacy.keys() == current.keys() and all(
                v.shape == current[k].shape and torch.equal(v.to(current[k].device, current[k].dtype), current[k])
                for k, v in legacy.items())
            if not same:
                warnings.warn(
                    f"the checkpoint holds {len(legacy)} feature-map tensors under {old!r} (the format of mfd-loss "
                    "by mfd-loss 0.1) that differ from this MFD's map; they were ignored. An MFD's map is fixed when "
                    "it is built and never comes from a host checkpoint: to use that map, load it into a feature "
                    "map, save it with save_pretrained, and build MFD(pretrained=FOLDER)", UserWarning, stacklevel=2)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        fmap = state.pop("_frozen").module
        reference = state.get("_reference")
        if reference is not None and state.get("_fingerprint") is not None and _fingerprint(fmap) == state["_fingerprint"]:
            device = next(fmap.parameters(), torch.empty(0)).device
            state["_frozen_reference"] = {"reference": reference.to_dict(), "device": str(device)}
        else:
            state["_frozen_module"] = fmap
        state["_reference"] = None if reference is None else reference.to_dict()
        return state

    def __setstate__(self, state: Mapping[str, Any]) -> None:
        state = dict(state)
        packed, fmap = state.pop("_frozen_reference", None), state.pop("_frozen_module", None)
        reference = state.pop("_reference", None)
        fingerprint = state.pop("_fingerprint", None)
        super().__setstate__(state)
        legacy = fmap is None and packed is None
        if legacy:  # pickled by mfd-loss 0.1: the map was a registered submodule, the call options did not exist
            fmap = self._modules.pop("feature_map")
        reference = None if reference is None else PretrainedReference.from_dict(reference)
        if packed is not None:
            fmap = reference.load().feature_map.to(_usable_device(packed["device"]))
        self._attach(fmap, reference)
        if packed is None:
            self._fingerprint = fingerprint
        if legacy:
            self._init_call_contract(resize=None, validate_args=True)  # the defaults, as the old module behaved

    def __deepcopy__(self, memo: dict) -> "ManifoldFeatureDistance":
        """An in-memory copy (the map included); no reload from disk, unlike pickling."""
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        for key, value in self.__dict__.items():
            if key != "_compiled_call_impl":
                object.__setattr__(new, key, copy.deepcopy(value, memo))
        return new

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
            fmap = self._frozen.on(prediction.device)  # moved once; a DataParallel replica uses its own copy
        check_pair(fmap, prediction, target, weight, self.resize)
        if self.validate_args and prediction.device.type != "meta" and not torch.compiler.is_compiling():
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
        fmap = self.feature_map  # not a child module, so it is summarised here
        where = f", pretrained={self._reference.name or self._reference.repo_id!r}" if self._reference else ""
        return (f"feature_map={type(fmap).__name__}({fmap.extra_repr()}){where}, distance={self.distance!r}, "
                f"normalize={self.normalize}, reduction={self.reduction!r}{extra}")


MFD = ManifoldFeatureDistance
