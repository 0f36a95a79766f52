"""Smoke run of benchmarks/feature_map_training.py: the recipe study's real code path at toy size."""

from __future__ import annotations

import json
import math
from pathlib import Path

from conftest import load_script

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _module():
    return load_script(BENCHMARKS / "feature_map_training.py")


def test_recipe_study_smoke_trains_evaluates_and_resumes(tmp_path):
    fmt = _module()
    args = fmt.parse_args(["--smoke", "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out"), "--no-plot"])
    payload = fmt.main(args)
    names = list(fmt.CANDIDATES)[:2]
    assert [c["name"] for c in payload["candidates"]] == names
    for rec in payload["candidates"]:
        curve = rec["curve"]
        assert len(curve) == 2 and rec["finished"]
        # the clock and the images seen grow from one evaluation to the next
        assert 0 < curve[0]["train_seconds"] < curve[1]["train_seconds"]
        assert 0 < curve[0]["images_seen"] < curve[1]["images_seen"]
        assert len(curve[-1]["r2"]) == 15
        assert rec["ramp_steps"] >= 1
    floor = payload["random_init"]["r2"]
    assert len(floor) == 15 and all(v is None or v <= 0.05 or not math.isfinite(v) for v in floor.values())
    table = (tmp_path / "out" / "feature-map-training-smoke.md").read_text()
    assert "random-init (floor)" in table and all(n in table for n in names)
    saved = json.loads((tmp_path / "out" / "feature-map-training-smoke.json").read_text())
    assert saved["eval_p"] == 0.15 and saved["environment"]["torch_threads"] >= 1
    # a rerun reads the finished candidates instead of training again
    before = [(tmp_path / "work" / fmt._slug(n) / "curve.json").stat().st_mtime_ns for n in names]
    fmt.main(fmt.parse_args(["--smoke", "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out"), "--no-plot"]))
    after = [(tmp_path / "work" / fmt._slug(n) / "curve.json").stat().st_mtime_ns for n in names]
    assert before == after


def test_group_means_average_each_ops_labels():
    fmt = _module()
    from mfd_loss import label_spec

    labels = label_spec("all").labels
    r2 = {name: 0.0 for name in labels}
    r2["rotation_cos_minus_1"], r2["rotation_sin"], r2["scale_w"] = 0.2, 0.6, 0.9
    means = fmt._group_means(r2)
    assert math.isclose(means["rotation"], 0.4) and math.isclose(means["scale"], 0.9)
    assert math.isclose(means["geometric"], (0.2 + 0.6 + 0.9) / 7)
    assert math.isclose(means["all"], (0.2 + 0.6 + 0.9) / 15)
