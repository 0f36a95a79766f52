"""Exported feature maps: ``model.safetensors`` + ``config.json`` (the Hugging Face Hub layout).

``config.json`` (schema version 1) holds ``architecture`` (:class:`~mfd_loss.feature_maps.FeatureMapConfig`),
``label_spec`` (:class:`~mfd_loss.perturbations.LabelSpec`), ``input_range``, ``dataset``, ``recipe``,
``metrics`` and ``storage_dtype``. Weights load strictly: a missing or unexpected tensor is an error.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import load_file, save_file

from .checkpoint import atomic_write
from .feature_maps import FeatureMapConfig, TapFeatureMap, build_feature_map
from .perturbations import LabelSpec

__all__ = ["SCHEMA_VERSION", "WEIGHTS_NAME", "CONFIG_NAME", "IntegrityError", "sha256_file", "save_feature_map",
           "load_feature_map"]

SCHEMA_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


class IntegrityError(ValueError):
    """A weights or config file failed its integrity check (checksum mismatch, truncated or unparsable);
    it was not loaded."""


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_feature_map(
    feature_map: TapFeatureMap,
    directory: str | os.PathLike,
    *,
    label_spec: LabelSpec,
    metadata: Mapping[str, Any] | None = None,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write ``model.safetensors`` and ``config.json`` into directory (created if needed), atomically.

    Args:
        feature_map: the trained network.
        directory: output folder.
        label_spec: what the K outputs regress (must have K entries).
        metadata: extra JSON-serialisable entries (``dataset``, ``recipe``, ``metrics``, ...).
        dtype: storage dtype of floating tensors (``torch.float16`` halves the file; loading casts back to fp32).

    Returns:
        the directory.

    Raises:
        ValueError: label spec length differs from the map's K.
    """
    if label_spec.num_labels != feature_map.config.num_labels:
        raise ValueError(f"label spec has {label_spec.num_labels} labels but the feature map has "
                         f"{feature_map.config.num_labels} outputs")
    directory = Path(directory)
    tensors = {k: (v.detach().to("cpu", dtype) if v.is_floating_point() else v.detach().cpu()).contiguous()
               for k, v in feature_map.state_dict().items()}
    config = {
        "schema_version": SCHEMA_VERSION,
        "library": "mfd-loss",
        "architecture": feature_map.config.to_dict(),
        "label_spec": label_spec.to_dict(),
        "input_range": list(feature_map.config.input_range),
        "storage_dtype": str(dtype).replace("torch.", ""),
        **dict(metadata or {}),
    }
    atomic_write(directory / WEIGHTS_NAME, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    text = json.dumps(config, indent=2, sort_keys=False, default=float) + "\n"
    atomic_write(directory / CONFIG_NAME, lambda tmp: Path(tmp).write_text(text))
    return directory


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a ``config.json``.

    Raises:
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


def load_feature_map(
    path: str | os.PathLike, *, expected_sha256: str | None = None
) -> tuple[TapFeatureMap, dict[str, Any]]:
    """Load an exported feature map strictly (float32, eval mode).

    Args:
        path: a folder with ``model.safetensors`` + ``config.json``, or the ``.safetensors`` file itself
            (its ``config.json`` must sit beside it).
        expected_sha256: when given, the weights file's SHA-256 must match before it is read.

    Returns:
        (feature map, config dict).

    Raises:
        FileNotFoundError: a file is missing.
        IntegrityError: (a ValueError) checksum mismatch, or a weights / config file that is truncated or does
            not parse; nothing is loaded.
        ValueError: bad config, label spec inconsistent with the architecture, or missing/unexpected/mis-shaped
            tensors.
    """
    path = Path(path)
    weights = path / WEIGHTS_NAME if path.is_dir() else path
    config_path = weights.parent / CONFIG_NAME
    for f in (weights, config_path):
        if not f.is_file():
            raise FileNotFoundError(f"feature-map file not found: {f} (a map is a folder with {WEIGHTS_NAME} "
                                    f"and {CONFIG_NAME})")
    if expected_sha256 is not None:
        actual = sha256_file(weights)
        if actual != expected_sha256:
            raise IntegrityError(f"checksum mismatch for {weights}: SHA-256 {actual}, expected {expected_sha256}; "
                                 "the file is corrupted or was replaced; reinstall mfd-loss or delete and re-download it")
    config = read_config(config_path)
    arch = FeatureMapConfig.from_dict(config["architecture"])
    spec = LabelSpec.from_dict(config["label_spec"])
    if spec.num_labels != arch.num_labels:
        raise ValueError(f"{config_path}: label spec has {spec.num_labels} labels but the architecture has "
                         f"{arch.num_labels} outputs")
    feature_map = build_feature_map(arch)
    try:
        tensors = load_file(weights)
    except Exception as err:  # safetensors raises SafetensorError / OSError on truncated or garbled files
        raise IntegrityError(f"{weights} is not a readable safetensors file ({err}); the file is corrupted or "
                             "truncated") from None
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in tensors.items()}
    try:
        feature_map.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{weights} does not match the architecture in {config_path}: {err}") from None
    feature_map.pretrained_config = config  # lets save_pretrained / push_to_hub re-export it as it was
    return feature_map.eval(), config
