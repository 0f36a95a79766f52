"""What a training run writes as it goes: ``log.csv`` (loss, p, throughput) and ``eval.csv`` (held-out R^2)."""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..perturbations import LabelSpec
from .config import EVAL_LOG, TRAIN_LOG, TrainConfig
from .evaluation import evaluate_feature_map, format_r2

if TYPE_CHECKING:  # pragma: no cover
    from .loop import _Plan, _Run


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
    (held-out evaluations), written by rank 0; rows after the resumed step are dropped first."""

    def __init__(self, out_dir: Path, spec: LabelSpec, step: int, is_main: bool):
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
            bar.set_postfix(loss=f"{row['loss']:.4f}", p=f"{row['p']:.3f}")
            self.running, self.running_n, self.images, self.last = 0.0, 0, 0, now

    def evaluate(self, run: _Run, plan: _Plan, config: TrainConfig, bar: Any) -> None:
        """Evaluate on the held-out images every ``eval_every`` steps and at the last step."""
        step = run.step
        if plan.eval_images is None or not ((config.eval_every and step % config.eval_every == 0) or step == config.steps):
            return
        run.last_eval = evaluate_feature_map(run.model, plan.eval_images, plan.perturbations, p=plan.eval_p)
        self.eval_log.write({"step": step, "mse_mean": run.last_eval["mse_mean"],
                             **{f"r2_{k}": v for k, v in run.last_eval["r2"].items()}})
        bar.write(f"step {step}: held-out mse {run.last_eval['mse_mean']:.4f}, R^2 {format_r2(run.last_eval['r2'])}")
