"""Exported feature maps: ``model.safetensors`` + ``config.json`` (the Hugging Face Hub layout).

``config.json`` (schema version 1) holds ``architecture`` (:class:`~mfd_loss.feature_maps.FeatureMapConfig`),
``label_spec`` (:class:`~mfd_loss.perturbations.LabelSpec`), ``input_range``, ``weights_sha256`` (the SHA-256
of ``model.safetensors``), ``dataset``, ``recipe``, ``metrics`` and ``storage_dtype``. It is strict JSON (no
``NaN`` / ``Infinity``, so any JSON parser, the Hub's web pages included, reads it). Loading is strict: a
missing or unexpected tensor, a hash that differs from the recorded one, or a non-finite weight is an error,
and nothing is loaded.

This module holds the file format only and imports no network code: the feature-map classes register the
architectures they build (:func:`register_architectures`, called by
:class:`~mfd_loss.feature_maps.TapFeatureMap` subclasses), so imports flow one way
(``serialization`` <- ``download`` <- ``pretrained`` <- ``mixin`` <- ``mfd_loss.feature_maps`` <- ``mfd_loss.loss``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .._io import atomic_write
from ..perturbations import LabelSpec

__all__ = ["SCHEMA_VERSION", "WEIGHTS_NAME", "CONFIG_NAME", "IntegrityError", "sha256_file", "dumps_config",
           "read_config", "save_feature_map", "load_feature_map", "register_architectures", "check_finite_weights"]

SCHEMA_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"

_ARCHITECTURES: dict[str, type] = {}


class IntegrityError(ValueError):
    """A weights or config file failed its integrity check (checksum mismatch, truncated or unparsable);
    it was not loaded."""


def register_architectures(archs: Iterable[str], cls: type) -> None:
    """Record which class builds each architecture name (``"vgg11"``, ``"resnet18"``, ...).

    Called when a :class:`~mfd_loss.feature_maps.TapFeatureMap` subclass is defined; ``cls`` must accept a
    :class:`~mfd_loss.feature_maps.FeatureMapConfig` and provide ``config_from_dict``.

    Raises:
        ValueError: an architecture name is already built by another class.
    """
    for arch in archs:
        if _ARCHITECTURES.get(arch, cls) is not cls:
            raise ValueError(f"architecture {arch!r} is already built by {_ARCHITECTURES[arch].__name__}")
        _ARCHITECTURES[arch] = cls


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _strict_json_value(value: Any) -> Any:
    """value as strict JSON takes it: non-finite floats become None (null), numpy / torch scalars numbers."""
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _strict_json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict_json_value(v) for v in value]
    return value


def dumps_config(config: Mapping[str, Any]) -> str:
    """``config.json`` text: strict JSON (``allow_nan=False``), indented, newline-terminated.

    A non-finite number (a NaN metric, an unbounded range) is written as ``null``; numpy and torch scalars
    are written as numbers.

    Raises:
        TypeError: a value JSON cannot hold (e.g. a Path: convert it to str first).
    """
    return json.dumps(_strict_json_value(config), indent=2, allow_nan=False) + "\n"


def check_finite_weights(tensors: Mapping[str, torch.Tensor], source: str) -> None:
    """Refuse weights holding NaN or Inf (a diverged run or a damaged export): they make every loss NaN.

    Raises:
        ValueError: names the first bad tensors, how many entries are bad, and what to do.
    """
    bad = []
    for name, t in tensors.items():
        if t.is_floating_point() and t.device.type != "meta":
            count = int((~torch.isfinite(t)).sum())
            if count:
                bad.append(f"{name!r} ({count} of {t.numel()} entries)")
    if bad:
        raise ValueError(f"{source} holds non-finite (NaN or Inf) weights in {len(bad)} tensor(s): "
                         f"{', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}; a map with such weights returns NaN "
                         "losses, so it was not loaded. Retrain it (the training diverged) or export it again from a "
                         "checkpoint taken before the weights went bad")


def save_feature_map(
    feature_map: nn.Module,
    directory: str | os.PathLike,
    *,
    label_spec: LabelSpec,
    metadata: Mapping[str, Any] | None = None,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write ``model.safetensors`` and ``config.json`` into directory (created if needed), atomically.

    ``config.json`` records the SHA-256 of the weights file as ``weights_sha256``; every load checks it.

    Args:
        feature_map: the trained network (a :class:`~mfd_loss.feature_maps.TapFeatureMap`).
        directory: output folder.
        label_spec: what the K outputs regress (must have K entries).
        metadata: extra JSON-serialisable entries (``dataset``, ``recipe``, ``metrics``, ...); non-finite
            numbers are written as ``null`` (strict JSON has no NaN / Infinity).
        dtype: storage dtype of floating tensors (``torch.float16`` halves the file; loading casts back to fp32).

    Returns:
        the directory.

    Raises:
        ValueError: label spec length differs from the map's K, or the weights hold NaN / Inf.
    """
    if label_spec.num_labels != feature_map.config.num_labels:
        raise ValueError(f"label spec has {label_spec.num_labels} labels but the feature map has "
                         f"{feature_map.config.num_labels} outputs")
    directory = Path(directory)
    tensors = {k: (v.detach().to("cpu", dtype) if v.is_floating_point() else v.detach().cpu()).contiguous()
               for k, v in feature_map.state_dict().items()}
    check_finite_weights(tensors, f"the feature map to save into {directory}")
    atomic_write(directory / WEIGHTS_NAME, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    config = {
        "schema_version": SCHEMA_VERSION,
        "library": "mfd-loss",
        "architecture": feature_map.config.to_dict(),
        "label_spec": label_spec.to_dict(),
        "input_range": list(feature_map.config.input_range),
        "storage_dtype": str(dtype).replace("torch.", ""),
        **{k: v for k, v in dict(metadata or {}).items() if k != "weights_sha256"},
        "weights_sha256": sha256_file(directory / WEIGHTS_NAME),
    }
    text = dumps_config(config)
    atomic_write(directory / CONFIG_NAME, lambda tmp: Path(tmp).write_text(text))
    return directory


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a ``config.json`` (files written by mfd-loss 0.1, with ``Infinity`` in them are read too).

    Raises:
        IntegrityError: not JSON, or not a JSON object.
        ValueError: unsupported schema version or missing keys.
    """
    try:
        config = json.loads(Path(path).read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise IntegrityError(f"{path} is not valid JSON ({err}); the file is corrupted or truncated") from None
    if not isinstance(config, dict):
        raise IntegrityError(f"{path} does not hold a JSON object; the file is corrupted")
    version = config.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ValueError(f"{path}: config schema_version {version!r} is not supported by this mfd-loss "
                         f"(expects {SCHEMA_VERSION}); upgrade mfd-loss")
    for key in ("architecture", "label_spec"):
        if key not in config:
            raise ValueError(f"{path}: config.json lacks the {key!r} entry")
    return config


def _check_hashes(weights: Path, config_path: Path, config: Mapping[str, Any], expected_sha256: str | None) -> None:
    recorded = config.get("weights_sha256")
    if expected_sha256 is None and recorded is None:
        return
    actual = sha256_file(weights)
    if expected_sha256 is not None and actual != expected_sha256:
        raise IntegrityError(f"checksum mismatch for {weights}: SHA-256 {actual}, expected {expected_sha256}; "
                             "the file is corrupted or was replaced; reinstall mfd-loss or delete and re-download it")
    if recorded is not None and actual != recorded:
        raise IntegrityError(
            f"{weights} has SHA-256 {actual} but {config_path} records {recorded}: the weights file changed after "
            "it was saved (bit rot, a partial copy or an edit) and was not loaded. Restore the folder from where it "
            "came from (download or copy it again, or re-export it with save_pretrained / mfd-loss export); if you "
            "changed the weights on purpose, load them into a map and save it again so config.json records the "
            "new hash")


def load_feature_map(
    path: str | os.PathLike, *, expected_sha256: str | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """Load an exported feature map strictly (float32, eval mode).

    Args:
        path: a folder with ``model.safetensors`` + ``config.json``, or the ``.safetensors`` file itself
            (its ``config.json`` must sit beside it).
        expected_sha256: when given, the weights file's SHA-256 must match before it is read. Independently,
            a ``weights_sha256`` recorded in ``config.json`` (every folder written by ``save_pretrained``,
            ``save_feature_map`` or ``mfd-loss train`` has one) must match.

    Returns:
        (feature map (a :class:`~mfd_loss.feature_maps.TapFeatureMap`), config dict).

    Raises:
        FileNotFoundError: a file is missing.
        IntegrityError: (a ValueError) checksum mismatch (against ``expected_sha256`` or the recorded
            ``weights_sha256``), or a weights / config file that is truncated or does not parse; nothing is loaded.
        ValueError: bad config, unknown architecture, label spec inconsistent with the architecture,
            missing/unexpected/mis-shaped tensors, or NaN / Inf weights.
    """
    path = Path(path)
    weights = path / WEIGHTS_NAME if path.is_dir() else path
    config_path = weights.parent / CONFIG_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"feature-map file not found: {weights} (a map is a folder with {WEIGHTS_NAME} "
                                f"and {CONFIG_NAME})")
    if not config_path.is_file():
        raise FileNotFoundError(
            f"feature-map file not found: {config_path}. A .safetensors file loads only with the {CONFIG_NAME} that "
            f"describes its architecture and labels beside it, as save_pretrained and mfd-loss export write them; "
            f"put it in {weights.parent}, or pass the folder that holds both" if path.suffix == ".safetensors"
            else f"feature-map file not found: {config_path} (a map is a folder with {WEIGHTS_NAME} and {CONFIG_NAME})")
    config = read_config(config_path)
    _check_hashes(weights, config_path, config, expected_sha256)
    arch = config["architecture"]
    family = _ARCHITECTURES.get(arch.get("arch") if isinstance(arch, Mapping) else None)
    if family is None:
        raise ValueError(f"{config_path}: unknown feature-map architecture "
                         f"{arch.get('arch') if isinstance(arch, Mapping) else arch!r}; this mfd-loss builds "
                         f"{sorted(_ARCHITECTURES)} (upgrade mfd-loss if the map needs a newer one)")
    arch_config = family.config_from_dict(arch)
    spec = LabelSpec.from_dict(config["label_spec"])
    if spec.num_labels != arch_config.num_labels:
        raise ValueError(f"{config_path}: label spec has {spec.num_labels} labels but the architecture has "
                         f"{arch_config.num_labels} outputs")
    try:
        tensors = load_file(weights)
    except Exception as err:  # safetensors raises SafetensorError / OSError on truncated or garbled files
        raise IntegrityError(f"{weights} is not a readable safetensors file ({err}); the file is corrupted or "
                             "truncated") from None
    check_finite_weights(tensors, str(weights))
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in tensors.items()}
    feature_map = family(arch_config)
    try:
        feature_map.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{weights} does not match the architecture in {config_path}: {err}") from None
    feature_map.pretrained_config = config  # lets save_pretrained / push_to_hub re-export it as it was
    return feature_map.eval(), config
