"""The training examples, run for a few CPU steps on real images (examples/train_consistency_model.py,
examples/train_diffusion_model.py and their shared examples/_training.py)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mfd_loss import FeatureMapConfig, VGGFeatureMap, load_sample_images, save_feature_map
from mfd_loss.training.checkpoint import load_checkpoint, save_checkpoint
from mfd_loss.perturbations import label_spec

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

import _training  # noqa: E402
import train_consistency_model as example  # noqa: E402
import train_diffusion_model as diffusion  # noqa: E402

TINY_NET = ["--channels", "8", "--channel-mult", "1,2", "--num-blocks", "1", "--attention", "none"]


@pytest.fixture(autouse=True)
def sample_data(monkeypatch):
    """The 64 real CIFAR-10 images shipped with the package stand in for both splits (no data folder needed)."""
    images, labels = load_sample_images()

    def load_images(dataset, split, data_dir=None):
        if dataset == "mnist":
            return load_images.__wrapped__(dataset, split, data_dir)
        return images, labels

    load_images.__wrapped__ = _training.load_images
    monkeypatch.setattr(_training, "load_images", load_images)


def _feature_map(folder: Path, channels: int = 3) -> str:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        fmap = VGGFeatureMap(FeatureMapConfig(arch="vgg11", width=0.125, in_channels=channels)).eval()
    save_feature_map(fmap, folder, label_spec=label_spec("all"))
    return str(folder)


def _args(out: Path, *extra: str) -> list[str]:
    return ["--out", str(out), "--batch-size", "8", "--lr", "1e-3", "--ema-decay", "0.9", "--log-every", "1",
            "--eval-every", "1000", "--fd-network", "none", "--num-samples", "4", "--no-progress", *TINY_NET, *extra]


def test_help_reads_well(capsys):
    with pytest.raises(SystemExit) as exit_info:
        example.parse_args(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--loss", "--direction", "--mfd-pretrained", "--resume", "--init", "--fd-network", "torchrun"):
        assert flag in text
    for name in ("mfd", "lpips", "pseudo-huber", "l2", "normalized", "raw"):
        assert name in text


def test_loss_choices_come_from_the_library_registry():
    from mfd_loss.consistency import OBJECTIVES

    for name in OBJECTIVES:
        assert example.parse_args(["--out", "x", "--loss", name]).loss == name
    with pytest.raises(SystemExit):
        example.parse_args(["--out", "x", "--loss", "lpips-vgg"])


def test_mfd_training_loss_decreases(tmp_path):
    """30 steps of AYT training on real CIFAR-10 images: the consistency gap mean_b w_b MFD(D_t, D_r) on a fixed
    batch of pairs falls at every evaluation. A narrow noise band (ln t ~ N(-1.1, 0.2^2)) keeps the weights
    w = 1 / (t - r) of similar size, so a few steps of a tiny network show the trend."""
    fmap = _feature_map(tmp_path / "fmap")
    args = _args(tmp_path / "run", "--loss", "mfd", "--mfd-pretrained", fmap, "--steps", "30", "--optimizer", "adam",
                 "--p-std", "0.2")
    args[args.index("--eval-every") + 1] = "10"
    summary = example.main(example.parse_args(args))
    assert len(summary["log"]) == 30 and all(math.isfinite(e["loss"]) for e in summary["log"])
    gaps = [json.loads(line)["eval"]["consistency_gap"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()
            if "eval" in line]
    assert len(gaps) == 4 and all(b < a for a, b in zip(gaps, gaps[1:])), gaps
    assert gaps[-1] < 0.9 * gaps[0], gaps
    grid = Path(summary["last_eval"]["grid_1step"])
    assert grid.is_file() and grid.stat().st_size > 0
    assert (tmp_path / "run" / "samples" / "step_0000030_2step.png").is_file()


@pytest.mark.parametrize("loss", ["pseudo-huber", "l2"])
def test_pixel_baselines_run(tmp_path, loss):
    summary = example.main(example.parse_args(_args(tmp_path / "run", "--loss", loss, "--steps", "2")))
    assert summary["step"] == 2 and all(math.isfinite(e["loss"]) for e in summary["log"])


@pytest.mark.parametrize("script", ["consistency", "diffusion"])
def test_resume_is_exact(tmp_path, script):
    """Stopping at step 2 and resuming to 4 gives the weights of a straight run to 4 (dropout on)."""
    module, make, extra = {"consistency": (example, _args, ["--loss", "pseudo-huber"]),
                           "diffusion": (diffusion, _denoiser_args, [])}[script]
    common = [*extra, "--checkpoint-every", "2", "--dropout", "0.2"]
    module.main(module.parse_args(make(tmp_path / "straight", *common, "--steps", "4")))
    module.main(module.parse_args(make(tmp_path / "stopped", *common, "--steps", "2")))
    module.main(module.parse_args(make(tmp_path / "stopped", *common, "--steps", "4", "--resume")))
    a, b = load_checkpoint(tmp_path / "straight" / "checkpoint.pt"), load_checkpoint(tmp_path / "stopped" / "checkpoint.pt")
    assert a["step"] == b["step"] == 4
    for key in ("model", "ema"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key])


def test_max_minutes_stop_is_decided_by_all_processes(tmp_path, monkeypatch):
    """Under DDP one process out of time must stop them all at the same step (each on its own clock could stop
    on another step, and the others would wait forever in their next all-reduce)."""
    asked = []

    def another_process_is_out_of_time(value, device):
        asked.append(bool(value))  # this process's own verdict: not yet
        return 1

    monkeypatch.setattr(_training, "max_over_processes", another_process_is_out_of_time)
    summary = example.main(example.parse_args(_args(tmp_path / "run", "--loss", "l2", "--steps", "5",
                                                    "--max-minutes", "60")))
    assert summary["step"] == 1 and asked == [False]  # stopped after the first step, with a checkpoint
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["step"] == 1


def test_resume_and_out_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        example.main(example.parse_args(_args(tmp_path / "none", "--loss", "l2", "--steps", "1", "--resume")))
    example.main(example.parse_args(_args(tmp_path / "run", "--loss", "l2", "--steps", "1")))
    with pytest.raises(FileExistsError, match="--resume"):
        example.main(example.parse_args(_args(tmp_path / "run", "--loss", "l2", "--steps", "2")))
    with pytest.raises(ValueError, match="different"):
        example.main(example.parse_args(_args(tmp_path / "run", "--loss", "pseudo-huber", "--steps", "2", "--resume")))


def test_init_from_checkpoint(tmp_path):
    example.main(example.parse_args(_args(tmp_path / "first", "--loss", "l2", "--steps", "1")))
    summary = example.main(example.parse_args(_args(tmp_path / "tuned", "--loss", "pseudo-huber", "--steps", "1",
                                                    "--init", str(tmp_path / "first" / "checkpoint.pt"))))
    assert summary["step"] == 1


def test_frechet_distance_with_classifier(tmp_path):
    pytest.importorskip("torchmetrics")
    from fd_metric import ResNetClassifier, save_classifier

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        save_classifier(ResNetClassifier(widths=(4, 8, 8, 16)).eval(), tmp_path / "fd", {"name": "tiny-test"})
    args = _args(tmp_path / "run", "--loss", "l2", "--steps", "1")
    args[args.index("--fd-network") + 1] = str(tmp_path / "fd")
    summary = example.main(example.parse_args([*args, "--fd-samples", "40"]))
    for evaluation in (summary["first_eval"], summary["last_eval"]):
        assert set(evaluation) >= {"FD_tiny-test_1step", "FD_tiny-test_2step"}
        assert all(math.isfinite(evaluation[k]) and evaluation[k] >= 0 for k in evaluation if k.startswith("FD_"))
    lines = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert sum("eval" in line for line in lines) == 2


def test_mnist_with_grey_feature_map(tmp_path):
    try:
        _training.load_images.__wrapped__("mnist", "test")
    except FileNotFoundError:
        pytest.skip("MNIST archive not available")
    fmap = _feature_map(tmp_path / "fmap", channels=1)
    summary = example.main(example.parse_args(_args(tmp_path / "run", "--dataset", "mnist", "--loss", "mfd",
                                                    "--mfd-pretrained", fmap, "--steps", "2")))
    assert summary["step"] == 2


def test_mnist_with_the_shipped_mnist_map(tmp_path):
    """--dataset mnist defaults to the shipped 'mnist' map, trained on the same 32x32 padded digits the model
    produces, so a change in the padding is seen by the distance too."""
    try:
        _training.load_images.__wrapped__("mnist", "test")
    except FileNotFoundError:
        pytest.skip("MNIST archive not available")
    summary = example.main(example.parse_args(_args(tmp_path / "run", "--dataset", "mnist", "--loss", "mfd",
                                                    "--steps", "2")))
    assert summary["step"] == 2
    distance = example.build_objective("mfd", mfd_pretrained="mnist").distance
    assert tuple(distance.feature_map.config.resolution) == (32, 32)
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    y = x.clone()
    y[..., :2, :] = -1  # a change inside the 2-px padding only
    assert bool((distance(x, y) > 0).all())


@pytest.mark.slow
@pytest.mark.parametrize("objective", [["--loss", "pseudo-huber"], ["--objective", "continuous", "--loss", "l2"]],
                         ids=["discrete", "continuous"])
def test_ddp_two_processes_match_one(tmp_path, objective):
    """torchrun with 2 CPU processes (gloo) computes the same weights as one process with the whole batch (the
    continuous objective runs its JVP through the DDP wrapper's module: DDP's own forward is no torch.func citizen)."""
    common = [*objective, "--steps", "2", "--dropout", "0", "--data-dir", str(tmp_path / "nodata")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    script = str(ROOT / "examples" / "train_consistency_model.py")
    # The subprocesses read real MNIST (no monkeypatching across processes); skip when it is absent.
    try:
        _training.load_images.__wrapped__("mnist", "test")
    except FileNotFoundError:
        pytest.skip("MNIST archive not available")
    from mfd_loss.training.datasets import find_data_dir

    common[-1] = str(find_data_dir())
    args = [*_args(tmp_path / "ddp", "--dataset", "mnist", *common)]
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", script,
                    *args], check=True, env=env, capture_output=True, timeout=300)
    example.main(example.parse_args(_args(tmp_path / "single", "--dataset", "mnist", *common)))
    ddp, single = load_checkpoint(tmp_path / "ddp" / "checkpoint.pt"), load_checkpoint(tmp_path / "single" / "checkpoint.pt")
    for k in single["model"]:
        # equal up to the order of float reductions (the gradient all-reduce), amplified by Adam's 1 / sqrt(v)
        torch.testing.assert_close(ddp["model"][k], single["model"][k], rtol=1e-3, atol=5e-5)


def test_diffusers_network_when_installed():
    pytest.importorskip("diffusers")
    from unet import build_network

    net = build_network("diffusers", in_channels=3, channels=32, channel_mult=(1, 2), num_blocks=1, attention=(),
                        dropout=0.1, resolution=32)
    assert net(torch.zeros(2, 3, 32, 32), torch.zeros(2)).shape == (2, 3, 32, 32)


def test_training_clock_never_runs_backwards_across_a_resume(tmp_path, monkeypatch):
    """The logged train_seconds stay monotone however long a checkpoint write takes.

    A controlled clock advances 1 ms per reading, and the first checkpoint write takes 10 s. An evaluation
    right after that checkpoint must not count the write: the resumed run restarts from the checkpointed
    clock, so an evaluation that counted it would sit ~10 s above every later one (the flaky
    test_convergence_smoke_resumes_and_rereads: 0.44 s at step 1, 0.33 s at step 2 after a resume)."""
    import time

    now = [1000.0]

    def monotonic():
        now[0] += 1e-3
        return now[0]

    real_save, saves = torch.save, []

    def slow_first_save(*a, **k):
        saves.append(1)
        if len(saves) == 1:
            now[0] += 10.0
        return real_save(*a, **k)

    monkeypatch.setattr(time, "monotonic", monotonic)
    monkeypatch.setattr(torch, "save", slow_first_save)
    common = ["--loss", "l2", "--checkpoint-every", "1"]
    args = _args(tmp_path / "run", *common)
    args[args.index("--eval-every") + 1] = "1"
    example.main(example.parse_args([*args, "--steps", "1"]))
    example.main(example.parse_args([*args, "--steps", "3", "--resume"]))
    clocks = [json.loads(line)["eval"]["train_seconds"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()
              if '"eval"' in line]
    assert len(clocks) == 4 and len(saves) == 3
    assert all(a <= b for a, b in zip(clocks, clocks[1:])), clocks
    assert clocks[-1] < 5.0, clocks  # the 10 s write counts nowhere


def test_mfd_init_random_keeps_the_architecture_not_the_weights():
    shipped = example.build_objective("mfd", mfd_pretrained="cifar10").distance.feature_map
    control = example.build_objective("mfd", mfd_pretrained="cifar10", mfd_init="random").distance.feature_map
    again = example.build_objective("mfd", mfd_pretrained="cifar10", mfd_init="random").distance.feature_map
    a, b, c = (dict(m.state_dict()) for m in (shipped, control, again))
    assert a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)
    assert control.config == shipped.config
    weights = [k for k in a if k.endswith("weight") and a[k].ndim == 4]  # the convolutions
    assert weights and all(not torch.equal(a[k], b[k]) for k in weights)
    assert all(torch.equal(b[k], c[k]) for k in b)  # seeded: the same control every time
    assert not any(p.requires_grad for p in control.parameters())
    with pytest.raises(ValueError, match="mfd_init"):
        example.build_objective("mfd", mfd_init="imagenet")


# ------------------------------------------------------------------------------ the diffusion example
def _denoiser_args(out: Path, *extra: str) -> list[str]:
    return ["--out", str(out), "--batch-size", "8", "--log-every", "1", "--eval-every", "1000", "--fd-network", "none",
            "--num-samples", "4", "--sampler-steps", "3", "--no-progress", "--dropout", "0", *TINY_NET, *extra]


def _fixed_denoising_error(model, images: torch.Tensor) -> float:
    """EDM's weighted error on a fixed batch at fixed noise levels, dropout off."""
    from mfd_loss.consistency import edm_loss_weight

    gen = torch.Generator().manual_seed(0)
    x0 = images[:32].float() / 127.5 - 1
    sigma = torch.tensor([0.1, 0.5, 1.0, 3.0]).repeat(8)
    noise = torch.randn(x0.shape, generator=gen)
    with torch.no_grad():
        d = model.eval()(x0 + sigma[:, None, None, None] * noise, sigma)
    return float((edm_loss_weight(sigma) * (d - x0).square().flatten(1).mean(1)).mean())


