"""The ``mfd-loss`` console command: ``mfd-loss demo`` and ``mfd-loss train``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence

from . import demo, hub_cli

__all__ = ["main"]


_TRAIN_EPILOG = """examples:
  # the paper's CIFAR-10 recipe (VGG16-BN, 15 labels, batch 512, 400k steps); rerun to resume
  mfd-loss train --data cifar10 --out runs/cifar10
  # a folder of your own 64x64 RGB images, a lighter map, 2% of the images held out for R^2
  mfd-loss train --data path/to/images --size 64 64 --arch vgg11 --width 0.5 --steps 20000 --batch-size 128 --out runs/mine
  # grayscale (MNIST); the preset without colour ops is chosen automatically
  mfd-loss train --data mnist --arch vgg11 --width 0.5 --out runs/mnist
  # latents saved as float32 (N, 4, 32, 32) in roughly [-4, 4]
  mfd-loss train --data latents.npy --input-range -4 4 --out runs/latents
  # 4 GPUs on one node
  torchrun --nproc-per-node 4 -m mfd_loss.cli train --data cifar10 --device cuda --precision bf16 --out runs/c10
"""


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a feature map on your images",
        description="Train a feature map by regressing the parameters of random perturbations (geometric, colour, "
                    "degradation) applied to real images (METHOD.md Sec. 3). The run folder receives checkpoint.pt "
                    "(atomic, every --checkpoint-every steps), log.csv, eval.csv (per-label R^2 on held-out images) "
                    "and, at the end, model.safetensors + config.json: load them with MFD(pretrained=RUN_FOLDER). "
                    "Rerunning the same command resumes exactly where it stopped.",
        epilog=_TRAIN_EPILOG,
        formatter_class=_HelpFormatter,
    )
    data = p.add_argument_group("data")
    data.add_argument("--data", required=True, help="cifar10 | mnist (project archives) | torchvision:NAME | a folder "
                                                    "of images | a .npy/.npz file of images")
    data.add_argument("--eval-data", default=None, help="held-out images (same forms); default: the test split of "
                                                        "cifar10/mnist, else --eval-fraction of --data")
    data.add_argument("--eval-fraction", type=float, default=0.02, help="share of --data held out when there is no --eval-data")
    data.add_argument("--data-dir", default=None, help="where cifar10/mnist archives or torchvision data sets live")
    data.add_argument("--download", action="store_true", help="let torchvision download its data set (needs internet)")
    data.add_argument("--input-range", type=float, nargs=2, metavar=("LOW", "HIGH"), default=None,
                      help="value range of float data (uint8 data is [0, 255]); mapped to [-1, 1]")
    data.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=None, help="resize folder images to H x W")
    data.add_argument("--channels", type=int, choices=[1, 3], default=None, help="decode folder images as 1 or 3 channels")
    data.add_argument("--key", default=None, help="array name inside an .npz file")
    data.add_argument("--layout", choices=["auto", "nchw", "nhwc"], default="auto", help="axis order of array files")
    data.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes")
    model = p.add_argument_group("feature map")
    model.add_argument("--arch", default="vgg16", choices=["vgg11", "vgg13", "vgg16", "vgg19", "resnet10", "resnet18", "resnet34"],
                       help="network family and depth")
    model.add_argument("--width", type=float, default=1.0, help="channel multiplier (0.5 = half width)")
    model.add_argument("--spec", default="auto", help="perturbations: auto (by channel count) | all | geometric | "
                                                      "geometric+colour | geometric+degradation | degradation | "
                                                      "grayscale | comma-separated op names")
    recipe = p.add_argument_group("recipe")
    recipe.add_argument("--steps", type=int, default=400_000, help="optimiser steps (may be raised when resuming)")
    recipe.add_argument("--batch-size", type=int, default=512, help="images per step, over all processes")
    recipe.add_argument("--lr", type=float, default=1e-4, help="RAdam learning rate")
    recipe.add_argument("--p-max", type=float, default=0.15, help="final per-op perturbation probability")
    recipe.add_argument("--ramp-steps", type=int, default=50_000, help="steps of the linear 0 -> p-max ramp")
    recipe.add_argument("--seed", type=int, default=0, help="seed of initialisation, data order and perturbations")
    recipe.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32", help="autocast precision (GPU)")
    run = p.add_argument_group("run")
    run.add_argument("--out", required=True, help="run folder")
    run.add_argument("--eval-every", type=int, default=1000, help="steps between held-out evaluations (0: end only)")
    run.add_argument("--eval-size", type=int, default=2000, help="held-out images per evaluation")
    run.add_argument("--checkpoint-every", type=int, default=500, help="steps between checkpoints")
    run.add_argument("--max-minutes", type=float, default=None, help="stop with a checkpoint after this long; rerun to resume")
    run.add_argument("--device", default="cpu", help="cpu | cuda (under torchrun: one GPU per process)")
    run.add_argument("--export-dtype", default="float32", choices=["float32", "float16"], help="storage dtype of the exported weights")
    run.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint and start over")
    run.add_argument("--push-to-hub", default=None, metavar="ORG/REPO",
                     help="when training finishes, publish the exported map to this Hugging Face Hub repo")
    p.set_defaults(func=_run_train)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def _run_train(args: argparse.Namespace) -> int:
    import torch

    from .feature_maps import FeatureMapConfig
    from .perturbations import PRESETS
    from .trainer import TrainConfig, train_feature_map

    spec = args.spec if args.spec == "auto" or args.spec in PRESETS else [s.strip() for s in args.spec.split(",") if s.strip()]
    config = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, p_max=args.p_max,
                         ramp_steps=args.ramp_steps, spec=spec, seed=args.seed, eval_every=args.eval_every,
                         eval_size=args.eval_size, eval_fraction=args.eval_fraction,
                         checkpoint_every=args.checkpoint_every, precision=args.precision)
    eval_data = args.eval_data or (args.data if args.data in ("cifar10", "mnist") else None)
    dataset = {"name": args.data, "split": "train", "eval": eval_data or f"{args.eval_fraction:.0%} of --data held out"}
    source_kwargs = {"root": args.data_dir, "download": args.download, "channels": args.channels,
                     "size": tuple(args.size) if args.size else None, "key": args.key, "layout": args.layout}
    _, summary = train_feature_map(
        args.data, args.out, config=config, architecture=FeatureMapConfig(arch=args.arch, width=args.width),
        eval_data=eval_data, input_range=tuple(args.input_range) if args.input_range else None,
        resume=not args.no_resume, max_minutes=args.max_minutes, device=args.device, num_workers=args.num_workers,
        dataset=dataset, export_dtype=getattr(torch, args.export_dtype), source_kwargs=source_kwargs,
    )
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({k: v for k, v in summary.items() if k != "metrics"}))
        if not summary["finished"]:
            print(f"stopped at step {summary['step']}; rerun the same command to resume", file=sys.stderr)
        elif args.push_to_hub:
            from .hub import push_folder

            commit = push_folder(args.out, args.push_to_hub)
            print(json.dumps({"pushed": args.push_to_hub, "revision": getattr(commit, "oid", None)}))
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
    p.add_argument("--data", default=None, help="evaluate on these held-out images (cifar10 / mnist: their test split; "
                                                "or a folder / array file of uint8 images)")
    p.add_argument("--data-dir", default=None, help="folder holding cifar10/ and mnist/")
    p.add_argument("--dtype", default="float16", choices=["float32", "float16"], help="storage dtype")
    p.add_argument("--note", action="append", default=None, help="a remark stored in config.json and the model card (repeatable)")
    p.set_defaults(func=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    import torch

    from .image_sources import collate_images, open_image_source
    from .trainer import export_run

    eval_images, eval_name = None, None
    if args.data:
        held_out = open_image_source(args.data, split="test", root=args.data_dir)
        eval_images = collate_images([held_out[i] for i in range(len(held_out))])
        eval_name = f"{args.data} test split, {eval_images.shape[0]} images"
    config = export_run(args.run, args.out, dtype=getattr(torch, args.dtype), eval_images=eval_images,
                        eval_name=eval_name, notes=args.note)
    print(json.dumps(config.get("metrics", {}), indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mfd-loss`` command."""
    parser = argparse.ArgumentParser(prog="mfd-loss", description="Manifold Feature Distance tools")
    sub = parser.add_subparsers(dest="command", required=True)
    demo.add_parser(sub)
    hub_cli.add_parsers(sub)
    _add_train(sub)
    _add_export(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
