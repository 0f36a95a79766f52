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
