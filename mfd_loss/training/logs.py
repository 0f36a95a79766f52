"""What a training run writes as it goes: ``log.csv`` (loss, p, throughput), ``eval.csv`` (held-out R^2), the same
through a ``--report-to`` reporter, and its warnings above the progress bar."""

from __future__ import annotations

import csv
import math
import sys
import tempfile
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from torch import Tensor

from ..perturbations import LabelSpec
from .config import EVAL_LOG, TRAIN_LOG, TrainConfig
from .evaluation import evaluate_feature_map, format_r2
from .reporting import NullReporter, Reporter

if TYPE_CHECKING:  # pragma: no cover
    from .loop import _Plan, _Run


def check_writable(out_dir: Path) -> None:
    """Create the run folder and write (and remove) a probe file in it, before any data is loaded.

    Raises:
        OSError: the folder cannot be created or written, with the reason and what to do.
    """
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_dir):
            pass
    except OSError as err:
        raise OSError(f"cannot write the run folder {out_dir}: {err.strerror or err}; choose a writable --out "
                      "(out_dir)") from None


@contextmanager
def warnings_above(bar: Any) -> Iterator[None]:
    """While the progress bar runs, print warnings above it (``tqdm.write``) instead of into its line."""
    if bar.disable:
        yield
        return
    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):  # warnings.showwarning's signature
        bar.write(warnings.formatwarning(message, category, filename, lineno, line).rstrip(), file=sys.stderr)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = shown


class _CsvLog:
    """Append rows to a CSV file, writing the header when the file is new."""

    def __init__(self, path: Path, fields: list[str]):
        self.path, self.fields = path, fields

    def drop_after(self, step: int) -> None:
        """Remove rows of steps after ``step``: work a crash lost since the checkpoint, redone on resume."""
        if not self.path.exists():
            return
        with open(self.path, newline="") as fh:
            rows = list(csv.DictReader(fh))
        kept = [row for row in rows if int(row["step"]) <= step]
        if len(kept) < len(rows):
            with open(self.path, "w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=self.fields, extrasaction="ignore")
                writer.writeheader()
                writer.writerows(kept)

    def write(self, row: dict[str, Any]) -> None:
        new = not self.path.exists()
        with open(self.path, "a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=self.fields, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(row)


class _Logs:
    """``log.csv`` (running loss, p, throughput; a row every 30 s and at each checkpoint) and ``eval.csv``
    (held-out evaluations), written by rank 0; rows after the resumed step are dropped first. The same numbers,
    and a grid of perturbed inputs at each evaluation, go to ``reporter`` (``--report-to``)."""

    def __init__(self, out_dir: Path, spec: LabelSpec, step: int, is_main: bool, reporter: Reporter | None = None):
        self.reporter = reporter or NullReporter()
        self.train_log = _CsvLog(out_dir / TRAIN_LOG, ["step", "loss", "p", "images_per_second", "train_seconds"])
        self.eval_log = _CsvLog(out_dir / EVAL_LOG, ["step", "mse_mean"] + [f"r2_{n}" for n in spec.labels])
        if is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
            self.train_log.drop_after(step)
            self.eval_log.drop_after(step)
        self.running, self.running_n, self.images, self.last = 0.0, 0, 0, time.monotonic()

    def train(self, run: _Run, loss: float, schedule: TrainConfig, config: TrainConfig, started: float, bar: Any,
              force: bool) -> None:
        self.running, self.running_n, self.images = self.running + loss, self.running_n + 1, self.images + config.batch_size
        now = time.monotonic()
        if now - self.last > 30 or force:
            row = {"step": run.step, "loss": self.running / self.running_n, "p": schedule.probability(run.step - 1),
                   "images_per_second": self.images / (now - self.last),
                   "train_seconds": run.train_seconds + now - started}
            self.train_log.write(row)
            self.reporter.scalars({"train/loss": row["loss"], "train/p": row["p"],
                                   "train/lr": config.learning_rate(run.step - 1),
                                   "train/images_per_second": row["images_per_second"]}, run.step)
            bar.set_postfix(loss=f"{row['loss']:.4f}", p=f"{row['p']:.3f}")
            self.running, self.running_n, self.images, self.last = 0.0, 0, 0, now

    def evaluate(self, run: _Run, plan: _Plan, config: TrainConfig, bar: Any, perturbed: Tensor) -> None:
        """Evaluate on the held-out images every ``eval_every`` steps and at the last step; report a grid of the
        step's first 16 ``perturbed`` training inputs with it."""
        step = run.step
        if plan.eval_images is None or not ((config.eval_every and step % config.eval_every == 0) or step == config.steps):
            return
        run.last_eval = evaluate_feature_map(run.model, plan.eval_images, plan.perturbations, p=plan.eval_p)
        self.eval_log.write({"step": step, "mse_mean": run.last_eval["mse_mean"],
                             **{f"r2_{k}": v for k, v in run.last_eval["r2"].items()}})
        bar.write(f"step {step}: held-out mse {run.last_eval['mse_mean']:.4f}, R^2 {format_r2(run.last_eval['r2'])}")
        self.reporter.scalars({"eval/mse_mean": run.last_eval["mse_mean"], **{
            f"eval/r2/{k}": v for k, v in run.last_eval["r2"].items() if v is not None and math.isfinite(v)}}, step)
        self.reporter.images("train/perturbed_inputs", perturbed[:16], step)
