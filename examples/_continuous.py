"""Continuous-time consistency training and distillation for train_consistency_model.py (``--objective continuous``).

One step (METHOD.md Sec. 5b; sCM: Lu & Song 2024, in EDM's sigma):

    sigma ~ exp(N(p_mean, p_std^2)),  x = x0 + sigma eps                 one noise level per sample
    v = eps  (training)  or  (x - D_teacher(x, sigma)) / sigma  (--teacher: distillation)
    loss = continuous_consistency_loss(D_theta, x, sigma, v, MFD or None)  one JVP (no grad) + one forward

``--loss mfd`` takes the tangent in the MFD's feature space, ``--loss l2`` in pixel space (the sCM-style
counterpart); the other losses have no continuous-time form here. The logged loss (``loss``, and
``weighted_distance``) and the evaluation's ``tangent_speed`` are mean_b ||T_b||: how fast Phi(D_theta) still
moves along the ODE per unit sigma, 0 for an exact consistency model.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from mfd_loss import MFD
from mfd_loss.consistency import TANGENT_C, ContinuousConsistencyLoss, sample_noise_levels, teacher_velocity

OBJECTIVES = ("discrete", "continuous")
CONTINUOUS_LOSSES = ("mfd", "l2")
IDENTITY = ("objective", "tangent_c")


def add_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("continuous time (METHOD.md Sec. 5b)")
    g.add_argument("--objective", choices=OBJECTIVES, default="discrete",
                   help="discrete: ECT/AYT pairs (t, r); continuous: the JVP-based objective along the ODE "
                        "(--loss mfd in feature space, --loss l2 in pixel space)")
    g.add_argument("--tangent-c", type=float, default=TANGENT_C,
                   help="continuous: the tangent normalisation T / (rms(T) + c)")


def check_args(args: argparse.Namespace) -> None:
    """Options that do not go together, and a resume under the other objective (ValueError)."""
    if args.objective == "continuous" and args.loss not in CONTINUOUS_LOSSES:
        raise ValueError(f"--objective continuous takes --loss mfd (feature space) or --loss l2 (pixel space), "
                         f"not {args.loss!r}")
    saved = Path(args.out) / "args.json"
    if args.resume and saved.is_file():
        before = json.loads(saved.read_text()).get("objective", "discrete")
        if before != args.objective:
            raise ValueError(f"{args.out} was trained with --objective {before}; resume it with that objective, "
                             "or choose another --out")


def build_loss(args: argparse.Namespace, device: torch.device) -> ContinuousConsistencyLoss:
    """The objective of the flags: feature space of the --mfd-pretrained map, or pixel space."""
    distance = None
    if args.loss == "mfd":
        distance = MFD(pretrained=args.mfd_pretrained or args.dataset)
        if args.mfd_init == "random":
            from mfd_loss.diagnostics import random_init_like

            distance = random_init_like(distance, seed=0)
    return ContinuousConsistencyLoss(distance, c=args.tangent_c).to(device)


def step_and_eval(args: argparse.Namespace, session: Any, teacher: torch.nn.Module | None,
                  pairs: tuple[Tensor, ...]) -> tuple[Callable, Callable[[], dict[str, float]]]:
    """``step_loss`` for :meth:`Session.train` and the evaluation's ``tangent_speed`` on fixed pairs."""
    device, model = session.device, session.model
    loss_fn = build_loss(args, device)

    def step_loss(x0: Tensor, gen: torch.Generator, step: int) -> tuple[Tensor, Tensor]:
        sigma = session.mine(sample_noise_levels(args.batch_size, gen, args.p_mean, args.p_std))
        eps = session.mine(torch.randn(x0.shape, generator=gen))
        x = session.mine(x0) + sigma[:, None, None, None] * eps
        velocity = eps if teacher is None else teacher_velocity(teacher, x, sigma)
        with torch.autocast(device.type, dtype=session.amp or torch.float32, enabled=session.amp is not None):
            out = loss_fn(session.ddp, x, sigma, velocity)
        return out.loss, out.tangent_norm

    def tangent_speed() -> dict[str, float]:
        x0, t, _, eps = pairs
        x = x0 + t[:, None, None, None] * eps
        velocity = eps if teacher is None else teacher_velocity(teacher, x, t)
        was_training = model.training
        model.eval()
        value = float(loss_fn(model, x, t, velocity).tangent_norm.mean())
        model.train(was_training)
        return {"tangent_speed": value}

    return step_loss, tangent_speed
