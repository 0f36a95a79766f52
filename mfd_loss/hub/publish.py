"""Publishing an exported feature map folder to the Hugging Face Hub as one commit."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from .download import hf_module, library_version, parse_repo_ref
from .model_card import model_card
from .serialization import CONFIG_NAME, WEIGHTS_NAME, load_feature_map

if TYPE_CHECKING:  # pragma: no cover
    from huggingface_hub import CommitInfo

__all__ = ["push_folder"]


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool | None = None,
    branch: str | None = None,
    commit_message: str | None = None,
    create_pr: bool = False,
    license: str | None = None,
) -> "CommitInfo":
    """Publish an exported feature map folder as one Hub commit.

    The folder is loaded strictly first (a map that does not load is never published). Exactly three files
    are committed: ``config.json``, ``model.safetensors`` and ``README.md`` (the folder's own card, or one
    generated from ``config.json``); checkpoints and logs beside them are left out.

    Args:
        folder: output of :func:`~mfd_loss.save_feature_map`, ``save_pretrained`` or ``mfd-loss train``.
        repo_id: ``org/repo``; created when missing.
        token: a Hub write token (default: the stored login / ``HF_TOKEN``).
        private: visibility of a newly created repo.
        branch: target branch (default ``main``).
        commit_message: defaults to ``"Upload mfd-loss feature map"``.
        create_pr: open a pull request instead of committing to the branch.
        license: licence written into a generated card (default: ``config.json``'s ``license``, else ``mit``).

    Returns:
        ``huggingface_hub.CommitInfo``; ``.oid`` is the commit to pin as the revision.

    Raises:
        FileNotFoundError / ValueError: the folder is not a loadable feature map.
    """
    repo_id, _ = parse_repo_ref(repo_id)
    folder = Path(folder)
    load_feature_map(folder)  # strict: refuse to publish a map that does not load
    hf = hf_module()
    card_path = folder / "README.md"
    card = card_path.read_bytes() if card_path.is_file() else model_card(
        folder, repo_id=repo_id, license=license).encode()
    operations = [hf.CommitOperationAdd(path_in_repo=CONFIG_NAME, path_or_fileobj=str(folder / CONFIG_NAME)),
                  hf.CommitOperationAdd(path_in_repo=WEIGHTS_NAME, path_or_fileobj=str(folder / WEIGHTS_NAME)),
                  hf.CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card)]
    api = hf.HfApi(token=token, library_name="mfd-loss", library_version=library_version())
    repo_id = api.create_repo(repo_id=repo_id, private=private, exist_ok=True).repo_id
    return api.create_commit(repo_id=repo_id, operations=operations, revision=branch, create_pr=create_pr,
                             commit_message=commit_message or "Upload mfd-loss feature map")
