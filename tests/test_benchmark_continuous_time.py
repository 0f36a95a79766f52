"""The continuous-time step-time benchmark (benchmarks/continuous_time.py) in its --smoke mode."""

from __future__ import annotations

import json
import math
from pathlib import Path

from conftest import load_script

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "continuous_time.py"


def test_smoke_times_every_case_and_writes_its_files(tmp_path):
    bench = load_script(SCRIPT, "benchmark_continuous_time")
    out = tmp_path / "continuous.json"
    payload = bench.main(["--smoke", "--device", "cpu", "--threads", "1", "--clock", "cpu", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert [r["case"] for r in saved["rows"]] == list(bench.CASES)
    assert saved["environment"]["device"] == "cpu" and saved["config"]["batch_size"] == 2
    rows = {r["case"]: r for r in payload["rows"]}
    assert rows[bench.BASELINE]["ratio_to_discrete_ayt"] == 1.0 and rows[bench.FORWARD]["ratio_to_forward"] == 1.0
    assert all(math.isfinite(r["ms_per_step"]) and r["ms_per_step"] > 0 for r in rows.values())
    assert "continuous MFD" in out.with_suffix(".md").read_text()


def test_convergence_continuous_smoke_distils_with_both_objectives(tmp_path):
    """--config continuous-smoke: continuous-time MFD and pixel runs beside discrete AYT and pseudo-Huber, from the
    same teacher, each run with the objective its name says."""
    bench = load_script(SCRIPT.parent / "convergence.py")
    work, out = tmp_path / "work", tmp_path / "continuous.json"
    result = bench.main(["--config", "continuous-smoke", "--device", "cpu", "--work", str(work), "--out", str(out),
                         "--no-plot"])
    runs = work / "continuous-smoke"
    objectives = {}
    for loss in ("mfd-continuous", "pixel-continuous", "mfd", "pseudo-huber"):
        args = json.loads((runs / f"cifar10-bs4-{loss}-seed0" / "args.json").read_text())
        assert args["teacher"] == result["denoisers"]["cifar10"]["checkpoint"]
        objectives[loss] = (args.get("objective"), args["loss"])
    assert objectives == {"mfd-continuous": ("continuous", "mfd"), "pixel-continuous": ("continuous", "l2"),
                          "mfd": ("discrete", "mfd"), "pseudo-huber": ("discrete", "pseudo-huber")}
    assert all(math.isfinite(e["1step"]) for runs_ in result["groups"][0]["runs"].values() for e in runs_[0])
    assert "MFD continuous-time" in out.with_suffix(".md").read_text()
