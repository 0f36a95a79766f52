"""Image sources for training feature maps: tensors, arrays, folders, torchvision data sets, any Dataset.

Every source becomes a ``torch.utils.data.Dataset`` whose items are single images (C, H, W); batches
are assembled by :func:`collate_images`, which accepts the item types people have (uint8 or float tensors,
numpy arrays in HWC or HW layout, PIL images, and ``(image, label)`` tuples) and raises a clear error
for mixed sizes. :func:`to_model_range` (from :mod:`mfd_loss.training.datasets`, on which this module builds) maps a
batch from its declared value range to [-1, 1].
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .datasets import ARCHIVES, to_model_range

__all__ = [
    "ImageTensorDataset", "ImageFolderDataset", "load_array", "open_image_source",
    "collate_images", "describe_image", "to_model_range", "default_download_dir", "IMAGE_EXTENSIONS",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")


class ImageTensorDataset(Dataset):
    """Images held in one (N, C, H, W) tensor (uint8 in [0, 255], or float in a declared range).

    Batched fetches (``__getitems__``) slice the tensor instead of stacking N single items. ``description``
    says where the images came from (recorded by the trainer; e.g. which copy of a named data set was read).
    """

    def __init__(self, images: Tensor, description: str | None = None):
        if not isinstance(images, Tensor) or images.ndim != 4:
            shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"expected an (N, C, H, W) tensor of images, got {shape}")
        if images.shape[0] == 0:
            raise ValueError("the image tensor is empty (N = 0)")
        self.images = images
        self.description = description

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> Tensor:
        return self.images[index]

    def __getitems__(self, indices: Sequence[int]) -> Tensor:
        return self.images[torch.as_tensor(indices)]


class ImageFolderDataset(Dataset):
    """Every image file under a folder (recursively, sorted), decoded with Pillow.

    Args:
        root: the folder.
        channels: 1 (grayscale), 3 (RGB) or None (as stored).
        size: optional (H, W) every image is resized to (antialiased bilinear); without it, all images
            must already share one size.

    Raises:
        FileNotFoundError: root is not a folder. ValueError: it holds no image files.
    """

    def __init__(self, root: str | os.PathLike, channels: int | None = 3, size: tuple[int, int] | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder not found: {self.root}")
        self.files = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if not self.files:
            raise ValueError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) under {self.root}")
        if channels not in (None, 1, 3):
            raise ValueError(f"channels must be 1, 3 or None for an image folder, got {channels}")
        self.channels, self.size = channels, size

    def __len__(self) -> int:
        return len(self.files)

    def infer_channels(self, sample: int = 16) -> str:
        """Set ``channels`` from the files: 1 when every sampled image is grayscale (PIL modes "1", "L", "LA",
        "I", "I;16", "F"), else 3. Looks at up to ``sample`` files spread over the folder; returns what it
        inferred, in words (the trainer prints it)."""
        from PIL import Image

        step = max(1, len(self.files) // sample)
        modes = set()
        for path in self.files[::step][:sample]:
            with Image.open(path) as im:
                modes.add(im.mode)
        gray = modes <= {"1", "L", "LA", "I", "I;16", "F"}
        self.channels = 1 if gray else 3
        kind = "grayscale: a 1-channel map" if gray else "colour: a 3-channel (RGB) map"
        return (f"{self.channels} channel(s) inferred from the image modes {', '.join(sorted(modes))} of "
                f"{min(sample, len(self.files[::step]))} sampled files ({kind}); --channels 1|3 overrides")

    def __getitem__(self, index: int) -> Tensor:
        from PIL import Image, UnidentifiedImageError
        from torchvision.transforms.v2.functional import pil_to_tensor, resize

        path = self.files[index]
        try:
            with Image.open(path) as im:
                im = im.convert({1: "L", 3: "RGB"}[self.channels]) if self.channels else im.copy()
        except (UnidentifiedImageError, OSError) as err:
            raise ValueError(f"cannot decode image {path}: {err}") from None
        image = pil_to_tensor(im)
        if self.size is not None and tuple(image.shape[-2:]) != tuple(self.size):
            image = resize(image, list(self.size), antialias=True)
        return image


def load_array(path: str | os.PathLike, key: str | None = None, layout: str = "auto") -> Tensor:
    """Images from a ``.npy`` or ``.npz`` file as an (N, C, H, W) tensor.

    Args:
        path: the file.
        key: array name inside an ``.npz`` (default: its only array, or ``"images"``/``"x_train"``).
        layout: ``"nchw"``, ``"nhwc"``, or ``"auto"``: (N, H, W) is grayscale; a last axis of size 1, 3 or 4
            with a larger second axis is read as NHWC; anything else as NCHW.

    Raises:
        ValueError: unknown key, layout, or an array that is not 3-D / 4-D.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"array file not found: {path}")
    data = np.load(path, allow_pickle=False)
    if isinstance(data, np.lib.npyio.NpzFile):
        with data:
            names = list(data.keys())
            if key is None:
                key = names[0] if len(names) == 1 else next((k for k in ("images", "x_train") if k in names), None)
            if key not in names:
                raise ValueError(f"{path} holds arrays {names}; choose one with key=")
            array = data[key]
    else:
        array = data
    if array.ndim == 3:
        array = array[:, None]
    elif array.ndim != 4:
        raise ValueError(f"{path}: expected images shaped (N, H, W), (N, H, W, C) or (N, C, H, W), got {array.shape}")
    elif layout == "nhwc" or (layout == "auto" and array.shape[-1] in (1, 3, 4) and array.shape[1] > 4):
        array = array.transpose(0, 3, 1, 2)
    elif layout not in ("nchw", "auto"):
        raise ValueError(f"layout must be 'auto', 'nchw' or 'nhwc', got {layout!r}")
    return torch.from_numpy(np.ascontiguousarray(array))


