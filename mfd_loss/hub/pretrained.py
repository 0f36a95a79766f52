"""Named pretrained feature maps and how a ``pretrained=`` argument resolves to weights.

One registry maps each name to a frozen :class:`PretrainedSpec` (Hub repo id, pinned revision, SHA-256,
embedded copy, data it was trained on). A name resolves, in this order, to the copy embedded in the package
(no network at all), the copy in the local Hugging Face Hub cache (no network), then a download of the
pinned revision (:mod:`mfd_loss.hub.download`); the file's SHA-256 is checked before it is read, and a mismatching
file is never loaded. ``"org/repo"`` and ``"org/repo@revision"`` load any published map from the Hub; a
local folder or ``.safetensors`` file is loaded directly, with no network call.

A map loaded from a name or a Hub repo carries a :class:`PretrainedReference` (name / repo, revision,
SHA-256): a pickled :class:`~mfd_loss.MFD` stores that reference instead of the weights and reloads and
verifies them when unpickled.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

from torch import nn

from .download import corrupted_message, download_folder, is_offline, is_repo_ref, parse_repo_ref, verify_hub_file
from .serialization import WEIGHTS_NAME, IntegrityError, load_feature_map, sha256_file

__all__ = ["UnknownPretrainedError", "PretrainedSpec", "ResolvedPretrained", "PretrainedReference", "LoadedPretrained", "register_pretrained",
           "unregister_pretrained", "list_pretrained", "get_pretrained_spec", "resolve_pretrained", "open_pretrained",
           "load_pretrained", "download_pretrained"]


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
        ValueError: the name is already registered, or the spec's repo id / SHA-256 / revision is malformed.
    """
    if spec.name in _REGISTRY:
        raise ValueError(f"a pretrained feature map named {spec.name!r} is already registered")
    if "/" in spec.name or "@" in spec.name:
        raise ValueError(f"registry names cannot contain '/' or '@' (they would read as a Hub repo): {spec.name!r}")
    parse_repo_ref(spec.repo_id)
    if len(spec.sha256) != 64 or spec.sha256.strip("0123456789abcdef"):
        raise ValueError(f"{spec.name}: sha256 must be 64 lowercase hex digits, got {spec.sha256!r}")
    if not spec.revision or "@" in spec.revision:
        raise ValueError(f"{spec.name}: revision must be a commit hash (or a tag), got {spec.revision!r}")
    _REGISTRY[spec.name] = spec
    return spec


def unregister_pretrained(name: str) -> PretrainedSpec:
    """Remove a named map (used by tests that register their own entries; pair it with register_pretrained).

    Raises:
        KeyError: the name is not registered.
    """
    spec = get_pretrained_spec(name)
    del _REGISTRY[name]
    return spec


def list_pretrained() -> dict[str, str]:
    """Names of the registered feature maps with their one-line descriptions."""
    return {name: spec.description for name, spec in _REGISTRY.items()}


class UnknownPretrainedError(ValueError, KeyError):
    """An unknown pretrained name: a ``ValueError`` (a bad argument value, as the rest of the package raises) that
    is also the ``KeyError`` earlier versions raised, so existing ``except KeyError`` code keeps working. Its
    message prints as text (a plain ``KeyError`` prints its message in quotes)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def get_pretrained_spec(name: str) -> PretrainedSpec:
    """The registry entry for a name.

    Raises:
        UnknownPretrainedError: (a ValueError and a KeyError) unknown name; the message lists the known ones.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownPretrainedError(f"no pretrained feature map named {name!r}; available: {sorted(_REGISTRY)} "
                       "(or pass a local folder / .safetensors file, or a Hub repo 'org/repo[@revision]')") from None


def _embedded_root() -> Path:
    """Folder of the packaged weights (``mfd_loss/weights``)."""
    return Path(str(resources.files("mfd_loss").joinpath("weights")))


def embedded_path(spec: PretrainedSpec) -> Path | None:
    """Path of the packaged copy of a named map, or None when the package carries none."""
    if spec.embedded is None:
        return None
    path = _embedded_root() / spec.embedded
    return path if (path / WEIGHTS_NAME).is_file() else None


