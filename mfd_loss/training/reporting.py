"""Training reports people look at: scalars and image grids in TensorBoard or Weights & Biases.

``--report-to {none,tensorboard,wandb}`` of ``mfd-loss train`` and of ``examples/train_consistency_model.py``
goes through :func:`make_reporter`. Neither library is a dependency of mfd-loss: each is imported when a
reporter is built, and a missing one raises an ``ImportError`` naming the extra to install
(``pip install "mfd-loss[tensorboard]"`` or ``"mfd-loss[wandb]"``). The CSV / JSONL logs of the trainers are
written whatever the reporter.

In a ``torchrun`` job only rank 0 should report: build the reporter there and :class:`NullReporter` elsewhere
(``make_reporter("none")``).
"""

from __future__ import annotations

import importlib
import math
from pathlib import Path
from typing import Any, Mapping, Protocol

import torch
from torch import Tensor

REPORT_TO = ("none", "tensorboard", "wandb")


class Reporter(Protocol):
    """Where a training loop sends its numbers and pictures."""

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        """Log ``{tag: value}`` at optimiser step ``step`` (tags like ``"train/loss"``, ``"eval/r2/scale_w"``)."""

    def images(self, tag: str, images: Tensor, step: int) -> None:
        """Log a grid of ``images`` (N, C, H, W), values in [-1, 1] (clamped), at ``step``."""

    def close(self) -> None:
        """Flush and release the writer (idempotent)."""


class NullReporter:
    """``--report-to none``: reports nothing."""

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        pass

    def images(self, tag: str, images: Tensor, step: int) -> None:
        pass

    def close(self) -> None:
        pass


def image_grid(images: Tensor, nrow: int | None = None) -> Tensor:
    """Tile a batch of images into one (3, H', W') float image in [0, 1], 2 px apart, about square.

    Args:
        images: (N, C, H, W) in [-1, 1] (values outside are clamped). C = 1 is shown in grey, C = 3 as RGB;
            other channel counts (latents) show their first channel in grey.
        nrow: images per row (default: ceil(sqrt(N))).

    Raises:
        ValueError: ``images`` is not 4-D or is empty.
    """
    from torchvision.utils import make_grid

    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"image_grid takes a non-empty (N, C, H, W) batch, got shape {tuple(images.shape)}")
    x = images.detach().float().cpu()
    if x.shape[1] != 3:
        x = x[:, :1].expand(-1, 3, -1, -1)
    x = (x.clamp(-1, 1) + 1) / 2
    return make_grid(x, nrow=nrow or math.ceil(math.sqrt(x.shape[0])), padding=2, pad_value=1.0)


class TensorBoardReporter:
    """Writes a TensorBoard event file into ``log_dir`` (``tensorboard --logdir log_dir`` shows it)."""

    def __init__(self, log_dir: str | Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:  # torch.utils.tensorboard needs the tensorboard package
            raise ImportError('--report-to tensorboard needs the tensorboard package: pip install "mfd-loss[tensorboard]" '
                              "(or pip install tensorboard)") from err
        self.log_dir = Path(log_dir)
        self._writer = SummaryWriter(log_dir=str(self.log_dir))

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        for tag, value in values.items():
            self._writer.add_scalar(tag, float(value), global_step=step)

    def images(self, tag: str, images: Tensor, step: int) -> None:
        self._writer.add_image(tag, image_grid(images), global_step=step)

    def close(self) -> None:
        self._writer.flush()
        self._writer.close()


class WandbReporter:
    """Logs to a Weights & Biases run (``WANDB_MODE=offline`` keeps it on disk under ``log_dir/wandb``)."""

    def __init__(self, log_dir: str | Path, project: str | None = None, config: Mapping[str, Any] | None = None,
                 name: str | None = None):
        try:
            import wandb
        except ImportError as err:
            raise ImportError('--report-to wandb needs the wandb package: pip install "mfd-loss[wandb]" '
                              "(or pip install wandb)") from err
        self._wandb = wandb
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._run = wandb.init(project=project or "mfd-loss", dir=str(self.log_dir), name=name,
                               config=dict(config or {}))

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        self._run.log({tag: float(value) for tag, value in values.items()}, step=step)

    def images(self, tag: str, images: Tensor, step: int) -> None:
        grid = image_grid(images).permute(1, 2, 0).mul(255).round().to(torch.uint8).numpy()
        self._run.log({tag: self._wandb.Image(grid)}, step=step)

    def close(self) -> None:
        if self._run is not None:
            self._run.finish()
            self._run = None


def check_report_to(report_to: str) -> None:
    """Fail early (before a run loads its data) on an unknown ``report_to`` or a library that is not installed.

    Raises:
        ValueError: an unknown name. ImportError: the library is missing (the message names the extra).
    """
    if report_to not in REPORT_TO:
        raise ValueError(f"report_to must be one of {', '.join(REPORT_TO)}; got {report_to!r}")
    module, extra = {"none": (None, None), "tensorboard": ("torch.utils.tensorboard", "tensorboard"),
                     "wandb": ("wandb", "wandb")}[report_to]
    if module is not None:
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise ImportError(f'--report-to {report_to} needs the {extra} package: pip install "mfd-loss[{extra}]" '
                              f"(or pip install {extra})") from err


def make_reporter(report_to: str, log_dir: str | Path | None = None, *, project: str | None = None,
                  config: Mapping[str, Any] | None = None, name: str | None = None) -> Reporter:
    """The reporter ``--report-to`` names.

    Args:
        report_to: ``"none"``, ``"tensorboard"`` or ``"wandb"``.
        log_dir: where the event file (TensorBoard) or the run's files (wandb) go; needed unless ``"none"``.
        project, config, name: the wandb project (default ``"mfd-loss"``), run config and run name.

    Raises:
        ValueError: an unknown ``report_to``, or no ``log_dir``.
        ImportError: the library is not installed (the message names the extra to install).
    """
    check_report_to(report_to)
    if report_to == "none":
        return NullReporter()
    if log_dir is None:
        raise ValueError(f"--report-to {report_to} needs a log directory")
    if report_to == "tensorboard":
        return TensorBoardReporter(log_dir)
    return WandbReporter(log_dir, project=project, config=config, name=name)
