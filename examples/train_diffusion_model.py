"""Train an EDM denoiser (a diffusion model) on CIFAR-10 or MNIST: the pretrained model consistency tuning and
consistency distillation start from.

One training step (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models",
EDM, Sec. 5 and Table 1):

    sigma ~ exp(N(-1.2, 1.2^2)),  x = x0 + sigma n                       n ~ N(0, I)
    D = D_theta(x, sigma)                                                 the same preconditioning and U-Net as
                                                                          train_consistency_model.py
    loss = mean_b lambda(sigma_b) mean_pixels (D_b - x0_b)^2,  lambda = (sigma^2 + s_d^2) / (sigma s_d)^2

Samples come from EDM's deterministic Heun sampler (EDM Algorithm 1: 18 noise levels from 80 to 0.002,
rho = 7, 35 network evaluations; mfd_loss.consistency.sampling.heun_sample), graded by the Fréchet distance of
examples/fd_metric.py (FID with Inception weights, else FD_cnn-<dataset>).

On a CPU (the sizes the convergence benchmark uses; see benchmarks/convergence.py):

    OMP_NUM_THREADS=1 python examples/train_diffusion_model.py --out runs/edm-cifar10 --steps 4000 \\
        --batch-size 64 --channels 16 --channel-mult 1,2 --num-blocks 1 --attention none --fd-samples 2000

On 8 GPUs (EDM's CIFAR-10 recipe has batch 512, Adam 1e-3, dropout 0.13, 200 Mimg):

    torchrun --nproc_per_node 8 examples/train_diffusion_model.py --out runs/edm-cifar10 --channels 128 \\
        --channel-mult 2,2,2 --num-blocks 4 --dropout 0.13 --batch-size 512 --steps 400000

Then tune or distil a consistency model from it:

    python examples/train_consistency_model.py --init runs/edm-cifar10/checkpoint.pt ...      (ECT / AYT tuning)
    python examples/train_consistency_model.py --teacher runs/edm-cifar10/checkpoint.pt ...   (distillation)

Rerun with --resume to continue exactly where a run stopped: checkpoint.pt (written atomically) holds the
model, EMA, optimiser, step and training clock, and every random draw of step s (batch, flips, noise levels,
noise, dropout) is seeded from (--seed, s), so the generator states are restored by construction. The
output folder also holds log.jsonl, args.json and samples/step_*_heun.png.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _training  # noqa: E402
from _training import COMMON_IDENTITY, HelpFormatter, Session  # noqa: E402

from mfd_loss.consistency import EDM_P_MEAN, EDM_P_STD, edm_loss_weight, sample_noise_levels  # noqa: E402
from mfd_loss.consistency.sampling import SIGMA_MIN, heun_sample  # noqa: E402

RUN_IDENTITY = COMMON_IDENTITY + ("p_mean", "p_std")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="train_diffusion_model.py", description=__doc__, formatter_class=HelpFormatter,
                                usage="%(prog)s --out DIR [--dataset {cifar10,mnist}] [options]")
    _training.add_common_args(p)
    p.set_defaults(optimizer="adam", lr=1e-3, dropout=0.13, ema_decay=0.999)
    g = p.add_argument_group("EDM schedule and sampler")
    g.add_argument("--p-mean", type=float, default=EDM_P_MEAN, help="mean of ln sigma during training")
    g.add_argument("--p-std", type=float, default=EDM_P_STD, help="std of ln sigma during training")
    g.add_argument("--sampler-steps", type=int, default=18, help="noise levels of the Heun sampler (2n - 1 evaluations)")
    g.add_argument("--sigma-min", type=float, default=SIGMA_MIN, help="last positive noise level of the sampler")
    g.add_argument("--sigma-max", type=float, default=80.0, help="first noise level of the sampler")
    g.add_argument("--rho", type=float, default=7.0, help="curvature of the sampler's noise levels")
    return _training.check_args(p, p.parse_args(argv))


def main(args: argparse.Namespace) -> dict[str, Any]:
    session = Session(args, RUN_IDENTITY, "edm")
    device = session.device

    def step_loss(x0: Tensor, gen: torch.Generator, step: int) -> tuple[Tensor, Tensor]:
        sigma = session.mine(sample_noise_levels(args.batch_size, gen, args.p_mean, args.p_std))
        noise = session.mine(torch.randn(x0.shape, generator=gen))
        x0 = session.mine(x0)
        with torch.autocast(device.type, dtype=session.amp or torch.float32, enabled=session.amp is not None):
            denoised = session.ddp(x0 + sigma[:, None, None, None] * noise, sigma)
        per_sample = edm_loss_weight(sigma, args.sigma_data) * (denoised.float() - x0).square().flatten(1).mean(1)
        return per_sample.mean(), per_sample.detach()

    samplers = {"heun": lambda ema, z, g: heun_sample(ema, z, args.sampler_steps, args.sigma_min, args.sigma_max,
                                                      args.rho)}
    return session.train(step_loss, samplers)


if __name__ == "__main__":
    sys.exit(_training.exit_code(main(parse_args())))
