"""The plumbing of the one-GPU check (benchmarks/gpu/run.py): child processes under deadlines, the parts in
order with their budgets, and the output files rewritten after every step.

:class:`Orchestrator` runs the parts that :class:`run.GpuCheck` defines (``correctness``, ``cost``,
``throughput``, ``paper_map``) and writes ``summary()``; nothing here knows what a part measures.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
BENCHMARKS = ROOT / "benchmarks"
sys.path[:0] = [str(ROOT), str(BENCHMARKS)]

import torch  # noqa: E402

from _common import environment, write_json  # noqa: E402

PARTS = ("correctness", "cost", "throughput", "paper_map")
# minutes; paper_map gets the rest of --total-minutes. The device tool lends 15 minutes in all, starts take minutes
# and none starts with under 4 left: a 6-minute check leaves room to rerun it once.
BUDGETS = {"correctness": 1.5, "cost": 1.25, "throughput": 0.75}
# Smoke guards only stop a hang: a busy 2-core CI machine can take a minute just to import the CUDA test files.
SMOKE_BUDGETS = {"correctness": 3.5, "cost": 2.5, "throughput": 2.0}
SMOKE_TOTAL_MINUTES = 9.5
MIB = 2**20
MAX_FILE = 15 * MIB  # the device tool returns files of up to 16 MiB
NO_CUDA = "skipped: no CUDA"
OUT_OF_TIME = "skipped: out of time"


class Interrupted(Exception):
    """SIGTERM/SIGINT reached the orchestrator: stop the running child, write what is done, exit."""


def _utc() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def worst(statuses: list[str]) -> str:
    """A part's status from its steps': any failure wins, then a timeout, then ok; all skipped -> the first skip."""
    for key in ("error", "failed", "timeout"):
        for s in statuses:
            if s.startswith(key):
                return s
    if any(s == "ok" for s in statuses):
        return "ok"
    return statuses[0] if statuses else "ok"


def split_file(path: Path, out: Path, max_bytes: int = MAX_FILE) -> list[str]:
    """Copy ``path`` into ``out``, as ``NAME.00``, ``NAME.01``, ... chunks when larger than ``max_bytes``."""
    for old in out.glob(path.name + "*"):
        old.unlink()
    size = path.stat().st_size
    if size <= max_bytes:
        shutil.copyfile(path, out / path.name)
        return [path.name]
    names = []
    with open(path, "rb") as fh:
        for i in range(math.ceil(size / max_bytes)):
            name = f"{path.name}.{i:02d}"
            (out / name).write_bytes(fh.read(max_bytes))
            names.append(name)
    return names


def pytest_counts(junit: Path) -> dict[str, Any]:
    """Counts and the failing tests' names and first message lines from a JUnit XML report."""
    root = ET.parse(junit).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    problems, skips = [], {}
    for case in root.iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        for tag in ("failure", "error"):
            node = case.find(tag)
            if node is not None:
                problems.append({"test": name, tag: (node.get("message") or "").splitlines()[0][:300] if
                                 node.get("message") else ""})
        node = case.find("skipped")
        if node is not None:
            reason = (node.get("message") or "").strip()[:200]
            skips[reason] = skips.get(reason, 0) + 1
    counts["problems"], counts["skip_reasons"] = problems, skips
    return counts


