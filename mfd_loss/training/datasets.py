"""Image data for training and testing feature maps: CIFAR-10 / MNIST / Tiny ImageNet archives and the packaged
samples.

Images are returned as uint8 tensors (N, C, H, W) in [0, 255]; :func:`to_model_range` maps them to the
[-1, 1] range every feature map and the distance take. This module imports nothing else of the package;
:mod:`mfd_loss.training.image_sources` (every kind of user data) builds on it.
"""

from __future__ import annotations

import io
import os
from importlib import resources
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor

__all__ = ["find_data_dir", "load_cifar10", "load_mnist", "load_tinyimagenet", "load_sample_images", "to_model_range",
           "SAMPLE_SETS", "ARCHIVES"]

SAMPLE_SETS = {"cifar10": "cifar10_test_sample.npz", "mnist": "mnist_test_sample.npz"}


def find_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """Locate the folder holding ``cifar10/`` and ``mnist/`` archives.

    Looks at ``data_dir``, then ``$MFD_DATA_DIR``, then ``shared/data`` next to or above the current
    directory (the layout of the project's checkout). An explicit ``data_dir`` is the only place looked at.

    Raises:
        FileNotFoundError: an explicit ``data_dir`` that is not a folder, or none of the places exists; the
            message lists what was tried.
    """
    if data_dir is not None:
        if not Path(data_dir).is_dir():
            raise FileNotFoundError(f"data folder {data_dir} does not exist (or is not a folder)")
        return Path(data_dir)
    candidates = []
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


def _archive(split: str, data_dir: str | os.PathLike | None, relative: str, what: str) -> Path:
    """Path of a project archive below the data folder, after checking the split name and that the file exists."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    path = find_data_dir(data_dir) / relative
    if not path.is_file():
        raise FileNotFoundError(f"{what} archive not found at {path}")
    return path


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
    path = _archive(split, data_dir, f"cifar10/cifar10_{split}_jpeg.npz", "CIFAR-10")
    with np.load(path) as z:
        images = _decode_jpegs(z["jpeg"], z["offsets"])
        labels = torch.from_numpy(z["labels"].astype(np.int64))
    return images, labels


def load_mnist(split: str = "train", data_dir: str | os.PathLike | None = None) -> tuple[Tensor, Tensor]:
    """MNIST from the project's archive: train (60,000) or test (the first 3,000).

    Returns:
        images (N, 1, 28, 28) uint8 and labels (N,) int64.
    """
    path = _archive(split, data_dir, "mnist/mnist_train60000_test3000.npz", "MNIST")
    with np.load(path) as z:
        images = torch.from_numpy(z[f"x_{split}"])[:, None]
        labels = torch.from_numpy(z[f"y_{split}"].astype(np.int64))
    return images, labels


def load_tinyimagenet(split: str = "train", data_dir: str | os.PathLike | None = None) -> tuple[Tensor, Tensor]:
    """Tiny ImageNet-200 from the project's JPEG archives: 64x64 ImageNet photos of 200 classes.

    ImageNet images are for non-commercial research only (the archive's README states the terms): ship maps
    trained on them, never the images.

    Args:
        split: ``"train"`` (100,000 images, 500 per class) or ``"test"`` (the 10,000 labelled val images, 50 per
            class; Tiny ImageNet's own test split has no labels).
        data_dir: folder holding ``tinyimagenet/tinyimagenet_{train,val}_jpeg.npz`` (see :func:`find_data_dir`).

    Returns:
        images (N, 3, 64, 64) uint8 (grayscale JPEGs converted to RGB) and labels (N,) int64 in [0, 200).

    Raises:
        ValueError: unknown split. FileNotFoundError: the archive is missing.
    """
    path = _archive(split, data_dir, f"tinyimagenet/tinyimagenet_{'train' if split == 'train' else 'val'}_jpeg.npz",
                    "Tiny ImageNet")
    with np.load(path, allow_pickle=False) as z:
        images = _decode_jpegs(z["jpeg_data"], z["jpeg_offsets"])
        labels = torch.from_numpy(z["labels"].astype(np.int64))
    return images, labels


#: The project's named archives (``--data NAME``): name -> loader(split, data_dir) -> (images uint8, labels).
ARCHIVES = {"cifar10": load_cifar10, "mnist": load_mnist, "tinyimagenet": load_tinyimagenet}


def load_sample_images(name: str = "cifar10") -> tuple[Tensor, Tensor]:
    """Real test images shipped with the package: exact pixels of the first 64 test images.

    Args:
        name: ``"cifar10"`` (64, 3, 32, 32) or ``"mnist"`` (64, 1, 28, 28).

    Returns:
        images (64, C, H, W) uint8 in [0, 255] and class labels (64,) int64. Needs no data folder or network.

    Raises:
        ValueError: an unknown name.
    """
    if name not in SAMPLE_SETS:
        raise ValueError(f"no packaged sample {name!r}; choose one of {sorted(SAMPLE_SETS)}")
    with resources.files("mfd_loss").joinpath("assets").joinpath(SAMPLE_SETS[name]).open("rb") as fh, np.load(fh) as z:
        return torch.from_numpy(z["images"]), torch.from_numpy(z["labels"].astype(np.int64))


def to_model_range(batch: Tensor, input_range: tuple[float, float] | None = None,
                   describe: Callable[[int], str] | None = None) -> Tensor:
    """Map a batch from its value range to float32 [-1, 1], after checking it is finite and in that range.

    Args:
        batch: (N, C, H, W); uint8 is taken as [0, 255]; float needs ``input_range``.
        input_range: (low, high) of float data, e.g. (0, 1) or (-1, 1).
        describe: names the image at a batch position in error messages (the trainer passes its file or
            index in the data set); default "image i of the batch".

    Returns:
        float32 tensor of the same shape, ``low`` mapped to -1 and ``high`` to 1.

    Raises:
        ValueError: float data holding NaN or Inf (naming the first images that do), float data without a
            declared range, or values outside the declared range (by more than 1% of its span), with the range
            actually found.
    """
    if batch.is_floating_point():
        finite = torch.isfinite(batch).flatten(1).all(1)
        if not bool(finite.all()):
            bad = (~finite).nonzero().flatten().tolist()
            name = describe or (lambda i: f"image {i} of the batch")
            where = ", ".join(name(i) for i in bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
            raise ValueError(f"non-finite values (NaN or Inf) in {where}: training on them turns the loss into NaN; "
                             "repair or remove those images")
    if batch.dtype == torch.uint8:
        lo, hi = (0.0, 255.0) if input_range is None else input_range
    elif input_range is None:
        raise ValueError("float images need a declared input range, e.g. input_range=(0, 1) (--input-range 0 1)")
    else:
        lo, hi = (float(v) for v in input_range)
    x = batch.float()
    found_lo, found_hi = (float(v) for v in torch.aminmax(x))
    slack = 0.01 * (hi - lo)
    if found_lo < lo - slack or found_hi > hi + slack:
        raise ValueError(f"images span [{found_lo:.4g}, {found_hi:.4g}] but the declared input range is "
                         f"[{lo:g}, {hi:g}]; declare the right range (--input-range LOW HIGH)")
    return (x - lo) * (2.0 / (hi - lo)) - 1.0