def test_diffusion_training_lowers_the_denoising_error(tmp_path):
    """40 Adam steps on real CIFAR-10 images: the EMA denoiser's weighted error on a fixed noisy batch falls
    well below the zero-initialised network's (D = c_skip x, error about 1 for data of variance sigma_data^2)."""
    summary = diffusion.main(diffusion.parse_args(_denoiser_args(tmp_path / "edm", "--steps", "40", "--ema-decay", "0.9")))
    images = load_sample_images()[0]
    ckpt = load_checkpoint(tmp_path / "edm" / "checkpoint.pt")
    start = _training.build_denoiser(ckpt["args"], 3)
    trained = _training.load_denoiser(str(tmp_path / "edm" / "checkpoint.pt"), 3, torch.device("cpu"))
    assert _fixed_denoising_error(trained, images) < 0.8 * _fixed_denoising_error(start, images)
    assert summary["step"] == 40 and all(math.isfinite(e["loss"]) for e in summary["log"])
    assert Path(summary["last_eval"]["grid_heun"]).is_file()


def test_diffusion_resume_rejects_another_schedule(tmp_path):
    diffusion.main(diffusion.parse_args(_denoiser_args(tmp_path / "run", "--steps", "1")))
    with pytest.raises(ValueError, match="different"):
        diffusion.main(diffusion.parse_args(_denoiser_args(tmp_path / "run", "--steps", "2", "--resume", "--p-mean", "0")))


