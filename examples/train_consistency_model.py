"""Consistency training (ECT-style) with the AYT tangent loss or a baseline loss, on CIFAR-10 or MNIST.

One training step (METHOD.md Sec. 5; Geng et al. 2024 ECT; Kim, Cha & Ye 2025 AYT):

    t ~ exp(N(-1.1, 2.0^2)),  r = r_from_t(t)                         noise levels of the pair
    x_t = x0 + t eps,  x_r = x0 + r eps                                same eps
    D_t = D_theta(x_t, t)            (with grad)                       EDM-preconditioned U-Net
    D_r = D_theta(x_r, r)            (no grad, same dropout mask)      x0 where r = 0
    loss = objective(D_t, D_r, w = 1 / (t - r))                        --loss mfd | lpips | pseudo-huber | l2

Consistency tuning (ECT, AYT) starts from a pretrained EDM denoiser of examples/train_diffusion_model.py:
pass --init runs/edm-cifar10/checkpoint.pt. Consistency distillation (Song et al. 2023) replaces the shared
noise by a teacher's ODE step: with --teacher PATH, x_r = one Heun (or --teacher-solver euler) step of the
teacher from x_t at t to r, and D_r = D_theta(x_r, r) under stop-gradient.

--objective continuous trains the continuous-time consistency model of METHOD.md Sec. 5b instead (one JVP of
D_theta and the MFD along the ODE per step, no second noise level; --loss mfd or l2; see examples/_continuous.py).

Quick run on a CPU (a tiny U-Net and a tiny feature map; ~0.45 CPU-seconds per step with --loss mfd):

    mfd-loss train --data cifar10 --out runs/fmap-tiny --arch vgg11 --width 0.125 --steps 300 --batch-size 64
    python benchmarks/fd_classifier.py --dataset cifar10 --out runs/fd-cifar10
    OMP_NUM_THREADS=1 python examples/train_consistency_model.py --out runs/ct-mfd --loss mfd \\
        --mfd-pretrained runs/fmap-tiny --steps 200 --batch-size 16 --channels 16 --channel-mult 1,2 \\
        --num-blocks 1 --attention none --optimizer adam --lr 1e-3 --ema-decay 0.99 --eval-every 100 \\
        --fd-samples 500 --fd-real 2000

Full scale (the paper's recipe: batch 128, RAdam 1e-4, EMA 0.9999, 400k iterations) on 8 GPUs:

    torchrun --nproc_per_node 8 examples/train_consistency_model.py --out runs/ct-mfd --loss mfd \\
        --channels 128 --channel-mult 2,2,2 --num-blocks 4 --dropout 0.2 --steps 400000 --batch-size 128 \\
        --fd-samples 50000

Rerun with --resume to continue exactly where a run stopped.
The output folder holds checkpoint.pt, log.jsonl, args.json and samples/step_*_{1,2}step.png.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _continuous  # noqa: E402
import _training  # noqa: E402
from _training import COMMON_IDENTITY, HelpFormatter, Session, load_denoiser, same_dropout, seeded  # noqa: E402

from mfd_loss.consistency import (  # noqa: E402
    EDMDenoiser, consistency_weight, distillation_target, one_step_sample, r_from_t, sample_noise_levels,
    two_step_sample,
)
from mfd_loss.consistency import OBJECTIVES, build_objective  # noqa: E402
from mfd_loss.consistency.sampling import SOLVERS  # noqa: E402

# Arguments that define a run: resuming with a different value is an error (steps and eval settings may change).
RUN_IDENTITY = COMMON_IDENTITY + (
    "loss", "direction", "blend", "ramp_steps", "mfd_pretrained", "mfd_distance", "mfd_init", "lpips_net", "huber_c",
    "p_mean", "p_std", "q", "k", "b", "stage", "teacher", "teacher_solver")


def _huber_c(text: str) -> float | None:
    return None if text == "ict" else float(text)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="train_consistency_model.py", description=__doc__, formatter_class=HelpFormatter,
        usage="%(prog)s --out DIR [--loss {mfd,lpips,pseudo-huber,l2}] [--direction {normalized,raw}] [options]")
    _training.add_common_args(p)

    g = p.add_argument_group("loss")
    g.add_argument("--loss", choices=sorted(OBJECTIVES), default="mfd",
                   help="mfd: AYT tangent loss of the Manifold Feature Distance; lpips: the same with LPIPS; "
                        "pseudo-huber: ECT's loss (c = --huber-c); l2: mean squared error")
    g.add_argument("--direction", choices=["normalized", "raw"], default="normalized",
                   help="tangent loss direction: unit gradient per sample (AYT) or the raw feature-distance gradient "
                        "(the gradient of w * d itself: the distance used as a plain loss value)")
    g.add_argument("--blend", type=float, default=None, metavar="LAMBDA",
                   help="train on pseudo-Huber(c=0) + LAMBDA * ramp * tangent loss instead of the tangent loss alone")
    g.add_argument("--ramp-steps", type=int, default=5000, help="length of the --blend ramp in steps")
    g.add_argument("--mfd-pretrained", default=None, metavar="NAME_OR_PATH",
                   help="MFD feature map: a registered name or a folder with model.safetensors + config.json "
                        "(default: the shipped map of --dataset, 'cifar10' or 'mnist')")
    g.add_argument("--mfd-distance", choices=["group", "squared"], default="group", help="MFD form")
    g.add_argument("--mfd-init", choices=["pretrained", "random"], default="pretrained",
                   help="random: the --mfd-pretrained architecture untrained (seed 0), the control for a learned map")
    g.add_argument("--lpips-net", choices=["vgg", "alex", "squeeze"], default="vgg", help="LPIPS backbone")
    g.add_argument("--huber-c", type=_huber_c, default=0.0, metavar="C",
                   help="pseudo-Huber constant: a number (0 = ECT's L2 norm) or 'ict' for 0.00054*sqrt(d)")

    g = p.add_argument_group("consistency distillation")
    g.add_argument("--teacher", default=None, metavar="PATH",
                   help="distil from this denoiser checkpoint (train_diffusion_model.py): the target is the model "
                        "at the teacher's ODE step from t to r instead of at x0 + r eps")
    g.add_argument("--teacher-solver", choices=SOLVERS, default="heun", help="the teacher's ODE step")

    g = p.add_argument_group("ECT schedule (defaults: the AYT / ECT CIFAR-10 setting)")
    g.add_argument("--p-mean", type=float, default=-1.1, help="mean of ln t")
    g.add_argument("--p-std", type=float, default=2.0, help="std of ln t")
    g.add_argument("--q", type=float, default=256.0, help="t -> r gap factor q")
    g.add_argument("--k", type=float, default=8.0, help="t -> r sigmoid height k")
    g.add_argument("--b", type=float, default=1.0, help="t -> r sigmoid slope b")
    g.add_argument("--stage", type=int, default=0, help="ECT stage (AYT keeps 0)")
    g.add_argument("--sigma-max", type=float, default=80.0, help="noise level of the first sampling step")
    g.add_argument("--sigma-mid", type=float, default=0.821, help="noise level of the second sampling step")
    _continuous.add_args(p)
    return _training.check_args(p, p.parse_args(argv))


# ------------------------------------------------------------------------------------------- evaluation
def fixed_pairs(args, images: Tensor, device: torch.device, n: int = 64) -> tuple[Tensor, ...]:
    """A fixed batch of (x0, t, r, eps) for a noise-free measure of progress (the same at every evaluation)."""
    gen = seeded(args.seed, 9)
    idx = torch.randperm(images.shape[0], generator=gen)[:n]
    x0 = images[idx].float() / 127.5 - 1.0
    t = sample_noise_levels(x0.shape[0], gen, args.p_mean, args.p_std)
    eps = torch.randn(x0.shape, generator=gen)
    r = r_from_t(t, args.q, args.k, args.b, args.stage)
    return x0.to(device), t.to(device), r.to(device), eps.to(device)


def consistency_gap(model: EDMDenoiser, objective: torch.nn.Module, pairs: tuple[Tensor, ...]) -> float:
    """mean_b w_b d(D_t,b, D_r,b) on the fixed pairs, dropout off: the objective's own distance, deterministic."""
    x0, t, r, eps = pairs
    was_training = model.training
    model.eval()
    with torch.no_grad():
        d_t = model(x0 + t[:, None, None, None] * eps, t)
        d_r = torch.where((r > 0)[:, None, None, None], model(x0 + r[:, None, None, None] * eps, r), x0)
        weight = consistency_weight(t, r)
        value = float((weight * objective(d_t, d_r, weight).distance).mean())
    model.train(was_training)
    return value


