"""The first hour of training a map: bad data and bad arguments fail early, in one line that says what to do."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mfd_loss import FeatureMapConfig, TrainConfig, load_sample_images, train_feature_map
from mfd_loss.cli import main as cli_main

TINY = FeatureMapConfig(arch="vgg11", width=0.125)


@pytest.fixture(scope="module")
def real() -> torch.Tensor:
    return load_sample_images()[0]  # (64, 3, 32, 32) uint8 real CIFAR-10 test images


def _with_nan(real: torch.Tensor, index: int) -> torch.Tensor:
    x = real[:40].float() / 255
    x[index, 1, 5, 7] = float("nan")
    return x


def test_a_nan_image_stops_training_at_its_first_batch_naming_it(tmp_path, real):
    data = _with_nan(real, 23)
    config = TrainConfig(steps=10, batch_size=8, eval_fraction=0, checkpoint_every=1, ramp_steps=1)
    with pytest.raises(ValueError, match=r"non-finite values \(NaN or Inf\) in image 23 of the training data"):
        train_feature_map(data, tmp_path / "run", config=config, architecture=TINY, input_range=(0, 1),
                          progress=False)
    # the steps before the bad batch are kept (a checkpoint per step here), and no NaN reached the weights
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert 0 < state["step"] < 10
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_a_nan_evaluation_image_is_named_before_training_starts(tmp_path, real):
    config = TrainConfig(steps=2, batch_size=8, ramp_steps=1)
    with pytest.raises(ValueError, match=r"NaN or Inf\) in image 5 of the evaluation data"):
        train_feature_map(real[:40].float() / 255, tmp_path / "run", eval_data=_with_nan(real, 5), config=config,
                          architecture=TINY, input_range=(0, 1), progress=False)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_cli_names_the_nan_image_in_one_line(tmp_path, real, capsys):
    np.save(tmp_path / "x.npy", _with_nan(real, 17).numpy())
    code = cli_main(["train", "--data", str(tmp_path / "x.npy"), "--input-range", "0", "1", "--out",
                     str(tmp_path / "run"), "--arch", "vgg11", "--width", "0.125", "--steps", "20", "--batch-size",
                     "8", "--eval-fraction", "0", "--ramp-steps", "1"])
    lines = capsys.readouterr().err.replace("\r", "\n").splitlines()
    err = [line for line in lines if line.strip() and not line.startswith("feature map:")]
    assert code == 2 and len(err) == 1 and "image 17 of the training data" in err[0], err


def test_a_grayscale_folder_trains_a_one_channel_map_and_says_so(tmp_path, real, capsys):
    from PIL import Image

    folder = tmp_path / "digits"
    folder.mkdir()
    for i, image in enumerate(real[:20, 0].numpy()):  # one channel of real images, saved as mode "L" PNGs
        Image.fromarray(image, mode="L").save(folder / f"{i:02d}.png")
    code = cli_main(["train", "--data", str(folder), "--out", str(tmp_path / "run"), "--arch", "vgg11", "--width",
                     "0.125", "--steps", "1", "--batch-size", "4", "--eval-fraction", "0", "--ramp-steps", "1"])
    assert code == 0
    err = capsys.readouterr().err
    assert "1 channel(s) inferred from the image modes L" in err and "--channels 1|3 overrides" in err
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["architecture"]["in_channels"] == 1
    assert len(config["label_spec"]["labels"]) == 12 and "hue" not in config["label_spec"]["ops"]  # grayscale preset


def test_an_rgb_folder_stays_rgb_and_channels_overrides(tmp_path, real):
    from mfd_loss.training.image_sources import open_image_source
    from PIL import Image

    for i, image in enumerate(real[:3].permute(0, 2, 3, 1).numpy()):
        Image.fromarray(image).save(tmp_path / f"{i}.png")
    assert open_image_source(str(tmp_path))[0].shape == (3, 32, 32)
    assert open_image_source(str(tmp_path), channels=1)[0].shape == (1, 32, 32)


def test_28px_mnist_into_the_mnist_map_says_exactly_how_to_pad():
    import torch.nn.functional as F

    from mfd_loss import MFD

    digits = load_sample_images("mnist")[0][:4].float() / 127.5 - 1  # (4, 1, 28, 28), the package's own sample
    loss_fn = MFD("mnist")
    with pytest.raises(ValueError, match=r"pad\(x, \(2, 2, 2, 2\), value=-1\)"):
        loss_fn(digits, digits.flip(-1))
    padded = F.pad(digits, (2, 2, 2, 2), value=-1)  # the advice, followed
    assert loss_fn(padded, padded.flip(-1)).shape == (4,)


def test_training_warnings_print_above_the_progress_bar_once(tmp_path, real):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    np.save(tmp_path / "x.npy", real.permute(0, 2, 3, 1).numpy())
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}
    result = subprocess.run([sys.executable, "-m", "mfd_loss.cli", "train", "--data", str(tmp_path / "x.npy"),
                             "--out", str(tmp_path / "run"), "--arch", "vgg11", "--width", "0.125", "--steps", "3",
                             "--batch-size", "8", "--ramp-steps", "1", "--eval-fraction", "0.25", "--eval-every", "1"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.replace("\r", "\n").splitlines()
    warned = [line for line in lines if "warning:" in line]
    undefined = [line for line in warned if "R^2 is undefined" in line]
    assert len(undefined) == 1, warned  # three evaluations, one warning
    assert all(line.startswith("mfd-loss train: warning:") for line in warned), warned  # never inside the bar's line
