"""Which feature-map recipe learns the perturbation labels fastest on a given machine, at equal CPU time.

Every candidate trains on the CIFAR-10 train split with the project's trainer (``mfd_loss.train_feature_map``,
perturbation pipeline v2, METHOD.md Sec. 3) for the same wall-clock budget, in segments; after each segment its
per-label R^2 is measured on the same perturbed CIFAR-10 test images (fixed seed, p = 0.15, the paper's final
probability, whatever p the candidate trained with). Candidates vary the final probability p (0.15 / 0.3 / 0.5),
the learning rate, the batch size, the family, depth and width (VGG11/13/16-BN at widths 0.25-1, ResNet10).
A random-init map of the default architecture is the floor (its head is untrained: R^2 <= 0).

The geometric labels (scale, rotation, translation) are the ones the paper found to matter most and the ones
learned last, so the table reports their mean R^2 beside the mean over all 15 labels.

Each candidate runs in its own child process with ``--threads`` intra-op threads; ``--parallel 2`` runs two
at once (two 1-thread children fill a 2-core machine; the time budget is each child's own wall clock, so a
loaded machine slows all candidates alike). Rerunning resumes: finished candidates are read from --work,
unfinished ones continue from their checkpoints.

Rerun (CPU, 8 candidates x 7 min, 2 at a time: ~30 min):  python benchmarks/feature_map_training.py
Writes benchmarks/results/feature-map-training-<device>.{json,png,md}.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, better_label, environment, markdown_table, pyplot, resolve_device, write_json  # noqa: E402

GEOMETRIC = ("scale", "rotation", "anisotropic_scale", "translation")
HEADLINE_GEOMETRIC = ("scale", "rotation", "translation")  # issue targets: each >= 0.5

#: name -> (architecture overrides, TrainConfig overrides). "base" is the current CPU recipe.
CANDIDATES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "base (vgg11 w0.5, p 0.15)": ({}, {}),
    "p 0.3": ({}, {"p_max": 0.3}),
    "p 0.5": ({}, {"p_max": 0.5}),
    "p 0.5, lr 1e-3": ({}, {"p_max": 0.5, "lr": 1e-3}),
    "p 0.5, batch 64": ({}, {"p_max": 0.5, "batch_size": 64}),
    "p 0.5, vgg11 w0.25": ({"width": 0.25}, {"p_max": 0.5}),
    "p 0.5, vgg13 w0.5": ({"arch": "vgg13"}, {"p_max": 0.5}),
    "p 0.5, resnet10 w0.5": ({"arch": "resnet10"}, {"p_max": 0.5}),
    "lr 5e-4": ({}, {"lr": 5e-4}),
    "lr 1e-3": ({}, {"lr": 1e-3}),
}
BASE_ARCH = {"arch": "vgg11", "width": 0.5}
BASE_TRAIN = {"batch_size": 128, "lr": 2e-4, "p_max": 0.15}
EVAL_P = 0.15


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--minutes", type=float, default=7.0, help="training wall-clock per candidate")
    p.add_argument("--segments", type=int, default=5, help="evaluations per candidate (equally spaced in time)")
    p.add_argument("--ramp-seconds", type=float, default=60.0,
                   help="the p ramp of every candidate, in seconds of its own training (converted to steps "
                        "from its measured speed), so short budgets still end at their final p")
    p.add_argument("--eval-images", type=int, default=2000, help="CIFAR-10 test images for per-label R^2")
    p.add_argument("--threads", type=int, default=1, help="torch threads per candidate")
    p.add_argument("--parallel", type=int, default=2, help="candidates trained at once")
    p.add_argument("--only", default="", help="comma-separated candidate names (default: all)")
    p.add_argument("--work", type=Path, default=Path("runs/feature-map-training"), help="run folders (resumable)")
    p.add_argument("--out", type=Path, default=RESULTS, help="where the JSON/PNG/MD go")
    p.add_argument("--smoke", action="store_true", help="tiny sizes for CI: 2 candidates, seconds each")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _load(smoke: bool, eval_images: int):
    """(train, test) uint8 CIFAR-10; the smoke mode uses the 64 test images shipped in the package for both."""
    from mfd_loss.training.datasets import load_cifar10, load_sample_images

    if smoke:
        images, _ = load_sample_images()
        return images, images[:eval_images]
    train, _ = load_cifar10("train")
    test, _ = load_cifar10("test")
    return train, test[:eval_images]


def run_candidate(args: argparse.Namespace, name: str) -> dict[str, Any]:
    """Train one candidate for args.minutes in args.segments segments (resuming), evaluating after each."""
    import torch

    from mfd_loss import FeatureMapConfig, Perturbations, TrainConfig, train_feature_map
    from mfd_loss.training import evaluate_feature_map

    torch.set_num_threads(args.threads)
    arch_over, train_over = CANDIDATES[name]
    run_dir = args.work / _slug(name)
    record_path = run_dir / "curve.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() else {"name": name, "curve": []}
    if record.get("finished"):
        return record
    train, test = _load(args.smoke, args.eval_images)
    arch = FeatureMapConfig(**{**BASE_ARCH, **arch_over})
    settings = {**BASE_TRAIN, **train_over}
    if args.smoke:
        settings["batch_size"] = min(settings["batch_size"], 16)
    pert = Perturbations("all")
    if "ramp_steps" not in record:  # measured once, so a resumed run keeps its ramp
        record["ramp_steps"] = _ramp_steps(arch, settings, args, train)
    config = TrainConfig(steps=10_000_000, ramp_steps=record["ramp_steps"], eval_every=0, eval_size=2,
                         checkpoint_every=10_000_000, seed=0, **settings)
    seg = args.minutes / args.segments
    done = len(record["curve"])
    for _ in range(done, args.segments):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the trainer's own 2-image held-out check: we evaluate below
            fmap, summary = train_feature_map(train, run_dir, config=config, architecture=arch,
                                              eval_data=test[:2], max_minutes=seg, device=args.device,
                                              progress=False)
        metrics = evaluate_feature_map(fmap, test, pert, p=EVAL_P, seed=12345)
        record["curve"].append({"train_seconds": summary["train_seconds"], "images_seen": summary["images_seen"],
                                "step": summary["step"], "r2": metrics["r2"], "mse_mean": metrics["mse_mean"]})
        record["params"] = sum(p.numel() for p in fmap.parameters())
        write_json(record_path, record)
    record["finished"] = True
    write_json(record_path, record)
    return record


def _ramp_steps(arch, settings: dict[str, Any], args: argparse.Namespace, train) -> int:
    """Steps in --ramp-seconds at this candidate's speed (a few timed steps of the real model)."""
    import torch

    from mfd_loss import Perturbations
    from mfd_loss.feature_maps import build_feature_map

    fmap = build_feature_map({**arch.to_dict(), "in_channels": 3, "num_labels": 15, "resolution": (32, 32)})
    opt = torch.optim.RAdam(fmap.parameters(), lr=1e-4)
    pert, g = Perturbations("all", p=settings["p_max"]), torch.Generator().manual_seed(0)
    batch = train[: settings["batch_size"]].float() / 127.5 - 1
    times = []
    for _ in range(4):
        start = time.perf_counter()
        x, y = pert(batch, generator=g)
        loss = (fmap(x)[-1].flatten(1) - y).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - start)
    per_step = sorted(times[1:])[1]
    return max(1, round(args.ramp_seconds / per_step))