def describe_image(dataset: Dataset, index: int) -> str:
    """How an error message names image ``index`` of ``dataset``: its file for a folder, else its index."""
    files = getattr(dataset, "files", None)
    if files is not None:
        return f"{files[index]} (image {index})"
    return f"image {index} of the training data"


def open_image_source(
    source: str | os.PathLike | Tensor | np.ndarray | Dataset,
    *,
    split: str = "train",
    root: str | os.PathLike | None = None,
    download: bool = False,
    channels: int | None = None,
    size: tuple[int, int] | None = None,
    key: str | None = None,
    layout: str = "auto",
) -> Dataset:
    """Turn a user's data into a Dataset of (C, H, W) images.

    Args:
        source: one of
            - ``"cifar10"`` / ``"mnist"`` / ``"tinyimagenet"``: the project's archives (see
              :mod:`mfd_loss.training.datasets`); without them, torchvision's copy of CIFAR-10 / MNIST under ``root``
              (default :func:`default_download_dir`), downloaded when absent;
            - ``"torchvision:NAME"`` (e.g. ``"torchvision:CIFAR100"``, ``"torchvision:FashionMNIST"``): a
              torchvision data set class, stored under ``root`` (downloaded there when ``download=True``
              on a machine with internet);
            - a folder of image files; a ``.npy`` / ``.npz`` file of images;
            - an (N, C, H, W) tensor or numpy array; any ``Dataset`` whose items are images or (image, ...) tuples.
        split: ``"train"`` or ``"test"`` for named data sets.
        root: for torchvision data sets; also serves as the data folder of the project archives.
        download: for torchvision data sets.
        channels: for image folders (see :class:`ImageFolderDataset`); None infers 1 or 3 from the files
            (:meth:`ImageFolderDataset.infer_channels`) and records what it inferred as the folder's ``inferred``.
        size: for image folders (see :class:`ImageFolderDataset`).
        key: for array files (see :func:`load_array`).
        layout: for array files (see :func:`load_array`).

    Raises:
        ValueError: an unknown name or an empty source.
        FileNotFoundError: a path that does not exist.
    """
    if isinstance(source, Dataset):
        return source
    if isinstance(source, np.ndarray):
        source = torch.from_numpy(source)
    if isinstance(source, Tensor):
        return ImageTensorDataset(source)
    text = str(source)
    if text in ARCHIVES:
        try:
            images, _ = ARCHIVES[text](split, root)
            origin = "the project archive" + (" (JPEG-decoded pixels)" if text != "mnist" else "")
        except FileNotFoundError as err:
            if text not in _TORCHVISION_NAMES:
                raise FileNotFoundError(f"{err}; Tiny ImageNet has no torchvision copy: pass --data-dir (root=) "
                                        "to the folder that holds tinyimagenet/, or set MFD_DATA_DIR") from None
            images = _torchvision_copy(text, split, root, reason=str(err))
            origin = f"torchvision's {_TORCHVISION_NAMES[text]} (lossless pixels)"
        return ImageTensorDataset(images, description=f"{text} {split}, {origin}")
    if text.startswith("torchvision:"):
        import torchvision.datasets as tvd

        name = text.split(":", 1)[1]
        cls = getattr(tvd, name, None)
        if cls is None:
            raise ValueError(f"torchvision.datasets has no data set {name!r}")
        if root is None:
            raise ValueError(f"pass root= (--data-dir) to say where {name} is stored or should be downloaded")
        kwargs = {"train": split == "train"} if "train" in cls.__init__.__code__.co_varnames else {"split": split}
        try:
            return cls(str(root), download=download, **kwargs)
        except RuntimeError as err:
            raise FileNotFoundError(f"{name} not found under {root} ({err}); pass download=True (--download) on a "
                                    "machine with internet, or point root at a folder that holds it") from None
    path = Path(text)
    if path.is_dir():
        folder = ImageFolderDataset(path, channels=channels, size=size)
        if channels is None:
            folder.inferred = folder.infer_channels()
        return folder
    if path.suffix in (".npy", ".npz"):
        return ImageTensorDataset(load_array(path, key=key, layout=layout))
    if path.exists():
        raise ValueError(f"cannot read images from {path}: expected a folder of images or a .npy/.npz file")
    raise FileNotFoundError(f"no data at {path}; pass {', '.join(map(repr, ARCHIVES))}, 'torchvision:NAME', a folder "
                            "or an array file")


