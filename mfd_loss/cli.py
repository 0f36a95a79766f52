"""The ``mfd-loss`` console command: ``mfd-loss demo`` and ``mfd-loss train``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from . import demo

__all__ = ["main"]


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a feature map on an image data set",
        description="Train a feature map by regressing the parameters of random perturbations applied to real "
                    "images (METHOD.md Sec. 3). Checkpoints every --checkpoint-every steps; rerunning the same "
                    "command resumes exactly where it stopped. On completion the folder holds model.safetensors "
                    "and config.json, loadable with MFD(pretrained=FOLDER).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--data", choices=["cifar10", "mnist"], default="cifar10", help="training data set")
    p.add_argument("--data-dir", default=None, help="folder holding cifar10/ and mnist/ (default: $MFD_DATA_DIR or ../shared/data)")
    p.add_argument("--out", required=True, help="run folder (checkpoint, log.jsonl, exported weights)")
    p.add_argument("--arch", default="vgg16", choices=["vgg11", "vgg13", "vgg16", "vgg19"], help="VGG-BN conv plan")
    p.add_argument("--width", type=float, default=1.0, help="channel multiplier (0.5 = half width)")
    p.add_argument("--spec", default="all", help="perturbation preset (all, geometric, geometric+colour, "
                                                 "geometric+degradation, degradation) or comma-separated op names")
    p.add_argument("--steps", type=int, default=400_000, help="optimiser steps")
    p.add_argument("--batch-size", type=int, default=512, help="images per step")
    p.add_argument("--lr", type=float, default=1e-4, help="RAdam learning rate")
    p.add_argument("--p-max", type=float, default=0.15, help="final per-op perturbation probability")
    p.add_argument("--ramp-steps", type=int, default=50_000, help="steps of the linear 0 -> p-max ramp")
    p.add_argument("--seed", type=int, default=0, help="seed of initialisation, data order and perturbations")
    p.add_argument("--eval-every", type=int, default=1000, help="steps between held-out evaluations (0: end only)")
    p.add_argument("--eval-size", type=int, default=2000, help="held-out images per evaluation")
    p.add_argument("--checkpoint-every", type=int, default=500, help="steps between checkpoints")
    p.add_argument("--max-minutes", type=float, default=None, help="stop with a checkpoint after this long; rerun to resume")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--export-dtype", default="float32", choices=["float32", "float16"], help="storage dtype of the exported weights")
    p.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint and start over")
    p.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    import torch

    from .datasets import load_cifar10, load_mnist
    from .feature_maps import FeatureMapConfig
    from .trainer import TrainConfig, train_feature_map

    loader = {"cifar10": load_cifar10, "mnist": load_mnist}[args.data]
    train_images, _ = loader("train", args.data_dir)
    eval_images, _ = loader("test", args.data_dir)
    spec = args.spec if args.spec in ("all", "geometric", "geometric+colour", "geometric+degradation", "degradation") \
        else [s.strip() for s in args.spec.split(",") if s.strip()]
    config = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, p_max=args.p_max,
                         ramp_steps=args.ramp_steps, spec=spec, seed=args.seed, eval_every=args.eval_every,
                         eval_size=args.eval_size, checkpoint_every=args.checkpoint_every)
    dataset = {"name": args.data, "split": "train", "num_images": int(train_images.shape[0]),
               "eval_split": "test", "source": "mfd-loss shared data archives"}
    _, summary = train_feature_map(
        train_images, args.out, config=config, architecture=FeatureMapConfig(arch=args.arch, width=args.width),
        eval_images=eval_images, resume=not args.no_resume, max_minutes=args.max_minutes, device=args.device,
        dataset=dataset, export_dtype=getattr(torch, args.export_dtype),
    )
    print(json.dumps({k: v for k, v in summary.items() if k != "metrics"}))
    if not summary["finished"]:
        print(f"stopped at step {summary['step']}; rerun the same command to resume", file=sys.stderr)
    return 0


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a training run's checkpoint as model.safetensors + config.json",
        description="Export the model in RUN/checkpoint.pt (finished or not) to OUT, evaluating per-label R^2 on "
                    "the whole held-out split of --data when given.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("run", help="run folder holding checkpoint.pt")
    p.add_argument("out", help="destination folder")
    p.add_argument("--data", choices=["cifar10", "mnist"], default=None, help="evaluate on this data set's test split")
    p.add_argument("--data-dir", default=None, help="folder holding cifar10/ and mnist/")
    p.add_argument("--dtype", default="float16", choices=["float32", "float16"], help="storage dtype")
    p.set_defaults(func=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    import torch

    from .datasets import load_cifar10, load_mnist
    from .trainer import export_run

    eval_images, eval_name = None, None
    if args.data:
        eval_images, _ = {"cifar10": load_cifar10, "mnist": load_mnist}[args.data]("test", args.data_dir)
        eval_name = f"{args.data} test split, {eval_images.shape[0]} images"
    config = export_run(args.run, args.out, dtype=getattr(torch, args.dtype), eval_images=eval_images,
                        eval_name=eval_name)
    print(json.dumps(config.get("metrics", {}), indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mfd-loss`` command."""
    parser = argparse.ArgumentParser(prog="mfd-loss", description="Manifold Feature Distance tools")
    sub = parser.add_subparsers(dest="command", required=True)
    demo.add_parser(sub)
    _add_train(sub)
    _add_export(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
