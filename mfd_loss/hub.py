"""Feature maps on the Hugging Face Hub: the public names in one place.

The code lives in modules named for what they hold, with imports flowing one way:

- :mod:`mfd_loss.hub_download`: repo ids, downloads into the Hub cache, offline mode, integrity checks;
- :mod:`mfd_loss.model_card`: the generated ``README.md`` model cards;
- :mod:`mfd_loss.hub_publish`: :func:`push_folder`, one commit per published map;
- :mod:`mfd_loss.hub_mixin`: ``save_pretrained`` / ``from_pretrained`` / ``push_to_hub``.

A published feature map is a Hub model repo in the layout of ``huggingface_hub.PyTorchModelHubMixin``:
``config.json`` (schema-versioned, strict JSON, see :mod:`mfd_loss.serialization`), ``model.safetensors`` and
a generated ``README.md`` model card. This module only re-exports; nothing inside the package imports it.
"""

from __future__ import annotations

from .hub_download import (cached_folder, corrupted_message, download_folder, is_offline, is_repo_ref,
                           parse_repo_ref, verify_hub_file)
from .hub_mixin import FeatureMapHubMixin, HubMixin, LossHubMixin
from .hub_publish import push_folder
from .model_card import model_card, write_model_card

__all__ = [
    "HubMixin",
    "FeatureMapHubMixin",
    "LossHubMixin",
    "parse_repo_ref",
    "is_repo_ref",
    "is_offline",
    "download_folder",
    "cached_folder",
    "verify_hub_file",
    "corrupted_message",
    "push_folder",
    "model_card",
    "write_model_card",
]
