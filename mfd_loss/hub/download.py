"""Downloading feature maps from the Hugging Face Hub into its cache, and checking what was downloaded.

Every transfer goes through ``huggingface_hub`` (``hf_hub_download``), so its cache, ``HF_ENDPOINT``,
``HF_HOME``, ``HF_HUB_CACHE``, ``HF_HUB_OFFLINE`` and tokens apply. ``huggingface_hub`` is imported on the first
Hub call, not with ``mfd_loss``: environment variables set after ``import mfd_loss`` still count (unless another
library imported ``huggingface_hub`` first). ``HF_HUB_OFFLINE`` is also read at call time.

Integrity: for a repo without a registry pin the weights are checked against the Hub's own content hash (the
LFS SHA-256 the file is cached under, :func:`verify_hub_file`); a file that fails is never loaded and the
error (:func:`corrupted_message`) names the repo, the revision, the cached path and how to repair it.
"""

from __future__ import annotations

import os
import re
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from .serialization import CONFIG_NAME, WEIGHTS_NAME, IntegrityError, sha256_file

__all__ = ["parse_repo_ref", "is_repo_ref", "is_offline", "download_folder", "cached_folder", "verify_hub_file",
           "hub_content_sha256", "corrupted_message", "library_version"]

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def library_version() -> str:
    """The installed mfd-loss version (sent to the Hub as ``library_version``)."""
    try:
        return metadata.version("mfd-loss")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "unknown"


def parse_repo_ref(ref: str) -> tuple[str, str | None]:
    """Split ``"org/repo@revision"`` into ``("org/repo", "revision")``; without ``@`` the revision is None.

    Raises:
        ValueError: ref is not ``org/repo`` or ``org/repo@revision`` (a Hub model id, optionally pinned).

    Example:
        >>> parse_repo_ref("mfd-loss/cifar10-vgg11@0123abc")
        ('mfd-loss/cifar10-vgg11', '0123abc')
    """
    repo_id, sep, revision = str(ref).partition("@")
    if not _REPO_ID.match(repo_id) or "--" in repo_id or ".." in repo_id or (sep and not revision):
        raise ValueError(f"{ref!r} is not a Hugging Face Hub model id: expected 'org/repo' or 'org/repo@revision' "
                         "(a branch, tag or commit)")
    return repo_id, revision or None


def is_repo_ref(ref: Any) -> bool:
    """True when ref is a string of the form ``org/repo`` or ``org/repo@revision``."""
    if not isinstance(ref, str):
        return False
    try:
        parse_repo_ref(ref)
    except ValueError:
        return False
    return True


def hf_module():
    """The ``huggingface_hub`` module, imported on first use (it reads the HF_* variables at import)."""
    import huggingface_hub
    import huggingface_hub.constants  # submodules are not attributes until imported

    return huggingface_hub


def _errors() -> SimpleNamespace:
    """``huggingface_hub``'s exception classes, found under their names in any version since 0.23."""
    from huggingface_hub import utils

    try:
        from huggingface_hub import errors
    except ImportError:  # pragma: no cover - very old versions keep them in utils only
        errors = utils
    names = ("LocalEntryNotFoundError", "OfflineModeIsEnabled", "RevisionNotFoundError", "RepositoryNotFoundError",
             "HfHubHTTPError", "EntryNotFoundError")
    found = SimpleNamespace(**{n: getattr(errors, n, None) or getattr(utils, n) for n in names})
    # >= 1.0 splits "entry not found" into Remote/Local; before, the remote one is EntryNotFoundError itself
    found.RemoteEntryNotFoundError = getattr(errors, "RemoteEntryNotFoundError", None) or found.EntryNotFoundError
    return found


