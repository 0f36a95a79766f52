"""Cost of a loss evaluation: forward + backward (gradient w.r.t. the prediction) throughput and peak memory.

Cases, all measured in one run, side by side, on the same seeded random inputs in [-1, 1]:

* ``mfd-cifar10`` / ``mfd-mnist``: MFD with each shipped feature map (mnist: 1 channel). At a resolution
  other than the map's own, a randomly initialised map of the same config (``resolution`` replaced) is used: identical compute, weights that mean nothing.
* ``mfd-cifar10-novalidate``: the same MFD with ``validate_args=False`` (no NaN/range check, so no host
  synchronisation per call); measured in the same process as ``mfd-cifar10``, alternating, so the difference is
  the cost of the value checks (``value_check_cost_pct`` in the summary).
* ``floor-cifar10`` / ``floor-mnist``: what no feature-space loss can beat, the map's forward on the target
  (no grad), its forward on the prediction and one backward to the input; MFD's overhead = t_MFD / t_floor - 1.
* ``ayt-cifar10``: AYT's tangent loss (``mfd_loss.consistency.tangent_loss``) with MFD (cifar10) as distance.
* ``lpips-vgg`` / ``lpips-alex``: LPIPS at the images' size; ``lpips-vgg@224`` / ``lpips-alex@224``: both
  images bilinearly upsampled to 224x224 first, inside the timed region (as openai/consistency_models does).
  Without the ImageNet backbone weights a random backbone is used (same compute); the JSON says which.
* ``pseudo-huber`` (iCT's c) and ``l2`` (mean squared error).

One timed iteration: ``prediction = base.clone().requires_grad_(True)``, ``loss = case(prediction, target)``,
``loss.backward()``. After one priming iteration, each batch size gets ``--warmup`` untimed iterations, one
untimed iteration for peak memory, then ``--repeats`` timed ones; the median is reported and images/s =
batch / median. Each (case, resolution) runs in its own child process (forked on CPU, spawned on CUDA), so the
parent and other cases stay out of its numbers; only an MFD and its floor share one, alternating their timed
iterations, so that drift in the machine's speed hits both alike and the overhead compares like with like.

Peak memory is what the memory iteration adds to what was in use before it: on CUDA from
``torch.cuda.max_memory_allocated`` (peak stats reset per batch); on CPU from the child's peak resident set
(``VmHWM``, reset per batch through ``/proc/self/clear_refs``, after ``malloc_trim``), falling back to the
growth of ``ru_maxrss`` over its value once the case and inputs are built (batch sizes run in increasing order,
so each reading is that batch's peak). A case's larger batch sizes are skipped once one iteration, or the last
batch's time scaled linearly to the next batch size, exceeds ``--max-seconds`` (on the ``--clock`` used).

``--clock cpu`` (CPU device only) times by the process's CPU time instead of the wall clock: with one thread
that is the compute time, unaffected by time slices lost to other processes on a shared machine (cache and
memory-bandwidth contention still count). Both clocks are recorded for every row.

The cases are built in ``benchmarks/_cost_cases.py``, the tables and plot drawn in ``benchmarks/_cost_tables.py``;
this script measures and writes.

Rerun: ``python benchmarks/cost.py`` (writes benchmarks/results/cost-<device type>.{json,png,md}). The CPU
results in benchmarks/results/ came from (about 10 minutes on one otherwise idle core; a shared machine):

    OMP_NUM_THREADS=1 python benchmarks/cost.py --threads 1 --clock cpu --repeats 3 --warmup 1 --max-seconds 15

On a GPU (writes benchmarks/results/cost-cuda.*; add --dtype bf16 for autocast):

    python benchmarks/cost.py --device cuda
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import math
import multiprocessing
import resource
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, environment, parse_ints, resolve_device, write_json  # noqa: E402
from _cost_cases import (  # noqa: E402  (the cases, and the tables and plot, live beside this script)
    CASES, DTYPES, SMOKE_CASES, VALIDATE_OFF, Loss, build_case, floor_of, input_shape, make_inputs,
)
from _cost_tables import headline, plot, summarize, tables  # noqa: E402

SKIPPED = "over the --max-seconds budget"
MEMORY_METHODS = {
    "cuda": "per batch, one untimed iteration after the warm-up: torch.cuda.max_memory_allocated during it minus "
            "torch.cuda.memory_allocated before it (reset_peak_memory_stats first; inputs and loss modules "
            "excluded)",
    "VmHWM": "CPU, child process: per batch, one untimed iteration after the warm-up, preceded by malloc_trim(0) "
             "and a reset of the peak-RSS mark (/proc/self/clear_refs = 5): VmHWM after it minus VmRSS before it "
             "(inputs and loss modules excluded; whole-process resident memory, so approximate)",
    "ru_maxrss": "CPU, child process: growth of ru_maxrss over its value once the case and all inputs are built; "
                 "batch sizes in increasing order, so each reading is that batch's peak (approximate)",
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_iterations(loss_fn: Loss, base, target, device, dtype, count: int, max_seconds: float, clock: str):
    """(wall, process CPU) seconds of each of up to ``count`` forward+backward iterations; stops early once one
    takes more than max_seconds on ``clock``."""
    autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()
    times: list[tuple[float, float]] = []
    for _ in range(count):
        prediction = base.clone().requires_grad_(True)
        sync(device)
        start, start_cpu = time.perf_counter(), time.process_time()
        with autocast:
            loss = loss_fn(prediction, target)
        loss.backward()
        sync(device)
        times.append((time.perf_counter() - start, time.process_time() - start_cpu))
        if times[-1][clock == "cpu"] > max_seconds:
            break
    return times


def _status_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise OSError(f"{key} not in /proc/self/status")


def _max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class PeakMemory:
    """Peak memory of a block above what was in use at its start, in MB; ``method`` is a key of MEMORY_METHODS."""

    def __init__(self, device: torch.device):
        self.device, self.before = device, _max_rss_mb()
        self.method = "cuda" if device.type == "cuda" else "VmHWM"

    def start(self) -> None:
        if self.method == "cuda":
            sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.before = torch.cuda.memory_allocated(self.device)
        elif self.method == "VmHWM":
            with contextlib.suppress(OSError, AttributeError):
                ctypes.CDLL(None).malloc_trim(0)  # hand freed heap back, so reuse of it cannot hide a peak
            try:
                Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS mark (Linux >= 4.0)
                self.before = _status_mb("VmRSS")
            except OSError:
                self.method = "ru_maxrss"  # keep the baseline taken at construction

    def stop(self) -> float:
        if self.method == "cuda":
            return (torch.cuda.max_memory_allocated(self.device) - self.before) / 2**20
        return (_status_mb("VmHWM") if self.method == "VmHWM" else _max_rss_mb()) - self.before


def measure_group(spec: dict[str, Any]) -> dict[str, Any]:
    """Child process: time and measure a group of cases (one case, or an MFD with its floor) at one resolution
    over all batch sizes, increasing. The cases' timed iterations alternate, so drift in the machine's speed
    hits them alike."""
    torch.set_num_threads(spec["threads"])
    device, dtype = torch.device(spec["device"]), DTYPES[spec["dtype"]]
    resolution, seed, limit, clock = (spec[k] for k in ("resolution", "seed", "max_seconds", "clock"))
    shape = input_shape(spec["cases"][0], resolution)  # the cases of a group share their input shape
    built = {case: build_case(case, shape[-1], seed, device) for case in spec["cases"]}
    batches = sorted(spec["batch_sizes"])
    inputs = {b: make_inputs(b, shape, seed, device) for b in batches}
    for loss_fn, _ in built.values():  # priming: lazy initialisation, code pages
        time_iterations(loss_fn, *inputs[batches[0]], device, dtype, 1, math.inf, clock)
    memory, on_clock = PeakMemory(device), int(clock == "cpu")
    rows, skip, previous = [], False, None
    for batch in batches:
        pair = inputs[batch]
        if skip or (previous and previous[1] * batch / previous[0] > limit):
            skip = True
            rows += [{"case": case, "label": CASES[case], "resolution": resolution, "input_shape": list(shape),
                      "batch": batch, "notes": notes, "skipped": SKIPPED} for case, (_, notes) in built.items()]
            continue
        peaks, slow = {}, False
        for case, (loss_fn, _) in built.items():
            untimed = time_iterations(loss_fn, *pair, device, dtype, spec["warmup"], limit, clock)
            # peak memory in an untimed iteration of its own, after the warm-up (one-off caches excluded): the
            # heap trim that starts it would slow the timed iterations
            memory.start()
            untimed += time_iterations(loss_fn, *pair, device, dtype, 1, limit, clock)
            peaks[case] = memory.stop()
            slow = slow or any(t[on_clock] > limit for t in untimed)
        timed: dict[str, list[tuple[float, float]]] = {case: [] for case in built}
        for _ in range(1 if slow else spec["repeats"]):
            for case, (loss_fn, _) in built.items():
                timed[case] += time_iterations(loss_fn, *pair, device, dtype, 1, math.inf, clock)
            if any(t[-1][on_clock] > limit for t in timed.values()):
                slow = True
                break
        medians = []
        for case, (_, notes) in built.items():
            wall, cpu = [t[0] for t in timed[case]], [t[1] for t in timed[case]]
            median = statistics.median(cpu if clock == "cpu" else wall)
            medians.append(median)
            rows.append({"case": case, "label": CASES[case], "resolution": resolution, "input_shape": list(shape),
                         "batch": batch, "notes": notes, "median_s": median, "images_per_s": batch / median,
                         "peak_mem_mb": round(peaks[case], 2), "median_wall_s": statistics.median(wall),
                         "median_cpu_s": statistics.median(cpu), "timed_iterations": len(wall),
                         "wall_s": [round(t, 6) for t in wall], "cpu_s": [round(t, 6) for t in cpu]})
        previous, skip = (batch, max(medians)), slow
    return {"rows": rows, "memory_method": memory.method}


def groups(cases: tuple[str, ...]) -> list[tuple[str, ...]]:
    """Cases measured together: each MFD with its ``-novalidate`` twin and its floor (those asked for), every
    other case alone."""
    out: list[tuple[str, ...]] = []
    taken: set[str] = set()
    for case in cases:
        if case in taken:
            continue
        kind, _, name = case.partition("-")
        if kind in ("mfd", "floor"):
            base = "mfd-" + name.removesuffix(VALIDATE_OFF)
            group = tuple(c for c in (base, base + VALIDATE_OFF, floor_of(base)) if c in cases)
        else:
            group = (case,)
        taken.update(group)
        out.append(group)
    return out


def _child(spec: dict[str, Any], conn) -> None:
    try:
        conn.send(measure_group(spec))
    except BaseException:  # report any failure to the parent instead of dying silently
        conn.send({"error": traceback.format_exc()})
    finally:
        conn.close()


def run_isolated(spec: dict[str, Any], device: torch.device) -> tuple[list[dict[str, Any]], str]:
    """Run :func:`measure_group` in a fresh child (fork on CPU: no re-import; spawn on CUDA): rows, memory method."""
    ctx = multiprocessing.get_context("fork" if device.type == "cpu" else "spawn")
    receive, send = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_child, args=(spec, send))
    process.start()
    send.close()
    try:
        result = receive.recv()
    except EOFError:
        result = {"error": "the child process died without a result"}
    process.join()
    if "error" in result:
        raise RuntimeError(f"{', '.join(spec['cases'])} at {spec['resolution']} px failed "
                           f"(exit code {process.exitcode}):\n{result['error']}")
    return result["rows"], result["memory_method"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="fp32", help="bf16/fp16: the loss under autocast")
    p.add_argument("--batch-sizes", type=parse_ints, default=(1, 4, 16, 64, 256))
    p.add_argument("--resolutions", type=parse_ints, default=(32, 64))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="cpu (CPU device only): time by the process's CPU time, for single-threaded runs on a shared "
                        "machine (time slices taken by other processes do not count; cache contention still does)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    p.add_argument("--max-seconds", type=float, default=20.0,
                   help="skip a case's larger batch sizes once one iteration (or its linear forecast) takes longer "
                        "on --clock")
    p.add_argument("--cases", type=lambda s: tuple(v.strip() for v in s.split(",") if v.strip()), default=tuple(CASES))
    p.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/cost-<device>.json)")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--smoke", action="store_true", help="CI check: batch 1,2 at 32 px, 1 repeat, a few cases")
    args = p.parse_args(argv)
    if args.smoke:
        args.batch_sizes, args.resolutions, args.repeats, args.warmup = (1, 2), (32,), 1, 0
        args.cases = SMOKE_CASES
    if args.clock == "cpu" and resolve_device(args.device).type != "cpu":
        p.error("--clock cpu measures CPU time: use it with --device cpu only")
    unknown = [c for c in args.cases if c not in CASES]
    if unknown:
        p.error(f"unknown cases {unknown}; choose from {', '.join(CASES)}")
    return args


def main(argv=None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    out = args.out or RESULTS / f"cost-{device.type}.json"
    batches, resolutions, cases = sorted(args.batch_sizes), tuple(args.resolutions), tuple(args.cases)
    ref_batch = 64 if 64 in batches else batches[-1]
    if any(c.startswith("lpips") for c in cases):
        import lpips  # noqa: F401  (imported once here, so forked children do not pay for it)
    rows: list[dict[str, Any]] = []
    methods: set[str] = set()
    started = time.perf_counter()
    for res in resolutions:
        for group in groups(cases):
            spec = {"cases": group, "resolution": res, "batch_sizes": batches, "device": str(device),
                    "dtype": args.dtype, "threads": args.threads, "seed": args.seed, "warmup": args.warmup,
                    "repeats": args.repeats, "max_seconds": args.max_seconds, "clock": args.clock}
            group_rows, method = run_isolated(spec, device)
            methods.add(method)
            for case in group:
                case_rows = [r for r in group_rows if r["case"] == case]
                rows += case_rows
                done = ", ".join(f"b{r['batch']} " + (f"{r['images_per_s']:.4g}/s" if "images_per_s" in r else "-")
                                 for r in case_rows)
                print(f"[{time.perf_counter() - started:6.1f} s] {res:>3} px {case:<15} {done}", flush=True)
    backbones = sorted({n.split(": ", 1)[1] for r in rows for n in r["notes"] if n.startswith("lpips_backbone")})
    lpips_backbone = " / ".join(backbones) if backbones else None
    if lpips_backbone:
        print(f"LPIPS backbone: {lpips_backbone}")
    line = headline(rows, resolutions, batches, ref_batch)
    payload = {
        "environment": environment(device, DTYPES[args.dtype]),
        "config": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                   "device": str(device), "batch_sizes": batches, "resolutions": resolutions, "cases": cases,
                   "out": str(out), "reference_batch": ref_batch},
        "method": {
            "timing": "median of --repeats timed iterations after --warmup untimed ones and one untimed memory "
                      "iteration; one iteration = clone the prediction with requires_grad, loss forward, backward "
                      "(torch.cuda.synchronize around it on CUDA); images/s = batch / median; each (case, resolution) "
                      "in its own child process, except MFD and its floor: one process, timed iterations alternating. "
                      + ("median_s is process CPU time (--clock cpu; single-threaded, so CPU time = compute time; "
                         "time slices lost to other processes on a shared machine do not count)"
                         if args.clock == "cpu" else "median_s is wall-clock time (time.perf_counter)")
                      + "; both clocks are recorded per row (median_wall_s, median_cpu_s)",
            "peak_memory_method": " / ".join(MEMORY_METHODS[m] for m in sorted(methods)),
            "inputs": "uniform [-1, 1] from torch.Generator seeded with --seed, identical for every case; fp32 "
                      "tensors (--dtype bf16/fp16 runs the loss under torch.autocast)",
            "random_weights": "at resolutions other than a shipped map's own, the MFD map is randomly initialised "
                              "with the shipped config (only the resolution changed): identical compute",
        },
        "lpips_backbone": lpips_backbone,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "rows": rows,
        "summary": summarize(rows, cases, resolutions, batches),
        "headline": line,
    }
    write_json(out, payload)
    table = tables(rows, cases, resolutions, batches, ref_batch)
    env = payload["environment"]
    caption = (f"{env['device_name']} ({env['device']}), {args.dtype}, {args.threads} thread(s), seed {args.seed}, "
               f"warm-up {args.warmup}, repeats {args.repeats}, {args.clock} clock, torch {env['versions']['torch']}"
               + (f"; LPIPS backbone: {lpips_backbone}" if lpips_backbone else ""))
    out.with_suffix(".md").write_text(f"{caption}\n\n{line}\n\n{table}\n")
    print(f"\n{table}\n\n{line}")
    if not args.no_plot:
        plot(rows, cases, resolutions, batches, out.with_suffix(".png"), caption)
    print(f"wrote {out} ({payload['wall_seconds']} s)")
    return payload


if __name__ == "__main__":
    main()