@dataclass(frozen=True)
class ResolvedPretrained:
    """Where a ``pretrained=`` argument resolved to.

    Attributes:
        path: local folder (or ``.safetensors`` file) to load.
        source: ``"local"`` (a path given by the caller), ``"embedded"`` (packaged copy), ``"cache"`` (Hub
            cache, no request made) or ``"hub"`` (fetched through ``huggingface_hub``, cache reused when valid).
        name: registry name, or None.
        repo_id, revision: the Hub repo and the commit the files come from (None for local paths).
        expected_sha256: the registry's SHA-256 of ``model.safetensors``, checked before loading (None: no pin).
    """

    path: Path
    source: str
    name: str | None = None
    repo_id: str | None = None
    revision: str | None = None
    expected_sha256: str | None = None


def resolve_pretrained(
    pretrained: str | os.PathLike,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
    force_download: bool = False,
) -> ResolvedPretrained:
    """Find (and if needed download) the files of a ``pretrained=`` argument without loading them.

    Order: an existing local path (no request); a registered name: embedded copy, then the Hub cache at the
    pinned revision, then a download of that revision; ``org/repo[@revision]``: ``hf_hub_download`` (a
    cached commit makes no request; a branch costs one metadata request per file unless offline).

    Args: see :func:`load_pretrained`.

    Raises:
        KeyError: unknown name. FileNotFoundError: missing path, repo, revision or file, or not cached while
        offline. ConnectionError: the Hub was unreachable or the transfer was cut. ValueError: ``revision=``
        given for a registered (pinned) name.
    """
    path = Path(pretrained)
    if path.exists():
        return ResolvedPretrained(path=path, source="local")
    ref = str(pretrained)
    options = dict(cache_dir=cache_dir, token=token)
    if ref in _REGISTRY:
        spec = _REGISTRY[ref]
        if revision is not None and revision != spec.revision:
            raise ValueError(f"{spec.name!r} is pinned to {spec.repo_id}@{spec.revision} (SHA-256 checked); to load "
                             f"another revision pass pretrained='{spec.repo_id}@{revision}'")
        pinned = dict(name=spec.name, repo_id=spec.repo_id, revision=spec.revision, expected_sha256=spec.sha256)
        local = None if force_download else embedded_path(spec)
        if local is not None:
            return ResolvedPretrained(path=local, source="embedded", **pinned)
        if not force_download:
            try:
                folder = download_folder(spec.repo_id, revision=spec.revision, local_files_only=True, **options)
                return ResolvedPretrained(path=folder, source="cache", **pinned)
            except FileNotFoundError:
                if local_files_only or is_offline():
                    raise FileNotFoundError(
                        f"the pretrained map {spec.name!r} ({spec.repo_id}@{spec.revision}) has no embedded copy in "
                        "this installation and is not in the local Hub cache, and downloads are disabled "
                        "(HF_HUB_OFFLINE=1 or local_files_only=True); run `mfd-loss download "
                        f"{spec.name}` once with network access, or pass a local folder as pretrained=PATH") from None
        folder = download_folder(spec.repo_id, revision=spec.revision, local_files_only=local_files_only,
                                     force_download=force_download, **options)
        return ResolvedPretrained(path=folder, source="hub", **pinned)
    if is_repo_ref(ref):
        repo_id, ref_revision = parse_repo_ref(ref)
        folder = download_folder(repo_id, revision=revision or ref_revision, local_files_only=local_files_only,
                                     force_download=force_download, **options)
        return ResolvedPretrained(path=folder, source="hub", repo_id=repo_id, revision=folder.name)
    if any(sep in ref for sep in ("/", "\\")) or ref.startswith((".", "~")) or ref.endswith(".safetensors"):
        raise FileNotFoundError(f"no feature map at {ref!r}: the path does not exist (and it is not a Hub repo id "
                                "'org/repo[@revision]' or a registered name)")
    get_pretrained_spec(ref)  # raises KeyError listing the names
    raise AssertionError("unreachable")  # pragma: no cover