def random_init_floor(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from mfd_loss import Perturbations
    from mfd_loss.feature_maps import build_feature_map
    from mfd_loss.training import evaluate_feature_map

    torch.manual_seed(0)
    fmap = build_feature_map({**BASE_ARCH, "in_channels": 3, "num_labels": 15, "resolution": (32, 32)})
    _, test = _load(args.smoke, args.eval_images)
    return evaluate_feature_map(fmap, test, Perturbations("all"), p=EVAL_P, seed=12345)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name).strip("-").replace("--", "-")


def _group_means(r2: dict[str, float]) -> dict[str, float]:
    """Mean R^2 over all labels, over the 7 geometric ones, and per headline geometric op."""
    from mfd_loss import label_spec

    spec = label_spec("all")
    slices = spec.slices()
    labels = list(spec.labels)
    per_op = {op: [r2[labels[i]] for i in range(slices[op].start, slices[op].stop)] for op in spec.ops}
    finite = lambda values: [v for v in values if v is not None and math.isfinite(v)]  # noqa: E731
    mean = lambda values: sum(finite(values)) / max(1, len(finite(values)))  # noqa: E731
    out = {"all": mean(list(r2.values())), "geometric": mean([v for op in GEOMETRIC for v in per_op[op]])}
    for op in HEADLINE_GEOMETRIC:
        out[op] = mean(per_op[op])
    return out


