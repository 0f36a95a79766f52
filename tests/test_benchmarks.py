"""Smoke runs of the tangent-alignment and convergence benchmarks (the cost benchmark has its own file).

Each runs the script's real code path at toy size and checks the numbers it writes: the values that hold by
construction (pixel L2's parallel fraction is 0.5) and the bookkeeping a reader relies on (environment,
resumable runs, monotone clocks, the table behind the docs).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from conftest import load_script

from mfd_loss.training.datasets import find_data_dir

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _has_cifar10() -> bool:
    try:
        return (find_data_dir(None) / "cifar10").is_dir()
    except FileNotFoundError:
        return False


def _plots() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def test_tangent_alignment_smoke(tmp_path):
    bench = load_script(BENCHMARKS / "tangent_alignment.py")
    out = tmp_path / "alignment.json"
    argv = ["--smoke", "--device", "cpu", "--work", str(tmp_path / "work"), "--out", str(out)]
    bench.main(argv + ([] if _plots() else ["--no-plot"]))
    result = json.loads(out.read_text())
    assert result["environment"]["device"] == "cpu" and result["environment"]["versions"]["torch"]
    assert result["config"]["noise_levels"] == [0.05, 5.0]
    for part in ("synthetic", "cifar10"):
        fractions = result[part]["fractions"]
        for pixel in ("L2", "pseudo-Huber (iCT c)"):  # both point along the displacement: 0.5 by construction
            assert fractions[pixel]["mean"] == pytest.approx([0.5, 0.5], abs=1e-6)
        mfd = [name for name in fractions if name.startswith("MFD")]
        assert len(mfd) >= 4
        for name in mfd:
            assert all(0.0 <= m <= 1.0 and math.isfinite(s) for m, s in zip(fractions[name]["mean"], fractions[name]["sem"]))
    assert "random init" in " ".join(result["cifar10"]["fractions"])
    assert result["cifar10"]["lpips"]  # used, or the reason it was left out
    table = out.with_suffix(".md").read_text()
    assert table.count("| MFD group") >= 6 and "t = 0.05" in table
    if _plots():
        assert out.with_suffix(".png").read_bytes()[:8] == PNG_MAGIC


def test_blob_tangents_are_the_renderer_jacobian():
    import torch

    bench = load_script(BENCHMARKS / "tangent_alignment.py")
    params = bench.sample_blob_params(3, torch.Generator().manual_seed(0)).double()
    tangents = bench.blob_tangents(params)
    h = 1e-5
    for k in range(4):
        step = torch.zeros(4, dtype=torch.float64)
        step[k] = h
        finite = (bench.render_blobs(params + step) - bench.render_blobs(params - step)) / (2 * h)
        assert torch.allclose(tangents[:, k], finite, atol=1e-6)


@pytest.mark.skipif(not _has_cifar10(), reason="needs the CIFAR-10 archive of shared/data (see shared/data/README.md)")
def test_convergence_smoke_resumes_and_rereads(tmp_path):
    bench = load_script(BENCHMARKS / "convergence.py")
    work, out = tmp_path / "work", tmp_path / "convergence.json"
    argv = ["--config", "smoke", "--device", "cpu", "--work", str(work), "--out", str(out)] + \
        ([] if _plots() else ["--no-plot"])
    bench.main(argv + ["--steps", "1"])  # an "interrupted" benchmark: runs stop at step 1 ...
    run = work / "smoke" / "cifar10-bs4-mfd-seed0"
    first = (run / "log.jsonl").read_text()
    result = bench.main(argv)  # ... and the rerun resumes them to step 2 instead of starting over
    log = (run / "log.jsonl").read_text()
    assert log.startswith(first) and len(log) > len(first)
    evals = result["groups"][0]["runs"]["mfd"][0]
    assert [e["step"] for e in evals] == [0, 1, 2]
    assert all(a["train_seconds"] <= b["train_seconds"] for a, b in zip(evals, evals[1:]))
    assert all(math.isfinite(e["1step"]) and math.isfinite(e["2step"]) for e in evals)
    assert evals[0]["metric"].startswith(("FD_", "FID"))
    assert {r["sampler"] for r in result["summary"]} == {"1step", "2step"}
    assert set(result["losses_run"]) >= {"mfd", "pseudo-huber"}
    if "lpips" not in result["losses_run"]:
        assert any("LPIPS left out" in note for note in result["notes"])
    saved = json.loads(out.read_text())
    assert saved["environment"]["versions"]["torch"] and saved["config"]["steps"] == 2
    bench.main(argv)  # finished runs are read, not rerun
    assert (run / "log.jsonl").read_text() == log


def test_steps_to_reach_interpolates_and_reports_never():
    bench = load_script(BENCHMARKS / "convergence.py")
    assert bench.steps_to_reach([0, 10, 20], [100.0, 60.0, 40.0], 50.0) == pytest.approx(15.0)
    assert bench.steps_to_reach([0, 10, 20], [100.0, 60.0, 40.0], 30.0) is None
    assert bench.steps_to_reach([0, 10], [20.0, 10.0], 25.0) == 0.0


def test_readme_tables_are_the_measured_ones():
    """benchmarks/README.md shows exactly the tables the scripts wrote (python benchmarks/update_readme.py)."""
    update = load_script(BENCHMARKS / "update_readme.py")
    readme = (BENCHMARKS / "README.md").read_text()
    names = [m["name"] for m in update.BLOCK.finditer(readme)]
    assert names == ["cost-cpu.md", "tangent-alignment-cpu.md", "convergence-cpu.md", "convergence-tune-cpu.md",
                     "convergence-distill-cpu.md"], \
        "the README should carry the cost, tangent-alignment, convergence, tuning and distillation tables"
    assert update.render(readme) == readme, "README tables differ from benchmarks/results/*.md: run update_readme.py"


def test_readme_sync_fills_and_rejects_missing_results(tmp_path):
    update = load_script(BENCHMARKS / "update_readme.py")
    (tmp_path / "a.md").write_text("| x |\n|---|\n| 1 |\n")
    text = "intro\n<!-- results: a.md -->\nstale\n<!-- /results -->\nend\n"
    assert update.render(text, tmp_path) == "intro\n<!-- results: a.md -->\n\n| x |\n|---|\n| 1 |\n\n<!-- /results -->\nend\n"
    with pytest.raises(FileNotFoundError, match="run the benchmark"):
        update.render(text.replace("a.md", "b.md"), tmp_path)


def test_time_ratio_follows_the_training_clock():
    bench = load_script(BENCHMARKS / "convergence.py")
    run = lambda fds, secs: [{"step": s, "train_seconds": t, "1step": f, "2step": f}  # noqa: E731
                             for s, t, f in zip((0, 10, 20), secs, fds)]
    result = {"groups": [{"dataset": "d", "batch_size": 4, "metric": "FD_x",
                          "runs": {"mfd": [run((100.0, 40.0, 30.0), (0.0, 30.0, 60.0))],
                                   "pseudo-huber": [run((100.0, 70.0, 40.0), (0.0, 10.0, 20.0))]}}]}
    row = bench.summarise(result)[0]["reach"]["mfd"]
    assert row["steps"] == pytest.approx(10.0)
    assert row["iteration_ratio"] == pytest.approx(0.5)
    assert row["time_ratio"] == pytest.approx(30.0 / 20.0)  # fewer iterations, but each one slower


def test_no_speed_up_is_claimed_against_a_reference_that_got_worse():
    """ECT ending above its own start is 'reached' by every run at iteration 0: no ratio, a plain statement."""
    bench = load_script(BENCHMARKS / "convergence.py")
    run = lambda fds: [{"step": s, "train_seconds": float(s), "1step": f, "2step": f}  # noqa: E731
                       for s, f in zip((0, 10, 20), fds)]
    result = {"groups": [{"dataset": "d", "batch_size": 4, "metric": "FD_x",
                          "runs": {"mfd": [run((100.0, 40.0, 30.0))],
                                   "pseudo-huber": [run((100.0, 110.0, 105.0))]}}]}
    row = bench.summarise(result)[0]["reach"]["mfd"]
    assert row["reference_improved"] is False and row["iteration_ratio"] is None and row["time_ratio"] is None
    assert bench._ratio(row, 20) == ("n/a: ECT improved < 10 % from its start", "n/a")
    result["groups"][0]["runs"]["pseudo-huber"] = [run((100.0, 110.0, 91.0))]  # 9 % below its start: still none
    assert bench.summarise(result)[0]["reach"]["mfd"]["reference_improved"] is False
    result["groups"][0]["runs"]["pseudo-huber"] = [run((100.0, 110.0, 89.0))]  # 11 % below: a ratio
    row = bench.summarise(result)[0]["reach"]["mfd"]
    assert row["reference_improved"] is True and row["steps"] == pytest.approx(10 * 11 / 60)  # 100 -> 40 over 0..10


def test_seeds_evaluated_at_different_steps_are_refused():
    bench = load_script(BENCHMARKS / "convergence.py")
    run = lambda steps: [{"step": s, "train_seconds": float(s), "1step": 1.0, "2step": 1.0} for s in steps]  # noqa: E731
    assert bench.mean_curve([run((0, 10, 20)), run((0, 10, 20))], "1step")[0] == [0, 10, 20]
    with pytest.raises(ValueError, match="delete the run folder"):
        bench.mean_curve([run((0, 10, 20)), run((0, 20))], "1step")


def _read_args(run: Path) -> dict:
    return json.loads((run / "args.json").read_text())


@pytest.mark.skipif(not _has_cifar10(), reason="needs the CIFAR-10 archive of shared/data (see shared/data/README.md)")
def test_tuning_smoke_starts_every_loss_from_the_denoiser(tmp_path):
    bench = load_script(BENCHMARKS / "convergence.py")
    work, out = tmp_path / "work", tmp_path / "tune.json"
    result = bench.main(["--config", "tune-smoke", "--device", "cpu", "--work", str(work), "--out", str(out)] +
                        ([] if _plots() else ["--no-plot"]))
    teacher = result["denoisers"]["cifar10"]
    assert Path(teacher["checkpoint"]).is_file() and teacher["final_eval"]["step"] == 2
    assert [k for k in teacher["final_eval"] if k.startswith("FD")] == ["FD_resnet-cifar10_heun"]
    assert math.isfinite(teacher["final_eval"]["FD_resnet-cifar10_heun"])
    assert set(result["losses_run"]) >= {"pseudo-huber", "mfd", "mfd-random", "mfd-squared"}
    group = result["groups"][0]
    starts = set()
    for loss, runs in group["runs"].items():
        run = work / "tune-smoke" / f"cifar10-bs4-{loss}-seed0"
        assert _read_args(run)["init"] == teacher["checkpoint"] and _read_args(run)["teacher"] is None
        assert [e["step"] for e in runs[0]] == [0, 2]
        assert all(math.isfinite(e["1step"]) and math.isfinite(e["2step"]) for e in runs[0])
        starts.add(runs[0][0]["1step"])
    assert len(starts) == 1  # every loss starts from the same denoiser weights, graded on the same noise
    assert _read_args(work / "tune-smoke" / "cifar10-bs4-mfd-random-seed0")["mfd_init"] == "random"
    assert _read_args(work / "tune-smoke" / "cifar10-bs4-mfd-squared-seed0")["mfd_distance"] == "squared"
    reach = result["summary"][0]["reach"]
    assert set(reach) == set(result["losses_run"]) - {"pseudo-huber"}
    table = out.with_suffix(".md").read_text()
    assert "Heun" in table and "MFD random-init map (AYT)" in table and "iterations to reach ECT's final" in table
    if "lpips" not in result["losses_run"]:
        assert any("LPIPS left out" in note for note in result["notes"])
    if _plots():
        assert out.with_suffix(".png").read_bytes()[:8] == PNG_MAGIC
        assert [Path(p).read_bytes()[:8] for p in result["sample_grids"]] == [PNG_MAGIC]


@pytest.mark.skipif(not _has_cifar10(), reason="needs the CIFAR-10 archive of shared/data (see shared/data/README.md)")
def test_distillation_smoke_in_two_shards(tmp_path):
    bench = load_script(BENCHMARKS / "convergence.py")
    work, out = tmp_path / "work", tmp_path / "distill.json"
    argv = ["--config", "distill-smoke", "--device", "cpu", "--work", str(work), "--out", str(out), "--no-plot",
            "--losses", "mfd-value,mfd,pseudo-huber,l2"]
    assert bench.main(argv + ["--shard", "0/2"]) is None and not out.exists()  # a shard trains and writes nothing
    runs = sorted((work / "distill-smoke").glob("cifar10-*"))
    assert [r.name for r in runs] == ["cifar10-bs4-mfd-value-seed0", "cifar10-bs4-pseudo-huber-seed0"]
    bench.main(argv + ["--shard", "1/2"])
    logs = {r.name: (r / "log.jsonl").read_text() for r in (work / "distill-smoke").glob("cifar10-*")}
    assert len(logs) == 4
    result = bench.main(argv)  # every run is finished: read, not rerun
    assert {r.name: (r / "log.jsonl").read_text() for r in (work / "distill-smoke").glob("cifar10-*")} == logs
    teacher = result["denoisers"]["cifar10"]["checkpoint"]
    for loss in ("mfd-value", "mfd", "pseudo-huber", "l2"):
        args = _read_args(work / "distill-smoke" / f"cifar10-bs4-{loss}-seed0")
        assert args["teacher"] == teacher and args["init"] == teacher and args["teacher_solver"] == "heun"
    assert _read_args(work / "distill-smoke" / "cifar10-bs4-mfd-value-seed0")["direction"] == "raw"
    assert all(math.isfinite(e["1step"]) for runs in result["groups"][0]["runs"].values() for e in runs[0])
    assert json.loads(out.read_text())["config"]["mode"] == "distill"
    table = out.with_suffix(".md").read_text()  # distillation has no ECT: the reference is named as what it is
    assert "iterations to reach pseudo-Huber's final" in table and "pseudo-Huber c=0 " in table
    assert "ECT" not in table


def _captured_figures(monkeypatch) -> list:
    """Figures the benchmark plots close after saving (they are kept here to be inspected)."""
    plt = pytest.importorskip("matplotlib.pyplot")
    figures: list = []
    monkeypatch.setattr(plt, "close", figures.append)
    return figures


@pytest.mark.parametrize("script, better", [("tangent_alignment", "lower"), ("convergence", "lower"),
                                            ("cost", "higher"), ("feature_map_training", "higher")])
def test_committed_plots_say_which_way_is_better_and_show_coinciding_lines(script, better, monkeypatch, tmp_path):
    """Every benchmark plot, redrawn from its committed JSON, says on its y axis which way is better; in the
    tangent-alignment plot pixel L2 (0.5 by construction) is not hidden under pseudo-Huber: the legend says so."""
    figures = _captured_figures(monkeypatch)
    bench = load_script(BENCHMARKS / f"{script}.py")
    results = BENCHMARKS / "results"
    path = tmp_path / "plot.png"
    if script == "tangent_alignment":
        bench.plot(json.loads((results / "tangent-alignment-cpu.json").read_text()), path)
    elif script == "convergence":
        bench.plot(json.loads((results / "convergence-distill-cpu.json").read_text()), path)
    elif script == "cost":
        r = json.loads((results / "cost-cpu.json").read_text())
        c = r["config"]
        bench.plot(r["rows"], tuple(c["cases"]), tuple(c["resolutions"]), sorted(c["batch_sizes"]), path, "caption")
    else:
        r = json.loads((results / "feature-map-training-cpu.json").read_text())
        bench.plot(r["candidates"], r["random_init"], path)
    assert path.read_bytes().startswith(PNG_MAGIC)
    labelled = [ax for fig in figures for ax in fig.axes if ax.get_ylabel()]
    assert labelled and all(ax.get_ylabel().endswith(f"({better} is better)") for ax in labelled)
    if script == "tangent_alignment":
        legend = [t.get_text() for t in labelled[0].get_legend().get_texts()]
        assert "pseudo-Huber (iCT c) (same as L2)" in legend, legend


def test_coincident_series_finds_lines_drawn_on_top_of_each_other():
    common = load_script(BENCHMARKS / "_common.py")
    series = {"L2": [0.5, 0.5], "pseudo-Huber": [0.5, 0.5004], "MFD": [0.02, 0.03], "MFD again": [0.02, 0.03]}
    assert common.coincident_series(series) == {"pseudo-Huber": "L2", "MFD again": "MFD"}
    assert common.coincident_series({"a": [0.5], "b": [0.51]}) == {}
    with pytest.raises(ValueError, match="lower"):
        common.better_label("FD", "smaller")


@pytest.mark.skipif(not _has_cifar10(), reason="needs the CIFAR-10 archive of shared/data (see shared/data/README.md)")
def test_evidence_smoke_records_maps_metric_references_and_paired_seeds(tmp_path):
    """Issue 19's protocol at toy size: an LR group per rate, paired seeds, the records a reader checks."""
    bench = load_script(BENCHMARKS / "convergence.py")
    out = tmp_path / "evidence.json"
    bench.main(["--config", "evidence-smoke", "--device", "cpu", "--work", str(tmp_path / "work"), "--out", str(out)]
               + ([] if _plots() else ["--no-plot"]))
    result = json.loads(out.read_text())
    assert [g["lr"] for g in result["groups"]] == [1e-4, 3e-4]
    assert result["environment"]["versions"]["mfd-loss"] and result["environment"]["git_commit"]
    assert set(result["maps"]) == {"mfd"} and len(result["maps"]["mfd"]["sha256"]) == 64
    assert set(result["metric"]) == {"name", "dataset", "sha256", "test_accuracy"}
    assert result["metric"]["name"].startswith("FD_") and result["metric"]["dataset"] == "cifar10"
    assert set(result["references"]["rows"]) == {"real_vs_real", "teacher_heun", "blurred_real_sigma1",
                                                 "blurred_real_sigma2", "blurred_noise"}
    for row in result["summary"]:
        diff = row["paired_difference"]["mfd"]
        finals = {loss: [run[-1][row["sampler"]] for run in runs] for loss, runs in
                  next(g for g in result["groups"] if g["lr"] == row["lr"])["runs"].items()}
        assert diff["per_seed"] == pytest.approx([a - b for a, b in zip(finals["mfd"], finals["pseudo-huber"])])
    text = out.read_text()
    assert str(tmp_path) not in text and "/work/" not in text  # no absolute paths
    assert "paired difference" in out.with_suffix(".md").read_text()