def is_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` is set, whether before or after ``huggingface_hub`` was imported."""
    env = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}
    return env or bool(hf_module().constants.HF_HUB_OFFLINE)


def _cache_root(cache_dir: str | os.PathLike | None) -> Path:
    return Path(cache_dir if cache_dir is not None else hf_module().constants.HF_HUB_CACHE).expanduser()


def _where(repo_id: str, revision: str | None) -> str:
    return f"{repo_id}@{revision or 'main'}"


def _download_error(err: BaseException, repo_id: str, revision: str | None, filename: str, offline: bool,
                    cache_dir: str | os.PathLike | None) -> Exception:
    """Turn a ``huggingface_hub`` failure into an error that names the repo, the revision and the fix."""
    errors = _errors()
    where, endpoint = _where(repo_id, revision), hf_module().constants.ENDPOINT
    if isinstance(err, (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled)):
        cache = _cache_root(cache_dir)
        if offline:
            return FileNotFoundError(
                f"{filename} of {where} is not in the local Hub cache ({cache}) and downloads are disabled "
                "(HF_HUB_OFFLINE=1 or local_files_only=True); download it once with network access "
                f"(`mfd-loss download {repo_id}{'@' + revision if revision else ''}`), or pass a local folder as "
                "pretrained=PATH")
        return ConnectionError(
            f"could not reach the Hugging Face Hub ({endpoint}) to fetch {filename} of {where}, and it is not in "
            f"the local cache ({cache}); check the network, proxy or HF_ENDPOINT, or pass a local folder as "
            "pretrained=PATH")
    if isinstance(err, errors.RevisionNotFoundError):
        return FileNotFoundError(f"revision {revision!r} does not exist in the Hub repo {repo_id!r} ({endpoint}); "
                                 f"pass an existing branch, tag or commit, e.g. pretrained='{repo_id}@main'")
    if isinstance(err, errors.RemoteEntryNotFoundError):
        return FileNotFoundError(f"the Hub repo {where} has no {filename}; an mfd-loss feature map repo holds "
                                 "model.safetensors + config.json (publish one with `mfd-loss push DIR REPO_ID`)")
    if isinstance(err, errors.RepositoryNotFoundError):  # includes gated repos
        return FileNotFoundError(f"Hub repo {repo_id!r} not found at {endpoint} (or it is private/gated and no valid "
                                 "token was sent); check the name, pass token= or run `hf auth login`, or pass a "
                                 "local folder as pretrained=PATH")
    if isinstance(err, errors.HfHubHTTPError):
        status = getattr(getattr(err, "response", None), "status_code", "?")
        return ConnectionError(f"the Hub ({endpoint}) answered HTTP {status} for {filename} of {where}; nothing was "
                               "cached, retry later (the download restarts cleanly)")
    if isinstance(err, OSError) and "Consistency check failed" in str(err):
        return ConnectionError(f"the download of {filename} from {where} was incomplete ({str(err).splitlines()[0]}); "
                               "the partial file was discarded, retry (the download restarts cleanly)")
    network_modules = ("httpx", "httpcore", "requests", "urllib3")
    if isinstance(err, (ConnectionError, TimeoutError)) or type(err).__module__.startswith(network_modules):
        return ConnectionError(f"network error while fetching {filename} of {where} from {endpoint}: {err}; the "
                               "partial file was discarded, retry")
    return err if isinstance(err, Exception) else RuntimeError(str(err))


def download_folder(
    repo_id: str,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
    force_download: bool = False,
) -> Path:
    """Fetch ``config.json`` and ``model.safetensors`` of a Hub repo into the Hub cache.

    Both files come from the same commit: ``config.json`` resolves the revision, the weights are then
    fetched at that commit. A commit revision that is already cached makes no request at all; a branch
    or tag costs one small metadata request per file unless offline.

    Args:
        repo_id: ``org/repo``.
        revision: branch, tag or commit (default ``main``).
        cache_dir: Hub cache folder (default ``$HF_HUB_CACHE``, i.e. ``$HF_HOME/hub``).
        local_files_only: use the cache only (also implied by ``HF_HUB_OFFLINE=1``).
        token: Hub token for private repos (default: the stored login, ``HF_TOKEN``).
        force_download: fetch again even when cached (repairs a corrupted cache entry).

    Returns:
        the snapshot folder (``.../snapshots/<commit>``) holding both files.

    Raises:
        FileNotFoundError: unknown repo, revision or file; or not cached while offline.
        ConnectionError: the Hub could not be reached or the transfer was cut; nothing was cached.
    """
    repo_id, _ = parse_repo_ref(repo_id)
    hf, offline = hf_module(), bool(local_files_only) or is_offline()
    if not force_download and (offline or _COMMIT.match(revision or "")):
        # Pure cache lookup: no headers are built and no request of any kind is made (hf_hub_download may
        # still contact the endpoint, e.g. for its agent-detection registry, even when the file is cached).
        folder = cached_folder(repo_id, revision=revision, cache_dir=cache_dir)
        if folder is not None:
            return folder
        if offline:
            err = _errors().LocalEntryNotFoundError(f"{repo_id}@{revision or 'main'} is not cached")
            raise _download_error(err, repo_id, revision, CONFIG_NAME, offline, cache_dir)
    folder, rev = None, revision
    for filename in (CONFIG_NAME, WEIGHTS_NAME):
        try:
            path = Path(hf.hf_hub_download(
                repo_id, filename, revision=rev, cache_dir=cache_dir, local_files_only=offline, token=token,
                force_download=force_download and not offline, library_name="mfd-loss",
                library_version=library_version(),
            ))
        except Exception as err:  # re-raised below with context
            raise _download_error(err, repo_id, revision, filename, offline, cache_dir) from err
        if folder is None:
            folder, rev = path.parent, path.parent.name  # snapshots/<commit>: pin the second file to it
        elif path.parent != folder:  # pragma: no cover - defensive
            raise RuntimeError(f"{repo_id}: {filename} resolved to another snapshot ({path.parent} != {folder})")
    return folder


def cached_folder(repo_id: str, *, revision: str | None = None, cache_dir: str | os.PathLike | None = None
                  ) -> Path | None:
    """The cached snapshot folder holding both files of ``repo_id@revision``, or None; never makes a request.

    A branch or tag resolves through the cache's ``refs/`` (the commit it pointed to at the last download).
    """
    from huggingface_hub import try_to_load_from_cache

    found = [try_to_load_from_cache(repo_id, name, cache_dir=cache_dir, revision=revision)
             for name in (CONFIG_NAME, WEIGHTS_NAME)]
    if not all(isinstance(f, str) for f in found):
        return None
    folders = {Path(f).parent for f in found}
    return folders.pop() if len(folders) == 1 else None


def hub_content_sha256(path: str | os.PathLike) -> str | None:
    """The SHA-256 a cached Hub file is stored under (``blobs/<sha256>`` for LFS files), or None."""
    blob = Path(os.path.realpath(path))
    return blob.name if _SHA256.match(blob.name) else None


def verify_hub_file(path: str | os.PathLike) -> str | None:
    """Check a cached Hub file against the content hash it is cached under (the LFS SHA-256).

    The Hub cache stores LFS files (``*.safetensors``) as ``blobs/<sha256>``; a file whose bytes no longer
    match that name was corrupted or truncated after the download. Files without such a name are skipped.

    Returns:
        the verified SHA-256, or None for a file without a content-hash name.

    Raises:
        IntegrityError: the bytes do not match.
    """
    expected = hub_content_sha256(path)
    if expected is None:
        return None
    actual = sha256_file(os.path.realpath(path))
    if actual != expected:
        raise IntegrityError(f"SHA-256 {actual} differs from the Hub's content hash {expected}")
    return actual


def corrupted_message(path: str | os.PathLike, ref: str, detail: str) -> str:
    """Error text for a cached file that failed its integrity check: what, where, and how to repair it."""
    return (f"the cached copy of {ref} at {path} failed its integrity check ({detail}); it was not loaded. "
            f"Repair it with `mfd-loss download {ref} --force` (or force_download=True), or delete "
            f"{Path(path).parent} and load again")
