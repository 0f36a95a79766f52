"""Feature-map training throughput: images per second of one training step, and the time a full run would take.

A step is the trainer's own (:func:`mfd_loss.train_feature_map`, METHOD.md Sec. 3), rebuilt here so it can be
timed alone: a batch of uint8 images is mapped to [-1, 1] on the CPU and moved to the device, the perturbation
pipeline draws its parameters from a CPU generator seeded per step and applies them on the device, the map
regresses the 15 labels under autocast (``--precisions``), MSE loss, backward, RAdam step, and the loss is
read back (one synchronisation, as the trainer logs it). Perturbations run at the final probability
``p = 0.15`` (the steady state after the ramp). Each configuration is timed over whole steps for at least
``--seconds`` after ``--warmup`` untimed steps (``torch.cuda.synchronize`` at both ends); images/s = steps x
batch / seconds. The perturbation pipeline alone (sample + apply) is timed the same way, so its share of a
step is known.

Recipes: ``shipped`` is the architecture and batch size of the shipped ``cifar10`` map (read from its
``config.json``), ``paper`` the paper's (VGG16-BN at full width, batch 512; 400k steps). For each, the JSON gives
the hours a run of the recipe's steps would take at the measured speed. Memory formats: ``channels_last``
(weights and perturbed batch in NHWC, usually faster for convolutions under autocast on GPUs) and ``contiguous``
(what the trainer does today).

    python benchmarks/train_throughput.py --device cuda            # about 40 s on one GPU
    python benchmarks/train_throughput.py --smoke --device cpu     # CI: tiny maps, a few steps

Writes ``--out`` (default ``benchmarks/results/train-throughput-<device type>.json``) and a Markdown table beside it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, environment, markdown_table, resolve_device, write_json  # noqa: E402

PAPER = {"arch": "vgg16", "width": 1.0, "batch_size": 512, "steps": 400_000}
SMOKE = {"arch": "vgg11", "width": 0.125}
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
FORMATS = ("channels_last", "contiguous")
P_MAX = 0.15


def shipped_recipe() -> dict[str, Any]:
    """Architecture and batch size of the shipped ``cifar10`` map, from its ``config.json``."""
    config = json.loads(resources.files("mfd_loss").joinpath("weights/cifar10/config.json").read_text())
    arch, recipe = config["architecture"], config["recipe"]
    return {"arch": arch["arch"], "width": float(arch["width"]), "batch_size": int(recipe["batch_size"]),
            "steps": int(recipe["steps"])}


def recipes(smoke: bool) -> dict[str, dict[str, Any]]:
    """``{"shipped": ..., "paper": ...}``: arch, width, batch_size, steps; tiny maps and batches with ``smoke``."""
    found = {"shipped": shipped_recipe(), "paper": dict(PAPER)}
    if smoke:
        found = {name: {**r, **SMOKE, "batch_size": batch} for (name, r), batch in zip(found.items(), (8, 16))}
    return found


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def images_for(batch: int) -> torch.Tensor:
    """(batch, 3, 32, 32) uint8: the packaged real CIFAR-10 test images, repeated (speed does not depend on content)."""
    from mfd_loss.training.datasets import load_sample_images

    images, _ = load_sample_images()
    return images.repeat((batch + images.shape[0] - 1) // images.shape[0], 1, 1, 1)[:batch].contiguous()


class TrainingStep:
    """One training step of the trainer's recipe on a fixed batch, with its own model and optimiser."""

    def __init__(self, recipe: dict[str, Any], device: torch.device, precision: str, memory_format: str, seed: int):
        from mfd_loss.feature_maps import FeatureMapConfig, build_feature_map
        from mfd_loss.perturbations import Perturbations

        self.device, self.dtype, self.seed = device, PRECISIONS[precision], seed
        self.format = torch.channels_last if memory_format == "channels_last" else torch.contiguous_format
        self.perturbations = Perturbations("all", p=P_MAX)
        torch.manual_seed(seed)
        config = FeatureMapConfig(arch=recipe["arch"], width=recipe["width"],
                                  num_labels=self.perturbations.spec.num_labels)
        self.model = build_feature_map(config).to(device, memory_format=self.format).train()
        self.parameters = sum(p.numel() for p in self.model.parameters())
        self.optimizer = torch.optim.RAdam(self.model.parameters(), lr=1e-4, weight_decay=0.0)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.dtype is torch.float16)
        self.batch = images_for(recipe["batch_size"])
        self.step_index = 0

    def _generator(self) -> torch.Generator:
        self.step_index += 1
        return torch.Generator().manual_seed(self.seed * 1_000_003 + self.step_index)

    def perturb(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The data side of a step: range mapping, transfer, perturbation sample + apply."""
        from mfd_loss.training.datasets import to_model_range

        x = to_model_range(self.batch).to(self.device, non_blocking=True)
        return self.perturbations(x, generator=self._generator(), p=P_MAX)

    def __call__(self) -> float:
        xp, labels = self.perturb()
        xp = xp.contiguous(memory_format=self.format)
        autocast = (torch.autocast(self.device.type, dtype=self.dtype) if self.dtype is not None
                    else contextlib.nullcontext())
        with autocast:
            prediction = self.model(xp)[-1].flatten(1)
        loss = F.mse_loss(prediction.float(), labels)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss.item()


def timed(fn, device: torch.device, warmup: int, seconds: float, max_steps: int) -> tuple[int, float]:
    """(calls, seconds) of back-to-back calls of fn after ``warmup`` untimed ones: at least one call, then until
    ``seconds`` have passed or ``max_steps`` calls were made."""
    for _ in range(warmup):
        fn()
    sync(device)
    start, calls = time.perf_counter(), 0
    while calls < max_steps and (calls == 0 or time.perf_counter() - start < seconds):
        fn()
        calls += 1
    sync(device)
    return calls, time.perf_counter() - start


def measure(name: str, recipe: dict[str, Any], device: torch.device, precision: str, memory_format: str,
            args: argparse.Namespace) -> dict[str, Any]:
    """One row: images/s of the whole step and of its perturbation part, peak memory, hours for the recipe's steps."""
    step = TrainingStep(recipe, device, precision, memory_format, args.seed)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    losses: list[float] = []
    calls, seconds = timed(lambda: losses.append(step()), device, args.warmup, args.seconds, args.max_steps)
    batch = recipe["batch_size"]
    row = {"recipe": name, "arch": recipe["arch"], "width": recipe["width"], "parameters": step.parameters,
           "batch": batch, "precision": precision, "memory_format": memory_format, "timed_steps": calls,
           "seconds": round(seconds, 4), "step_ms": round(1000 * seconds / calls, 3),
           "images_per_s": batch * calls / seconds, "final_loss": losses[-1],
           "loss_finite": all(math.isfinite(v) for v in losses)}
    if device.type == "cuda":
        row["peak_mem_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    row["hours_for_recipe_steps"] = round(recipe["steps"] * batch / row["images_per_s"] / 3600, 2)
    row["recipe_steps"] = recipe["steps"]
    return row


def measure_perturbations(name: str, recipe: dict[str, Any], device: torch.device, args) -> dict[str, Any]:
    step = TrainingStep(recipe, device, "fp32", "contiguous", args.seed)
    calls, seconds = timed(step.perturb, device, args.warmup, args.seconds / 2, args.max_steps)
    return {"recipe": name, "batch": recipe["batch_size"], "timed_calls": calls,
            "ms": round(1000 * seconds / calls, 3), "images_per_s": recipe["batch_size"] * calls / seconds}


def table(rows: list[dict[str, Any]], pert: list[dict[str, Any]]) -> str:
    share = {p["recipe"]: p["ms"] for p in pert}
    body = [[r["recipe"], f"{r['arch']} x{r['width']:g} ({r['parameters'] / 1e6:.2f} M)", r["batch"], r["precision"],
             r["memory_format"], f"{r['images_per_s']:.4g}", f"{r['step_ms']:.3g}",
             f"{100 * share[r['recipe']] / r['step_ms']:.0f} %" if r["recipe"] in share else "–",
             r.get("peak_mem_mb", "–"), f"{r['hours_for_recipe_steps']:.3g} h ({r['recipe_steps']} steps)"]
            for r in rows]
    return markdown_table(["recipe", "map", "batch", "precision", "memory format", "images/s", "ms/step",
                           "perturbations", "peak MB", "full run"], body)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="cuda, cpu or auto")
    p.add_argument("--recipes", default="shipped,paper", help="comma-separated: shipped, paper")
    p.add_argument("--precisions", default=None, help="comma-separated of fp32,bf16,fp16 (default fp32,bf16)")
    p.add_argument("--formats", default=",".join(FORMATS), help="comma-separated of channels_last,contiguous")
    p.add_argument("--seconds", type=float, default=3.0, help="time each configuration for at least this long")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--max-steps", type=int, default=500, help="at most this many timed steps per configuration")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="JSON path (a .md table is written beside it)")
    p.add_argument("--smoke", action="store_true", help="CI: tiny maps and batches, 2 steps each")
    args = p.parse_args(argv)
    if args.smoke:
        args.seconds, args.warmup, args.max_steps = 0.0, 1, 2
    return args


def main(argv=None) -> dict[str, Any]:
    args = parse_args(argv)
    device = resolve_device(args.device)
    out = args.out or RESULTS / f"train-throughput-{device.type}.json"
    available = recipes(args.smoke)
    names = [n.strip() for n in args.recipes.split(",") if n.strip()]
    precisions = [s.strip() for s in (args.precisions or "fp32,bf16").split(",") if s.strip()]
    formats = [s.strip() for s in args.formats.split(",") if s.strip()]
    for value, allowed, flag in ((names, available, "--recipes"), (precisions, PRECISIONS, "--precisions"),
                                 (formats, FORMATS, "--formats")):
        unknown = [v for v in value if v not in allowed]
        if unknown:
            raise SystemExit(f"{flag}: unknown {unknown}; choose from {', '.join(allowed)}")
    started = time.perf_counter()
    rows, pert = [], []
    payload = {"environment": environment(device),
               "config": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                          "device": str(device), "recipes": {n: available[n] for n in names}, "p": P_MAX},
               "method": __doc__.split("\n\n")[1].replace("\n", " "), "rows": rows, "perturbations": pert}
    for name in names:
        for precision in precisions:
            for memory_format in formats:
                rows.append(measure(name, available[name], device, precision, memory_format, args))
                r = rows[-1]
                print(f"[{time.perf_counter() - started:6.1f} s] {name:<8} {precision} {memory_format:<13} "
                      f"{r['images_per_s']:10.1f} img/s  {r['step_ms']:8.2f} ms/step", flush=True)
                payload["wall_seconds"] = round(time.perf_counter() - started, 1)
                write_json(out, payload)  # after every row: a run cut short keeps what it measured
        pert.append(measure_perturbations(name, available[name], device, args))
    payload["wall_seconds"] = round(time.perf_counter() - started, 1)
    write_json(out, payload)
    text = table(rows, pert)
    out.with_suffix(".md").write_text(f"{payload['environment']['device_name']} ({device}), torch "
                                      f"{payload['environment']['versions']['torch']}\n\n{text}\n")
    print(f"\n{text}\nwrote {out} ({payload['wall_seconds']} s)")
    return payload


if __name__ == "__main__":
    main()