@pytest.fixture
def denoiser_checkpoint(tmp_path) -> str:
    diffusion.main(diffusion.parse_args(_denoiser_args(tmp_path / "edm", "--steps", "2")))
    return str(tmp_path / "edm" / "checkpoint.pt")


def test_consistency_tuning_starts_from_the_denoiser(tmp_path, denoiser_checkpoint):
    summary = example.main(example.parse_args(_args(tmp_path / "tuned", "--loss", "pseudo-huber", "--steps", "1",
                                                    "--dropout", "0", "--init", denoiser_checkpoint)))
    assert summary["step"] == 1
    teacher = _training.load_denoiser(denoiser_checkpoint, 3, torch.device("cpu"))
    first = load_checkpoint(tmp_path / "tuned" / "checkpoint.pt")
    assert first["args"]["init"] == denoiser_checkpoint
    # step 0's EMA is the denoiser itself: its 1-step sample is the denoiser's D(80 z, 80)
    z = torch.randn(2, 3, 32, 32)
    model = _training.build_denoiser(first["args"], 3)
    _training.init_weights(model, denoiser_checkpoint)
    torch.testing.assert_close(model.eval()(80 * z, torch.full((2,), 80.0)), teacher(80 * z, torch.full((2,), 80.0)))
    with pytest.raises(ValueError, match="channels=8 where this run has 16"):
        example.main(example.parse_args(_args(tmp_path / "wide", "--loss", "l2", "--steps", "1", "--init",
                                              denoiser_checkpoint, "--channels", "16")))


