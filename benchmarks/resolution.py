"""Serving other resolutions with a 32 px map: tangent alignment of MFD(resize="antialias") and MFD(resize="tiles").

A feature map trained at 32x32 (the shipped ``cifar10`` map) raises on other sizes unless the caller opts in:
``resize="antialias"`` resizes both images to 32x32 (bilinear, antialiased) before the map, ``resize="tiles"``
applies the map to the non-overlapping 32x32 tiles and averages their distances. Which one keeps the map's
useful property, an update direction that is not along the data manifold, is measured here with
:func:`mfd_loss.diagnostics.tangent_alignment` (the parallel energy fraction f = ||P g||^2 / ||g||^2 of the
update g; METHOD.md Sec. 8):

* targets: random square crops (side uniform between the resolution and the photograph's short side, resized
  to R x R with antialiasing) of the colour photographs bundled with scikit-image (astronaut, coffee, chelsea,
  rocket, motorcycle), R = 64 and 128; values in [-1, 1];
* tangent span: derivatives of shifts, rotation, scale, brightness, contrast, saturation and hue
  (:func:`mfd_loss.diagnostics.nuisance_tangents`);
* prediction: the target displaced by the ECT pair gap at noise level t, RMS (t - r(t)) per element, split
  equally inside and orthogonal to that span (:func:`mfd_loss.diagnostics.controlled_displacement`), so pixel
  L2's fraction is 0.5 by construction;
* losses: pixel L2; the shipped ``cifar10`` map under each mode; a randomly initialised map of the same
  architecture under each mode (the control: an untrained network already lowers f); and, for reference, the
  shipped map at its native 32 px on the 64 CIFAR-10 test images bundled with mfd-loss;
* ``--native-map LABEL=MAP`` (repeatable): a map trained at a larger size (e.g. ``tinyimagenet`` at 64 px),
  measured at its own resolution beside a random-init map of its architecture, in the same run;
* ``--targets tinyimagenet``: Tiny ImageNet-200 val photos (64x64, upsampled for larger R) instead of the
  scikit-image crops. The result JSON names every map with the SHA-256 of its weights.

Lower is better (less of the update runs along the manifold). Rerun (CPU, about 2 minutes on one thread):

    OMP_NUM_THREADS=1 python benchmarks/resolution.py
    OMP_NUM_THREADS=1 python benchmarks/resolution.py --targets tinyimagenet --resolutions 64 \
        --native-map tinyimagenet=tinyimagenet --out benchmarks/results/resolution-64px-cpu.json

Writes benchmarks/results/resolution-<device>.{json,md}. Needs scikit-image (``pip install scikit-image``).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, environment, map_record, markdown_table, resolve_device, write_json  # noqa: E402

from mfd_loss import MFD, load_sample_images  # noqa: E402
from mfd_loss.consistency import r_from_t  # noqa: E402
from mfd_loss.training.datasets import load_tinyimagenet, to_model_range  # noqa: E402
from mfd_loss.diagnostics import (  # noqa: E402
    controlled_displacement, nuisance_tangents, random_init_like, tangent_alignment)

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "stereo_motorcycle")
RESOLUTIONS = (64, 128)
NOISE_LEVELS = (0.2, 5.0)
MODES = ("antialias", "tiles")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--crops", type=int, default=128, help="random crops per resolution")
    p.add_argument("--resolutions", default=",".join(map(str, RESOLUTIONS)), help="crop sizes R (multiples of 32)")
    p.add_argument("--noise-levels", default=",".join(map(str, NOISE_LEVELS)), help="ECT noise levels t")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--targets", choices=["photos", "tinyimagenet"], default="photos",
                   help="crops of scikit-image's photographs, or Tiny ImageNet val images (needs the data folder)")
    p.add_argument("--native-map", action="append", default=[], metavar="LABEL=MAP",
                   help="a map (name, Hub id or folder) measured at its own resolution with its random-init control")
    p.add_argument("--out", default=None, help="result JSON (default benchmarks/results/resolution-<device>.json)")
    p.add_argument("--smoke", action="store_true", help="seconds-long run of every code path (CI)")
    args = p.parse_args(argv)
    args.resolutions = tuple(int(v) for v in args.resolutions.split(","))
    args.noise_levels = tuple(float(v) for v in args.noise_levels.split(","))
    args.native_maps = dict(item.split("=", 1) for item in args.native_map)
    if any("=" not in item for item in args.native_map):
        p.error("--native-map takes LABEL=MAP, e.g. tinyimagenet=tinyimagenet")
    if args.smoke:
        args.crops, args.resolutions, args.noise_levels = 2, (64,), (5.0,)
    return args


def photographs() -> list[Tensor]:
    """The bundled colour photographs as (3, H, W) uint8 tensors."""
    try:
        import skimage.data
    except ImportError as err:
        raise SystemExit("benchmarks/resolution.py needs scikit-image: pip install scikit-image") from err
    out = []
    for name in PHOTOS:
        image = getattr(skimage.data, name)()
        image = image[0] if isinstance(image, tuple) else image  # stereo_motorcycle: (left, right, disparity)
        out.append(torch.from_numpy(image[..., :3].copy()).permute(2, 0, 1).contiguous())
    return out


def random_crops(photos: list[Tensor], n: int, size: int, generator: torch.Generator) -> Tensor:
    """(n, 3, size, size) float crops in [-1, 1]: a random photo, a random square of side uniform in
    [size, short side], resized to size x size with antialiasing."""
    crops = []
    for _ in range(n):
        photo = photos[int(torch.randint(len(photos), (1,), generator=generator))]
        h, w = photo.shape[-2:]
        side = int(torch.randint(size, min(h, w) + 1, (1,), generator=generator))
        top = int(torch.randint(h - side + 1, (1,), generator=generator))
        left = int(torch.randint(w - side + 1, (1,), generator=generator))
        crop = to_model_range(photo[None, :, top:top + side, left:left + side])
        crops.append(F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False, antialias=True))
    return torch.cat(crops).clamp(-1, 1)


def tinyimagenet_targets(n: int, size: int, generator: torch.Generator) -> Tensor:
    """(n, 3, size, size) float Tiny ImageNet val images in [-1, 1], a random subset, resized (bilinear) when
    size differs from their 64 px."""
    images, _ = load_tinyimagenet("test")
    chosen = images[torch.randperm(images.shape[0], generator=generator)[:n]]
    x = to_model_range(chosen)
    if size != x.shape[-1]:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x.clamp(-1, 1)


def pixel_l2(x: Tensor, y: Tensor) -> Tensor:
    return (x - y).flatten(1).pow(2).sum(1)


def fractions(loss, targets: Tensor, tangents: Tensor, rms: float, generator: torch.Generator) -> tuple[float, float]:
    """Mean and standard error of the parallel energy fraction over the targets (chunks of 16)."""
    values = []
    for i in range(0, targets.shape[0], 16):
        y, tan = targets[i:i + 16], tangents[i:i + 16]
        x = controlled_displacement(y.cpu(), tan.cpu(), rms, rms, generator).to(y.device)
        values.append(tangent_alignment(loss, x, y, tan).cpu())
    v = torch.cat(values)
    v = v[~v.isnan()]
    return float(v.mean()), float(v.std() / math.sqrt(max(1, v.numel())))


def measure(args: argparse.Namespace) -> dict:
    device = args.device_obj
    shipped = MFD("cifar10").to(device)
    random_init = random_init_like(shipped, args.seed)
    native = {label: MFD(spec).to(device) for label, spec in args.native_maps.items()}
    rms = {t: float(torch.tensor([t], dtype=torch.float64) - r_from_t(torch.tensor([t], dtype=torch.float64)))
           for t in args.noise_levels}
    photos, gen = photographs(), torch.Generator().manual_seed(args.seed)
    rows: dict[str, dict[str, dict[str, float]]] = {}

    def record(name: str, column: str, loss, targets: Tensor, tangents: Tensor, t: float) -> None:
        mean, sem = fractions(loss, targets, tangents, rms[t], torch.Generator().manual_seed(args.seed + int(t * 100)))
        rows.setdefault(name, {})[column] = {"mean": round(mean, 4), "sem": round(sem, 4)}

    sample = to_model_range(load_sample_images()[0][:args.crops]).to(device)
    for t in args.noise_levels:
        column = f"32 px, t = {t:g}"
        tangents = nuisance_tangents(sample)
        record("pixel L2", column, pixel_l2, sample, tangents, t)
        record("MFD cifar10 (native 32 px, CIFAR-10 sample)", column, shipped, sample, tangents, t)
        record("MFD random init (native 32 px, CIFAR-10 sample)", column, random_init, sample, tangents, t)
    for size in args.resolutions:
        if args.targets == "tinyimagenet":
            targets = tinyimagenet_targets(args.crops, size, gen).to(device)
        else:
            targets = random_crops(photos, args.crops, size, gen).to(device)
        tangents = nuisance_tangents(targets)
        for t in args.noise_levels:
            column = f"{size} px, t = {t:g}"
            record("pixel L2", column, pixel_l2, targets, tangents, t)
            for mode in MODES:
                for label, base in (("cifar10", shipped), ("random init", random_init)):
                    loss = MFD(pretrained=None, feature_map=base.feature_map, resize=mode)
                    record(f"MFD {label}, resize={mode!r}", column, loss, targets, tangents, t)
            for label, loss in native.items():
                if tuple(loss.feature_map.config.resolution) == (size, size):
                    record(f"MFD {label} (native {size} px)", column, loss, targets, tangents, t)
                    record(f"MFD {label} random init (native {size} px)", column,
                           random_init_like(loss, args.seed), targets, tangents, t)
    columns = [f"{r} px, t = {t:g}" for r in (32, *args.resolutions) for t in args.noise_levels]
    return {"columns": columns, "fractions": rows, "native_images": int(sample.shape[0]),
            "displacement_rms": {f"t = {t:g}": round(v, 6) for t, v in rms.items()}}


def table(result: dict) -> str:
    headers = ["loss"] + result["columns"]
    body = [[name] + [f"{cells[c]['mean']:.3f} ± {cells[c]['sem']:.3f}" if c in cells else "–"
                      for c in result["columns"]] for name, cells in result["fractions"].items()]
    return markdown_table(headers, body)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.device_obj = resolve_device(args.device)
    out = Path(args.out) if args.out else RESULTS / f"resolution-{args.device_obj.type}.json"
    started = time.monotonic()
    result = {"environment": environment(args.device_obj, torch.float32),
              "config": {k: v for k, v in vars(args).items() if k != "device_obj"},
              "targets": ("Tiny ImageNet-200 val" if args.targets == "tinyimagenet"
                          else [f"skimage.data.{p}" for p in PHOTOS]),
              "maps": {"cifar10": map_record("cifar10"),
                       **{label: map_record(spec) for label, spec in args.native_maps.items()}},
              **measure(args)}
    result["seconds"] = round(time.monotonic() - started, 1)
    write_json(out, result)
    maps = ", ".join(f"{label} (SHA-256 {record['sha256'][:12]}...)" for label, record in result["maps"].items())
    text = (f"Parallel energy fraction of the update (mean ± s.e. over {args.crops} crops per size; lower = less "
            f"along the manifold; pixel L2 = 0.5 by construction). "
            f"{'Tiny ImageNet val images' if args.targets == 'tinyimagenet' else 'Crops of scikit-image photographs'}; "
            f"maps: {maps}; 32 px "
            f"columns: the first {result['native_images']} CIFAR-10 sample images at the map's own size. "
            f"{args.device_obj}, seed {args.seed}, {result['seconds']} s.\n\n{table(result)}\n")
    out.with_suffix(".md").write_text(text)
    print(text)
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