def load_pretrained(
    pretrained: str | os.PathLike,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
    force_download: bool = False,
) -> tuple[nn.Module, dict[str, Any]]:
    """Resolve a ``pretrained=`` argument to a loaded feature map (float32, eval mode).

    Args:
        pretrained: a registered name (see :func:`list_pretrained`); a Hub repo ``"org/repo"`` or
            ``"org/repo@revision"``; a local folder holding ``model.safetensors`` + ``config.json``, or such a
            ``.safetensors`` file (an existing path wins over a repo id of the same spelling).
        revision: Hub branch, tag or commit (overrides an ``@revision`` suffix; not allowed for names).
        cache_dir: Hub cache folder (default ``$HF_HUB_CACHE``, i.e. ``~/.cache/huggingface/hub``).
        local_files_only: never touch the network (as ``HF_HUB_OFFLINE=1``).
        token: Hub token for private repos (default: the stored login / ``HF_TOKEN``).
        force_download: download again even when cached (repairs a corrupted cache entry).

    Returns:
        (feature map, its ``config.json`` contents).

    Raises:
        KeyError: an unknown name that is neither an existing path nor a repo id.
        FileNotFoundError: missing path; unknown Hub repo, revision or file; not cached while offline.
        ConnectionError: the Hub could not be reached (and nothing usable is cached), or the transfer was cut.
        ValueError: checksum mismatch (the file is not loaded), corrupted or truncated file, or weights that do
            not match their config (strict loading).
    """
    loaded = open_pretrained(pretrained, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only,
                             token=token, force_download=force_download)
    return loaded.feature_map, loaded.config


@dataclass(frozen=True)
class PretrainedReference:
    """Where a named or Hub map came from, exactly enough to fetch the same bytes again and check them.

    Attributes:
        name: registry name (``"cifar10"``), or None for a Hub repo loaded by id.
        repo_id: the Hub repo.
        revision: the commit (or, for a registry entry not yet pinned to a commit, the registry's revision).
        sha256: SHA-256 of ``model.safetensors``; :meth:`load` refuses any other bytes.
    """

    name: str | None
    repo_id: str | None
    revision: str | None
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PretrainedReference":
        return cls(**{k: data.get(k) for k in ("name", "repo_id", "revision", "sha256")})

    def __str__(self) -> str:
        where = f"{self.repo_id}@{self.revision}"
        return f"{self.name!r} ({where}, SHA-256 {self.sha256})" if self.name else f"{where} (SHA-256 {self.sha256})"

    def load(self) -> "LoadedPretrained":
        """Fetch the referenced map again (embedded copy, Hub cache, then the Hub) and verify its SHA-256.

        A registered name whose current entry has the same SHA-256 loads from the embedded copy with no
        network; otherwise (or for a Hub repo) ``repo_id@revision`` is loaded from the cache or the Hub.

        Raises:
            IntegrityError: the bytes found differ from ``sha256`` (e.g. the name now ships other weights).
            FileNotFoundError, ConnectionError: the files cannot be found (offline and not cached, ...).
        """
        spec = _REGISTRY.get(self.name) if self.name else None
        if spec is not None and spec.sha256 == self.sha256:
            return open_pretrained(self.name)
        found = resolve_pretrained(f"{self.repo_id}@{self.revision}")
        found = ResolvedPretrained(path=found.path, source=found.source, name=self.name, repo_id=found.repo_id,
                                   revision=found.revision, expected_sha256=self.sha256)
        try:
            return _open_resolved(found)
        except IntegrityError as err:
            raise IntegrityError(f"the feature map {self} could not be restored: {err}. This mfd-loss "
                                 f"{'ships other weights under that name' if spec is not None else 'found other bytes'}"
                                 "; install the mfd-loss version that saved the object, or rebuild the loss with "
                                 "MFD(pretrained=...)") from None


@dataclass(frozen=True)
class LoadedPretrained:
    """A loaded map with its ``config.json`` and, for a named or Hub map, its :class:`PretrainedReference`."""

    feature_map: nn.Module
    config: dict[str, Any]
    reference: PretrainedReference | None


