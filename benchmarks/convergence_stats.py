"""Statistics of the convergence benchmark: mean curves over seeds, confidence intervals, paired differences,
iterations to reach the reference's final value."""

from __future__ import annotations

import math
from typing import Any

import torch

from convergence_config import REFERENCE

# "iterations to reach the reference's final value" is given only where the reference (ECT) improved by at least
# this share from its own start (mean over seeds): against a flat or diverging baseline it would measure nothing.
MIN_IMPROVEMENT = 0.10


def t_quantile(df: int, level: float = 0.95) -> float:
    """Two-sided Student-t quantile for ``df`` degrees of freedom (scipy), e.g. 4.303 for df = 2."""
    from scipy.stats import t

    return float(t.ppf(0.5 + level / 2, df))


def ci95(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of its 95 % confidence interval (Student t, n - 1 degrees of freedom); nan half-width
    for a single value."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, t_quantile(n - 1) * sd / math.sqrt(n)


def paired_difference(runs: list[list[dict]], reference: list[list[dict]], key: str) -> dict[str, Any]:
    """Per-seed difference ``runs - reference`` of the final value of ``key``, seeds paired in order (seed s of one
    loss against seed s of the other: the same initialisation, data order and noise), with its mean and 95 % CI.

    Raises:
        ValueError: the two losses have different numbers of seeds.
    """
    if len(runs) != len(reference):
        raise ValueError(f"paired seeds needed: {len(runs)} runs against {len(reference)} of the reference")
    diffs = [run[-1][key] - ref[-1][key] for run, ref in zip(runs, reference)]
    mean, half = ci95(diffs)
    return {"per_seed": diffs, "mean": mean, "ci95": half}


def mean_curve(runs: list[list[dict]], key: str) -> tuple[list[int], list[float], list[float]]:
    """Steps, mean and standard error over seeds of one metric.

    Raises:
        ValueError: the seeds were not evaluated at the same steps.
    """
    steps = [e["step"] for e in runs[0]]
    for run in runs[1:]:
        if [e["step"] for e in run] != steps:
            raise ValueError(f"the seeds of one loss were evaluated at different steps ({steps} and "
                             f"{[e['step'] for e in run]}): delete the run folder that lacks an evaluation "
                             f"(under --work) and rerun to train it again")
    values = torch.tensor([[e[key] for e in run] for run in runs], dtype=torch.float64)
    sem = values.std(0) / math.sqrt(values.shape[0]) if values.shape[0] > 1 else torch.zeros(values.shape[1])
    return steps, values.mean(0).tolist(), sem.tolist()


def mean_clock(runs: list[list[dict]]) -> list[float]:
    """Training seconds at each evaluation, averaged over seeds."""
    return [sum(e["train_seconds"] or 0.0 for e in column) / len(column) for column in zip(*runs)]


def interpolate(xs: list[float], ys: list[float], x: float) -> float:
    """Piecewise-linear y(x) on increasing xs (clamped at the ends)."""
    for i in range(1, len(xs)):
        if x <= xs[i]:
            return ys[i - 1] + (ys[i] - ys[i - 1]) * (x - xs[i - 1]) / ((xs[i] - xs[i - 1]) or 1)
    return ys[-1]


def steps_to_reach(steps: list[int], values: list[float], level: float) -> float | None:
    """First (linearly interpolated) iteration at which a curve gets down to ``level``; None if never."""
    for i, v in enumerate(values):
        if v <= level:
            if i == 0:
                return float(steps[0])
            s0, s1, v0 = steps[i - 1], steps[i], values[i - 1]
            return s0 + (s1 - s0) * (v0 - level) / (v0 - v)
    return None


def reach(runs: list[list[dict]], reference: list[list[dict]], sampler: str) -> dict[str, float | None]:
    """Iterations (and wall-clock) ``runs`` need to reach the final mean FD of ``reference``, as shares of its total.

    When the reference ends less than ``MIN_IMPROVEMENT`` (10 %) below its start (a tuning run that stalled or lost
    quality), every run "reaches" it at once and a share would read as a speed-up: then the shares are None and
    ``reference_improved`` is False (the tables say so instead of printing a ratio).
    """
    steps, values, _ = mean_curve(runs, sampler)
    ref_steps, ref_values, _ = mean_curve(reference, sampler)
    if ref_values[-1] > (1 - MIN_IMPROVEMENT) * ref_values[0]:
        return {"steps": None, "iteration_ratio": None, "time_ratio": None, "reference_improved": False}
    at = steps_to_reach(steps, values, ref_values[-1])
    ref_total = mean_clock(reference)[-1]
    return {"steps": at, "reference_improved": True, "iteration_ratio": None if at is None else at / ref_steps[-1],
            "time_ratio": None if at is None or not ref_total else interpolate(steps, mean_clock(runs), at) / ref_total}


def summarise(result: dict) -> list[dict[str, Any]]:
    """Per (data set, batch size, sampler): final FD of each loss and each loss's reach of the reference's final."""
    rows = []
    for group in result["groups"]:
        for sampler in ("1step", "2step"):
            curves = {loss: mean_curve(runs, sampler) for loss, runs in group["runs"].items()}
            row = {"dataset": group["dataset"], "batch_size": group["batch_size"], "lr": group.get("lr"), "sampler": sampler,
                   "metric": group["metric"], "final": {loss: c[1][-1] for loss, c in curves.items()},
                   "final_sem": {loss: c[2][-1] for loss, c in curves.items()},
                   "seeds": {loss: len(runs) for loss, runs in group["runs"].items()}, "reach": {}}
            row["final_ci95"] = {loss: ci95([run[-1][sampler] for run in runs])[1] for loss, runs in group["runs"].items()}
            if REFERENCE in group["runs"]:
                ref = group["runs"][REFERENCE]
                row["reach"] = {loss: reach(runs, ref, sampler)
                                for loss, runs in group["runs"].items() if loss != REFERENCE}
                row["paired_difference"] = {loss: paired_difference(runs, ref, sampler)
                                            for loss, runs in group["runs"].items()
                                            if loss != REFERENCE and len(runs) == len(ref)}
                start = mean_curve(ref, sampler)[1]
                row["reference_change"] = start[-1] / start[0] - 1  # ECT's final over its start, minus 1
            rows.append(row)
    return rows


def cross_batch(result: dict, small: int = 16, large: int = 128) -> list[dict[str, Any]]:
    """Each loss at batch ``small`` against the reference (ECT) at batch ``large`` (1-step): finals and iterations to
    reach the reference's final."""
    rows = []
    for dataset in dict.fromkeys(g["dataset"] for g in result["groups"]):
        groups = {g["batch_size"]: g for g in result["groups"] if g["dataset"] == dataset}
        if small not in groups or large not in groups or REFERENCE not in groups[large]["runs"]:
            continue
        reference = groups[large]["runs"][REFERENCE]
        for loss, runs in groups[small]["runs"].items():
            rows.append({"dataset": dataset, "loss": loss, "batch_size": small, "reference_batch_size": large,
                         "final": mean_curve(runs, "1step")[1][-1], "final_sem": mean_curve(runs, "1step")[2][-1],
                         "reference_final": mean_curve(reference, "1step")[1][-1],
                         "reach": reach(runs, reference, "1step")})
    return rows

