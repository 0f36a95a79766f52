"""The cost benchmark (benchmarks/cost.py) in its --smoke mode: every case measured, ratios finite, files written."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from conftest import load_script

pytest.importorskip("lpips", reason="the cost benchmark measures LPIPS: pip install lpips")

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "cost.py"


@pytest.fixture(scope="module")
def cost():
    """benchmarks/cost.py imported as a module (benchmarks/ is no package)."""
    return load_script(SCRIPT, "benchmark_cost")


@pytest.fixture(scope="module")
def smoke(cost, tmp_path_factory):
    """One smoke run shared by the tests: (payload returned by main, JSON path)."""
    out = tmp_path_factory.mktemp("cost") / "cost.json"
    # process CPU time: the sanity checks on the numbers below hold even on a busy CI machine
    argv = ["--smoke", "--device", "cpu", "--threads", "1", "--clock", "cpu", "--out", str(out)]
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        argv.append("--no-plot")
    return cost.main(argv), out


def test_smoke_json_records_environment_and_every_case(cost, smoke):
    payload, out = smoke
    saved = json.loads(out.read_text())
    assert saved["headline"] == payload["headline"]
    env = saved["environment"]
    assert env["device"] == "cpu" and env["dtype"] == "float32" and env["versions"]["torch"]
    assert saved["config"]["seed"] == 0 and saved["config"]["batch_sizes"] == [1, 2]
    assert "peak_memory_method" in saved["method"]
    for case in cost.SMOKE_CASES:
        rows = {r["batch"]: r for r in saved["rows"] if r["case"] == case and r["resolution"] == 32}
        assert sorted(rows) == [1, 2], case
        for batch, row in rows.items():
            assert math.isfinite(row["images_per_s"]) and row["images_per_s"] > 0, (case, batch)
            assert row["images_per_s"] == pytest.approx(batch / row["median_s"])
            assert row["median_s"] == row["median_cpu_s"] and row["median_wall_s"] > 0
            assert math.isfinite(row["peak_mem_mb"]), (case, batch)


def test_smoke_reports_floor_overhead_and_lpips_backbone(smoke):
    payload, _ = smoke
    assert any(r["case"] == "floor-cifar10" for r in payload["rows"])
    overhead = payload["summary"]["mfd_overhead_over_floor_pct"]["mfd-cifar10"]
    assert set(overhead) == {"32px/b1", "32px/b2"}
    assert all(math.isfinite(v) and v > -100 for v in overhead.values())
    assert payload["lpips_backbone"] in ("imagenet", "random (ImageNet weights absent; same compute)")
    assert "overhead over floor" in payload["headline"]
    checks = payload["summary"]["value_check_cost_pct"]["mfd-cifar10"]  # MFD with and without value checks
    assert set(checks) == {"32px/b1", "32px/b2"} and all(math.isfinite(v) for v in checks.values())
    assert "value checks" in payload["headline"]
    # the pixel losses are far cheaper than a network forward+backward: a sanity check on the timing itself
    assert payload["summary"]["time_over_l2"]["mfd-cifar10"]["32px/b2"] > 1


def test_smoke_markdown_has_a_row_per_case(cost, smoke):
    _, out = smoke
    text = out.with_suffix(".md").read_text()
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    for case in cost.SMOKE_CASES:
        label = cost.CASES[case]
        assert sum(line.startswith(f"| {label} |") for line in lines) == 2, label  # throughput and memory tables
    assert "LPIPS backbone" in text


def test_smoke_plot_is_a_png(smoke):
    pytest.importorskip("matplotlib", reason="plots need matplotlib")
    _, out = smoke
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_budget_guard_skips_larger_batches(cost):
    spec = {"cases": ["l2"], "resolution": 32, "batch_sizes": [1, 2, 4], "device": "cpu", "dtype": "fp32",
            "threads": 1, "seed": 0, "warmup": 0, "repeats": 1, "max_seconds": 0.0, "clock": "wall"}
    rows = cost.measure_group(spec)["rows"]
    assert "median_s" in rows[0]
    assert [r.get("skipped") for r in rows[1:]] == [cost.SKIPPED, cost.SKIPPED]


@pytest.mark.parametrize("argv", [["--cases", "mfd-cifar10,nope"], ["--clock", "cpu", "--device", "cuda"]])
def test_bad_arguments_are_refused(cost, argv):
    with pytest.raises(SystemExit):
        cost.parse_args(argv)
