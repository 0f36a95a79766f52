"""Atomic checkpoint files: written to a temporary file in the same folder, then renamed into place."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from .._io import atomic_write

__all__ = ["atomic_write", "save_checkpoint", "load_checkpoint"]


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Atomically save a training state dict with ``torch.save``."""
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (tensors onto the CPU).

    Raises:
        FileNotFoundError: no file at path (resuming from a missing checkpoint is an error, never a fresh start).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    # weights_only=False: the state holds RNG states and plain Python config, written by this library.
    return torch.load(path, map_location="cpu", weights_only=False)
