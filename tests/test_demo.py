"""The README's main job: `mfd-loss demo` on the packaged real images."""

import re

import pytest

import mfd_loss
from mfd_loss.cli import main


@pytest.mark.skipif("cifar10" not in mfd_loss.list_pretrained(), reason="the default map is not registered")
def test_demo_prints_a_row_per_residual_kind_with_equal_pixel_error(capsys):
    assert main(["demo", "--num-images", "8"]) == 0
    out = capsys.readouterr().out
    rows = re.findall(r"^(\S.*?)\s+(on|off)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$", out, flags=re.M)
    assert len(rows) == 8
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
