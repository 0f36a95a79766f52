"""The one-GPU check (benchmarks/gpu/run.sh) in its CPU smoke mode, so it cannot rot while no GPU runs it.

The smoke run goes through every part's code path with tiny sizes; parts or steps that need CUDA report
``skipped: no CUDA``. The output must fit what the device tool returns: at most 8 plain files of at most
16 MiB each, named in letters, digits, '.', '_' and '-'.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from conftest import load_script

ROOT = Path(__file__).resolve().parents[1]
GPU = ROOT / "benchmarks" / "gpu"
PARTS = ["correctness", "cost", "throughput", "paper_map"]


@pytest.fixture(scope="module")
def gpu_run():
    return load_script(GPU / "run.py", "gpu_check_run")


@pytest.fixture(scope="module")
def prepare():
    return load_script(GPU / "prepare.py", "gpu_check_prepare")


@pytest.fixture(scope="module")
def pack(tmp_path_factory, prepare):
    folder = tmp_path_factory.mktemp("pack") / "pack"
    assert prepare.main(["--smoke", "--pack", str(folder)]) == 0
    return folder


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, pack):
    """One smoke run through the shell wrapper: (output folder, results.json, completed process)."""
    base = tmp_path_factory.mktemp("gpu-check")
    out = base / "out"
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("OUT", None)
    cmd = ["bash", str(GPU / "run.sh"), "--smoke", "--device", "cpu", "--pack", str(pack), "--out", str(out),
           "--work", str(base / "work")]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    results = json.loads((out / "results.json").read_text())
    return out, results, done


@pytest.mark.slow
def test_smoke_runs_every_part_in_order_and_each_passes_or_skips_for_want_of_cuda(smoke):
    out, results, done = smoke
    assert list(results["parts"]) == PARTS, done.stdout[-3000:]
    for name, part in results["parts"].items():
        assert part["status"] in ("ok", "skipped: no CUDA"), (name, part, done.stdout[-3000:])
        for step_name, step in part.get("steps", {}).items():
            assert step["status"] in ("ok", "skipped: no CUDA"), (name, step_name, step)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert results["environment"]["device"] == "cpu" and results["finished_utc"]


@pytest.mark.slow
def test_smoke_output_fits_what_the_device_tool_returns(smoke):
    out, results, _ = smoke
    entries = sorted(p.name for p in out.iterdir())
    assert entries == results["files"]
    assert len(entries) <= 8
    for path in out.iterdir():
        assert path.is_file() and not path.is_symlink(), path
        assert re.fullmatch(r"[A-Za-z0-9._-]+", path.name), path.name
        assert path.stat().st_size <= 16 * 2**20, path
    assert {"results.json", "summary.md", "log.txt", "extras.tar.gz", "map.tar"} <= set(entries)
    summary = (out / "summary.md").read_text()
    for heading in ("## 1. Correctness", "## 2. Cost", "## 3. Feature-map training throughput", "## 4. Paper-recipe map"):
        assert heading in summary


@pytest.mark.slow
def test_smoke_measures_cost_and_throughput(smoke):
    _, results, _ = smoke
    cost = results["parts"]["cost"]["results"]
    assert set(cost) == {"fp32-32px", "bf16-32px"}
    for dtype, digest in cost.items():
        measured = {(r["case"], r["batch"]): r["images_per_s"] for r in digest["rows"] if r.get("images_per_s")}
        assert {("mfd-cifar10", 1), ("mfd-cifar10", 2), ("floor-cifar10", 2)} <= set(measured), dtype
        assert all(v > 0 and math.isfinite(v) for v in measured.values())
    rows = results["parts"]["throughput"]["rows"]
    combos = {(r["recipe"], r["precision"], r["memory_format"]) for r in rows}
    assert len(combos) == 8 and {r["recipe"] for r in rows} == {"shipped", "paper"}
    assert all(r["loss_finite"] and r["images_per_s"] > 0 for r in rows)


@pytest.mark.slow
def test_smoke_exports_a_map_with_per_label_r2_on_the_test_split(smoke):
    out, results, _ = smoke
    part = results["parts"]["paper_map"]
    assert part["steps"]["load"]["status"] == "ok"
    with tarfile.open(out / "map.tar") as tar:
        names = set(tar.getnames())
        config = json.loads(tar.extractfile("paper-map/config.json").read())
    assert {"paper-map/model.safetensors", "paper-map/log.csv"} <= names
    held = config["metrics"]["held_out"]
    assert held["num_images"] == results["pack"]["test_images"] == 256
    assert len(held["r2"]) == 15 and part["map"]["r2"] == held["r2"]
    assert part["recipe_flags"] == ["--recipe", "paper"]


def test_default_budget_leaves_room_for_a_rerun_and_the_paper_map(gpu_run):
    """The device tool lends 15 minutes per task, starts take minutes and none begins under 4 minutes left: one run
    of the check must leave room for another, and the paper map gets what the other parts leave."""
    args = gpu_run.parse_args(["--device", "cpu"])
    assert args.total_minutes == 6.0 and args.map_minutes is None
    assert args.total_minutes - sum(gpu_run.BUDGETS.values()) >= 2.0
    assert set(gpu_run.COST_CASES) <= set(load_script(ROOT / "benchmarks" / "cost.py", "benchmark_cost").CASES)


def test_split_file_chunks_reassemble_to_the_original(gpu_run, tmp_path):
    data = np.random.default_rng(0).integers(0, 256, 2500, dtype=np.uint8).tobytes()
    (tmp_path / "src").mkdir()
    (tmp_path / "dst").mkdir()
    source = tmp_path / "src" / "map.tar"
    source.write_bytes(data)
    names = gpu_run.split_file(source, tmp_path / "dst", max_bytes=1000)
    assert names == ["map.tar.00", "map.tar.01", "map.tar.02"]
    assert all((tmp_path / "dst" / n).stat().st_size <= 1000 for n in names)
    assert b"".join((tmp_path / "dst" / n).read_bytes() for n in names) == data
    assert gpu_run.split_file(source, tmp_path / "dst", max_bytes=4000) == ["map.tar"]
    assert sorted(p.name for p in (tmp_path / "dst").iterdir()) == ["map.tar"]  # stale chunks removed


def test_prepare_packs_as_many_images_as_fit(prepare, pack):
    archive = pack / "data" / "cifar10" / "cifar10_train_jpeg.npz"
    with np.load(archive) as z:
        offsets = z["offsets"]
    limit = int(offsets[100]) + 1  # one byte more than 100 images take
    blob, kept, labels, _ = prepare.prefix(archive, max_bytes=limit)
    assert len(kept) == 101 and len(labels) == 100 and blob.nbytes == offsets[100] <= limit
    assert len(prepare.prefix(archive, count=7)[2]) == 7


@pytest.fixture
def check(gpu_run, pack, tmp_path):
    args = gpu_run.parse_args(["--smoke", "--device", "cpu", "--pack", str(pack), "--out", str(tmp_path / "out"),
                               "--work", str(tmp_path / "work")])
    return gpu_run.GpuCheck(args)


def test_a_command_past_its_deadline_is_stopped_and_reported(gpu_run, check):
    import time

    step = check.command("sleeper", [sys.executable, "-c", "import time; time.sleep(120)"], time.monotonic() + 3)
    assert step["status"] == "timeout" and step["returncode"] != 0
    assert check.child is None


def test_a_failing_part_is_recorded_and_the_next_part_still_runs(gpu_run, check, monkeypatch):
    def broken(part, deadline):
        part["steps"] = {"first": {"status": "ok"}}
        raise RuntimeError("planted fault")

    def fine(part, deadline):
        part["steps"] = {"only": {"status": "ok"}}

    monkeypatch.setattr(check, "cost", broken)
    monkeypatch.setattr(check, "throughput", fine)
    results = check.run(["cost", "throughput"])
    saved = json.loads((check.out / "results.json").read_text())
    assert saved["parts"]["cost"]["status"] == "error: RuntimeError: planted fault"
    assert saved["parts"]["cost"]["steps"] == {"first": {"status": "ok"}}  # what ran before the fault is kept
    assert saved["parts"]["throughput"]["status"] == "ok" == results["parts"]["throughput"]["status"]


def test_an_interrupted_check_takes_its_running_child_down(gpu_run, check, tmp_path):
    """SIGTERM to the orchestrator (the machine's limit, Ctrl-C) stops the child's whole process group too."""
    import signal
    import time

    pid_file = tmp_path / "child.pid"
    child = ("import os, signal, time; open(%r, 'w').write(str(os.getpid())); "
             "os.kill(os.getppid(), signal.SIGTERM); time.sleep(120)") % str(pid_file)

    def interrupt(signum, frame):
        raise gpu_run.Interrupted(signal.Signals(signum).name)

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        with pytest.raises(gpu_run.Interrupted):
            check.command("interrupted", [sys.executable, "-c", child], time.monotonic() + 60)
    finally:
        signal.signal(signal.SIGTERM, previous)
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid_file.read_text()), 0)
    assert check.child is None
