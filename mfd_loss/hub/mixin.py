"""``save_pretrained`` / ``from_pretrained`` / ``push_to_hub`` for feature maps and the MFD loss.

The methods follow ``huggingface_hub.PyTorchModelHubMixin`` (same files, same call pattern); loading goes
through :func:`mfd_loss.hub.pretrained.open_pretrained` (strict, safetensors-only, hash-checked), saving through
:func:`mfd_loss.hub.serialization.save_feature_map`, publishing through :func:`mfd_loss.hub.publish.push_folder`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .publish import push_folder
from .model_card import write_model_card
from ..perturbations import LabelSpec, label_spec as make_spec
from .pretrained import LoadedPretrained, open_pretrained
from .serialization import save_feature_map

if TYPE_CHECKING:  # pragma: no cover
    from huggingface_hub import CommitInfo

__all__ = ["HubMixin", "FeatureMapHubMixin", "LossHubMixin"]


_STRUCTURAL = ("schema_version", "library", "architecture", "label_spec", "input_range", "storage_dtype",
               "weights_sha256")


class HubMixin:
    """``save_pretrained`` / ``from_pretrained`` / ``push_to_hub`` in the layout of ``PyTorchModelHubMixin``.

    Same files and call pattern as ``huggingface_hub.PyTorchModelHubMixin`` (``config.json`` +
    ``model.safetensors`` + ``README.md``), but loading is strict, safetensors-only, schema-versioned,
    hash-checked and quiet, and nothing is imported from ``huggingface_hub`` until a Hub call is made.
    Subclasses (:class:`FeatureMapHubMixin`, :class:`LossHubMixin`) say what is saved and how an instance
    is rebuilt.
    """

    def _hub_parts(self, label_spec: LabelSpec | None, metadata: dict[str, Any] | None
                   ) -> tuple[Any, LabelSpec, dict[str, Any]]:
        """(feature map, label spec, metadata written into config.json)."""
        raise NotImplementedError

    @classmethod
    def _hub_build(cls, loaded: LoadedPretrained, **kwargs: Any) -> Any:
        """Build an instance from a loaded feature map, its config and its reference."""
        raise NotImplementedError

    def save_pretrained(self, save_directory: str | os.PathLike, *, label_spec: LabelSpec | None = None,
                        metadata: dict[str, Any] | None = None, dtype: Any = None, repo_id: str | None = None,
                        push_to_hub: bool = False, **push_kwargs: Any) -> Path:
        """Write ``model.safetensors``, ``config.json`` and a ``README.md`` model card into a folder.

        Args:
            save_directory: output folder (created if needed); files are written atomically.
            label_spec: what the K outputs regress; default: the spec the map was loaded with (a freshly built
                map with K = 15 has the full set).
            metadata: extra ``config.json`` entries (``dataset``, ``recipe``, ``metrics``, ``license``, ...),
                merged over those the map was loaded with.
            dtype: storage dtype of floating tensors (default: the dtype the map was loaded from, else float32;
                ``torch.float16`` halves the file).
            repo_id: Hub repo the card refers to; with ``push_to_hub=True`` also the target repo.
            push_to_hub: also publish the folder (``push_kwargs`` as for :func:`push_folder`).

        Returns:
            the folder.

        Raises:
            ValueError: no label spec known for the map, or one whose length differs from K.
        """
        feature_map, spec, meta = self._hub_parts(label_spec, metadata)
        if dtype is None:
            dtype = getattr(torch, str(meta.get("storage_dtype", "float32")), torch.float32)
        meta = {k: v for k, v in meta.items() if k not in _STRUCTURAL}
        folder = Path(save_feature_map(feature_map, save_directory, label_spec=spec, metadata=meta, dtype=dtype))
        write_model_card(folder, repo_id=repo_id)
        if push_to_hub:
            if repo_id is None:
                raise ValueError("push_to_hub=True needs repo_id='org/repo'")
            push_folder(folder, repo_id, **push_kwargs)
        return folder

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *, revision: str | None = None,
                        cache_dir: str | os.PathLike | None = None, local_files_only: bool = False,
                        token: str | bool | None = None, force_download: bool = False, **kwargs: Any):
        """Load from a registered name, ``org/repo[@revision]``, a local folder or a ``.safetensors`` file.

        Resolution and checks are those of :func:`mfd_loss.load_pretrained`: a local path makes no request; a
        named map uses the embedded copy, then the Hub cache, then a download, checking its SHA-256.

        Args:
            pretrained_model_name_or_path: what to load.
            revision: branch, tag or commit of a Hub repo (overrides an ``@revision`` suffix).
            cache_dir: Hub cache folder (default ``$HF_HUB_CACHE``).
            local_files_only: never touch the network (as ``HF_HUB_OFFLINE=1``).
            token: Hub token for private repos.
            force_download: download again even when cached.
            kwargs: passed to the class (e.g. ``distance=``, ``reduction=`` for the loss).

        Raises:
            FileNotFoundError, ConnectionError, ValueError, KeyError: see :func:`mfd_loss.load_pretrained`.
        """
        loaded = open_pretrained(pretrained_model_name_or_path, revision=revision, cache_dir=cache_dir,
                                 local_files_only=local_files_only, token=token, force_download=force_download)
        return cls._hub_build(loaded, **kwargs)

    def push_to_hub(self, repo_id: str, *, token: str | None = None, private: bool | None = None,
                    branch: str | None = None, commit_message: str | None = None, create_pr: bool = False,
                    label_spec: LabelSpec | None = None, metadata: dict[str, Any] | None = None,
                    dtype: Any = None) -> "CommitInfo":
        """Save into a temporary folder and publish it as one commit (see :func:`push_folder`).

        Returns:
            ``huggingface_hub.CommitInfo``; ``.oid`` is the commit to pin (``"org/repo@<oid>"``).
        """
        with tempfile.TemporaryDirectory(prefix="mfd-push-") as tmp:
            folder = self.save_pretrained(Path(tmp) / "map", label_spec=label_spec, metadata=metadata, dtype=dtype,
                                          repo_id=repo_id)
            return push_folder(folder, repo_id, token=token, private=private, branch=branch,
                               commit_message=commit_message, create_pr=create_pr)


def _label_spec_for(feature_map: Any, label_spec: LabelSpec | None, config: dict[str, Any]) -> LabelSpec:
    if label_spec is not None:
        return make_spec(label_spec)
    if "label_spec" in config:
        return LabelSpec.from_dict(config["label_spec"])
    full = make_spec("all")
    if feature_map.config.num_labels == full.num_labels:
        return full
    raise ValueError(f"the feature map has {feature_map.config.num_labels} outputs and no known label spec; pass "
                     "label_spec= (e.g. mfd_loss.label_spec('geometric')) to save_pretrained / push_to_hub")


class FeatureMapHubMixin(HubMixin):
    """Hub methods of feature maps: the map itself is saved; ``from_pretrained`` returns the map."""

    def _hub_parts(self, label_spec, metadata):
        config = dict(getattr(self, "pretrained_config", None) or {})
        return self, _label_spec_for(self, label_spec, config), {**config, **dict(metadata or {})}

    @classmethod
    def _hub_build(cls, loaded, **kwargs):
        feature_map, config = loaded.feature_map, loaded.config
        if kwargs:
            raise TypeError(f"{cls.__name__}.from_pretrained got unexpected arguments {sorted(kwargs)}")
        if not isinstance(feature_map, cls):
            raise TypeError(f"the config describes a {type(feature_map).__name__} "
                            f"({config.get('architecture', {}).get('arch')}), not a {cls.__name__}; load it with "
                            f"{type(feature_map).__name__}.from_pretrained or mfd_loss.load_pretrained")
        return feature_map


class LossHubMixin(HubMixin):
    """Hub methods of the MFD loss: its feature map is saved, with the loss options (distance, normalize,
    reduction, resize, validate_args) under ``"loss"``; ``from_pretrained`` arguments override them.

    The class provides ``_from_loaded(loaded, **options)``, which builds the loss around an already loaded map.
    """

    def _hub_parts(self, label_spec, metadata):
        feature_map = self.feature_map
        config = dict(getattr(self, "config", None) or getattr(feature_map, "pretrained_config", None) or {})
        options = {"distance": self.distance, "normalize": self.normalize, "reduction": self.reduction,
                   "resize": self.resize, "validate_args": self.validate_args}
        return (feature_map, _label_spec_for(feature_map, label_spec, config),
                {**config, **dict(metadata or {}), "loss": options})

    @classmethod
    def _hub_build(cls, loaded, **kwargs):
        return cls._from_loaded(loaded, **{**dict(loaded.config.get("loss") or {}), **kwargs})
