"""The ``mfd-loss`` console command: ``demo``, ``train``, ``export``, ``download``, ``push`` and ``info``.

User errors (a bad value, a missing file or data set, an unreachable Hub, ...) are reported by :func:`main`
for every command in one line on stderr with exit code 2; ``--debug`` shows the traceback instead. Ctrl-C
exits with 130. An interrupted ``train`` (SIGINT/SIGTERM) writes its checkpoint and exits with 128 + the
signal number (130/143), so a scheduler sees that the run did not finish.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
import warnings
from typing import Any, Sequence

from . import demo, hub as hub_cli
from ..training.interrupt import exit_status

__all__ = ["main", "build_parser", "train_settings"]



def _documentation() -> str:
    """Where a user of the installed package reads the docs: the package's Documentation URL when its metadata
    has one (``[project.urls]``), else the docs/ folder of the source distribution (a wheel holds no docs/)."""
    from importlib.metadata import PackageNotFoundError, metadata

    try:
        urls = metadata("mfd-loss").get_all("Project-URL") or []
    except PackageNotFoundError:
        urls = []
    found = [u.split(",", 1)[1].strip() for u in urls if u.lower().startswith("documentation,")]
    return found[0] if found else "the docs/ folder of the mfd-loss source distribution (pip download --no-binary :all: mfd-loss)"


DOCS_HOME = _documentation()
DOCS = DOCS_HOME if DOCS_HOME.startswith("http") else "docs/training.md of the mfd-loss source distribution"

# Errors that mean "the user asked for something that cannot be done", not a bug: reported in one line.
# OSError covers FileNotFoundError, PermissionError, ConnectionError and huggingface_hub's HTTP errors.
USER_ERRORS = (ValueError, KeyError, OSError, ImportError)  # ImportError: an optional extra is missing


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps descriptions and epilogs as written and appends ``(default: X)`` once, only when the option has a
    real default (not None/False) and its help does not state one itself."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        unset = action.default is None or action.default is False or action.default is argparse.SUPPRESS
        if not unset and "default" not in text.lower() and action.option_strings and action.nargs != 0:
            text += " (default: %(default)s)"
        return text


def _recipe_lines() -> str:
    """One line per named recipe (--recipe), from the registry itself, so that none is left out."""
    from ..training import RECIPES, recipe_settings

    lines = []
    for name in RECIPES:
        r = recipe_settings(name)
        decay = f", lr decays over the last {r['lr_decay_fraction']:.0%}" if r["lr_decay_fraction"] else ""
        lines.append(f"  {name:<9}{r['arch']} width {r['width']:g}, batch {r['batch_size']}, {r['steps']:,} "
                     f"steps, lr {r['lr']:g}{decay}, {r['precision']}")
    return "\n".join(lines)


_TRAIN_EPILOG = f"""recipes (--recipe; any flag given explicitly overrides the recipe's value):
{_recipe_lines()}

examples:
  # the paper's recipe on a CUDA GPU (bf16 autocast); rerun the same command to resume
  mfd-loss train --recipe paper --data cifar10 --out runs/cifar10
  # a folder of your own 64x64 RGB images, a lighter map, 2% of the images held out for R^2
  mfd-loss train --data path/to/images --size 64 64 --arch vgg11 --width 0.5 --steps 20000 --batch-size 128 --out runs/mine
  # grayscale (MNIST); the preset without colour ops is chosen automatically
  mfd-loss train --data mnist --arch vgg11 --width 0.5 --out runs/mnist
  # latents saved as float32 (N, 4, 32, 32) in roughly [-4, 4]
  mfd-loss train --data latents.npy --input-range -4 4 --out runs/latents
  # 4 GPUs on one node
  torchrun --nproc-per-node 4 -m mfd_loss.cli train --recipe paper --data cifar10 --out runs/c10

exit status: 0 finished (or stopped by --max-minutes), 2 a user error, 130/143 interrupted by SIGINT/SIGTERM
(checkpoint written; rerun to resume). Guide: {DOCS}
"""

# CLI option -> (TrainConfig field or "arch"/"width", help). Their CLI default is None: the recipe decides.
_RECIPE_OPTIONS = {
    "steps": ("--steps", int, "optimiser steps (may be raised when resuming)"),
    "batch_size": ("--batch-size", int, "images per step, over all processes"),
    "lr": ("--lr", float, "RAdam learning rate"),
    "lr_decay_fraction": ("--lr-decay-fraction", float, "share of --steps at the end over which the learning rate "
                                                         "falls to 0 along a half cosine (0: constant)"),
    "p_max": ("--p-max", float, "final per-op perturbation probability"),
    "ramp_fraction": ("--ramp-fraction", float, "share of --steps over which p rises linearly from 0 to --p-max"),
    "ramp_steps": ("--ramp-steps", int, "an absolute ramp length in steps instead of --ramp-fraction"),
    "seed": ("--seed", int, "seed of initialisation, data order, held-out split and perturbations"),
    "precision": ("--precision", str, "autocast precision (bf16 and fp16 are for GPUs)"),
    "eval_every": ("--eval-every", int, "steps between held-out evaluations (0: at the end only)"),
    "eval_size": ("--eval-size", int, "held-out images per evaluation"),
    "eval_fraction": ("--eval-fraction", float, "share of --data held out when there is no --eval-data"),
    "checkpoint_every": ("--checkpoint-every", int, "steps between checkpoints"),
    "spec": ("--spec", str, "perturbations: auto (by channel count) | all | geometric | geometric+colour | "
                            "geometric+degradation | degradation | grayscale | comma-separated op names"),
    "arch": ("--arch", str, "network family and depth"),
    "width": ("--width", float, "channel multiplier (0.5 = half width)"),
}
_CHOICES = {"precision": ["fp32", "bf16", "fp16"],
            "arch": ["vgg11", "vgg13", "vgg16", "vgg19", "resnet10", "resnet18", "resnet34"]}


def _wrap(text: str) -> str:
    return textwrap.fill(text, width=100)


def _recipe_help(field: str, text: str) -> str:
    from ..training.config import RECIPES, recipe_settings

    values = {name: "unset" if (v := recipe_settings(name)[field]) is None else v for name in RECIPES}
    if len({repr(v) for v in values.values()}) == 1:
        return f"{text} (every recipe: {next(iter(values.values()))})"
    return f"{text} (recipes: " + ", ".join(f"{k} {v}" for k, v in values.items()) + ")"


def _add_train(sub: argparse._SubParsersAction) -> None:
    from ..training.config import RECIPES

    p = sub.add_parser(
        "train",
        help="train a feature map on your images",
        description=_wrap("Train a feature map by regressing the parameters of random perturbations (geometric, colour, "
                    "degradation) applied to real images. The run folder receives checkpoint.pt (atomic, every "
                    "--checkpoint-every steps and when stopped), log.csv, eval.csv (per-label R^2 on held-out "
                    "images) and, at the end, model.safetensors + config.json: load them with "
                    "MFD(pretrained=RUN_FOLDER). Rerunning the same command resumes exactly where it stopped; "
                    f"resuming with other data or another recipe is refused. Guide: {DOCS}"),
        epilog=_TRAIN_EPILOG,
    )
    p.add_argument("--recipe", choices=sorted(RECIPES), default="default",
                   help="named values of the 'feature map' and 'recipe' options (listed at the end)")
    data = p.add_argument_group("data")
    data.add_argument("--data", required=True, help="cifar10 | mnist | tinyimagenet (the project's archives; "
                                                    "cifar10/mnist else torchvision's download) | torchvision:NAME | "
                                                    "a folder of images | a .npy/.npz file of images")
    data.add_argument("--eval-data", default=None, help="held-out images (same forms); default: the test split of "
                                                        "cifar10/mnist/tinyimagenet (its val images), else "
                                                        "--eval-fraction of --data")
    data.add_argument("--data-dir", default=None, help="where cifar10/mnist archives or torchvision data sets live")
    data.add_argument("--download", action="store_true", help="let torchvision:NAME download its data set (needs "
                                                              "internet; cifar10/mnist download when needed)")
    data.add_argument("--input-range", type=float, nargs=2, metavar=("LOW", "HIGH"), default=None,
                      help="value range of float data (uint8 data is [0, 255]); mapped to [-1, 1]")
    data.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=None, help="resize folder images to H x W")
    data.add_argument("--channels", type=int, choices=[1, 3], default=None, help="decode folder images as 1 or 3 channels")
    data.add_argument("--key", default=None, help="array name inside an .npz file")
    data.add_argument("--layout", choices=["auto", "nchw", "nhwc"], default="auto", help="axis order of array files")
    data.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes")
    groups = {"feature map": ("arch", "width", "spec"),
              "recipe": ("steps", "batch_size", "lr", "lr_decay_fraction", "p_max", "ramp_fraction", "ramp_steps", "seed", "precision",
                         "eval_every", "eval_size", "eval_fraction", "checkpoint_every")}
    for title, fields in groups.items():
        group = p.add_argument_group(title)
        for field in fields:
            flag, kind, text = _RECIPE_OPTIONS[field]
            group.add_argument(flag, dest=field, type=kind, default=None, choices=_CHOICES.get(field),
                               help=_recipe_help(field, text))
    run = p.add_argument_group("run")
    run.add_argument("--out", required=True, help="run folder")
    run.add_argument("--max-minutes", type=float, default=None, help="stop with a checkpoint after this long; rerun to resume")
    run.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available, else cpu; under "
                                                    "torchrun: one GPU per process)")
    run.add_argument("--export-dtype", default="float16", choices=["float32", "float16"],
                     help="storage dtype of the exported weights (as export --dtype)")
    run.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint and start over")
    run.add_argument("--report-to", choices=["none", "tensorboard", "wandb"], default="none",
                     help="also send the loss, learning rate, images/s, per-label R^2 and a grid of perturbed inputs "
                          "to TensorBoard (OUT/tensorboard) or Weights & Biases; needs pip install "
                          "\"mfd-loss[tensorboard]\" or \"mfd-loss[wandb]\" (the CSV logs are written either way)")
    run.add_argument("--push-to-hub", default=None, metavar="ORG/REPO",
                     help="when training finishes, publish the exported map to this Hugging Face Hub repo")
    p.set_defaults(func=_run_train)


def train_settings(args: argparse.Namespace) -> tuple[Any, Any]:
    """(TrainConfig, FeatureMapConfig) of parsed ``train`` arguments: the recipe's values, overridden by every
    option given explicitly."""
    from ..feature_maps import FeatureMapConfig
    from ..perturbations import PRESETS
    from ..training.config import TrainConfig, recipe_settings

    settings = recipe_settings(args.recipe)
    settings.update({k: getattr(args, k) for k in _RECIPE_OPTIONS if getattr(args, k) is not None})
    if args.ramp_steps is not None and args.ramp_fraction is not None:
        raise ValueError("give --ramp-fraction or --ramp-steps, not both")
    if args.ramp_fraction is not None:
        settings["ramp_steps"] = None  # an explicit fraction wins over a recipe's absolute length
    spec = settings["spec"]
    if isinstance(spec, str) and spec != "auto" and spec not in PRESETS:
        spec = [s.strip() for s in spec.split(",") if s.strip()]
    arch = FeatureMapConfig(arch=settings.pop("arch"), width=settings.pop("width"))
    return TrainConfig(**{**settings, "spec": spec}), arch


def _check_data_dir(data_dir: str | None, download: bool = False) -> None:
    """An explicit --data-dir must exist (else it would be passed over for another folder, or for a download)."""
    if data_dir is not None and not download and not os.path.isdir(data_dir):
        raise FileNotFoundError(f"--data-dir {data_dir} does not exist; give the folder that holds the data "
                                "(for torchvision:NAME add --download to fetch it there)")


def _run_train(args: argparse.Namespace) -> int:
    import torch

    from ..training.loop import train_feature_map

    _check_data_dir(args.data_dir, args.download)
    config, architecture = train_settings(args)
    from ..training.datasets import ARCHIVES

    eval_data = args.eval_data or (args.data if args.data in ARCHIVES else None)
    dataset = {"name": args.data, "split": "train",
               "eval": eval_data or f"{config.eval_fraction:.0%} of --data held out"}
    source_kwargs = {"root": args.data_dir, "download": args.download, "channels": args.channels,
                     "size": tuple(args.size) if args.size else None, "key": args.key, "layout": args.layout}
    _, summary = train_feature_map(
        args.data, args.out, config=config, architecture=architecture, eval_data=eval_data,
        input_range=tuple(args.input_range) if args.input_range else None, resume=not args.no_resume,
        max_minutes=args.max_minutes, device=args.device, num_workers=args.num_workers, dataset=dataset,
        export_dtype=getattr(torch, args.export_dtype), source_kwargs=source_kwargs, report_to=args.report_to,
    )
    main_process = int(os.environ.get("RANK", "0")) == 0
    if main_process:
        print(json.dumps({k: v for k, v in summary.items() if k != "metrics"}))
    stopped_by = summary.get("stopped_by")
    if stopped_by in ("SIGINT", "SIGTERM"):
        if main_process:
            print(f"mfd-loss train: interrupted by {stopped_by} at step {summary['step']}; the checkpoint is saved, "
                  "rerun the same command to resume", file=sys.stderr)
        return exit_status(stopped_by)
    if main_process:
        if not summary["finished"]:
            print(f"mfd-loss train: stopped at step {summary['step']} (--max-minutes); rerun the same command to "
                  "resume", file=sys.stderr)
        elif args.push_to_hub:
            from ..hub.publish import push_folder

            commit = push_folder(args.out, args.push_to_hub)
            print(json.dumps({"pushed": args.push_to_hub, "revision": getattr(commit, "oid", None)}))
    return 0


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a training run's checkpoint as model.safetensors + config.json",
        description=_wrap("Export the model in RUN/checkpoint.pt (finished or not) to OUT, evaluating per-label "
                          f"R^2 on the whole held-out split of --data when given. Guide: {DOCS}"),
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

    from ..training.image_sources import collate_images, open_image_source
    from ..training.export import export_run

    _check_data_dir(args.data_dir)
    eval_images, eval_name = None, None
    if args.data:
        held_out = open_image_source(args.data, split="test", root=args.data_dir)
        eval_images = collate_images([held_out[i] for i in range(len(held_out))])
        eval_name = f"{args.data} test split, {eval_images.shape[0]} images"
    config = export_run(args.run, args.out, dtype=getattr(torch, args.dtype), eval_images=eval_images,
                        eval_name=eval_name, notes=args.note)
    print(json.dumps(config.get("metrics", {}), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``mfd-loss`` parser with every subcommand (each with ``--debug`` and the shared help formatter)."""
    parser = argparse.ArgumentParser(prog="mfd-loss", formatter_class=HelpFormatter,
                                     description=f"Manifold Feature Distance tools. Documentation: {DOCS_HOME}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)
    demo.add_parser(sub)
    hub_cli.add_parsers(sub)
    _add_train(sub)
    _add_export(sub)
    for command in sub.choices.values():
        command.formatter_class = HelpFormatter
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help="show the traceback of an error instead of a one-line message")
    return parser


def _is_user_error(err: BaseException) -> bool:
    # huggingface_hub's transport (httpx, or httpx2 in recent releases) raises its own network errors, not OSErrors
    return isinstance(err, USER_ERRORS) or type(err).__module__.split(".")[0] in ("httpx", "httpx2")


def _one_line(err: BaseException) -> str:
    message = err.args[0] if isinstance(err, KeyError) and err.args else err
    return " ".join(str(message).split()) or type(err).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mfd-loss`` command; returns the exit status (see the module docstring)."""
    args = build_parser().parse_args(argv)
    name = f"mfd-loss {args.command}"
    previous = warnings.formatwarning
    warnings.formatwarning = lambda message, category, *rest, **kw: f"{name}: warning: {message}\n"
    try:
        return args.func(args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if args.debug or not _is_user_error(err):
            raise
        print(f"{name}: error: {_one_line(err)} (--debug shows the traceback)", file=sys.stderr)
        return 2
    finally:
        warnings.formatwarning = previous