@pytest.mark.parametrize("solver", ["heun", "euler"])
def test_distillation_mode_targets_the_teacher_step(tmp_path, denoiser_checkpoint, monkeypatch, solver):
    """--teacher: the target of every step is distillation_target(model, teacher, x_t, t, r, solver)."""
    calls = []
    real = example.distillation_target

    def spy(student, teacher, x_t, t, r, chosen):
        calls.append((chosen, type(teacher).__name__, teacher.training, x_t.shape))
        return real(student, teacher, x_t, t, r, chosen)

    monkeypatch.setattr(example, "distillation_target", spy)
    summary = example.main(example.parse_args(_args(
        tmp_path / "cd", "--loss", "pseudo-huber", "--steps", "2", "--dropout", "0", "--teacher", denoiser_checkpoint,
        "--teacher-solver", solver, "--channels", "16")))  # the student may be wider than the teacher
    assert summary["step"] == 2 and all(math.isfinite(e["loss"]) for e in summary["log"])
    assert calls == [(solver, "EDMDenoiser", False, (8, 3, 32, 32))] * 2


def test_training_clock_excludes_set_up(tmp_path, monkeypatch):
    """Set-up before the first step (here a loss that takes 10 s to build) is not training time.

    The controlled clock advances 1 ms per reading; building the objective (in the real runs: loading the
    feature map, and the Fréchet-distance features of the test images) adds 10 s. The step-0 evaluation must
    log 0 s and the last one only the steps' own milliseconds (before the fix the clock ran from the trainer's
    construction: 10 s at step 0, and 10 s more on every resume)."""
    import time

    now = [1000.0]

    def monotonic():
        now[0] += 1e-3
        return now[0]

    build = example.build_objective

    def slow_build(*a, **k):
        now[0] += 10.0
        return build(*a, **k)

    monkeypatch.setattr(time, "monotonic", monotonic)
    monkeypatch.setattr(example, "build_objective", slow_build)
    args = _args(tmp_path / "run", "--loss", "l2", "--steps", "2")
    args[args.index("--eval-every") + 1] = "1"
    example.main(example.parse_args(args))
    example.main(example.parse_args([*args[:-2], "--steps", "4", "--resume"]))
    clocks = [json.loads(line)["eval"]["train_seconds"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()
              if '"eval"' in line]
    assert len(clocks) == 5
    assert clocks[0] == 0.0, clocks
    assert 0.0 < clocks[-1] < 1.0, clocks  # the two starts' 20 s of set-up count nowhere


@pytest.mark.parametrize("script", ["consistency", "diffusion"])
@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_checkpoints_and_the_rerun_resumes_exactly(tmp_path, monkeypatch, capsys, script, signum, code):
    """SIGTERM/SIGINT during step 3 of 5 (no periodic checkpoint due): the run writes its checkpoint at step 3,
    exits 143/130 saying how to resume, and the resumed run ends with the weights of a straight run."""
    module, make, extra = {"consistency": (example, _args, ["--loss", "pseudo-huber"]),
                           "diffusion": (diffusion, _denoiser_args, [])}[script]
    common = [*extra, "--checkpoint-every", "1000", "--dropout", "0.2", "--steps", "5"]
    module.main(module.parse_args(make(tmp_path / "straight", *common)))
    real_batch = _training.Session.batch

    def batch_with_signal(self, step):
        if step == 2:
            signal.raise_signal(signum)  # arrives during the third step
        return real_batch(self, step)

    monkeypatch.setattr(_training.Session, "batch", batch_with_signal)
    summary = module.main(module.parse_args(make(tmp_path / "stopped", *common)))
    assert summary["stopped_by"] == signal.Signals(signum).name and summary["step"] == 3
    assert _training.exit_code(summary) == code
    assert "rerun the same command with --resume" in capsys.readouterr().err
    assert load_checkpoint(tmp_path / "stopped" / "checkpoint.pt")["step"] == 3
    monkeypatch.setattr(_training.Session, "batch", real_batch)
    resumed = module.main(module.parse_args(make(tmp_path / "stopped", *common, "--resume")))
    assert resumed["stopped_by"] is None and _training.exit_code(resumed) == 0
    a, b = load_checkpoint(tmp_path / "straight" / "checkpoint.pt"), load_checkpoint(tmp_path / "stopped" / "checkpoint.pt")
    assert a["step"] == b["step"] == 5
    for key in ("model", "ema"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key])


