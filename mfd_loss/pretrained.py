"""Named pretrained feature maps and how a ``pretrained=`` argument resolves to weights.

One registry maps each name to a frozen :class:`PretrainedSpec` (Hub repo id, pinned revision, SHA-256,
embedded copy, data it was trained on). A name resolves to the copy embedded in the package when there is
one (no network at all); the file's SHA-256 is checked before it is read, and a mismatching file is never
loaded. A local folder or ``.safetensors`` file is loaded directly, with no network call.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from .feature_maps import VGGFeatureMap
from .serialization import WEIGHTS_NAME, load_feature_map

__all__ = ["PretrainedSpec", "register_pretrained", "list_pretrained", "get_pretrained_spec", "load_pretrained"]


@dataclass(frozen=True)
class PretrainedSpec:
    """A named, published feature map.

    Attributes:
        name: registry key, e.g. ``"cifar10"``.
        description: one line for :func:`list_pretrained`.
        repo_id: Hugging Face Hub repository holding ``model.safetensors`` + ``config.json``.
        revision: the pinned Hub revision (commit) the SHA-256 belongs to.
        sha256: hex SHA-256 of ``model.safetensors``.
        embedded: folder name under ``mfd_loss/weights/`` holding a packaged copy, or None.
        channels, resolution, value_range, preset: what the map takes and was trained with.
        license: licence of the weights.
    """

    name: str
    description: str
    repo_id: str
    revision: str
    sha256: str
    embedded: str | None
    channels: int
    resolution: tuple[int, int]
    value_range: tuple[float, float]
    preset: str
    license: str = "mit"


_REGISTRY: dict[str, PretrainedSpec] = {}


def register_pretrained(spec: PretrainedSpec) -> PretrainedSpec:
    """Add a named map to the registry.

    Raises:
        ValueError: the name is already registered.
    """
    if spec.name in _REGISTRY:
        raise ValueError(f"a pretrained feature map named {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def list_pretrained() -> dict[str, str]:
    """Names of the registered feature maps with their one-line descriptions."""
    return {name: spec.description for name, spec in _REGISTRY.items()}


def get_pretrained_spec(name: str) -> PretrainedSpec:
    """The registry entry for a name.

    Raises:
        KeyError: unknown name; the message lists the known ones.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"no pretrained feature map named {name!r}; available: {sorted(_REGISTRY)} "
                       "(or pass a local folder / .safetensors file)") from None


def embedded_path(spec: PretrainedSpec) -> Path | None:
    """Path of the packaged copy of a named map, or None when the package carries none."""
    if spec.embedded is None:
        return None
    folder = resources.files("mfd_loss").joinpath("weights").joinpath(spec.embedded)
    path = Path(str(folder))
    return path if (path / WEIGHTS_NAME).is_file() else None


def load_pretrained(pretrained: str | os.PathLike) -> tuple[VGGFeatureMap, dict[str, Any]]:
    """Resolve a ``pretrained=`` argument to a loaded feature map (float32, eval mode).

    Args:
        pretrained: a registered name (see :func:`list_pretrained`), or a local folder holding
            ``model.safetensors`` + ``config.json``, or such a ``.safetensors`` file.

    Returns:
        (feature map, its ``config.json`` contents).

    Raises:
        KeyError: an unknown name that is not an existing path.
        ValueError: checksum mismatch or weights that do not match their config (strict loading).
        FileNotFoundError: a named map with no embedded copy in this installation.
    """
    path = Path(pretrained)
    if path.exists():
        return load_feature_map(path)
    spec = get_pretrained_spec(str(pretrained))
    local = embedded_path(spec)
    if local is None:
        raise FileNotFoundError(f"the pretrained map {spec.name!r} ({spec.repo_id}@{spec.revision}) has no embedded "
                                "copy in this installation; download it and pass its folder as pretrained=PATH")
    return load_feature_map(local, expected_sha256=spec.sha256)