_TORCHVISION_NAMES = {"cifar10": "CIFAR10", "mnist": "MNIST"}


def default_download_dir() -> Path:
    """Where the torchvision fallback keeps CIFAR-10 / MNIST when no folder is given:
    ``$MFD_DATA_DIR``, else ``$XDG_CACHE_HOME/mfd-loss`` (``~/.cache/mfd-loss``)."""
    if os.environ.get("MFD_DATA_DIR"):
        return Path(os.environ["MFD_DATA_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mfd-loss"


def _torchvision_copy(name: str, split: str, root: str | os.PathLike | None, reason: str) -> Tensor:
    """CIFAR-10 / MNIST through torchvision (downloaded, with its progress bar, when not already under the folder)
    for users without the project's archives. Returns (N, C, H, W) uint8 with torchvision's exact pixels."""
    import sys

    import torchvision.datasets as tvd

    root = default_download_dir() if root is None else root
    cls_name = _TORCHVISION_NAMES[name]
    print(f"{reason}; using torchvision's {cls_name} under {root} instead (downloaded there if absent)",
          file=sys.stderr)
    try:
        data = getattr(tvd, cls_name)(str(root), train=split == "train", download=True).data
    except (OSError, RuntimeError) as err:  # no network (URLError is an OSError), a corrupt or partial download
        raise FileNotFoundError(f"{name}: no project archive and torchvision's download into {root} failed ({err}); "
                                f"on a machine with internet run it once with --data-dir {root}, or set "
                                "MFD_DATA_DIR to a folder holding the project archives") from None
    images = torch.as_tensor(np.asarray(data))
    if images.ndim == 3:  # MNIST: (N, 28, 28)
        return images[:, None].contiguous()
    return images.permute(0, 3, 1, 2).contiguous()  # CIFAR-10: (N, 32, 32, 3)


def _as_chw(item: Any) -> Tensor:
    if isinstance(item, (tuple, list)):
        item = item[0]
    if isinstance(item, Tensor):
        return item if item.ndim == 3 else item[None] if item.ndim == 2 else _bad(item.shape)
    if isinstance(item, np.ndarray):
        if item.ndim == 2:
            return torch.from_numpy(item)[None]
        if item.ndim == 3:
            return torch.from_numpy(np.ascontiguousarray(item.transpose(2, 0, 1)))
        return _bad(item.shape)
    try:
        from PIL import Image

        if isinstance(item, Image.Image):
            from torchvision.transforms.v2.functional import pil_to_tensor

            return pil_to_tensor(item)
    except ImportError:  # pragma: no cover - PIL ships with torchvision
        pass
    raise ValueError(f"data set items must be images (tensor, numpy array or PIL image), got {type(item).__name__}")


def _bad(shape: Any) -> Tensor:
    raise ValueError(f"an image item must be (C, H, W) or (H, W), got shape {tuple(shape)}")


def collate_images(items: Any) -> Tensor:
    """Stack data set items into one (N, C, H, W) batch.

    Raises:
        ValueError: items of different sizes or channel counts (the message lists the shapes found).
    """
    if isinstance(items, Tensor) and items.ndim == 4:
        return items
    images = [_as_chw(item) for item in items]
    shapes = sorted({tuple(im.shape) for im in images})
    if len(shapes) > 1:
        raise ValueError(f"images in one batch have different shapes {shapes[:4]}; resize them to one size "
                         "(image folders: size=(H, W) / --size H W)")
    return torch.stack(images)
