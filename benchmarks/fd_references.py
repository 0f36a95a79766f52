"""Reference rows of the benchmarks' Fréchet distance: what ``FD_<net>`` (and KID) say about known image sets.

A Fréchet distance is fit to rank generative models only if it orders images by how much they look like
the data. Every results table therefore carries these rows, computed with the same metric, the same real
statistics (the test split) and the same number of images as the runs:

* ``real_vs_real``: real training images (a seeded random subset) - the floor, where a perfect model lands;
* ``teacher_heun``: the EDM teacher's samples, 18-step Heun sampler (35 network evaluations);
* ``blurred_real_sigma1`` / ``blurred_real_sigma2``: the same training images under a Gaussian blur of
  1 and 2 px (separable, reflect padding; ``mfd_loss.perturbations.gaussian_blur``);
* ``blurred_noise``: i.i.d. Gaussian noise blurred by 2 px, then given the real images' per-channel mean
  and standard deviation (so colour statistics match and only structure is missing).

The metric is fit for purpose when floor < teacher < blurred real (2 px) < blurred noise, each step by a
clear margin (a ratio of at least ``MARGIN``); :func:`check_order` says whether that holds.

    python benchmarks/fd_references.py --dataset cifar10 --samples 5000            # all rows but the teacher's
    python benchmarks/fd_references.py --dataset cifar10 --teacher runs/teachers/edm-cifar10/checkpoint.pt

writes ``benchmarks/results/fd-references-<dataset>.json`` (rows, metric identity, ordering check, environment).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))

from _common import RESULTS, environment, markdown_table, write_json  # noqa: E402
from _training import METRICS, load_denoiser, load_images, seeded, to_uint8  # noqa: E402
from fd_metric import FrechetDistance  # noqa: E402

from mfd_loss.perturbations import gaussian_blur  # noqa: E402
from mfd_loss.consistency.sampling import heun_sample  # noqa: E402

ROWS = ("real_vs_real", "teacher_heun", "blurred_real_sigma1", "blurred_real_sigma2", "blurred_noise")
ORDER = ("real_vs_real", "teacher_heun", "blurred_real_sigma2", "blurred_noise")  # must increase
MARGIN = 1.25  # each row of ORDER at least this many times the one before it (FD sampling noise is ~ the floor)


def blurred_noise(reference: Tensor, n: int, generator: torch.Generator) -> Tensor:
    """(n, C, H, W) uint8: Gaussian noise blurred by 2 px, with ``reference``'s per-channel mean and std (uint8)."""
    x = reference.float()
    mean, std = x.mean((0, 2, 3)), x.std((0, 2, 3))
    noise = gaussian_blur(torch.randn((n, *reference.shape[1:]), generator=generator), torch.full((n,), 2.0))
    noise = (noise - noise.mean((0, 2, 3), keepdim=True)) / noise.std((0, 2, 3), keepdim=True)
    return (noise * std[None, :, None, None] + mean[None, :, None, None]).round().clamp(0, 255).to(torch.uint8)


def blurred(images: Tensor, sigma: float) -> Tensor:
    """uint8 images blurred by ``sigma`` px, requantised to uint8."""
    out = gaussian_blur(images.float(), torch.full((images.shape[0],), float(sigma)))
    return out.round().clamp(0, 255).to(torch.uint8)


@torch.no_grad()
def teacher_images(checkpoint: str | Path, n: int, channels: int, seed: int = 0, batch: int = 250,
                   device: str = "cpu") -> Tensor:
    """(n, C, 32, 32) uint8 Heun samples (18 steps, 35 evaluations) of a train_diffusion_model.py checkpoint's EMA."""
    model = load_denoiser(str(checkpoint), channels, torch.device(device))
    gen = seeded(seed, 11)
    out = []
    for i in range(0, n, batch):
        z = torch.randn(min(batch, n - i), channels, 32, 32, generator=gen).to(device)
        out.append(to_uint8(heun_sample(model, z)).cpu())
    return torch.cat(out)


