"""Training data of a run: exact-resume batch order, the held-out split, the data fingerprint, opening sources.

Every random choice is derived from (seed, purpose, index) by :func:`_mix`, so the data order of each epoch
and the perturbations of each step are known without replaying the run (exact resume).
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, Iterator, Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from .config import TrainConfig
from .datasets import to_model_range
from .image_sources import collate_images, describe_image, open_image_source

__all__ = ["StepBatchSampler", "split_held_out", "data_fingerprint"]


def _mix(*values: int) -> int:
    """A 63-bit seed derived from integers (splitmix64-style), stable across runs and platforms."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (v + 0x9E3779B97F4A7C15 + (h << 6) + (h >> 2))) & 0xFFFFFFFFFFFFFFFF
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (h ^ (h >> 31)) & 0x7FFFFFFFFFFFFFFF


def _generator(*values: int) -> torch.Generator:
    return torch.Generator().manual_seed(_mix(*values))


class StepBatchSampler(Sampler[list[int]]):
    """Index lists of the global batch of each step from ``start`` to ``steps``.

    Epoch e visits ``indices`` in the order of a permutation seeded by (seed, e); step s takes positions
    [s * B, (s + 1) * B) of the concatenated epochs, so any step's batch is known without replaying.
    """

    def __init__(self, indices: Sequence[int], batch_size: int, seed: int, start: int, steps: int):
        self.indices = torch.as_tensor(list(indices))
        self.batch_size, self.seed, self.start, self.steps = batch_size, seed, start, steps
        self._epoch, self._perm = -1, torch.empty(0, dtype=torch.long)

    def __len__(self) -> int:
        return max(0, self.steps - self.start)

    def batch(self, step: int) -> list[int]:
        n = len(self.indices)
        out, position, end = [], step * self.batch_size, (step + 1) * self.batch_size
        while position < end:
            epoch, offset = divmod(position, n)
            if epoch != self._epoch:
                self._epoch, self._perm = epoch, torch.randperm(n, generator=_generator(self.seed, 1, epoch))
            take = min(n - offset, end - position)
            out.append(self.indices[self._perm[offset:offset + take]])
            position += take
        return torch.cat(out).tolist()

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start, self.steps):
            yield self.batch(step)


def split_held_out(num_images: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Deterministic (train, held-out) index split; round(fraction * N) held out (at least 2 when fraction > 0,
    so that mixup always finds a partner among the held-out images)."""
    held = 0 if fraction == 0 else max(2, round(fraction * num_images))
    if held >= num_images - 1:
        raise ValueError(f"cannot hold out {held} of {num_images} images; lower eval_fraction or pass eval_data")
    perm = torch.randperm(num_images, generator=_generator(seed, 4)).tolist()
    return sorted(perm[held:]), sorted(perm[:held])


def data_fingerprint(dataset: Dataset, source: str, samples: int = 8) -> dict[str, Any]:
    """What identifies a training set across runs: its size and a SHA-256 of a few of its images.

    Args:
        dataset: a Dataset of images (see :func:`mfd_loss.training.image_sources.open_image_source`).
        source: a description of where the images came from (recorded, not compared).
        samples: how many images, evenly spaced over the index range, are hashed (with dtype and shape).

    Returns:
        ``{"source": str, "num_images": N, "sample_indices": [...], "sample_sha256": hex}``.
    """
    n = len(dataset)
    indices = sorted({round(i * (n - 1) / max(1, samples - 1)) for i in range(min(samples, n))})
    digest = hashlib.sha256()
    for i in indices:
        image = collate_images([dataset[i]]).contiguous().cpu()
        digest.update(f"{image.dtype} {tuple(image.shape)}".encode())
        digest.update(image.flatten().view(torch.uint8).numpy().tobytes())
    return {"source": source, "num_images": n, "sample_indices": indices, "sample_sha256": digest.hexdigest()}


def _describe_source(data: Any) -> str:
    if isinstance(data, (str, os.PathLike)):
        return str(data)
    if isinstance(data, Tensor) or hasattr(data, "shape"):
        return f"{type(data).__name__} of shape {tuple(data.shape)}"
    return type(data).__name__


def _prepare_data(
    data: Any, eval_data: Any, config: TrainConfig, input_range: tuple[float, float] | None, **source_kwargs: Any
) -> tuple[Dataset, list[int], Tensor | None, tuple[int, int, int]]:
    """Open the sources, split off held-out images when needed, check the image shape."""
    dataset = open_image_source(data, split="train", **source_kwargs)
    if len(dataset) < 2:
        raise ValueError(f"need at least 2 training images, got {len(dataset)}")
    if eval_data is None and config.eval_fraction > 0:
        train_idx, held_idx = split_held_out(len(dataset), config.eval_fraction, config.seed)
        held_idx = held_idx[:config.eval_size]
        eval_images = to_model_range(collate_images([dataset[i] for i in held_idx]), input_range,
                                     describe=lambda j: describe_image(dataset, held_idx[j]))
    else:
        train_idx = list(range(len(dataset)))
        eval_images = None
        if eval_data is not None:
            eval_set = open_image_source(eval_data, split="test", **source_kwargs)
            n = min(len(eval_set), config.eval_size)
            eval_images = to_model_range(collate_images([eval_set[i] for i in range(n)]), input_range,
                                         describe=lambda j: describe_image(eval_set, j).replace("training", "evaluation"))
    probe = to_model_range(collate_images([dataset[i] for i in train_idx[:2]]), input_range,
                           describe=lambda j: describe_image(dataset, train_idx[j]))
    shape = tuple(probe.shape[1:])
    if eval_images is not None and tuple(eval_images.shape[1:]) != shape:
        raise ValueError(f"evaluation images are {tuple(eval_images.shape[1:])} but training images are {shape}")
    return dataset, train_idx, eval_images, shape
