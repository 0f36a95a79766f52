"""benchmarks/resolution.py in its --smoke mode: every loss and mode measured, fractions valid, files written."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from conftest import load_script

pytest.importorskip("skimage", reason="the resolution benchmark crops scikit-image's photographs: pip install scikit-image")

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "resolution.py"


@pytest.fixture(scope="module")
def resolution():
    return load_script(SCRIPT, "benchmark_resolution")


def test_smoke_run(resolution, tmp_path):
    out = tmp_path / "resolution.json"
    payload = resolution.main(["--smoke", "--device", "cpu", "--threads", "1", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["fractions"] == payload["fractions"] and saved["environment"]["device"] == "cpu"
    rows = saved["fractions"]
    for mode in resolution.MODES:
        for label in ("cifar10", "random init"):
            cells = rows[f"MFD {label}, resize={mode!r}"]
            assert set(cells) == {"64 px, t = 5"}
            assert all(0.0 <= c["mean"] <= 1.0 and math.isfinite(c["sem"]) for c in cells.values())
    assert all(c["mean"] == pytest.approx(0.5, abs=1e-6) for c in rows["pixel L2"].values())  # by construction
    text = out.with_suffix(".md").read_text()
    assert "| MFD cifar10, resize='tiles' |" in text and "| pixel L2 |" in text


def test_crops_are_in_range_and_sized(resolution):
    import torch

    photos = resolution.photographs()
    crops = resolution.random_crops(photos, 3, 64, torch.Generator().manual_seed(0))
    assert crops.shape == (3, 3, 64, 64) and crops.min() >= -1 and crops.max() <= 1
    assert crops.std() > 0.05  # real image content, not a constant


def test_a_native_64px_map_is_measured_beside_its_random_init_and_named_by_hash(resolution, tmp_path):
    import torch

    from mfd_loss import FeatureMapConfig, build_feature_map, label_spec, save_feature_map
    from mfd_loss.hub.serialization import sha256_file

    torch.manual_seed(123)  # other weights than the control, which random_init_like draws with seed 0
    fmap = build_feature_map(FeatureMapConfig(arch="vgg11", width=0.125, num_labels=15, resolution=(64, 64)))
    folder = save_feature_map(fmap, tmp_path / "map64", label_spec=label_spec("all"))
    out = tmp_path / "resolution.json"
    resolution.main(["--smoke", "--device", "cpu", "--threads", "1", "--out", str(out),
                     "--native-map", f"tiny64={folder}"])
    saved = json.loads(out.read_text())
    rows = saved["fractions"]
    for name in ("MFD tiny64 (native 64 px)", "MFD tiny64 random init (native 64 px)"):
        assert set(rows[name]) == {"64 px, t = 5"} and 0.0 <= rows[name]["64 px, t = 5"]["mean"] <= 1.0
    assert rows["MFD tiny64 (native 64 px)"] != rows["MFD tiny64 random init (native 64 px)"]
    assert saved["maps"]["tiny64"] == {"name": "map64", "sha256": sha256_file(folder / "model.safetensors")}
    assert len(saved["maps"]["cifar10"]["sha256"]) == 64
    assert str(tmp_path) not in json.dumps(saved["maps"])  # no absolute path in the record
