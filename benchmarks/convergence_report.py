"""Tables and figures of the convergence benchmark."""

from __future__ import annotations

from pathlib import Path

from _common import better_label, markdown_table, pyplot
from convergence_config import LOSSES, REFERENCE, label, reference_name
from convergence_stats import mean_clock, mean_curve


def _ratio(r: dict[str, float | None] | None, steps: int, reference: str = "ECT") -> tuple[str, str]:
    if r is None:
        return "n/a", "n/a"
    if r.get("reference_improved") is False:
        return f"n/a: {reference} improved < 10 % from its start", "n/a"
    if r["iteration_ratio"] is None:
        return f"not reached in {steps}", "n/a"
    clock = "n/a" if r["time_ratio"] is None else f"{r['time_ratio']:.2f}x"
    return f"{r['iteration_ratio']:.2f}x ({r['steps']:.0f})", clock


def report(result: dict) -> str:
    losses, steps = result["losses_run"], result["config"]["steps"]
    mode = result["config"]["mode"]
    ref = reference_name(mode)
    # one header for several data sets: FD_cnn-cifar10 and FD_cnn-mnist are each data set's own classifier
    metrics = sorted({g["metric"] for g in result["groups"]})
    metric = metrics[0] if len(metrics) == 1 else metrics[0].split("-")[0]
    seeds = len(result["config"]["seeds"])
    parts = []
    if result.get("denoisers"):
        parts.append(markdown_table(
            ["data", "denoiser", "iterations", "batch", f"{metric} Heun, 18 steps (35 evaluations)"],
            [[d, "EDM (train_diffusion_model.py)", v["steps"], v["batch_size"],
              next((f"{x:.1f}" for k, x in v["final_eval"].items() if k.startswith(("FD", "FID"))), "n/a")]
             for d, v in result["denoisers"].items()]))
    if result.get("references") or any("paired_difference" in r for r in result["summary"]):
        return "\n\n".join(parts + evidence_tables(result, metric))
    parts.append(markdown_table(
        ["data", "batch", "sampler"] + [f"{metric} {label(k, mode)}" for k in losses],
        [[r["dataset"], r["batch_size"], r["sampler"]] +
         [f"{r['final'][k]:.1f} ± {r['final_sem'][k]:.1f}" for k in losses] for r in result["summary"]]))
    others = [k for k in losses if k != REFERENCE]
    if REFERENCE in losses and others:
        rows = []
        for r in result["summary"]:
            if r["sampler"] == "1step":
                for k in others:
                    rows.append([r["dataset"], r["batch_size"], label(k, mode),
                                 f"{r['final'][k] / r['final'][REFERENCE]:.2f}", *_ratio(r["reach"].get(k), steps, ref)])
        parts.append(markdown_table(
            ["data", "batch", "loss", f"final 1-step {metric} / {ref}'s",
             f"iterations to reach {ref}'s final 1-step {metric} (share of {ref}'s)", "same in training wall-clock"],
            rows))
    if result.get("cross_batch"):
        parts.append(markdown_table(
            ["data", "loss at batch 16", f"final 1-step {metric}", f"{ref} at batch 128", "iterations to reach it",
             "wall-clock"],
            [[c["dataset"], label(c["loss"], mode), f"{c['final']:.1f} ± {c['final_sem']:.1f}",
              f"{c['reference_final']:.1f}", *_ratio(c["reach"], steps, ref)] for c in result["cross_batch"]]))
    note = (f"Mean ± standard error over {seeds} seed(s); {result['config']['fd_samples']} samples per Fréchet "
            f"distance; {steps} iterations." + ("" if len(metrics) == 1 else
                                                f" {metric} is {' / '.join(metrics)} on each data set's rows."))
    return "\n\n".join(parts + [note])


def evidence_tables(result: dict, metric: str) -> list[str]:
    """Issue 19's tables: the metric's reference rows, finals with 95 % CIs over seeds, ECT's change from its
    start, the paired difference of each loss to ECT (per seed, mean ± 95 % CI), and the reach of ECT's final."""
    import fd_references

    losses, steps, mode = result["losses_run"], result["config"]["steps"], result["config"]["mode"]
    ref = reference_name(mode)
    parts = []
    refs = result.get("references") or {}
    for dataset, rows in ({result["config"]["datasets"][0]: refs} if "rows" in refs else refs).items():
        parts.append(f"Reference rows ({dataset}): " + fd_references.table(rows))
    body = []
    for r in result["summary"]:
        cells = [f"{r['final'][k]:.1f} ± {r['final_ci95'][k]:.1f}" for k in losses]
        change = r.get("reference_change")
        body.append([r["dataset"], r["batch_size"], f"{r['lr']:g}" if r.get("lr") else "-", r["sampler"], *cells,
                     "n/a" if change is None else f"{100 * change:+.1f} %"])
    parts.append(markdown_table(["data", "batch", "lr", "sampler", *[f"{metric} {label(k, mode)}" for k in losses],
                                 f"{ref}: final vs start"], body))
    body = []
    for r in result["summary"]:
        for k, d in r.get("paired_difference", {}).items():
            body.append([r["dataset"], r["batch_size"], f"{r['lr']:g}" if r.get("lr") else "-", r["sampler"],
                         f"{label(k, mode)} − {ref}", f"{d['mean']:+.1f} ± {d['ci95']:.1f}",
                         ", ".join(f"{v:+.1f}" for v in d["per_seed"]),
                         _ratio(r["reach"].get(k), steps, ref)[0] if r["sampler"] == "1step" else ""])
    if body:
        parts.append(markdown_table(["data", "batch", "lr", "sampler", "paired difference", "mean ± 95 % CI",
                                     "per seed", f"iterations to reach {ref}'s final (share)"], body))
    seeds = len(result["config"]["seeds"])
    parts.append(f"Mean ± 95 % confidence interval (Student t) over {seeds} paired seed(s); "
                 f"{result['config']['fd_samples']} samples per Fréchet distance; {steps} iterations.")
    return parts