class Orchestrator:
    """Runs the parts, keeps ``results`` and writes the output files after every step (the parts and
    ``summary`` are a subclass's: :class:`run.GpuCheck`)."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.smoke = args.smoke
        self.device = torch.device(args.device)
        self.cuda = self.device.type == "cuda"
        self.out = Path(args.out).resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.work = Path(args.work or tempfile.mkdtemp(prefix="mfd-gpu-check-")).resolve()
        self.work.mkdir(parents=True, exist_ok=True)
        self.extras = self.work / "extras"
        self.extras.mkdir(exist_ok=True)
        self.log_path = self.out / "log.txt"
        self.log_path.write_text(f"mfd-loss GPU check, {_utc()}\n")
        self.pack = Path(args.pack).resolve()
        self.data_dir = self.pack / "data"
        self.started = time.monotonic()
        self.deadline = self.started + 60 * args.total_minutes
        self.child: subprocess.Popen | None = None
        self.files: list[str] = []
        self.results: dict[str, Any] = {
            "schema": "mfd-loss GPU check, version 1",
            "started_utc": _utc(),
            "config": {**{k: v for k, v in vars(args).items()}, "out": str(self.out), "work": str(self.work)},
            "parts": {},
        }
        self.env = self._child_env()

    # ------------------------------------------------------------------------------------------ plumbing
    def _child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        paths = [str(ROOT)]
        self.results["lpips"] = self._lpips(paths)
        env["PYTHONPATH"] = os.pathsep.join(paths + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        env.update({"MFD_DATA_DIR": str(self.data_dir), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
                    "TQDM_MININTERVAL": "10"})
        if self.smoke:
            env.setdefault("OMP_NUM_THREADS", "1")
        return env

    def _lpips(self, paths: list[str]) -> str:
        """Make lpips importable for the children: installed, or unpacked from the pack's wheel (pure Python)."""
        if importlib.util.find_spec("lpips") is not None:
            return "installed"
        wheels = sorted((self.pack / "wheels").glob("lpips-*.whl"))
        if not wheels:
            return "absent: LPIPS cases left out (no wheel in the pack; run prepare.py without --no-wheel)"
        site = self.work / "site"
        with zipfile.ZipFile(wheels[-1]) as wheel:
            wheel.extractall(site)
        paths.append(str(site))
        sys.path.append(str(site))
        return f"from the pack: {wheels[-1].name}"

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def log(self, text: str) -> None:
        with open(self.log_path, "a") as fh:
            fh.write(text if text.endswith("\n") else text + "\n")
        print(text, flush=True)

    def command(self, name: str, argv: list[str], deadline: float, cwd: Path = ROOT) -> dict[str, Any]:
        """Run a child process (own process group) until it exits or ``deadline``; its output goes to log.txt."""
        timeout = min(deadline, self.deadline) - time.monotonic()
        shown = " ".join(str(a) for a in argv).replace(sys.executable, "python")
        if timeout < 2:
            self.log(f"===== {name}: not started, out of time ({shown})")
            return {"status": OUT_OF_TIME, "command": shown}
        self.log(f"===== [{time.monotonic() - self.started:6.1f} s] {name} (limit {timeout:.0f} s): {shown}")
        offset = self.log_path.stat().st_size
        start = time.monotonic()
        # its own process group, so the guard stops it with everything it started (torchrun's workers, cost.py's
        # children); not its own session, so nothing can outlive the machine's command
        group = {"process_group": 0} if sys.version_info >= (3, 11) else {"start_new_session": True}
        with open(self.log_path, "ab") as fh:
            self.child = subprocess.Popen([str(a) for a in argv], cwd=cwd, env=self.env, stdout=fh,
                                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, **group)
            try:
                rc, timed_out = self.child.wait(timeout), False
            except subprocess.TimeoutExpired:
                rc, timed_out = self._stop_child(), True
            except BaseException:  # the orchestrator was interrupted: take the child down with it
                self._stop_child()
                raise
            finally:
                self.child = None
        seconds = round(time.monotonic() - start, 1)
        status = "timeout" if timed_out else "ok" if rc == 0 else f"failed (exit code {rc})"
        self.log(f"===== {name}: {status} after {seconds} s")
        step = {"status": status, "seconds": seconds, "command": shown, "returncode": rc}
        if status != "ok":
            with open(self.log_path, "rb") as fh:
                fh.seek(offset)
                step["output_tail"] = fh.read().decode(errors="replace").splitlines()[-25:]
        return step

    def _stop_child(self) -> int:
        """SIGTERM the child's process group (the trainer checkpoints on it), SIGKILL after 20 s."""
        child = self.child
        for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
            try:
                os.killpg(child.pid, sig)
            except ProcessLookupError:
                pass
            try:
                return child.wait(wait)
            except subprocess.TimeoutExpired:
                continue
        return child.returncode if child.returncode is not None else -9

    def write(self) -> None:
        """results.json, summary.md and extras.tar.gz as they stand now (atomic renames: never half-written)."""
        self.results["wall_seconds"] = round(time.monotonic() - self.started, 1)
        self.results["files"] = sorted(set(["results.json", "summary.md", "log.txt", "extras.tar.gz"] + self.files))
        write_json(self.out / "results.json", self.results)
        tmp = self.out / ".summary.md.tmp"
        tmp.write_text(self.summary())
        os.replace(tmp, self.out / "summary.md")
        tmp = self.work / "extras.tar.gz"
        with tarfile.open(tmp, "w:gz") as tar:
            tar.add(self.extras, arcname="extras")
        self.files = [f for f in self.files if not f.startswith("extras")] + split_file(tmp, self.out)

    # ------------------------------------------------------------------------------------------- the run
    def run(self, parts: list[str]) -> dict[str, Any]:
        self.results["environment"] = environment(self.device)
        self.results["pack"] = self._pack_manifest()
        if shutil.which("nvidia-smi") and self.cuda:
            self.command("nvidia-smi", ["nvidia-smi"], time.monotonic() + 20)
        self.write()
        runners: dict[str, Callable[[dict[str, Any], float], None]] = {
            "correctness": self.correctness, "cost": self.cost, "throughput": self.throughput,
            "paper_map": self.paper_map}
        budgets = SMOKE_BUDGETS if self.smoke else BUDGETS
        for name in parts:
            start = time.monotonic()
            budget = budgets.get(name)
            deadline = self.deadline if budget is None else min(self.deadline, start + 60 * budget)
            record: dict[str, Any] = {"budget_s": round(deadline - start, 1), "started_at_s": round(start - self.started, 1)}
            self.results["parts"][name] = record
            if self.remaining() < 5:
                record["status"] = OUT_OF_TIME
                self.write()
                continue
            try:
                runners[name](record, deadline)
            except Interrupted:
                record["status"] = "timeout: the whole check was stopped"
                record["seconds"] = round(time.monotonic() - start, 1)
                self.write()
                raise
            except Exception:  # a bug in one part must not cost the others
                record["status"] = "error: " + traceback.format_exc().strip().splitlines()[-1]
                record["traceback"] = traceback.format_exc().splitlines()[-15:]
                self.log(traceback.format_exc())
            record.setdefault("status", worst([s.get("status", "ok") for s in record.get("steps", {}).values()]))
            record["seconds"] = round(time.monotonic() - start, 1)
            self.log(f"##### part {name}: {record['status']} ({record['seconds']} s)")
            self.write()
        self.results["finished_utc"] = _utc()
        self.write()
        return self.results

    def _pack_manifest(self) -> dict[str, Any]:
        path = self.pack / "manifest.json"
        if not path.is_file():
            raise SystemExit(f"no pack at {self.pack}: run `python benchmarks/gpu/prepare.py` first (--smoke for CI)")
        manifest = json.loads(path.read_text())
        return {k: manifest[k] for k in ("source", "smoke", "train_images", "test_images", "wheels")}
