"""Image data for training and testing feature maps: CIFAR-10 / MNIST archives and the packaged sample.

Images are returned as uint8 tensors (N, C, H, W) in [0, 255]; :func:`to_model_range` maps them to the
[-1, 1] range every feature map and the distance take.
"""

from __future__ import annotations

import io
import os
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .image_sources import to_model_range

__all__ = ["find_data_dir", "load_cifar10", "load_mnist", "load_sample_images", "to_model_range"]

_SAMPLE = "cifar10_test_sample.npz"


def find_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """Locate the folder holding ``cifar10/`` and ``mnist/`` archives.

    Looks at ``data_dir``, then ``$MFD_DATA_DIR``, then ``shared/data`` next to or above the current
    directory (the layout of the project's checkout).

    Raises:
        FileNotFoundError: none of these exists; the message lists what was tried.
    """
    candidates = [Path(data_dir)] if data_dir is not None else []
    if os.environ.get("MFD_DATA_DIR"):
        candidates.append(Path(os.environ["MFD_DATA_DIR"]))
    here = Path.cwd().resolve()
    for parent in (here, *here.parents):
        candidates += [parent / "shared" / "data", parent.parent / "shared" / "data"]
    for path in candidates:
        if path.is_dir():
            return path
    tried = ", ".join(str(p) for p in candidates[:4])
    raise FileNotFoundError(f"no data folder found (tried {tried}, ...); pass data_dir= or set MFD_DATA_DIR "
                            "to the folder that holds cifar10/ and mnist/")


def _decode_jpegs(blob: np.ndarray, offsets: np.ndarray) -> Tensor:
    from PIL import Image

    arrays = [np.asarray(Image.open(io.BytesIO(blob[offsets[i]:offsets[i + 1]].tobytes())).convert("RGB"))
              for i in range(len(offsets) - 1)]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def load_cifar10(split: str = "train", data_dir: str | os.PathLike | None = None) -> tuple[Tensor, Tensor]:
    """CIFAR-10 from the project's JPEG archives, in the original order.

    Args:
        split: ``"train"`` (50,000 images) or ``"test"`` (10,000).
        data_dir: folder holding ``cifar10/cifar10_{split}_jpeg.npz`` (see :func:`find_data_dir`).

    Returns:
        images (N, 3, 32, 32) uint8 and labels (N,) int64.

    Raises:
        ValueError: unknown split. FileNotFoundError: the archive is missing.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    path = find_data_dir(data_dir) / "cifar10" / f"cifar10_{split}_jpeg.npz"
    if not path.is_file():
        raise FileNotFoundError(f"CIFAR-10 archive not found at {path}")
    with np.load(path) as z:
        images = _decode_jpegs(z["jpeg"], z["offsets"])
        labels = torch.from_numpy(z["labels"].astype(np.int64))
    return images, labels


def load_mnist(split: str = "train", data_dir: str | os.PathLike | None = None) -> tuple[Tensor, Tensor]:
    """MNIST from the project's archive: train (60,000) or test (the first 3,000).

    Returns:
        images (N, 1, 28, 28) uint8 and labels (N,) int64.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    path = find_data_dir(data_dir) / "mnist" / "mnist_train60000_test3000.npz"
    if not path.is_file():
        raise FileNotFoundError(f"MNIST archive not found at {path}")
    with np.load(path) as z:
        images = torch.from_numpy(z[f"x_{split}"])[:, None]
        labels = torch.from_numpy(z[f"y_{split}"].astype(np.int64))
    return images, labels


def load_sample_images() -> tuple[Tensor, Tensor]:
    """The 64 real CIFAR-10 test images shipped with the package (exact pixels of test[0:64]).

    Returns:
        images (64, 3, 32, 32) uint8 and class labels (64,) int64. Needs no data folder or network.
    """
    with resources.files("mfd_loss").joinpath("assets").joinpath(_SAMPLE).open("rb") as fh, np.load(fh) as z:
        return torch.from_numpy(z["images"]), torch.from_numpy(z["labels"].astype(np.int64))
