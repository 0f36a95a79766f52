"""The one-GPU check: correctness on CUDA, loss cost, feature-map training throughput and a paper-recipe map.

One command, sized for a borrowed GPU machine that runs a command for at most 10 minutes, has no network and
returns at most 8 files (see ``benchmarks/README.md``, "One GPU"). Four parts run in this order, each in child
processes under its own time budget, and the results are written (``--out``, default ``$OUT``) after every step,
so a timeout loses only the step that was running:

1. ``correctness``: the tests marked ``cuda`` (``pytest -m cuda``), then the feature-map trainer and the
   consistency example launched by ``torchrun --nproc-per-node 1``.
2. ``cost``: ``benchmarks/cost.py`` in fp32 and bf16, batch 32, 128 and 512 at 32 px: MFD with and without its
   value checks, its floor, the AYT tangent loss, LPIPS-VGG (32 px and upsampled to 224), pseudo-Huber, L2.
3. ``throughput``: ``benchmarks/train_throughput.py``: images/s of a feature-map training step, shipped and
   paper recipes, fp32 and bf16, channels_last and contiguous.
4. ``paper_map``: ``mfd-loss train --recipe paper --precision bf16`` on CIFAR-10 for the rest of the time
   (``--map-minutes`` caps it), its steps sized from part 3's speed so the perturbation ramp completes; exported in fp16
   with per-label R^2 on the test split.

Files written to ``--out`` (at most 8; none over 15 MiB): ``results.json`` (everything), ``summary.md``,
``log.txt`` (all child output), ``extras.tar.gz`` (each script's own JSON/Markdown, the pytest JUnit XML, the
torchrun runs' logs) and ``map.tar`` (the exported map, its model card and training logs; split into
``map.tar.00``, ``map.tar.01``, ... when larger: ``cat map.tar.* > map.tar``).

The parts and the summary are here; the plumbing (child processes under deadlines, budgets, the output files
rewritten after every step) is in ``benchmarks/gpu/_orchestrator.py``.

Data come from the pack written by ``benchmarks/gpu/prepare.py`` (``--pack``): CIFAR-10 archives and the LPIPS
wheel, which is unpacked into the scratch folder when ``lpips`` is not importable.

    bash benchmarks/gpu/run.sh --out "$OUT"                        # on the GPU machine, about 6 minutes
    bash benchmarks/gpu/run.sh --smoke --device cpu --out /tmp/g   # CI: every code path, tiny sizes
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import sys
import tarfile
import time
from pathlib import Path
from typing import Any
HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
BENCHMARKS = ROOT / "benchmarks"
sys.path[:0] = [str(ROOT), str(BENCHMARKS), str(HERE)]

import torch  # noqa: E402

from _common import markdown_table  # noqa: E402
from _orchestrator import (  # noqa: E402, F401  (the plumbing: child processes, budgets, output files)
    BUDGETS, NO_CUDA, PARTS, SMOKE_TOTAL_MINUTES, Interrupted, Orchestrator, pytest_counts, split_file,
)

COST_CASES = ("mfd-cifar10", "mfd-cifar10-novalidate", "floor-cifar10", "ayt-cifar10", "lpips-vgg", "lpips-vgg@224",
              "pseudo-huber", "l2")  # names of benchmarks/cost.py's CASES


class GpuCheck(Orchestrator):
    """The four parts of the check and the summary of their results."""

    # --------------------------------------------------------------------------------- 1. correctness
    def correctness(self, part: dict[str, Any], deadline: float) -> None:
        py, steps = sys.executable, {}
        part["steps"] = steps
        files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_*.py")
                       if "mark.cuda" in p.read_text())
        part["cuda_test_files"] = files
        launch_reserve = (deadline - time.monotonic()) * 0.4  # the two torchrun launches
        if files:
            junit = self.extras / "pytest-cuda.xml"
            step = self.command("pytest -m cuda", [py, "-m", "pytest", *files, "-m", "cuda", "-q", "-rfEs",
                                                   "-p", "no:cacheprovider", "--junitxml", junit],
                                deadline - launch_reserve)
            if junit.is_file():
                step.update(pytest_counts(junit))
                if step["status"] == "ok" and step["tests"] and step["skipped"] == step["tests"] and not self.cuda:
                    step["status"] = NO_CUDA
                elif step.get("returncode") == 5:
                    step["status"] = "failed: no test selected by -m cuda"
            steps["pytest"] = step
        else:
            steps["pytest"] = {"status": "failed: no test file uses the cuda marker"}
        self.write()
        steps["torchrun_trainer"] = self._torchrun_trainer(deadline - launch_reserve / 2)
        self.write()
        steps["torchrun_example"] = self._torchrun_example(deadline)
        part["note"] = "torchrun with 1 process takes the trainer's and the example's single-process path " \
                       "(WORLD_SIZE=1): the launch, device placement and bf16 run, not DDP's gradient all-reduce"

    def _torchrun(self) -> list[str]:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1"]

    def _torchrun_trainer(self, deadline: float) -> dict[str, Any]:
        run = self.work / "torchrun-trainer"
        shutil.rmtree(run, ignore_errors=True)
        size = ["--arch", "vgg11", "--width", "0.125", "--steps", "3", "--batch-size", "8", "--eval-size", "256"] \
            if self.smoke else ["--arch", "vgg11", "--width", "0.25", "--steps", "20", "--batch-size", "64",
                                "--eval-size", "1000"]
        argv = [*self._torchrun(), "-m", "mfd_loss.cli", "train", "--data", "cifar10", "--data-dir", self.data_dir,
                "--device", self.device.type, "--precision", "bf16", "--eval-every", "0", "--checkpoint-every", "10",
                "--no-resume", "--out", run, *size]
        step = self.command("torchrun: mfd-loss train", argv, deadline)
        config = run / "config.json"
        step["exported"] = (run / "model.safetensors").is_file() and config.is_file()
        if step["status"] == "ok" and not step["exported"]:
            step["status"] = "failed: no exported map in the run folder"
        if config.is_file():
            metrics = json.loads(config.read_text()).get("metrics", {}).get("held_out", {})
            step["held_out_mse_mean"] = metrics.get("mse_mean")
        self._keep(run, "torchrun-trainer", ("log.csv", "eval.csv", "config.json"))
        return step

    def _torchrun_example(self, deadline: float) -> dict[str, Any]:
        run = self.work / "torchrun-example"
        shutil.rmtree(run, ignore_errors=True)
        size = ["--steps", "2", "--batch-size", "4", "--channels", "8"] if self.smoke else \
            ["--steps", "20", "--batch-size", "64", "--channels", "32"]
        argv = [*self._torchrun(), ROOT / "examples" / "train_consistency_model.py", "--out", run, "--loss", "mfd",
                "--dataset", "cifar10", "--data-dir", self.data_dir, "--device", self.device.type,
                "--channel-mult", "1,2", "--num-blocks", "1", "--attention", "none", "--fd-samples", "0",
                "--num-samples", "4", "--log-every", "1", "--eval-every", size[1], "--no-progress", *size]
        step = self.command("torchrun: examples/train_consistency_model.py", argv, deadline)
        log = run / "log.jsonl"
        losses = []
        if log.is_file():
            losses = [e["loss"] for e in map(json.loads, log.read_text().splitlines()) if "loss" in e]
        step["losses"] = losses
        if step["status"] == "ok" and not (losses and all(math.isfinite(v) for v in losses)):
            step["status"] = "failed: no finite loss in log.jsonl"
        self._keep(run, "torchrun-example", ("log.jsonl", "args.json"))
        return step

    def _keep(self, run: Path, name: str, files: tuple[str, ...]) -> None:
        for f in files:
            if (run / f).is_file():
                (self.extras / name).mkdir(exist_ok=True)
                shutil.copyfile(run / f, self.extras / name / f)

    # ---------------------------------------------------------------------------------------- 2. cost
    def cost(self, part: dict[str, Any], deadline: float) -> None:
        wanted = list(COST_CASES)
        if not self.results["lpips"].startswith(("installed", "from the pack")):
            wanted = [c for c in wanted if not c.startswith("lpips")]
        if self.smoke:
            wanted = [c for c in wanted if c.startswith(("mfd", "floor")) or c == "pseudo-huber"]
            sizes, resolutions = ["--batch-sizes", "1,2", "--repeats", "1", "--warmup", "0", "--threads", "1"], (32,)
        else:
            sizes = ["--batch-sizes", "32,128,512", "--repeats", "3", "--warmup", "1", "--max-seconds", "1"]
            resolutions = (32,)
        part.update(cases=wanted, steps={}, results={})
        # one run per (resolution, dtype), 32 px first: cost.py writes its results at its end, so a run cut by the
        # time guard loses only itself
        runs = [(dtype, res) for res in resolutions for dtype in ("fp32", "bf16")]
        for i, (dtype, res) in enumerate(runs):
            share = (deadline - time.monotonic()) / (len(runs) - i)
            key = f"{dtype}-{res}px"
            out = self.extras / f"cost-{self.device.type}-{key}.json"
            argv = [sys.executable, BENCHMARKS / "cost.py", "--device", self.device.type, "--dtype", dtype,
                    "--resolutions", str(res), "--cases", ",".join(wanted), *sizes, "--no-plot", "--out", out]
            step = self.command(f"cost {key}", argv, time.monotonic() + share)
            if out.is_file():
                part["results"][key] = self._cost_digest(json.loads(out.read_text()))
            part["steps"][key] = step
            self.write()

    @staticmethod
    def _cost_digest(payload: dict[str, Any]) -> dict[str, Any]:
        rows = [{k: r.get(k) for k in ("case", "resolution", "batch", "images_per_s", "median_s", "peak_mem_mb",
                                       "skipped") if k in r} for r in payload["rows"]]
        summary = payload.get("summary", {})
        return {"headline": payload.get("headline"), "lpips_backbone": payload.get("lpips_backbone"),
                "value_check_cost_pct": summary.get("value_check_cost_pct", {}).get("mfd-cifar10"),
                "summary": summary, "rows": rows}

    # ----------------------------------------------------------------------------------- 3. throughput
    def throughput(self, part: dict[str, Any], deadline: float) -> None:
        out = self.extras / f"train-throughput-{self.device.type}.json"
        # the paper's recipe in bf16 first: part 4 sizes its run from that row, and rows are written as measured
        argv = [sys.executable, BENCHMARKS / "train_throughput.py", "--device", self.device.type, "--out", out,
                "--recipes", "paper,shipped", "--precisions", "bf16,fp32"]
        step = self.command("train_throughput", argv + (["--smoke"] if self.smoke else []), deadline)
        part["steps"] = {"train_throughput": step}
        if out.is_file():
            payload = json.loads(out.read_text())
            part["rows"], part["perturbations"] = payload["rows"], payload["perturbations"]

    def _paper_images_per_s(self) -> float | None:
        """The trainer's expected speed on the paper recipe in bf16: the slower memory format measured in part 3."""
        rows = self.results["parts"].get("throughput", {}).get("rows", [])
        speeds = [r["images_per_s"] for r in rows if r["recipe"] == "paper" and r["precision"] == "bf16"]
        return min(speeds) if speeds else None

    # ------------------------------------------------------------------------------------ 4. paper map
    def paper_map(self, part: dict[str, Any], deadline: float) -> None:
        py, steps = sys.executable, {}
        part["steps"] = steps
        run, export = self.work / "paper-run", self.work / "paper-map"
        for folder in (run, export):
            shutil.rmtree(folder, ignore_errors=True)
        recipe = ["--recipe", "paper"]
        part["recipe_flags"] = recipe
        export_reserve = 30 if self.smoke else 60  # the export's R^2 on the test split, the tar
        train_deadline = deadline - export_reserve
        startup = 15 if self.smoke else 25  # decoding the archives, building the map
        minutes = max(0.1, (train_deadline - time.monotonic() - startup - 20) / 60)
        if self.args.map_minutes is not None:
            minutes = min(self.args.map_minutes, minutes)
        batch = 8 if self.smoke else 512
        speed = self._paper_images_per_s()
        if self.smoke:
            total = 3
            recipe = recipe + ["--arch", "vgg11", "--width", "0.125", "--batch-size", str(batch), "--eval-size", "256"]
        elif speed:
            total = max(10, int(0.85 * 60 * minutes * speed / batch))
        else:
            total = None
        part.update(max_minutes=round(minutes, 2), planned_steps=total, expected_images_per_s=speed)
        argv = [py, "-m", "mfd_loss.cli", "train", "--data", "cifar10", "--data-dir", self.data_dir,
                "--device", self.device.type, "--precision", "bf16", "--max-minutes", f"{minutes:.2f}",
                "--out", run, "--no-resume", *recipe]
        if total:
            argv += ["--steps", str(total), "--eval-every", str(max(1, total // 4)),  # the ramp: 1/8 of the steps
                     "--checkpoint-every", str(max(1, total // 4))]
        else:
            part["note"] = ("no throughput measured: the recipe's steps, cut by --max-minutes (the perturbation ramp "
                            "does not complete)")
        # --max-minutes stops the run with a checkpoint and exit code 0; the time guard's SIGTERM also leaves a
        # checkpoint (status "timeout"): either way the map is exported
        steps["train"] = self.command("mfd-loss train (paper recipe)", argv, train_deadline)
        self._keep(run, "paper-run", ("log.csv", "eval.csv"))
        if not (run / "checkpoint.pt").is_file():
            steps["export"] = {"status": "failed: the training run left no checkpoint"}
            return
        self.write()
        note = (f"GPU check ({self.results['environment']['device_name']}): paper recipe, bf16, "
                f"{minutes:.1f} min budget; a candidate, not a release")
        steps["export"] = self.command(
            "mfd-loss export (R^2 on the test split)",
            [py, "-m", "mfd_loss.cli", "export", run, export, "--data", "cifar10", "--data-dir", self.data_dir,
             "--dtype", "float16", "--note", note], deadline)
        config_path = export / "config.json"
        if config_path.is_file():
            config = json.loads(config_path.read_text())
            held = config.get("metrics", {}).get("held_out", {})
            r2 = held.get("r2", {})
            finite = [v for v in r2.values() if isinstance(v, (int, float)) and math.isfinite(v)]
            recipe_done = config.get("recipe", {})
            part["map"] = {"architecture": config.get("architecture"), "steps_done": recipe_done.get("steps_done"),
                           "images_seen": recipe_done.get("images_seen"),
                           "train_seconds": recipe_done.get("train_seconds"), "r2": r2,
                           "r2_mean": sum(finite) / len(finite) if finite else None,
                           "eval_images": held.get("num_images"), "eval_p": held.get("p"),
                           "fp16_storage_max_relative_mfd_change": config.get("fp16_storage_max_relative_mfd_change")}
            steps["load"] = self._check_map(export)
            for f in ("log.csv", "eval.csv"):
                if (run / f).is_file():
                    shutil.copyfile(run / f, export / f)
            tar_path = self.work / "map.tar"
            with tarfile.open(tar_path, "w") as tar:
                tar.add(export, arcname="paper-map")
            self.files = [f for f in self.files if not f.startswith("map.tar")] + split_file(tar_path, self.out)

    def _check_map(self, folder: Path) -> dict[str, Any]:
        """The exported map loads with MFD(pretrained=folder) and gives finite, non-zero distances on real images."""
        from mfd_loss import MFD
        from mfd_loss.training.datasets import load_sample_images, to_model_range

        x = to_model_range(load_sample_images()[0][:16])
        try:
            with torch.no_grad():
                values = MFD(pretrained=str(folder))(x, x.roll(1, dims=-1))
        except Exception as err:  # reported, not raised: the map's files are still packed
            return {"status": f"failed: {type(err).__name__}: {err}"}
        ok = bool(torch.isfinite(values).all() and (values > 0).all())
        return {"status": "ok" if ok else "failed: non-finite or zero distances",
                "mfd_one_pixel_shift_mean": float(values.mean())}

    # ------------------------------------------------------------------------------------------ summary
    def summary(self) -> str:
        r = self.results
        env = r.get("environment", {})
        lines = [f"# mfd-loss GPU check{' (smoke)' if self.smoke else ''}", "",
                 f"{env.get('device_name', '?')} ({env.get('device', '?')}), torch {env.get('versions', {}).get('torch')}, "
                 f"CUDA {env.get('cuda', '-')}, commit {env.get('git_commit')}, started {r['started_utc']}, "
                 f"{r.get('wall_seconds', 0):.0f} s so far; LPIPS: {r.get('lpips')}", ""]
        rows = [[name, p.get("status", "running"), p.get("seconds", "–"), p.get("budget_s", "–")]
                for name, p in r["parts"].items()]
        lines += [markdown_table(["part", "status", "seconds", "budget s"], rows), ""]
        parts = r["parts"]
        if "correctness" in parts:
            lines += ["## 1. Correctness", ""]
            for name, step in parts["correctness"].get("steps", {}).items():
                counts = (f" ({step['passed']} passed, {step['failures']} failed, {step['errors']} errors, "
                          f"{step['skipped']} skipped)" if "tests" in step else "")
                lines.append(f"- {name}: {step.get('status')}{counts}")
                lines += [f"  - {p['test']}: {p.get('failure', p.get('error', ''))}" for p in step.get("problems", [])]
            lines.append("")
        if "cost" in parts:
            lines += ["## 2. Cost (images/s, forward + backward w.r.t. the prediction)", ""]
            for key, digest in parts["cost"].get("results", {}).items():
                lines += [f"### {key}", ""]
                if digest.get("value_check_cost_pct"):
                    lines += ["cost of the value checks (t_MFD / t_MFD(validate_args=False) - 1, %): " + ", ".join(
                        f"{k} {v:+.1f}" for k, v in digest["value_check_cost_pct"].items()), ""]
                md = self.extras / f"cost-{self.device.type}-{key}.md"
                if md.is_file():
                    lines += [md.read_text().strip(), ""]
        if "throughput" in parts and parts["throughput"].get("rows"):
            lines += ["## 3. Feature-map training throughput", ""]
            md = self.extras / f"train-throughput-{self.device.type}.md"
            if md.is_file():
                lines += [md.read_text().strip(), ""]
        if "paper_map" in parts:
            p = parts["paper_map"]
            speed = p.get("expected_images_per_s")
            lines += ["## 4. Paper-recipe map", "",
                      f"`{' '.join(p.get('recipe_flags', []))}`: planned steps {p.get('planned_steps')}, --max-minutes "
                      f"{p.get('max_minutes')}, expected {f'{speed:.0f}' if speed else '?'} images/s", ""]
            m = p.get("map")
            if m:
                mean = f"{m['r2_mean']:.3f}" if m.get("r2_mean") is not None else "undefined"
                lines += [f"{m['steps_done']} steps, {m['images_seen']} images, {m['train_seconds']} s of training; "
                          f"per-label R^2 on {m['eval_images']} test images at p = {m['eval_p']} (mean {mean})", "",
                          markdown_table(["label", "R^2"], [[k, f"{v:.3f}" if isinstance(v, float) else v]
                                                            for k, v in m["r2"].items()]), ""]
        if any(p.get("note") for p in parts.values()):
            lines += ["## Notes", ""] + [f"- {n}: {p['note']}" for n, p in parts.items() if p.get("note")]
        return "\n".join(lines) + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "runs" / "gpu-check"),
                   help="folder for the result files (default: $OUT, else runs/gpu-check)")
    p.add_argument("--pack", default=str(HERE / "pack"), help="folder written by prepare.py")
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {', '.join(PARTS)}")
    p.add_argument("--total-minutes", type=float, default=None,
                   help=f"guard on the whole check (default: 6, or {SMOKE_TOTAL_MINUTES:g} with --smoke)")
    p.add_argument("--map-minutes", type=float, default=None,
                   help="at most this much training in part 4 (default: the time the other parts leave)")
    p.add_argument("--work", default=None, help="scratch folder (default: a new temporary folder)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes: every code path in about a minute (CI, CPU)")
    args = p.parse_args(argv)
    if args.total_minutes is None:
        args.total_minutes = SMOKE_TOTAL_MINUTES if args.smoke else 6.0
    args.parts = [s.strip() for s in args.parts.split(",") if s.strip()]
    unknown = [s for s in args.parts if s not in PARTS]
    if unknown:
        p.error(f"unknown parts {unknown}; choose from {', '.join(PARTS)}")
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but torch sees no CUDA device; use --device cpu (with --smoke for a quick check)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    check = GpuCheck(args)

    def interrupt(signum, frame):
        raise Interrupted(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)
    try:
        results = check.run(args.parts)
    except Interrupted as stop:
        check.results["stopped_by"] = str(stop)
        check.write()
        return 1
    print(f"wrote {', '.join(check.results['files'])} to {check.out} ({results['wall_seconds']} s)")
    return 0 if all(p.get("status", "").startswith(("ok", "skipped")) for p in results["parts"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