def _child(args: argparse.Namespace, name: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    cmd = [sys.executable, __file__, "--child", name, "--minutes", str(args.minutes), "--segments", str(args.segments),
           "--ramp-seconds", str(args.ramp_seconds), "--eval-images", str(args.eval_images),
           "--threads", str(args.threads), "--work", str(args.work), "--device", args.device]
    if args.smoke:
        cmd.append("--smoke")
    subprocess.run(cmd, check=True, env=env)


def at_images(curve: list[dict[str, Any]], images: float) -> float | None:
    """Mean R^2 over the 15 labels linearly interpolated at ``images`` images seen (None outside the curve)."""
    xs = [c["images_seen"] for c in curve]
    ys = [_group_means(c["r2"])["all"] for c in curve]
    if not xs or images < xs[0] or images > xs[-1]:
        return None
    for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
        if x0 <= images <= x1:
            return y0 + (y1 - y0) * (images - x0) / max(x1 - x0, 1)
    return ys[-1]


def report(args: argparse.Namespace, records: list[dict[str, Any]], floor: dict[str, Any]) -> dict[str, Any]:
    device = resolve_device(args.device)
    # The machine's load changes while candidates run (a shared machine), so next to the equal-time result
    # every candidate is also read at the same number of images: the fewest any candidate saw.
    common = min(rec["curve"][-1]["images_seen"] for rec in records)
    rows = []
    for rec in records:
        last = rec["curve"][-1]
        g = _group_means(last["r2"])
        same = at_images(rec["curve"], common)
        rows.append([rec["name"], f"{rec['params'] / 1e6:.2f} M", f"{last['images_seen'] / 1e3:.0f}k",
                     f"{last['images_seen'] / max(last['train_seconds'], 1e-9):.0f}", f"{g['all']:.3f}",
                     f"{g['geometric']:.3f}", f"{g['scale']:.2f}", f"{g['rotation']:.2f}", f"{g['translation']:.2f}",
                     "" if same is None else f"{same:.3f}"])
    fg = _group_means(floor["r2"])
    rows.append(["random-init (floor)", "", "0", "", f"{fg['all']:.3f}", f"{fg['geometric']:.3f}",
                 f"{fg['scale']:.2f}", f"{fg['rotation']:.2f}", f"{fg['translation']:.2f}", f"{fg['all']:.3f}"])
    headers = ["candidate", "params", "images seen", "img/s", "mean R^2 (15)", "geometric (7)", "scale",
               "rotation", "translation", f"mean R^2 at {common / 1e3:.0f}k images"]
    env = environment(device)
    table = (f"Per-label R^2 on {args.eval_images} CIFAR-10 test images at p = {EVAL_P} after {args.minutes:g} min of "
             f"training each ({env['device_name']}, {args.threads} thread(s) per candidate, {args.parallel} at once; "
             f"scale/rotation/translation: mean over each op's labels). The machine was shared, so images/s varied "
             f"with its load; the last column compares candidates at the same number of images seen.\n\n"
             + markdown_table(headers, rows))
    payload = {"environment": env, "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
               "eval_p": EVAL_P, "candidates": records, "random_init": floor}
    tag = "smoke" if args.smoke else device.type
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / f"feature-map-training-{tag}.json", payload)
    (args.out / f"feature-map-training-{tag}.md").write_text(table + "\n")
    if not args.no_plot:
        plot(records, floor, args.out / f"feature-map-training-{tag}.png")
    print(table)
    return payload


def plot(records: list[dict], floor: dict, path: Path) -> None:
    """Mean R^2 (higher is better) against wall-clock and images seen, one line per candidate, the random-init map
    as a dotted floor; redrawn from a result JSON by ``plot(r["candidates"], r["random_init"], path)``."""
    fg = _group_means(floor["r2"])
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for rec in records:
        t = [c["train_seconds"] / 60 for c in rec["curve"]]
        seen = [c["images_seen"] / 1e3 for c in rec["curve"]]
        means = [_group_means(c["r2"]) for c in rec["curve"]]
        axes[0].plot(t, [m["all"] for m in means], marker="o", label=rec["name"])
        axes[1].plot(seen, [m["all"] for m in means], marker="o", label=rec["name"])
        axes[2].plot(seen, [m["geometric"] for m in means], marker="o", label=rec["name"])
    labels = (("training wall-clock (min)", "mean R^2, 15 labels", fg["all"]),
              ("images seen (thousands)", "mean R^2, 15 labels", fg["all"]),
              ("images seen (thousands)", "mean R^2, 7 geometric labels", fg["geometric"]))
    for ax, (xlabel, ylabel, floor_value) in zip(axes, labels):
        ax.axhline(floor_value, color="grey", ls=":", label="random-init")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(better_label(ylabel, "higher"))
        ax.grid(alpha=0.3)
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(args: argparse.Namespace) -> dict[str, Any]:
    if args.child:
        run_candidate(args, args.child)
        return {}
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(CANDIDATES)
    if args.smoke:
        names = names[:2]
        args.minutes, args.segments, args.eval_images, args.ramp_seconds = 0.1, 2, 64, 1.0
    unknown = set(names) - set(CANDIDATES)
    if unknown:
        raise SystemExit(f"unknown candidates {sorted(unknown)}; choose from {list(CANDIDATES)}")
    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        list(pool.map(lambda n: _child(args, n), names))
    records = [json.loads((args.work / _slug(n) / "curve.json").read_text()) for n in names]
    return report(args, records, random_init_floor(args))


if __name__ == "__main__":
    main(parse_args())
