"""Training feature maps by self-supervised perturbation-parameter regression (METHOD.md Sec. 3).

- :mod:`~mfd_loss.training.config`: the recipe (:class:`TrainConfig`) and the named :data:`RECIPES`;
- :mod:`~mfd_loss.training.loop`: :func:`train_feature_map` (single process or ``torchrun``, exact resume);
- :mod:`~mfd_loss.training.evaluation`: held-out per-label R^2 (:func:`evaluate_feature_map`);
- :mod:`~mfd_loss.training.export`: :func:`export_run`, a checkpoint's model as ``model.safetensors``;
- :mod:`~mfd_loss.training.data`, :mod:`~mfd_loss.training.image_sources`, :mod:`~mfd_loss.training.datasets`:
  batch order, held-out split and data fingerprint; every kind of user data; the project's archives;
- :mod:`~mfd_loss.training.checkpoint`, :mod:`~mfd_loss.training.interrupt`,
  :mod:`~mfd_loss.training.distributed`: atomic checkpoints, SIGTERM/SIGINT handling, DDP helpers;
- :mod:`~mfd_loss.training.reporting`: ``--report-to`` TensorBoard / Weights & Biases reporters.
"""

from __future__ import annotations

from .checkpoint import load_checkpoint, save_checkpoint
from .config import RECIPES, TrainConfig, default_device, default_spec, recipe_settings
from .data import data_fingerprint
from .datasets import load_cifar10, load_mnist, load_sample_images, to_model_range
from .evaluation import evaluate_feature_map, format_r2, regression_metrics
from .export import export_run
from .image_sources import ImageFolderDataset, ImageTensorDataset, collate_images, load_array, open_image_source
from .interrupt import StopRequested, exit_status, stop_reason
from .loop import train_feature_map

__all__ = [
    "TrainConfig", "RECIPES", "recipe_settings", "default_spec", "default_device",
    "train_feature_map", "evaluate_feature_map", "regression_metrics", "format_r2", "export_run", "data_fingerprint",
    "open_image_source", "ImageFolderDataset", "ImageTensorDataset", "load_array", "collate_images",
    "load_sample_images", "load_cifar10", "load_mnist", "to_model_range",
    "save_checkpoint", "load_checkpoint", "StopRequested", "exit_status", "stop_reason",
]
