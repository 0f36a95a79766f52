"""Image sources for the trainer: every accepted form, and a clear error for every bad one."""

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from mfd_loss import load_sample_images
from mfd_loss.image_sources import (
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
