"""Image sources for the trainer: every accepted form, and a clear error for every bad one."""

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from mfd_loss import load_sample_images
from mfd_loss.training.image_sources import (
    ImageFolderDataset,
    collate_images,
    load_array,
    open_image_source,
    to_model_range,
)


@pytest.fixture(scope="module")
def images():
    return load_sample_images()[0][:8]  # (8, 3, 32, 32) uint8, real CIFAR-10 test images


def write_png(image, path):
    from PIL import Image

    Image.fromarray(image.permute(1, 2, 0).numpy()).save(path)


def _write_pngs(folder, images):
    folder.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(images):
        write_png(im, folder / f"img_{i:02d}.png")


def test_folder_round_trips_exact_pixels(tmp_path, images):
    _write_pngs(tmp_path / "a" / "nested", images)
    ds = open_image_source(tmp_path / "a")
    assert len(ds) == 8
    assert torch.equal(collate_images([ds[i] for i in range(8)]), images)


def test_folder_grayscale_and_resize(tmp_path, images):
    _write_pngs(tmp_path, images[:2])
    gray = ImageFolderDataset(tmp_path, channels=1, size=(40, 48))
    assert tuple(gray[0].shape) == (1, 40, 48)


def test_empty_folder_is_a_clear_error(tmp_path):
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match="no image files"):
        open_image_source(tmp_path)


def test_mixed_sizes_are_a_clear_error(tmp_path, images):
    write_png(images[0], tmp_path / "a.png")
    write_png(images[1][:, :16, :], tmp_path / "b.png")
    ds = open_image_source(tmp_path)
    with pytest.raises(ValueError, match="different shapes.*resize"):
        collate_images([ds[0], ds[1]])


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no data at"):
        open_image_source(tmp_path / "nope")


@pytest.mark.parametrize("layout", ["nhwc", "nchw"])
def test_npy_layouts(tmp_path, images, layout):
    array = images.numpy() if layout == "nchw" else images.permute(0, 2, 3, 1).numpy()
    np.save(tmp_path / "x.npy", array)
    loaded = load_array(tmp_path / "x.npy")
    assert torch.equal(loaded, images)


def test_npz_key_and_grayscale(tmp_path, images):
    np.savez(tmp_path / "x.npz", first=images.numpy(), gray=images[:, 0].numpy())
    with pytest.raises(ValueError, match="choose one with key="):
        load_array(tmp_path / "x.npz")
    gray = load_array(tmp_path / "x.npz", key="gray")
    assert tuple(gray.shape) == (8, 1, 32, 32)
    assert torch.equal(gray[:, 0], images[:, 0])


def test_latent_like_float_array_keeps_channels(tmp_path):
    latents = torch.randn(5, 4, 16, 16)
    np.save(tmp_path / "z.npy", latents.numpy())
    assert torch.equal(load_array(tmp_path / "z.npy"), latents)


def test_dataset_items_of_every_kind(images):
    from PIL import Image

    class Mixed(Dataset):
        def __len__(self):
            return 3

        def __getitem__(self, i):
            im = images[i]
            return [(im, 0), (im.permute(1, 2, 0).numpy(), 1), (Image.fromarray(im.permute(1, 2, 0).numpy()), 2)][i]

    ds = open_image_source(Mixed())
    batch = collate_images([ds[i] for i in range(3)])
    assert torch.equal(batch, images[:3])


def test_bad_item_type_is_a_clear_error():
    with pytest.raises(ValueError, match="must be images"):
        collate_images(["not an image"])


def test_to_model_range_maps_and_checks(images):
    x = to_model_range(images)
    assert x.min() >= -1 and x.max() <= 1
    assert torch.allclose(to_model_range(images.float() / 255, (0, 1)), x, atol=1e-6)
    with pytest.raises(ValueError, match="declared input range"):
        to_model_range(images.float(), (0, 1))
    with pytest.raises(ValueError, match="need a declared input range"):
        to_model_range(images.float())


def test_unknown_torchvision_dataset(tmp_path):
    with pytest.raises(ValueError, match="has no data set 'NoSuchSet'"):
        open_image_source("torchvision:NoSuchSet", root=tmp_path)


def test_torchvision_dataset_absent_offline_says_how_to_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="download=True"):
        open_image_source("torchvision:MNIST", root=tmp_path)


# ---------------------------------------------------------------------------------- cifar10 / mnist without archives


def _write_idx(path, array):
    """MNIST's idx file format: a big-endian magic (0x08 = uint8, then the rank), the dimensions, the bytes."""
    import struct

    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def _fake_mnist_download(calls, digits, labels):
    """Stands in for MNIST.download (no network): writes the idx files it would have downloaded."""
    def download(self):
        calls.append(self.root)
        raw = Path(self.raw_folder)
        for prefix in ("train", "t10k"):
            _write_idx(raw / f"{prefix}-images-idx3-ubyte", digits)
            _write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return download