def open_pretrained(pretrained: str | os.PathLike, **options: Any) -> LoadedPretrained:
    """As :func:`load_pretrained` (same arguments and errors), also returning the map's reference.

    The reference is None for a local path: a folder may not exist where the object is unpickled, so a
    pickled MFD keeps such a map's weights.
    """
    return _open_resolved(resolve_pretrained(pretrained, **options))


def _open_resolved(found: ResolvedPretrained) -> LoadedPretrained:
    """Load resolved files; a cached or downloaded file is hash-checked first and never loaded on mismatch."""
    if found.source not in ("cache", "hub"):
        feature_map, config = load_feature_map(found.path, expected_sha256=found.expected_sha256)
        reference = None
        if found.name is not None:
            reference = PretrainedReference(found.name, found.repo_id, found.revision, found.expected_sha256)
        return LoadedPretrained(feature_map, config, reference)
    weights = found.path / WEIGHTS_NAME
    ref = found.name or f"{found.repo_id}@{found.revision}"
    try:
        sha256 = found.expected_sha256 or verify_hub_file(weights)
        feature_map, config = load_feature_map(found.path, expected_sha256=found.expected_sha256)
    except IntegrityError as err:
        raise IntegrityError(corrupted_message(weights, ref, str(err))) from None
    except ValueError as err:
        raise ValueError(f"{ref} ({found.path}): {err}") from None
    sha256 = sha256 or config.get("weights_sha256") or sha256_file(weights)
    return LoadedPretrained(feature_map, config, PretrainedReference(found.name, found.repo_id, found.revision, sha256))


def _load_resolved(found: ResolvedPretrained) -> tuple[nn.Module, dict[str, Any]]:
    """(feature map, config) of resolved files (see :func:`_open_resolved`)."""
    loaded = _open_resolved(found)
    return loaded.feature_map, loaded.config


def download_pretrained(pretrained: str | os.PathLike, **kwargs: Any) -> Path:
    """Fetch a named map or Hub repo into the local cache, verify it, and return its folder.

    Takes the arguments of :func:`load_pretrained`. Use it (or ``mfd-loss download NAME``) once with
    network access; later loads work with ``HF_HUB_OFFLINE=1``.

    Raises:
        as :func:`load_pretrained`.
    """
    found = resolve_pretrained(pretrained, **kwargs)
    _load_resolved(found)
    return found.path


# --- built-in maps ---------------------------------------------------------------------------------------------
# The lead registers the shipped maps here (real SHA-256 of model.safetensors; revision = the Hub commit the
# weights were pushed in, see docs/releasing.md), e.g.:
# register_pretrained(PretrainedSpec(name="cifar10", description=..., repo_id=..., revision=..., sha256=...,
#                                    embedded="cifar10", channels=3, resolution=(32, 32), value_range=(-1.0, 1.0),
#                                    preset="all"))
# The Hub revision of a shipped map is pinned when its weights are published (docs/releasing.md, step 3); until
# then "main" is recorded, and the SHA-256 pin guarantees that only these exact bytes are ever loaded.
register_pretrained(PretrainedSpec(
    name="cifar10",
    description="VGG11-BN half width, all 15 perturbations, CIFAR-10 train (50k), 32x32 RGB in [-1, 1] (default)",
    repo_id="mfd-loss/mfd-cifar10-vgg11-half", revision="main",
    sha256="86cf5b31ca3333fe5ce803614e58bacefbe477311e49ce265fc5aa2c4e76be35",
    embedded="cifar10", channels=3, resolution=(32, 32), value_range=(-1.0, 1.0), preset="all",
))
register_pretrained(PretrainedSpec(
    name="mnist",
    description="VGG11-BN half width, 12 grayscale perturbations, MNIST train (60k) padded to 32x32, in [-1, 1]",
    repo_id="mfd-loss/mfd-mnist-vgg11-half", revision="main",
    sha256="651dd4fc8d504e6919dfbf5693c5edab730950f336e8931e71448aadae6802d8",
    embedded="mnist", channels=1, resolution=(32, 32), value_range=(-1.0, 1.0), preset="grayscale",
))