def plot(result: dict, path: Path) -> None:
    """FD against iterations (top) and training wall-clock (bottom) per group: each seed thin, the mean over
    seeds thick with its standard error shaded; 1-step solid, 2-step dotted."""
    plt = pyplot()
    groups, mode = result["groups"], result["config"]["mode"]
    fig, axes = plt.subplots(2, len(groups), figsize=(4.2 * len(groups), 7), squeeze=False)
    for col, group in enumerate(groups):
        for row, x_key in enumerate(("step", "train_seconds")):
            ax = axes[row][col]
            for loss, runs in group["runs"].items():
                color = f"C{list(LOSSES).index(loss)}"
                for sampler, style in (("1step", "-"), ("2step", ":")):
                    _, mean, sem = mean_curve(runs, sampler)
                    xs = [e["step"] for e in runs[0]] if x_key == "step" else mean_clock(runs)
                    if len(runs) > 1:
                        for run in runs:
                            seed_xs = [e[x_key] or 0.0 for e in run]
                            ax.plot(seed_xs, [e[sampler] for e in run], style, color=color, linewidth=0.6, alpha=0.4)
                    ax.plot(xs, mean, style, marker="o", markersize=3, label=f"{label(loss, mode)} {sampler}", color=color)
                    ax.fill_between(xs, [m - s for m, s in zip(mean, sem)], [m + s for m, s in zip(mean, sem)],
                                    color=color, alpha=0.15)
            ax.set_xlabel("iteration" if x_key == "step" else "training wall-clock (s)")
            ax.set_ylabel(better_label(group["metric"], "lower"))
            lr = f", lr {group['lr']:g}" if group.get("lr") else ""
            ax.set_title(f"{group['dataset']}, batch {group['batch_size']}{lr}", fontsize=10)
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_samples(result: dict, stem: Path) -> list[str]:
    """One PNG per group: a row per loss with its 1-step grids (seed 0) at the start, middle and end of the run,
    and the teacher's Heun grid (if any) in a first row. Returns the paths written."""
    plt = pyplot()
    written, mode = [], result["config"]["mode"]
    for group in result["groups"]:
        rows = []
        teacher = result.get("denoisers", {}).get(group["dataset"])
        if teacher and teacher["final_eval"].get("grid_heun"):
            rows.append(("EDM teacher, Heun (35 evaluations)", [teacher["final_eval"]["grid_heun"]]))
        for loss, runs in group["runs"].items():
            evals = runs[0]
            picks = [evals[0], evals[len(evals) // 2], evals[-1]] if len(evals) > 2 else evals
            rows.append((f"{label(loss, mode)}, 1 step", [e.get("grid_1step") for e in picks]))
            steps = [e["step"] for e in picks]
        rows = [(title, grids) for title, grids in rows if grids and all(g and Path(g).is_file() for g in grids)]
        if not rows:
            continue
        cols = max(len(g) for _, g in rows)
        fig, axes = plt.subplots(len(rows), cols, figsize=(2.6 * cols, 2.8 * len(rows)), squeeze=False)
        for r, (title, grids) in enumerate(rows):
            for c in range(cols):
                ax = axes[r][c]
                ax.axis("off")
                if c < len(grids):
                    ax.imshow(plt.imread(grids[c]), cmap="gray")
                    ax.set_title(title if len(grids) == 1 else f"{title}, iteration {steps[c]}", fontsize=7)
        lr = f", lr {group['lr']:g}" if group.get("lr") else ""
        fig.suptitle(f"{group['dataset']}, batch {group['batch_size']}{lr}: seed 0 at start / middle / end", fontsize=9)
        fig.tight_layout()
        lr_tag = f"-lr{group['lr']:g}" if group.get("lr") else ""
        path = Path(f"{stem}-samples-{group['dataset']}-bs{group['batch_size']}{lr_tag}.png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(str(path))
    return written