def _fake_cifar_download(calls, photos, labels):
    """Stands in for CIFAR10.download (no network): writes torchvision's pickled batches."""
    import pickle

    def download(self):
        calls.append(self.root)
        folder = Path(self.root) / self.base_folder
        folder.mkdir(parents=True, exist_ok=True)
        rows = photos.reshape(len(photos), -1)  # (N, 3 * 32 * 32), channel-major as in the CIFAR files
        for name, _ in self.train_list + self.test_list:
            (folder / name).write_bytes(pickle.dumps({"data": rows, "labels": labels.tolist()}))
        (folder / self.meta["filename"]).write_bytes(pickle.dumps({self.meta["key"]: [str(i) for i in range(10)]}))
    return download


def test_mnist_falls_back_to_torchvision_when_the_archive_is_absent(tmp_path, monkeypatch, capsys):
    import torchvision.datasets as tvd

    digits, labels = load_sample_images("mnist")
    calls = []
    monkeypatch.setattr(tvd.MNIST, "download", _fake_mnist_download(calls, digits[:, 0].numpy(), labels.numpy()))
    ds = open_image_source("mnist", split="test", root=tmp_path)  # tmp_path holds no project archive
    assert calls == [str(tmp_path)]  # torchvision was asked to download into the data folder
    assert len(ds) == 64 and torch.equal(collate_images([ds[i] for i in range(64)]), digits)
    assert "using torchvision's MNIST" in capsys.readouterr().err


def test_cifar10_falls_back_to_torchvision_with_the_default_folder(tmp_path, monkeypatch):
    import torchvision.datasets as tvd
    import torchvision.datasets.cifar as cifar

    photos, labels = load_sample_images("cifar10")
    calls = []
    monkeypatch.setattr(tvd.CIFAR10, "download", _fake_cifar_download(calls, photos.numpy(), labels.numpy()))
    monkeypatch.setattr(tvd.CIFAR10, "_check_integrity", lambda self: True)  # our stand-in files have other MD5s
    monkeypatch.setattr(cifar, "check_integrity", lambda *args, **kwargs: True)
    monkeypatch.setenv("MFD_DATA_DIR", str(tmp_path / "data"))  # found, but without the project archive
    (tmp_path / "data").mkdir()
    ds = open_image_source("cifar10", split="train")
    assert calls == [str(tmp_path / "data")]
    assert len(ds) == 5 * 64  # five training batches
    assert torch.equal(collate_images([ds[i] for i in range(64)]), photos)  # NHWC -> NCHW, exact pixels
    assert ds.description == "cifar10 train, torchvision's CIFAR10 (lossless pixels)"  # not the JPEG archive


def test_failed_download_is_a_clear_error(tmp_path, monkeypatch):
    import urllib.error

    import torchvision.datasets as tvd

    def offline(self):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(tvd.MNIST, "download", offline)
    with pytest.raises(FileNotFoundError, match="torchvision's download into .* failed.*--data-dir"):
        open_image_source("mnist", root=tmp_path)


def test_default_download_dir(monkeypatch, tmp_path):
    from mfd_loss.training.image_sources import default_download_dir

    monkeypatch.delenv("MFD_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_download_dir() == tmp_path / "mfd-loss"
    monkeypatch.setenv("MFD_DATA_DIR", str(tmp_path / "d"))
    assert default_download_dir() == tmp_path / "d"


def test_imports_flow_one_way_from_image_sources_to_datasets():
    """datasets (archives, packaged samples, value range) imports nothing of the package; image_sources builds on it."""
    import ast
    import inspect

    import mfd_loss.training.datasets
    import mfd_loss.training.image_sources

    def package_imports(module):
        tree = ast.parse(inspect.getsource(module))
        return {node.module or "." for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level > 0}

    assert package_imports(mfd_loss.training.datasets) == set()
    assert "datasets" in package_imports(mfd_loss.training.image_sources)
    assert mfd_loss.training.image_sources.to_model_range is mfd_loss.training.datasets.to_model_range


def test_tinyimagenet_archive_serves_64px_photos_with_labels():
    from mfd_loss.training.datasets import find_data_dir, load_tinyimagenet

    try:
        val = find_data_dir() / "tinyimagenet" / "tinyimagenet_val_jpeg.npz"
    except FileNotFoundError:
        val = None
    if val is None or not val.is_file():
        pytest.skip("the Tiny ImageNet archive (../shared/data/tinyimagenet or $MFD_DATA_DIR) is absent")
    images, labels = load_tinyimagenet("test")
    assert images.shape == (10_000, 3, 64, 64) and images.dtype == torch.uint8
    assert labels.shape == (10_000,) and int(labels.min()) == 0 and int(labels.max()) == 199
    assert torch.bincount(labels).tolist() == [50] * 200  # 50 val images per class
    assert 90 < images.float().mean() < 140 and images.float().std() > 40  # photos, not blank or noise
    ds = open_image_source("tinyimagenet", split="test")
    assert len(ds) == 10_000 and torch.equal(ds[5], images[5]) and "tinyimagenet test" in ds.description


def test_tinyimagenet_missing_archive_says_where_to_point(tmp_path, monkeypatch):
    monkeypatch.setenv("MFD_DATA_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no torchvision copy.*--data-dir"):
        open_image_source("tinyimagenet", root=tmp_path)