class _Killed(BaseException):
    """A SIGKILL stand-in: nothing in the loop may catch it, and nothing runs after it."""


def _log(run: Path) -> tuple[list[int], list[tuple[int, float]]]:
    """Steps of the training lines, and (step, consistency gap) of the evaluations, of a run's log.jsonl."""
    entries = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return ([e["step"] for e in entries if "loss" in e],
            [(e["eval"]["step"], e["eval"]["consistency_gap"]) for e in entries if "eval" in e])


def _eval_args(out: Path, *extra: str) -> list[str]:
    args = _args(out, "--loss", "pseudo-huber", "--checkpoint-every", "2", "--steps", "4", *extra)
    args[args.index("--eval-every") + 1] = "2"
    return args


def test_a_run_killed_during_an_evaluation_resumes_to_the_log_of_a_straight_run(tmp_path, monkeypatch):
    """Killed (no signal handler runs) in the evaluation of step 4, after logging steps 3 and 4 that no checkpoint
    holds: the rerun trains them again and logs each step and each evaluation once, as a straight run does
    (before, the log held steps 3 and 4 twice and the benchmark read a ragged curve)."""
    example.main(example.parse_args(_eval_args(tmp_path / "straight")))
    real_evaluate = _training.Session.evaluate

    def killed_at_step_4(self, *a, **k):
        if self.step == 4:
            raise _Killed
        return real_evaluate(self, *a, **k)

    monkeypatch.setattr(_training.Session, "evaluate", killed_at_step_4)
    with pytest.raises(_Killed):
        example.main(example.parse_args(_eval_args(tmp_path / "killed")))
    assert load_checkpoint(tmp_path / "killed" / "checkpoint.pt")["step"] == 2  # evaluation comes before its checkpoint
    assert _log(tmp_path / "killed")[0] == [1, 2, 3, 4]
    monkeypatch.setattr(_training.Session, "evaluate", real_evaluate)
    example.main(example.parse_args(_eval_args(tmp_path / "killed", "--resume")))
    assert _log(tmp_path / "killed") == _log(tmp_path / "straight")
    assert _log(tmp_path / "straight")[0] == [1, 2, 3, 4] and [s for s, _ in _log(tmp_path / "straight")[1]] == [0, 2, 4]


