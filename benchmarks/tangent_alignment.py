"""Tangent alignment: the share of each loss's update direction that runs along the data manifold.

AYT's central claim (Kim, Cha & Ye 2025, Sec. 3) is that pixel losses push a consistency model's output
*along* the data manifold, and that MFD's gradient is manifold-aligned instead. This script measures the
parallel energy fraction f = ||P g||^2 / ||g||^2 of the update direction g = -d loss / d prediction
(:func:`mfd_loss.diagnostics.tangent_alignment`) per noise level t of the ECT schedule:

* the prediction is the target displaced by the ECT pair gap at t, RMS (t - r(t)) per element, split equally
  between a random direction inside the manifold's tangent span and a random direction orthogonal to it
  (:func:`mfd_loss.diagnostics.controlled_displacement`). Pixel L2 and pseudo-Huber point along the
  displacement, so their fraction is 0.5 by construction: a loss below 0.5 turns the update away from the
  manifold, above 0.5 along it;
* (a) **synthetic**: 1-channel 32x32 Gaussian blobs with random centre (2), width and amplitude: a 4-D
  manifold whose tangent space is known exactly (the Jacobian of the renderer, by forward-mode autograd).
  Feature maps trained here, on these images, with three perturbation presets, next to a random-init map;
* (b) **CIFAR-10**: real test images, tangent space approximated by the derivatives of shifts, rotation,
  scale, brightness, contrast, saturation and hue (:func:`mfd_loss.diagnostics.nuisance_tangents`). The
  shipped ``cifar10`` map, maps trained here with three presets at equal (short) budget, a random-init map
  of the shipped architecture, and LPIPS when its ImageNet backbone weights are present.

Rerun (CPU, ~20 min; trained maps are cached in --work and reused):  python benchmarks/tangent_alignment.py
GPU:  python benchmarks/tangent_alignment.py --device cuda --images 1024 --map-steps 5000
Writes benchmarks/results/tangent-alignment-<device>.{json,png,md}.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    RESULTS, better_label, coincident_series, environment, lpips_with_weights, markdown_table, pyplot, resolve_device, write_json,
)

from mfd_loss import MFD, FeatureMapConfig, TrainConfig, train_feature_map  # noqa: E402
from mfd_loss.consistency import r_from_t  # noqa: E402
from mfd_loss.training.datasets import load_cifar10, load_sample_images, to_model_range  # noqa: E402
from mfd_loss.diagnostics import (  # noqa: E402
    NUISANCE_DIRECTIONS, controlled_displacement, nuisance_tangents, random_init_like, tangent_alignment)
from mfd_loss.consistency import pseudo_huber  # noqa: E402

NOISE_LEVELS = (0.01, 0.05, 0.2, 1.0, 5.0, 20.0, 80.0)
PRESETS = {"synthetic": ("grayscale", "geometric", "degradation"), "cifar10": ("all", "geometric", "degradation")}

Loss = Callable[[Tensor, Tensor], Tensor]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--images", type=int, default=256, help="targets per noise level and part")
    p.add_argument("--noise-levels", default=",".join(map(str, NOISE_LEVELS)), help="ECT noise levels t")
    p.add_argument("--map-steps", type=int, default=600, help="training steps of each feature map trained here")
    p.add_argument("--map-width", type=float, default=0.25, help="VGG11 width of the maps trained here")
    p.add_argument("--map-batch", type=int, default=64, help="batch size of the maps trained here")
    p.add_argument("--parts", default="synthetic,cifar10", help="which parts to run (the other parts of an existing "
                                                                 "result file are kept)")
    p.add_argument("--compare-map", action="append", default=[], metavar="LABEL=PATH",
                   help="also measure this feature-map folder on CIFAR-10 beside the shipped one (repeatable), "
                        "e.g. a previous release's map")
    p.add_argument("--work", default="runs/bench-alignment", help="cache of the feature maps trained here")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--out", default=None, help="result JSON (default benchmarks/results/tangent-alignment-<device>.json)")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")
    p.add_argument("--smoke", action="store_true", help="seconds-long run of every code path (CI)")
    args = p.parse_args(argv)
    args.noise_levels = tuple(float(v) for v in args.noise_levels.split(","))
    args.parts = tuple(v for v in args.parts.split(",") if v)
    if args.smoke:
        args.images, args.noise_levels, args.map_steps, args.map_width, args.map_batch = 4, (0.05, 5.0), 2, 0.125, 8
    return args


# ------------------------------------------------------------------------------------------- synthetic
def render_blobs(params: Tensor, size: int = 32) -> Tensor:
    """(N, 4) parameters (centre x, centre y in pixels, width σ in pixels, amplitude in (0, 1]) -> (N, 1, S, S)
    images in [-1, 1]: a Gaussian blob of that amplitude on a black (-1) background."""
    grid = torch.arange(size, dtype=params.dtype, device=params.device) + 0.5
    cx, cy, sigma, amplitude = (params[:, i].view(-1, 1, 1) for i in range(4))
    r2 = (grid.view(1, 1, size) - cx) ** 2 + (grid.view(1, size, 1) - cy) ** 2
    return (2 * amplitude * torch.exp(-r2 / (2 * sigma ** 2)) - 1).unsqueeze(1)


def sample_blob_params(n: int, generator: torch.Generator) -> Tensor:
    low = torch.tensor([10.0, 10.0, 2.0, 0.5])
    high = torch.tensor([22.0, 22.0, 4.0, 1.0])
    return low + (high - low) * torch.rand(n, 4, generator=generator)


def blob_tangents(params: Tensor) -> Tensor:
    """Exact tangent space of the blob manifold: (N, 4, 1, S, S) derivatives of the renderer."""
    jac = torch.func.vmap(torch.func.jacfwd(lambda q: render_blobs(q[None])[0]))(params)  # (N, 1, S, S, 4)
    return jac.permute(0, 4, 1, 2, 3).contiguous()


# ------------------------------------------------------------------------------------------------ maps
def train_map(images_uint8: Tensor, preset: str, folder: Path, args: argparse.Namespace) -> MFD:
    """A VGG11 map trained on ``images_uint8`` with a perturbation preset, cached in ``folder`` (resumes)."""
    config = TrainConfig(steps=args.map_steps, batch_size=args.map_batch, lr=1e-3, p_max=0.5,
                         ramp_steps=max(1, args.map_steps // 5), spec=preset, seed=args.seed,
                         eval_every=0, eval_size=min(256, images_uint8.shape[0] // 4), checkpoint_every=200)
    if not (folder / "model.safetensors").is_file():
        train_feature_map(images_uint8, folder, config=config, device=args.device_obj, progress=False,
                          architecture=FeatureMapConfig(arch="vgg11", width=args.map_width))
    return MFD(pretrained=str(folder)).to(args.device_obj)


def with_distance(loss: MFD, distance: str) -> MFD:
    return MFD(pretrained=None, feature_map=loss.feature_map, distance=distance)


def pixel_losses() -> dict[str, Loss]:
    return {
        "L2": lambda x, y: (x - y).flatten(1).pow(2).sum(1),
        "pseudo-Huber (iCT c)": lambda x, y: pseudo_huber(x, y, c=None, reduction="none"),
    }


# ------------------------------------------------------------------------------------------ measuring
def measure(losses: dict[str, Loss], targets: Tensor, tangents: Tensor, args: argparse.Namespace) -> dict:
    """Mean and standard error of the parallel fraction per loss and noise level."""
    results: dict[str, dict[str, list[float]]] = {name: {"mean": [], "sem": []} for name in losses}
    for i, t in enumerate(args.noise_levels):
        t_tensor = torch.tensor([t], dtype=torch.float64)
        rms = float(t_tensor - r_from_t(t_tensor))
        gen = torch.Generator().manual_seed(args.seed * 1000 + i)
        predictions = torch.cat([controlled_displacement(targets[j:j + 64].cpu(), tangents[j:j + 64].cpu(), rms, rms, gen)
                                 for j in range(0, targets.shape[0], 64)]).to(targets.device)
        for name, loss in losses.items():
            values = torch.cat([tangent_alignment(loss, predictions[j:j + 64], targets[j:j + 64], tangents[j:j + 64])
                                for j in range(0, targets.shape[0], 64)]).cpu()
            values = values[~values.isnan()]
            results[name]["mean"].append(float(values.mean()))
            results[name]["sem"].append(float(values.std() / math.sqrt(max(1, values.numel()))))
    return results


def synthetic_part(args: argparse.Namespace) -> dict:
    gen = torch.Generator().manual_seed(args.seed)
    train = render_blobs(sample_blob_params(2000 if args.smoke else 20000, gen))
    train_uint8 = ((train + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    params = sample_blob_params(args.images, gen)
    targets, tangents = render_blobs(params).to(args.device_obj), blob_tangents(params).to(args.device_obj)
    losses: dict[str, Loss] = pixel_losses()
    maps = {}
    for preset in PRESETS["synthetic"]:
        maps[preset] = train_map(train_uint8, preset, Path(args.work) / f"blobs-{preset}-{args.map_steps}", args)
        losses[f"MFD group, trained here: {preset}"] = maps[preset]
    first = maps[PRESETS["synthetic"][0]]
    losses[f"MFD squared, trained here: {PRESETS['synthetic'][0]}"] = with_distance(first, "squared")
    losses["MFD group, random init"] = random_init_like(first, args.seed)
    return {"description": "1x32x32 Gaussian blobs, 4-D manifold, exact tangents", "manifold_dim": 4,
            "pixels": 32 * 32, "fractions": measure(losses, targets, tangents, args)}


def cifar_part(args: argparse.Namespace) -> dict:
    try:
        train_images, _ = load_cifar10("train")
        test_images, _ = load_cifar10("test")
        source = "CIFAR-10 test split (first images), maps trained on the train split"
    except FileNotFoundError as err:
        print(f"CIFAR-10 archives not found ({err}); using the 64 test images shipped with mfd-loss")
        test_images = load_sample_images()[0]
        train_images, source = test_images, "the 64 CIFAR-10 test images shipped with mfd-loss (archives absent)"
    targets = to_model_range(test_images[:args.images]).to(args.device_obj)
    tangents = nuisance_tangents(targets)
    shipped = MFD("cifar10").to(args.device_obj)
    losses: dict[str, Loss] = pixel_losses()
    losses["MFD group, shipped cifar10"] = shipped
    losses["MFD squared, shipped cifar10"] = with_distance(shipped, "squared")
    losses["MFD group, random init (shipped arch)"] = random_init_like(shipped, args.seed)
    for spec in args.compare_map:
        label, _, path = spec.partition("=")
        if not path:
            raise SystemExit(f"--compare-map wants LABEL=PATH, got {spec!r}")
        losses[f"MFD group, {label}"] = MFD(pretrained=path).to(args.device_obj)
    subset = train_images[:2000] if args.smoke else train_images
    for preset in PRESETS["cifar10"]:
        folder = Path(args.work) / f"cifar10-{preset}-{args.map_steps}"
        losses[f"MFD group, trained here: {preset}"] = train_map(subset, preset, folder, args)
    lpips, lpips_note = lpips_with_weights("vgg")
    if lpips is None:
        lpips_note = f"LPIPS left out: {lpips_note}"
    else:
        losses[lpips_note] = lpips.to(args.device_obj)
    print(lpips_note)
    return {"description": source, "directions": list(NUISANCE_DIRECTIONS),
            "pixels": 3 * 32 * 32, "lpips": lpips_note, "fractions": measure(losses, targets, tangents, args)}


# ------------------------------------------------------------------------------------------- reporting
def table(part: dict, noise_levels: tuple[float, ...]) -> str:
    headers = ["loss"] + [f"t = {t:g}" for t in noise_levels]
    rows = [[name] + [f"{m:.3f}" for m in r["mean"]] for name, r in part["fractions"].items()]
    return markdown_table(headers, rows)


def plot(result: dict, path: Path) -> None:
    """One panel per part: each loss's parallel energy fraction against the noise level (lower is better). A loss
    whose curve lies on an earlier one (pixel L2 and pseudo-Huber, both 0.5) is drawn on top of it in a thinner
    line and says so in the legend; the earlier one is drawn wide with hollow markers, so both stay visible."""
    plt = pyplot()
    parts = [k for k in ("synthetic", "cifar10") if k in result]
    fig, axes = plt.subplots(1, len(parts), figsize=(6.5 * len(parts), 4.6), squeeze=False)
    for ax, key in zip(axes[0], parts):
        fractions = result[key]["fractions"]
        on_top_of = coincident_series({name: r["mean"] for name, r in fractions.items()})
        underneath = set(on_top_of.values())
        for name, r in fractions.items():
            style = "--" if not name.startswith("MFD") and not name.startswith("LPIPS") else "-"
            wide = name in underneath
            label = f"{name} (same as {on_top_of[name]})" if name in on_top_of else name
            ax.errorbar(result["config"]["noise_levels"], r["mean"], yerr=r["sem"], label=label, linestyle=style,
                        marker="o", markersize=9 if wide else 3, markerfacecolor="none" if wide else None,
                        linewidth=4 if wide else 1.5, alpha=0.45 if wide else 1.0, capsize=2)
        ax.set_xscale("log")
        ax.set_ylim(0, 1)
        ax.set_xlabel("ECT noise level t (displacement RMS = t - r(t))")
        ax.set_ylabel(better_label("parallel energy fraction of the update", "lower"))
        ax.set_title({"synthetic": "(a) synthetic blobs, exact tangents", "cifar10": "(b) CIFAR-10, nuisance tangents"}[key])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.device_obj = resolve_device(args.device)
    out = Path(args.out) if args.out else RESULTS / f"tangent-alignment-{args.device_obj.type}.json"
    config = {k: v for k, v in vars(args).items() if k != "device_obj"}
    result: dict = {"environment": environment(args.device_obj, torch.float32), "config": config}
    started = time.monotonic()
    parts = {"synthetic": synthetic_part, "cifar10": cifar_part}
    previous = json.loads(out.read_text()) if out.is_file() else {}
    kept = [key for key in parts if key not in args.parts and key in previous]
    for key in kept:  # a run of some parts keeps the others' last measurement, with its own environment
        result[key] = {**previous[key], "measured_in_an_earlier_run": previous.get("environment", {})}
    for key in args.parts:
        result[key] = parts[key](args)
        print(f"\n## {key}: {result[key]['description']}\n\n{table(result[key], args.noise_levels)}")
    result["seconds"] = round(time.monotonic() - started, 1)
    write_json(out, result)
    present = [key for key in parts if key in result]
    markdown = "\n\n".join(f"### {key}: {result[key]['description']}\n\n{table(result[key], args.noise_levels)}"
                           for key in present)
    out.with_suffix(".md").write_text(markdown + "\n")
    if not args.no_plot:
        plot(result, out.with_suffix(".png"))
    print(f"\nwrote {out} ({result['seconds']} s)")
    return result


if __name__ == "__main__":
    main()
