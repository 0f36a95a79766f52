"""Exporting a run: the model of its checkpoint as ``model.safetensors`` + ``config.json``."""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..feature_maps import FeatureMapConfig, TapFeatureMap, build_feature_map
from ..hub.serialization import save_feature_map
from ..perturbations import LabelSpec, Perturbations
from .checkpoint import load_checkpoint
from .config import CHECKPOINT_NAME, TrainConfig, _checkpoint_ramp_length
from .datasets import to_model_range
from .evaluation import evaluate_feature_map

__all__ = ["export_run", "fp16_relative_change"]


def fp16_relative_change(feature_map: TapFeatureMap, images: Tensor) -> float:
    """Largest relative change of per-sample MFD values when the weights are stored in float16.

    Compares the map against a copy whose floating tensors went through float16, on pairs made by
    shifting the (N, C, H, W) ``images`` (uint8 or float in [-1, 1]) by one pixel (a small residual).
    """
    from ..distance import manifold_feature_distance

    rounded = build_feature_map(feature_map.config)
    rounded.load_state_dict({k: (v.half().float() if v.is_floating_point() else v)
                             for k, v in feature_map.state_dict().items()})
    x = to_model_range(images) if images.dtype == torch.uint8 else images.float()
    y = torch.roll(x, 1, dims=-1)
    with torch.no_grad():
        exact = manifold_feature_distance(feature_map.eval(), x, y, check_values=False)
        approx = manifold_feature_distance(rounded.eval(), x, y, check_values=False)
    return float(((approx - exact).abs() / exact).max())


def export_run(
    run_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    dtype: torch.dtype = torch.float32,
    eval_images: Tensor | None = None,
    eval_name: str | None = None,
    dataset: dict[str, Any] | None = None,
    notes: list[str] | None = None,
) -> dict[str, Any]:
    """Export the model of a run's checkpoint as ``model.safetensors`` + ``config.json``.

    Works on finished and unfinished runs (the recipe records ``steps_done``). The exported
    ``config.json`` carries the dataset, the recipe, the training time and the held-out metrics.

    Args:
        run_dir: folder holding ``checkpoint.pt``.
        out_dir: destination folder (may equal run_dir).
        dtype: storage dtype; with float16 the largest relative change of MFD values caused by the
            rounding is measured (on eval_images, else the packaged CIFAR-10 sample for 32x32 RGB maps)
            and recorded as ``fp16_storage_max_relative_mfd_change``.
        eval_images: (M, C, H, W) held-out images (uint8, or float in [-1, 1]); when given, per-label
            R^2/MSE are computed on all of them (else the run's last evaluation is used).
        eval_name: description of eval_images stored with the metrics (e.g. "cifar10 test, 10000 images").
        dataset: description of the training data; default: the one stored in the checkpoint.
        notes: free-text remarks stored as ``notes`` (rendered in the model card).

    Returns:
        the exported config dict (without schema fields).

    Raises:
        FileNotFoundError: no checkpoint in run_dir.
    """
    state = load_checkpoint(Path(run_dir) / CHECKPOINT_NAME)
    arch = FeatureMapConfig.from_dict(state["architecture"])
    spec = LabelSpec.from_dict(state["label_spec"])
    config = TrainConfig(**state["recipe"])
    model = build_feature_map(arch)
    model.load_state_dict(state["model"], strict=True)
    model.eval()
    metrics = state.get("last_eval")
    if eval_images is not None:
        p = config.p_max if config.eval_p is None else config.eval_p
        metrics = evaluate_feature_map(model, eval_images, Perturbations(spec, p=p), p=p)
    if metrics is not None and eval_name:
        metrics = {**metrics, "images": eval_name}
    step = state["step"]
    recipe = {**asdict(config), "objective": "MSE on the perturbation label vector", "optimizer": "RAdam",
              "weight_decay": 0.0, "ramp_length": _checkpoint_ramp_length(state), "steps_done": step,
              "images_seen": step * config.batch_size,
              "train_seconds": round(state["train_seconds"], 1), "torch": torch.__version__}
    metadata: dict[str, Any] = {"dataset": dataset if dataset is not None else state.get("dataset", {}),
                                "recipe": recipe}
    if metrics is not None:
        metadata["metrics"] = {"held_out": metrics}
    if notes:
        metadata["notes"] = list(notes)
    if dtype == torch.float16 and (eval_images is not None or (arch.in_channels, arch.resolution) == (3, (32, 32))):
        from .datasets import load_sample_images

        sample = eval_images[:256] if eval_images is not None else load_sample_images()[0]
        metadata["fp16_storage_max_relative_mfd_change"] = fp16_relative_change(model, sample)
    save_feature_map(model, out_dir, label_spec=spec, metadata=metadata, dtype=dtype)
    return {"architecture": arch.to_dict(), **metadata}