def test_a_checkpoint_without_its_evaluation_is_evaluated_on_resume(tmp_path):
    """A checkpoint of an evaluation step whose evaluation never got logged (mfd-loss before 0.2 checkpointed
    first, then evaluated: killed in between, the resumed run skipped that evaluation and the benchmark's
    seeds no longer shared their evaluation steps): the resumed run evaluates that step first."""
    example.main(example.parse_args(_eval_args(tmp_path / "straight")))
    run = tmp_path / "old"
    example.main(example.parse_args(_eval_args(run, "--steps", "2")))
    state = load_checkpoint(run / "checkpoint.pt")
    state["history"] = [h for h in state["history"] if h.get("eval", {}).get("step") != 2]
    save_checkpoint(run / "checkpoint.pt", state)
    lines = (run / "log.jsonl").read_text().splitlines(keepends=True)
    (run / "log.jsonl").write_text("".join(line for line in lines if json.loads(line).get("eval", {}).get("step") != 2))
    assert [s for s, _ in _log(run)[1]] == [0]  # as the killed run left it
    example.main(example.parse_args(_eval_args(run, "--resume")))
    assert _log(run) == _log(tmp_path / "straight")


def test_continuous_time_training_and_distillation(tmp_path, denoiser_checkpoint, monkeypatch):
    """--objective continuous (METHOD.md Sec. 5b): MFD training (v = eps) and pixel-space distillation (v from the
    teacher) run, log the tangent speed mean_b ||T_b|| as the loss, and refuse a resume under the other objective."""
    import _continuous

    fmap = _feature_map(tmp_path / "fmap")
    summary = example.main(example.parse_args(_args(
        tmp_path / "ct", "--objective", "continuous", "--loss", "mfd", "--mfd-pretrained", fmap, "--steps", "2",
        "--eval-every", "2")))
    assert summary["step"] == 2
    for entry in summary["log"]:  # the value is the feature tangent's norm, not the surrogate's constant
        assert entry["loss"] > 0 and math.isclose(entry["loss"], entry["weighted_distance"], rel_tol=1e-6)
    assert summary["last_eval"]["tangent_speed"] > 0
    with pytest.raises(ValueError, match="--objective continuous"):
        example.main(example.parse_args(_args(tmp_path / "ct", "--loss", "mfd", "--mfd-pretrained", fmap,
                                              "--steps", "3", "--resume")))
    with pytest.raises(ValueError, match="--loss mfd .* or --loss l2"):
        example.main(example.parse_args(_args(tmp_path / "other", "--objective", "continuous", "--loss", "lpips")))

    calls = []
    real = _continuous.teacher_velocity

    def spy(teacher, x, sigma):
        calls.append((type(teacher).__name__, teacher.training, x.shape))
        return real(teacher, x, sigma)

    monkeypatch.setattr(_continuous, "teacher_velocity", spy)
    summary = example.main(example.parse_args(_args(
        tmp_path / "cd", "--objective", "continuous", "--loss", "l2", "--teacher", denoiser_checkpoint,
        "--steps", "2", "--dropout", "0")))
    assert summary["step"] == 2 and all(math.isfinite(e["loss"]) and e["loss"] > 0 for e in summary["log"])
    steps = [c for c in calls if c[2] == (8, 3, 32, 32)]  # the others: the evaluations' fixed pairs
    assert steps == [("EDMDenoiser", False, (8, 3, 32, 32))] * 2 and len(calls) > 2