# ---------------------------------------------------------------------------------------------- training
def main(args: argparse.Namespace) -> dict[str, Any]:
    _continuous.check_args(args)
    if args.objective == "continuous":  # METHOD.md Sec. 5b: one JVP along the ODE instead of a pair (t, r)
        session = Session(args, RUN_IDENTITY + _continuous.IDENTITY, f"{args.loss} (continuous)")
        teacher = load_denoiser(args.teacher, session.channels, session.device) if args.teacher else None
        step_loss, speed = _continuous.step_and_eval(args, session, teacher, fixed_pairs(args, session.images,
                                                                                         session.device))
        return session.train(step_loss, samplers(args), extra_eval=speed)
    session = Session(args, RUN_IDENTITY, args.loss)
    device, model = session.device, session.model
    objective = build_objective(args.loss, direction=args.direction, blend=args.blend, ramp_steps=args.ramp_steps,
                                mfd_pretrained=args.mfd_pretrained or args.dataset, mfd_distance=args.mfd_distance,
                                mfd_init=args.mfd_init, lpips_net=args.lpips_net, huber_c=args.huber_c).to(device)
    teacher = load_denoiser(args.teacher, session.channels, device) if args.teacher else None

    def step_loss(x0: Tensor, gen: torch.Generator, step: int) -> tuple[Tensor, Tensor]:
        # noise levels and noise of the global batch (independent of the number of processes), then my slice
        t = session.mine(sample_noise_levels(args.batch_size, gen, args.p_mean, args.p_std))
        eps = session.mine(torch.randn(x0.shape, generator=gen))
        x0 = session.mine(x0)
        r = r_from_t(t, args.q, args.k, args.b, args.stage)
        weight = consistency_weight(t, r)
        x_t = x0 + t[:, None, None, None] * eps
        with torch.autocast(device.type, dtype=session.amp or torch.float32, enabled=session.amp is not None):
            with same_dropout(device):
                d_t = session.ddp(x_t, t)
            if teacher is None:  # consistency training: the same noise at the smaller level, x0 at r = 0
                with torch.no_grad():
                    d_r = model(x0 + r[:, None, None, None] * eps, r)
                d_r = torch.where((r > 0)[:, None, None, None], d_r, x0)
            else:  # distillation: where the teacher's ODE step from x_t lands (same dropout mask in the student)
                d_r = distillation_target(model, teacher, x_t, t, r, args.teacher_solver)
            result = objective(d_t, d_r, weight, step)
        return result.loss, weight * result.distance

    pairs = fixed_pairs(args, session.images, device)
    return session.train(step_loss, samplers(args),
                         extra_eval=lambda: {"consistency_gap": consistency_gap(model, objective, pairs)})


def samplers(args: argparse.Namespace) -> dict[str, _training.Sampler]:
    """The 1-step and 2-step consistency samplers the evaluations use."""
    return {
        "1step": lambda ema, z, g: one_step_sample(ema, z, args.sigma_max),
        "2step": lambda ema, z, g: two_step_sample(ema, z, args.sigma_max, args.sigma_mid, generator=g),
    }


if __name__ == "__main__":
    sys.exit(_training.exit_code(main(parse_args())))
