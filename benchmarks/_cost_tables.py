"""The tables, headline and plot of benchmarks/cost.py, from its measured rows."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from _common import better_label, markdown_table, pyplot
from _cost_cases import CASES, VALIDATE_OFF, floor_of



def lookup(rows, case: str, resolution: int, batch: int) -> dict[str, Any] | None:
    """The measured row of (case, resolution, batch), or None when absent or skipped."""
    for row in rows:
        if (row["case"], row["resolution"], row["batch"]) == (case, resolution, batch) and "median_s" in row:
            return row
    return None


def time_ratio(rows, case: str, reference: str, resolution: int, batch: int) -> float | None:
    a, b = lookup(rows, case, resolution, batch), lookup(rows, reference, resolution, batch)
    return a["median_s"] / b["median_s"] if a and b else None


def summarize(rows, cases, resolutions, batches) -> dict[str, Any]:
    """Ratios: each case's time over L2's and pseudo-Huber's; MFD's overhead over its floor (%); the cost of MFD's
    value checks, t_MFD / t_MFD(validate_args=False) - 1 (%)."""
    summary: dict[str, Any] = {"time_over_l2": {}, "time_over_pseudo_huber": {}, "mfd_overhead_over_floor_pct": {},
                               "value_check_cost_pct": {}}
    for res in resolutions:
        for batch in batches:
            key = f"{res}px/b{batch}"
            for case in cases:
                for name, ref in (("time_over_l2", "l2"), ("time_over_pseudo_huber", "pseudo-huber")):
                    ratio = time_ratio(rows, case, ref, res, batch)
                    if ratio is not None:
                        summary[name].setdefault(case, {})[key] = round(ratio, 3)
                if case.startswith("mfd-"):
                    ratio = time_ratio(rows, case, floor_of(case), res, batch)
                    if ratio is not None:
                        summary["mfd_overhead_over_floor_pct"].setdefault(case, {})[key] = round(100 * (ratio - 1), 1)
                    ratio = time_ratio(rows, case, case + VALIDATE_OFF, res, batch)
                    if ratio is not None:
                        summary["value_check_cost_pct"].setdefault(case, {})[key] = round(100 * (ratio - 1), 1)
    return summary


def _fmt(value: float | None, spec: str = ".3g", suffix: str = "") -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:{spec}}{suffix}"


def tables(rows, cases, resolutions, batches, ref_batch: int) -> str:
    """Markdown: throughput (img/s) per resolution and batch, time ratios and overheads; then peak memory."""
    headers = ["case"] + [f"{r} px b{b}" for r in resolutions for b in batches]
    headers += [f"× L2 time {r} px b{ref_batch}" for r in resolutions]
    headers += [f"over floor {r} px b{ref_batch}" for r in resolutions]
    speed, memory = [], []
    for case in cases:
        cells = [lookup(rows, case, r, b) for r in resolutions for b in batches]
        overhead = [time_ratio(rows, case, floor_of(case), r, ref_batch) if case.startswith("mfd-") else None
                    for r in resolutions]
        speed.append([CASES[case]] + [_fmt(c and c["images_per_s"]) for c in cells]
                     + [_fmt(time_ratio(rows, case, "l2", r, ref_batch), ".3g", "×") for r in resolutions]
                     + [_fmt(o and 100 * (o - 1), "+.0f", " %") for o in overhead])
        memory.append([CASES[case]] + [_fmt(c and c["peak_mem_mb"], ".4g") for c in cells])
    return ("Throughput, images/s (forward + backward w.r.t. the prediction; – = skipped or not measured)\n\n"
            + markdown_table(headers, speed) + "\n\nPeak memory, MB\n\n"
            + markdown_table(["case"] + headers[1:1 + len(resolutions) * len(batches)], memory))


def headline(rows, resolutions, batches, ref_batch: int) -> str:
    """One line: MFD (cifar10) against the pixel losses, its floor and LPIPS-VGG@224 (at the largest batch
    size up to ``ref_batch`` where both were measured, since slow cases skip the large ones)."""
    res = resolutions[0]
    mfd = lookup(rows, "mfd-cifar10", res, ref_batch)
    if mfd is None:
        return f"MFD cifar10 not measured at {res} px, batch {ref_batch}"
    parts = [f"MFD cifar10 at {res} px, batch {ref_batch}: {mfd['images_per_s']:.4g} img/s"]
    for ref, name in (("pseudo-huber", "pseudo-Huber"), ("l2", "L2")):
        ratio = time_ratio(rows, "mfd-cifar10", ref, res, ref_batch)
        if ratio is not None:
            parts.append(f"{ratio:.3g}x {name} time")
    ratio = time_ratio(rows, "mfd-cifar10", "floor-cifar10", res, ref_batch)
    if ratio is not None:
        parts.append(f"overhead over floor {100 * (ratio - 1):+.1f} %")
    ratio = time_ratio(rows, "mfd-cifar10", "mfd-cifar10" + VALIDATE_OFF, res, ref_batch)
    if ratio is not None:
        parts.append(f"value checks {100 * (ratio - 1):+.1f} % (vs validate_args=False)")
    for batch in sorted((b for b in batches if b <= ref_batch), reverse=True):
        ratio = time_ratio(rows, "lpips-vgg@224", "mfd-cifar10", res, batch)
        if ratio is not None:
            at = "" if batch == ref_batch else f" (at batch {batch}; larger ones skipped)"
            parts.append(f"LPIPS-VGG@224 takes {ratio:.3g}x MFD's time{at}")
            break
    return "; ".join(parts)


def plot(rows, cases, resolutions, batches, path: Path, title: str) -> None:
    """Throughput against batch size, log-log, one panel per resolution, one line per case (a floor: dashed, in
    its MFD's colour)."""
    plt = pyplot()
    families = list(dict.fromkeys(c.replace("floor-", "mfd-") for c in CASES))
    colours = plt.get_cmap("tab10").colors
    fig, axes = plt.subplots(1, len(resolutions), figsize=(6.5 * len(resolutions), 4.8), squeeze=False)
    for ax, res in zip(axes[0], resolutions):
        for case in cases:
            points = [(r["batch"], r["images_per_s"]) for r in rows
                      if r["case"] == case and r["resolution"] == res and "images_per_s" in r]
            if points:
                colour = colours[families.index(case.replace("floor-", "mfd-")) % len(colours)]
                style = "--" if case.startswith("floor") else "-"
                ax.plot(*zip(*points), style, color=colour, marker="o", markersize=3, label=CASES[case])
        ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel=better_label("images / s", "higher"),
               title=f"{res} px")
        ax.set_xticks(batches, [str(b) for b in batches])
        ax.set_xticks([], minor=True)
        ax.grid(True, which="both", alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
