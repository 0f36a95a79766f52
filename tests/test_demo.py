"""The README's main job: `mfd-loss demo` on the packaged real images."""

import re

import pytest
import torch

import mfd_loss
from mfd_loss.cli import main


@pytest.mark.skipif("cifar10" not in mfd_loss.list_pretrained(), reason="the default map is not registered")
def test_demo_prints_a_row_per_residual_kind_with_equal_pixel_error(capsys):
    assert main(["demo", "--num-images", "8"]) == 0
    out = capsys.readouterr().out
    rows = re.findall(r"^(\S.*?)\s+(on|off)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$", out, flags=re.M)
    assert len(rows) == 8, out
    l2 = {float(r[2]) for r in rows}
    huber = {float(r[3]) for r in rows}
    assert len(l2) == 1 and len(huber) == 1  # every residual has the same pixel error, by construction
    mfd = [float(r[4]) for r in rows]
    assert all(v > 0 for v in mfd) and len(set(mfd)) > 1  # MFD tells the kinds apart
    split = re.search(r"^L2\s+([\d.]+)%\s+([\d.]+)%", out, flags=re.M)
    assert abs(float(split.group(1)) - 50) < 1 and abs(float(split.group(2)) - 50) < 1


def test_demo_runs_with_any_feature_map_folder(tmp_path, capsys):
    from mfd_loss import FeatureMapConfig, TrainConfig, load_sample_images, train_feature_map

    train_feature_map(load_sample_images()[0][:16], tmp_path, architecture=FeatureMapConfig(arch="vgg11", width=0.125),
                      config=TrainConfig(steps=1, batch_size=8, eval_fraction=0.25), progress=False)
    assert main(["demo", "--pretrained", str(tmp_path), "--num-images", "4"]) == 0
    assert "Gradient split" in capsys.readouterr().out


@pytest.mark.skipif("mnist" not in mfd_loss.list_pretrained(), reason="the mnist map is not registered")
def test_demo_with_the_grayscale_mnist_map(capsys):
    """`demo --pretrained mnist` used to fail: it fed 3-channel CIFAR-10 images to a 1-channel map."""
    assert main(["demo", "--pretrained", "mnist", "--num-images", "8"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("8 real MNIST test images")
    rows = re.findall(r"^(\S.*?)\s+(on|off)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$", out, flags=re.M)
    assert len(rows) == 7 and not any(r[0].startswith("hue") for r in rows)  # hue needs RGB
    assert len({r[2] for r in rows}) == 1


def test_demo_images_match_the_map_channels_and_resolution():
    from mfd_loss.cli.demo import demo_images

    digits = mfd_loss.load_sample_images("mnist")[0][:4]
    padded, text = demo_images(1, (32, 32), 4)
    assert padded.shape == (4, 1, 32, 32) and padded.dtype == torch.uint8 and "padded to 32x32" in text
    assert torch.equal(padded[..., 2:30, 2:30], digits)  # centred, background all round
    assert padded.sum() == digits.sum()
    same, text = demo_images(1, (28, 28), 4)
    assert torch.equal(same, digits) and text == "4 real MNIST test images"
    photos, text = demo_images(3, (48, 40), 4)
    assert photos.shape == (4, 3, 48, 40) and "CIFAR-10" in text and "resized" in text
    with pytest.raises(ValueError, match="1 channel"):
        demo_images(4, (32, 32), 4)


@pytest.mark.parametrize("num_images", [0, 1, 65])
def test_demo_rejects_a_number_of_images_it_cannot_show(num_images):
    from mfd_loss.cli.demo import run_demo

    with pytest.raises(ValueError, match=r"num_images must lie in \[2, 64\]"):
        run_demo(num_images=num_images)


def test_packaged_mnist_sample_is_the_first_64_test_digits():
    images, labels = mfd_loss.load_sample_images("mnist")
    assert images.shape == (64, 1, 28, 28) and images.dtype == torch.uint8 and labels.shape == (64,)
    try:
        archive = mfd_loss.training.datasets.load_mnist("test")
    except FileNotFoundError:
        pytest.skip("the MNIST archive (../shared/data or $MFD_DATA_DIR) is absent")
    assert torch.equal(images, archive[0][:64]) and torch.equal(labels, archive[1][:64])
    with pytest.raises(ValueError, match="no packaged sample"):
        mfd_loss.load_sample_images("svhn")



@pytest.mark.skipif("cifar10" not in mfd_loss.list_pretrained(), reason="the default map is not registered")
def test_demo_shows_the_random_init_control_and_explains_every_column(capsys):
    assert main(["demo", "--num-images", "8"]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("residual kind"))
    assert header.split()[-4:] == ["MFD", "trained", "MFD", "random"]
    legend = [line.split()[0] for line in out.splitlines() if re.match(r"^  \S", line)]
    for column in ("residual", "manifold", "L2^2", "pseudo-Huber", "MFD", "along", "elsewhere"):
        assert column in legend, column
    assert {"MFD trained", "MFD random"} <= {line[:14].strip() for line in out.splitlines()}  # gradient split rows
    trained, random = map(float, re.search(r"trained map ([\d.]+)x,\s+random-init map ([\d.]+)x", out).groups())
    assert trained > random > 0
    tangent = {m.group(1): float(m.group(2)) for m in re.finditer(r"^(MFD \w+)\s+([\d.]+)%", out, flags=re.M)}
    assert tangent["MFD trained"] < tangent["MFD random"] < 50  # the trained map's update avoids the tangent
