"""``mfd-loss demo``: what MFD does on real CIFAR-10 images, next to L2 and pseudo-Huber, in seconds.

Each row displaces real test images by a small residual of one kind, rescaled so that every kind has the
same pixel RMS: residuals of nuisance transformations (sub-pixel shift, rotation, brightness, contrast,
hue) stay close to the data manifold (tangent directions), while Gaussian noise, blur and mixing in another
image leave it. A pixel loss cannot tell them apart at equal RMS; MFD can. The last part splits the
gradient of each loss for a prediction displaced equally along a tangent and off the manifold.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import replace

import torch
from torch import Tensor

from .datasets import load_sample_images, to_model_range
from .diagnostics import loss_gradient, parallel_energy_fraction
from .loss import ManifoldFeatureDistance
from .perturbations import Perturbations

__all__ = ["run_demo"]

_KINDS = {  # name -> (perturbation op, family, field, fixed value, on-manifold?)
    "shift 0.5 px": ("translation", "geometric", "shift", (0.125, 0.0), True),
    "rotation 5 deg": ("rotation", "geometric", "theta", math.radians(5), True),
    "brightness": ("brightness", "colour", "brightness_w", 0.5, True),
    "contrast": ("contrast", "colour", "contrast_w", 0.3, True),
    "hue 10 deg": ("hue", "colour", "hue_theta", math.radians(10), True),
    "gaussian noise": ("noise", "degradation", "noise_std", 0.1, False),
    "blur sigma 0.8": ("blur", "degradation", "blur_sigma", 0.8, False),
    "mixup": ("mixup", "degradation", "mixup_lambda", 0.2, False),
}


def _rms(x: Tensor) -> Tensor:
    return x.flatten(1).pow(2).mean(1).sqrt()


def matched_residual(x: Tensor, kind: str, rms: float, generator: torch.Generator) -> Tensor:
    """Residual of the named perturbation (fixed strength, see ``_KINDS``) on x (N, C, H, W), rescaled to
    pixel RMS ``rms`` per sample."""
    op, family, field, value, _ = _KINDS[kind]
    pert = Perturbations([op], p=1.0)
    params = pert.sample(tuple(x.shape), generator=generator)
    group = getattr(params, family)
    current = getattr(group, field)
    fixed = torch.tensor(value, dtype=current.dtype).expand_as(current).clone()
    params = replace(params, **{family: replace(group, **{field: fixed})})
    residual = pert.apply(x, params) - x
    return residual * (rms / _rms(residual).clamp_min(1e-12))[:, None, None, None]


def pseudo_huber(x: Tensor, y: Tensor) -> Tensor:
    """iCT pseudo-Huber sqrt(||x - y||^2 + c^2) - c with c = 0.00054 sqrt(d), per sample (Song & Dhariwal 2023)."""
    c = 0.00054 * math.sqrt(x[0].numel())
    return torch.sqrt((x - y).flatten(1).pow(2).sum(1) + c**2) - c


def run_demo(pretrained: str = "cifar10", num_images: int = 16, rms: float = 0.05, seed: int = 0) -> str:
    """Build the demo report (a text table) and return it."""
    loss_fn = ManifoldFeatureDistance(pretrained=pretrained)
    images, _ = load_sample_images()
    x = to_model_range(images[:num_images])
    g = torch.Generator().manual_seed(seed)
    lines = [f"{num_images} real CIFAR-10 test images; every residual rescaled to pixel RMS {rms} "
             f"(in [-1, 1] units); feature map: {pretrained}", ""]
    lines.append(f"{'residual kind':<16}{'manifold':>9}{'L2^2':>10}{'pseudo-Huber':>14}{'MFD':>10}{'MFD / L2^2':>12}")
    residuals, scores = {}, {True: [], False: []}
    for name, (*_, on_manifold) in _KINDS.items():
        r = matched_residual(x, name, rms, g)
        residuals[name] = r
        l2 = (r.flatten(1).pow(2).sum(1)).mean().item()
        ph = pseudo_huber(x + r, x).mean().item()
        mfd = loss_fn(x + r, x).mean().item()
        scores[on_manifold].append(mfd)
        lines.append(f"{name:<16}{'on' if on_manifold else 'off':>9}{l2:>10.3f}{ph:>14.3f}{mfd:>10.2f}{mfd / l2:>12.2f}")
    ratio = (sum(scores[False]) / len(scores[False])) / (sum(scores[True]) / len(scores[True]))
    lines += ["", f"At equal pixel error, MFD of the off-manifold residuals is {ratio:.2f}x that of the on-manifold "
              "ones (L2 and pseudo-Huber: 1.00x)."]
    lines += ["", "Gradient split: prediction = target + tangent residual (shift) + off-manifold residual (noise),",
              "both of equal RMS. Share of the descent direction's energy along each (L2 splits ~50/50):", ""]
    tangent, normal = residuals["shift 0.5 px"], residuals["gaussian noise"]
    prediction = x + tangent + normal
    losses = {"L2": lambda p, t: (p - t).flatten(1).pow(2).sum(1), "pseudo-Huber": pseudo_huber, "MFD": loss_fn}
    lines.append(f"{'loss':<14}{'along tangent':>15}{'along noise':>13}{'elsewhere':>11}")
    for name, fn in losses.items():
        grad = loss_gradient(fn, prediction, x)
        # span{tangent, noise} = span{tangent, noise orthogonalised against it}: the noise share is the difference
        along_t = parallel_energy_fraction(grad, tangent[:, None]).mean().item()
        along_both = parallel_energy_fraction(grad, torch.stack([tangent, normal], dim=1)).mean().item()
        lines.append(f"{name:<14}{along_t:>15.1%}{along_both - along_t:>13.1%}{1 - along_both:>11.1%}")
    return "\n".join(lines)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="show MFD next to L2 and pseudo-Huber on real CIFAR-10 images",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pretrained", default="cifar10", help="registered name or folder of the feature map")
    p.add_argument("--num-images", type=int, default=16, help="how many of the 64 packaged test images to use")
    p.add_argument("--rms", type=float, default=0.05, help="pixel RMS of every residual, in [-1, 1] units")
    p.add_argument("--seed", type=int, default=0, help="seed of the perturbations")
    p.set_defaults(func=lambda args: print(run_demo(args.pretrained, args.num_images, args.rms, args.seed)) or 0)