def references(dataset: str, metric_dir: str | Path, samples: int, *, fd_real: int = 0, teacher: str | None = None,
               seed: int = 0, data_dir: str | None = None, kid_subset_size: int | None = None) -> dict[str, Any]:
    """The reference rows of one data set: ``{"metric": {...}, "samples", "fd_real", "rows": {row: {"fd",
    "kid", "kid_std"}}, "order": check_order(...)}``; ``teacher_heun`` only when ``teacher`` is given.

    Raises:
        ValueError: ``samples`` exceeds the training split.
    """
    train, _ = load_images(dataset, "train", data_dir)
    test, _ = load_images(dataset, "test", data_dir)
    test = test[:fd_real or None]
    if samples > train.shape[0]:
        raise ValueError(f"--samples {samples} exceeds the {train.shape[0]} training images")
    subset = min(1000, samples, test.shape[0]) if kid_subset_size is None else kid_subset_size
    fd = FrechetDistance(str(metric_dir), test, kid_subset_size=subset)
    real = train[torch.randperm(train.shape[0], generator=seeded(seed, 10))[:samples]]
    sets = {"real_vs_real": lambda: real, "blurred_real_sigma1": lambda: blurred(real, 1.0),
            "blurred_real_sigma2": lambda: blurred(real, 2.0),
            "blurred_noise": lambda: blurred_noise(real, samples, seeded(seed, 12))}
    if teacher is not None:
        sets["teacher_heun"] = lambda: teacher_images(teacher, samples, train.shape[1], seed)
    rows = {}
    torch.manual_seed(seed)  # KID's random subsets
    for name in ROWS:
        if name in sets:
            fd.add_fake(sets[name]())
            rows[name] = {k: round(v, 6) for k, v in fd.scores().items()}
    metric = {"name": fd.name, "dataset": fd.config.get("dataset", dataset), "sha256": fd.config.get("sha256"),
              "test_accuracy": fd.config.get("test_accuracy")}
    return {"metric": metric, "samples": samples, "fd_real": test.shape[0], "kid_subset_size": subset,
            "rows": rows, "order": check_order({k: v["fd"] for k, v in rows.items()})}


def check_order(values: dict[str, float], margin: float = MARGIN) -> dict[str, Any]:
    """Whether floor < teacher < blurred real (2 px) < blurred noise, each by a ratio >= ``margin``.

    Rows that are missing (the teacher before it exists) are skipped; ``complete`` says whether all were there.
    """
    present = [k for k in ORDER if k in values]
    ratios = {f"{b}/{a}": values[b] / max(values[a], 1e-12) for a, b in zip(present, present[1:])}
    return {"holds": all(r >= margin for r in ratios.values()), "complete": len(present) == len(ORDER),
            "margin": margin, "ratios": {k: round(v, 3) for k, v in ratios.items()}}


def table(result: dict[str, Any]) -> str:
    """Markdown rows: reference set, FD, KID ± its std over subsets."""
    name = result["metric"]["name"]
    body = [[row, f"{v['fd']:.2f}", f"{v['kid']:.4g} ± {v['kid_std']:.2g}" if "kid" in v else "n/a"]
            for row, v in result["rows"].items()]
    order = result["order"]
    verdict = ("holds" if order["holds"] else "does NOT hold") + ("" if order["complete"] else " (teacher row missing)")
    return (markdown_table(["reference", name, f"KID_{name[3:]}"], body) +
            f"\n\nOrdering floor < teacher < blurred 2 px < blurred noise by ratios >= {order['margin']}: {verdict} "
            f"({', '.join(f'{k} {v:.2f}' for k, v in order['ratios'].items())}); {result['samples']} images "
            f"against {result['fd_real']} test images.")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=("cifar10", "mnist", "fashion-mnist"), default="cifar10")
    p.add_argument("--metric", default=None, help="classifier folder (default: benchmarks/metrics/fd-<dataset>)")
    p.add_argument("--samples", type=int, default=5000, help="images per reference set (as the runs' FD samples)")
    p.add_argument("--fd-real", type=int, default=0, help="test images for the real statistics (0: all)")
    p.add_argument("--teacher", default=None, help="checkpoint.pt of the EDM teacher (adds teacher_heun)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default=None, help="result JSON (default: benchmarks/results/fd-references-<dataset>.json)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    result = references(args.dataset, args.metric or METRICS / f"fd-{args.dataset}", args.samples,
                        fd_real=args.fd_real, teacher=args.teacher, data_dir=args.data_dir)
    result = {"environment": environment(torch.device("cpu"), torch.float32),
              "config": {k: v for k, v in vars(args).items() if k not in ("data_dir", "out", "metric")}
              | {"teacher": Path(args.teacher).parent.name if args.teacher else None}, **result}
    out = Path(args.out) if args.out else RESULTS / f"fd-references-{args.dataset}.json"
    write_json(out, result)
    out.with_suffix(".md").write_text(table(result) + "\n")
    print(table(result))
    return result


if __name__ == "__main__":
    main()
