"""Step time of the continuous-time consistency objective (METHOD.md Sec. 5b) against the discrete AYT step.

One training step of each objective on the same EDM-preconditioned example U-Net (train mode, dropout on) and
the same batch of real CIFAR-10 images, the optimiser left out (it is the same for all): the discrete steps
are those of ``examples/train_consistency_model.py`` (D_t with grad, D_r without grad under the same dropout
draw, the objective, backward); the continuous ones one ``torch.func.jvp`` through the model (and the MFD's
feature map) without grad, one forward with grad and the backward. The cases run in rotating order within
each round, so drifts of a shared machine hit them alike; a case's time is the median over rounds of its mean
step time, and its ratio to the discrete AYT step is the median of the per-round ratios. The U-Net's no-grad
forward and its no-grad JVP along (eps, 1) are timed alone as well: their ratio is what the JVP costs. Peak
memory is recorded on CUDA only.

    python benchmarks/continuous_time.py --threads 1 --clock cpu     # tiny U-Net on a CPU, about a minute
    python benchmarks/continuous_time.py --device cuda --channels 128 --channel-mult 2,2,2 --num-blocks 4 --batch-size 128
    python benchmarks/continuous_time.py --smoke                    # CI: every case, one step

Writes ``--out`` (default ``benchmarks/results/continuous-time-<device type>.json``) and a Markdown table beside it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT / "examples"))

from _common import RESULTS, environment, markdown_table, parse_ints, resolve_device, write_json  # noqa: E402
from _training import same_dropout  # noqa: E402
from unet import UNet  # noqa: E402

from mfd_loss import MFD, load_sample_images  # noqa: E402
from mfd_loss.consistency import EDMDenoiser, consistency_weight, r_from_t, sample_noise_levels  # noqa: E402
from mfd_loss.consistency import ContinuousConsistencyLoss, build_objective  # noqa: E402
from mfd_loss.training import to_model_range  # noqa: E402

CASES = ("discrete AYT (MFD)", "discrete pseudo-Huber (ECT)", "continuous MFD", "continuous pixel (sCM-style)",
         "U-Net forward, no grad", "U-Net JVP, no grad")
BASELINE, FORWARD = CASES[0], CASES[4]


def steps(args: argparse.Namespace, device: torch.device) -> dict[str, Callable[[], None]]:
    """One closure per case: a whole step (losses, backward) on a fixed batch, gradients cleared first."""
    torch.manual_seed(args.seed)
    model = EDMDenoiser(UNet(3, args.channels, args.channel_mult, args.num_blocks, args.attention,
                             dropout=0.1)).to(device).train()
    images, _ = load_sample_images()
    x0 = to_model_range(images[: args.batch_size]).to(device)
    gen = torch.Generator().manual_seed(args.seed)
    t = sample_noise_levels(x0.shape[0], gen).to(device)
    eps = torch.randn(x0.shape, generator=gen).to(device)
    r, x_t = r_from_t(t), x0 + t[:, None, None, None] * eps
    weight = consistency_weight(t, r)
    mfd = MFD(args.map, validate_args=False).to(device)
    discrete = {BASELINE: build_objective("mfd", mfd_pretrained=args.map).to(device),
                CASES[1]: build_objective("pseudo-huber").to(device)}
    continuous = {CASES[2]: ContinuousConsistencyLoss(mfd, validate_args=False),
                  CASES[3]: ContinuousConsistencyLoss(None, validate_args=False)}

    def discrete_step(objective) -> None:
        model.zero_grad(set_to_none=True)
        with same_dropout(device):
            d_t = model(x_t, t)
        with torch.no_grad():
            d_r = model(x0 + r[:, None, None, None] * eps, r)
        objective(d_t, torch.where((r > 0)[:, None, None, None], d_r, x0), weight).loss.backward()

    def continuous_step(loss_fn) -> None:
        model.zero_grad(set_to_none=True)
        loss_fn(model, x_t, t, eps).loss.backward()

    def forward() -> None:
        with torch.no_grad():
            model(x_t, t)

    def jvp() -> None:
        with torch.no_grad():
            torch.func.jvp(model, (x_t, t), (eps, torch.ones_like(t)))

    out = {name: (lambda o=o: discrete_step(o)) for name, o in discrete.items()}
    out.update({name: (lambda f=f: continuous_step(f)) for name, f in continuous.items()})
    return {**out, FORWARD: forward, CASES[5]: jvp}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    """Per case: median ms/step over rounds, median per-round ratios to the discrete AYT step and to the U-Net's
    no-grad forward, peak memory."""
    cases = steps(args, device)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    times: dict[str, list[float]] = {name: [] for name in CASES}
    peaks: dict[str, float] = {}
    for name in CASES:  # warm-up (and the peak memory of one step, on CUDA)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        for _ in range(args.warmup):
            cases[name]()
        _sync(device)
        if device.type == "cuda":
            peaks[name] = torch.cuda.max_memory_allocated(device) / 2**20
    for round_ in range(args.rounds):
        order = CASES[round_ % len(CASES):] + CASES[:round_ % len(CASES)]
        for name in order:
            start = clock()
            for _ in range(args.steps):
                cases[name]()
            _sync(device)
            times[name].append((clock() - start) / args.steps)
    rows = []
    for name in CASES:
        ratios = [a / b for a, b in zip(times[name], times[BASELINE])]
        forwards = [a / b for a, b in zip(times[name], times[FORWARD])]
        rows.append({"case": name, "ms_per_step": 1000 * statistics.median(times[name]),
                     "ratio_to_discrete_ayt": statistics.median(ratios),
                     "ratio_to_forward": statistics.median(forwards), "rounds_ms": [1000 * v for v in times[name]],
                     "peak_mem_mb": round(peaks[name], 1) if name in peaks else None})
    return rows


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="cuda, cpu or auto")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--clock", choices=["cpu", "wall"], default="wall",
                   help="cpu: this process's CPU time (steadier on a shared machine with --threads 1); wall")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--channels", type=int, default=16, help="U-Net width")
    p.add_argument("--channel-mult", type=parse_ints, default=(1, 2), help="U-Net levels, e.g. 2,2,2")
    p.add_argument("--num-blocks", type=int, default=1, help="residual blocks per level")
    p.add_argument("--attention", type=parse_ints, default=(16,), help="resolutions with self-attention")
    p.add_argument("--map", default="cifar10", help="MFD feature map (registered name or folder)")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds (each runs every case)")
    p.add_argument("--steps", type=int, default=3, help="steps per case and round")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per case first")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="JSON path (a .md table is written beside it)")
    p.add_argument("--smoke", action="store_true", help="CI: batch 2, one step per case")
    args = p.parse_args(argv)
    if args.smoke:
        args.batch_size, args.rounds, args.steps, args.warmup, args.channels = 2, 1, 1, 1, 8
    return args


def main(argv=None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    out = args.out or RESULTS / f"continuous-time-{device.type}.json"
    started = time.perf_counter()
    rows = measure(args, device)
    payload = {"environment": environment(device, torch.float32),
               "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
               "method": __doc__.split("\n\n")[1].replace("\n", " "), "rows": rows,
               "wall_seconds": round(time.perf_counter() - started, 1)}
    write_json(out, payload)
    text = markdown_table(["case", "ms/step", "x discrete AYT", "x U-Net forward", "peak MB"],
                          [[r["case"], f"{r['ms_per_step']:.1f}", f"{r['ratio_to_discrete_ayt']:.2f}",
                            f"{r['ratio_to_forward']:.2f}",
                            r["peak_mem_mb"] if r["peak_mem_mb"] is not None else "–"] for r in rows])
    env = payload["environment"]
    head = (f"{env['device_name']} ({device}), fp32, {env['torch_threads']} thread(s), {args.clock} clock, batch "
            f"{args.batch_size}, U-Net {args.channels} x {args.channel_mult}, attention {args.attention}, map "
            f"{args.map}, {args.rounds} rounds x {args.steps} steps, torch {env['versions']['torch']}")
    out.with_suffix(".md").write_text(f"{head}\n\n{text}\n")
    print(f"{head}\n\n{text}\nwrote {out} ({payload['wall_seconds']} s)")
    return payload


if __name__ == "__main__":
    main()
