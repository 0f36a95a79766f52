"""Feature maps as files and on the Hugging Face Hub: the registry of pretrained maps, safetensors
serialization, downloads, publishing, the ``save_pretrained`` / ``from_pretrained`` mixin and model cards.

The code lives in modules named for what they hold, with imports flowing one way (each uses only those
listed above it, plus :mod:`mfd_loss.perturbations` and :mod:`mfd_loss._io`):

- :mod:`mfd_loss.hub.serialization`: ``model.safetensors`` + ``config.json``, strict loading, SHA-256 checks;
- :mod:`mfd_loss.hub.download`: repo ids, downloads into the Hub cache, offline mode, integrity checks;
- :mod:`mfd_loss.hub.pretrained`: the registry of named maps (embedded copy, Hub cache, download);
- :mod:`mfd_loss.hub.model_card`: the generated ``README.md`` model cards;
- :mod:`mfd_loss.hub.publish`: :func:`push_folder`, one commit per published map;
- :mod:`mfd_loss.hub.mixin`: ``save_pretrained`` / ``from_pretrained`` / ``push_to_hub``, which the loss and
  the feature maps inherit.

A published feature map is a Hub model repo in the layout of ``huggingface_hub.PyTorchModelHubMixin``:
``config.json`` (schema-versioned, strict JSON), ``model.safetensors`` and a generated ``README.md`` model card.
"""

from __future__ import annotations

from .download import (cached_folder, corrupted_message, download_folder, is_offline, is_repo_ref, parse_repo_ref,
                       verify_hub_file)
from .mixin import FeatureMapHubMixin, HubMixin, LossHubMixin
from .model_card import model_card, write_model_card
from .pretrained import (PretrainedSpec, download_pretrained, get_pretrained_spec, list_pretrained, load_pretrained,
                         register_pretrained, unregister_pretrained)
from .publish import push_folder
from .serialization import IntegrityError, load_feature_map, save_feature_map, sha256_file

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
    "list_pretrained",
    "load_pretrained",
    "download_pretrained",
    "register_pretrained",
    "unregister_pretrained",
    "get_pretrained_spec",
    "PretrainedSpec",
    "save_feature_map",
    "load_feature_map",
    "IntegrityError",
    "sha256_file",
]
