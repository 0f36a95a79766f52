"""Training a feature map on real images: it learns, resumes bit-exactly, refuses a changed recipe,
and writes its checkpoint atomically."""

from __future__ import annotations

import csv
import math
import os

import pytest
import torch

import mfd_loss.training.checkpoint
from mfd_loss import FeatureMapConfig, Perturbations, TrainConfig, load_feature_map, train_feature_map
from mfd_loss.training.checkpoint import atomic_write, load_checkpoint, save_checkpoint
from mfd_loss.training import evaluate_feature_map

TINY = FeatureMapConfig(arch="vgg11", width=0.125)


def read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def state_equal(a, b):
    """True when two (possibly nested) state dicts hold bit-identical tensors and equal values."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(state_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(state_equal(x, y) for x, y in zip(a, b))
    return a == b


# ------------------------------------------------------------------------------------------ learning


LEARN = {"batch_size": 32, "lr": 1e-3, "p_max": 0.5, "ramp_steps": 0, "spec": "degradation", "seed": 0,
         "eval_every": 0, "eval_size": 64, "checkpoint_every": 1000}


@pytest.fixture(scope="module")
def learned_run(tmp_path_factory, sample_uint8):
    """10 steps, then resumed to 30, on the 64 real images; evaluated at the end of each part."""
    out = tmp_path_factory.mktemp("learn")
    kwargs = {"architecture": TINY, "eval_data": sample_uint8, "progress": False}
    train_feature_map(sample_uint8, out, config=TrainConfig(steps=10, **LEARN), **kwargs)
    model, summary = train_feature_map(sample_uint8, out, config=TrainConfig(steps=30, **LEARN), **kwargs)
    return out, model, summary


def test_training_lowers_the_regression_error(learned_run, sample_uint8):
    out, model, summary = learned_run
    assert summary["step"] == 30 and summary["finished"]
    evals = {int(row["step"]): float(row["mse_mean"]) for row in read_csv(out / "eval.csv")}
    assert set(evals) == {10, 30}
    pert = Perturbations("degradation")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        fresh = type(model)(model.config)  # same architecture, untrained
    untrained = evaluate_feature_map(fresh, sample_uint8, pert, p=0.5)
    assert evals[30] < evals[10]
    assert evals[30] < 0.85 * untrained["mse_mean"]
    # the returned metrics are those of the final evaluation
    assert math.isclose(summary["metrics"]["mse_mean"], evals[30], rel_tol=1e-9)
    rows = read_csv(out / "log.csv")
    assert [int(r["step"]) for r in rows][-1] == 30
    assert all(math.isfinite(float(r["loss"])) and float(r["loss"]) > 0 for r in rows)


def test_finished_run_exports_a_loadable_map(learned_run, images):
    out, model, _ = learned_run
    loaded, config = load_feature_map(out)
    assert state_equal(loaded.state_dict(), model.state_dict())
    assert config["label_spec"]["ops"] == ["blur", "mixup", "noise"]
    assert config["architecture"]["num_labels"] == 3 and config["recipe"]["steps_done"] == 30
    with torch.no_grad():
        assert torch.equal(loaded.eval()(images[:4])[-1], model.eval()(images[:4])[-1])


# ------------------------------------------------------------------------------------------ resume


RESUME = {"batch_size": 8, "lr": 1e-3, "p_max": 0.6, "ramp_steps": 4, "spec": "all", "seed": 3,
          "eval_fraction": 0.0, "eval_every": 0, "checkpoint_every": 100}


def run(images, out, steps, **overrides):
    config = TrainConfig(steps=steps, **{**RESUME, **overrides})
    return train_feature_map(images, out, config=config, architecture=TINY, progress=False)


def test_resume_is_bit_exact(tmp_path, sample_uint8):
    straight, _ = run(sample_uint8, tmp_path / "a", 6)
    first, _ = run(sample_uint8, tmp_path / "b", 3)
    halfway = {k: v.clone() for k, v in first.state_dict().items()}
    resumed, summary = run(sample_uint8, tmp_path / "b", 6)
    assert summary["step"] == 6
    assert not state_equal(halfway, resumed.state_dict())  # the last 3 steps did train
    assert state_equal(straight.state_dict(), resumed.state_dict())  # weights and BN statistics
    a, b = load_checkpoint(tmp_path / "a" / "checkpoint.pt"), load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    assert a["step"] == b["step"] == 6
    assert state_equal(a["model"], b["model"])
    assert state_equal(a["optimizer"], b["optimizer"])


@pytest.mark.parametrize("change, match", [({"lr": 2e-3}, r"different \['recipe.lr'\]"),
                                           ({"spec": "geometric"}, r"recipe.spec"),
                                           ({"seed": 4}, r"recipe.seed")])
def test_resume_with_another_recipe_raises(tmp_path, sample_uint8, change, match):
    run(sample_uint8, tmp_path, 2)
    with pytest.raises(ValueError, match=match):
        run(sample_uint8, tmp_path, 4, **change)


def test_resume_with_another_architecture_raises(tmp_path, sample_uint8):
    run(sample_uint8, tmp_path, 2)
    with pytest.raises(ValueError, match=r"different \['architecture'\]"):
        train_feature_map(sample_uint8, tmp_path, config=TrainConfig(steps=4, **RESUME),
                          architecture=FeatureMapConfig(arch="vgg11", width=0.25), progress=False)


def test_resume_across_perturbation_pipeline_versions_is_refused(tmp_path, sample_uint8):
    from mfd_loss.training.checkpoint import save_checkpoint

    run(sample_uint8, tmp_path, 2)
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["label_spec"]["pipeline"] == 3
    del state["label_spec"]["pipeline"]  # as written by mfd-loss 0.1: pipeline 1
    save_checkpoint(tmp_path / "checkpoint.pt", state)
    with pytest.raises(ValueError, match=r"perturbation pipeline 1 .* implements pipeline 3"):
        run(sample_uint8, tmp_path, 4)


def _logged(out):
    """(step, loss, p) of every log row; with checkpoint_every=1 a row per step, the loss of that step."""
    return [(int(r["step"]), float(r["loss"]), float(r["p"])) for r in read_csv(out / "log.csv")]


def test_raising_steps_on_resume_mid_ramp_keeps_the_ramp_and_is_bit_exact(tmp_path, sample_uint8):
    ramp = {"ramp_steps": None, "ramp_fraction": 0.5, "checkpoint_every": 1}  # a 3-step ramp over 6 steps
    straight, _ = run(sample_uint8, tmp_path / "a", 6, **ramp)
    train_feature_map(sample_uint8, tmp_path / "b", config=TrainConfig(steps=6, **{**RESUME, **ramp}),
                      architecture=TINY, progress=False, max_minutes=0)  # stops after its first step, mid-ramp
    assert load_checkpoint(tmp_path / "b" / "checkpoint.pt")["step"] == 1
    _, summary = run(sample_uint8, tmp_path / "b", 12, **ramp)  # resumed with twice the steps
    assert summary["step"] == 12
    a, b = _logged(tmp_path / "a"), _logged(tmp_path / "b")
    assert [p for _, _, p in a] == pytest.approx([0.2, 0.4, 0.6, 0.6, 0.6, 0.6])
    assert b[:6] == a  # the same p and bit-identical losses over the first 6 steps
    assert all(p == 0.6 for _, _, p in b[6:])
    assert load_checkpoint(tmp_path / "b" / "checkpoint.pt")["ramp_length"] == 3
    assert load_feature_map(tmp_path / "b")[1]["recipe"]["ramp_length"] == 3  # what the exported config records


def test_checkpoint_without_ramp_fraction_resumes_with_its_absolute_ramp(tmp_path, sample_uint8):
    run(sample_uint8, tmp_path, 2, checkpoint_every=1)  # ramp_steps=4
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    del state["recipe"]["ramp_fraction"]  # as written before ramp fractions existed (no ramp_length either)
    state.pop("ramp_length", None)
    save_checkpoint(tmp_path / "checkpoint.pt", state)
    with pytest.raises(ValueError, match=r"recipe.ramp_steps: 4 in the checkpoint, 3 now"):
        run(sample_uint8, tmp_path, 4, ramp_steps=3)  # another explicit absolute ramp is still refused
    _, summary = run(sample_uint8, tmp_path, 4, checkpoint_every=1, ramp_steps=None)  # today's default ramp
    assert summary["step"] == 4
    assert [p for _, _, p in _logged(tmp_path)] == pytest.approx([0.15, 0.3, 0.45, 0.6])  # the 4-step ramp
    assert load_checkpoint(tmp_path / "checkpoint.pt")["ramp_length"] == 4


# ------------------------------------------------------------------------------------------ atomic writes


def test_atomic_write_crash_keeps_the_old_file(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"step": 1, "weight": torch.arange(5.0)})

    def crash(tmp):
        with open(tmp, "wb") as fh:
            fh.write(b"half a checkpoint")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, crash)
    state = load_checkpoint(path)
    assert state["step"] == 1 and torch.equal(state["weight"], torch.arange(5.0))
    assert os.listdir(tmp_path) == ["checkpoint.pt"]  # no temporary file left behind
    # a successful write replaces the file, again without leftovers
    save_checkpoint(path, {"step": 2})
    assert load_checkpoint(path)["step"] == 2 and os.listdir(tmp_path) == ["checkpoint.pt"]


def test_trainer_crash_during_checkpoint_keeps_previous(tmp_path, sample_uint8, monkeypatch):
    run(sample_uint8, tmp_path, 2)
    before = set(os.listdir(tmp_path))
    real_save = torch.save

    def crashing_save(obj, f, *args, **kwargs):
        real_save({"partial": True}, f)
        raise RuntimeError("killed while writing")

    monkeypatch.setattr(mfd_loss.training.checkpoint.torch, "save", crashing_save)
    with pytest.raises(RuntimeError, match="killed while writing"):
        run(sample_uint8, tmp_path, 4)
    monkeypatch.undo()
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["step"] == 2 and "model" in state
    assert set(os.listdir(tmp_path)) == before  # no temporary files
    # and the run can still be resumed from it
    _, summary = run(sample_uint8, tmp_path, 3)
    assert summary["step"] == 3


def test_missing_checkpoint_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint(tmp_path / "nothing.pt")


def test_evaluation_with_a_one_image_remainder_and_mixup_on():
    """A last evaluation chunk of one image used to crash: mixup needs a partner."""
    from mfd_loss import FeatureMapConfig, Perturbations, VGGFeatureMap, load_sample_images
    from mfd_loss.training import evaluate_feature_map

    images = load_sample_images()[0][:21]
    fmap = VGGFeatureMap(FeatureMapConfig(arch="vgg11", width=0.125))
    metrics = evaluate_feature_map(fmap, images, Perturbations("all", p=1.0), p=1.0, batch_size=10)
    assert metrics["num_images"] == 21
    assert all(v == v for v in metrics["r2"].values())  # every label varies at p = 1, so no NaN


# ------------------------------------------------------------------------------------------ ramp and held-out R^2


def test_learning_rate_is_constant_then_falls_to_zero_along_a_half_cosine():
    constant = TrainConfig(steps=100, lr=1e-3)
    assert {constant.learning_rate(s) for s in range(100)} == {1e-3}
    decayed = TrainConfig(steps=100, lr=1e-3, lr_decay_fraction=0.4)  # decays over steps 60..99
    assert decayed.learning_rate(59) == 1e-3 and decayed.learning_rate(60) == 1e-3
    assert math.isclose(decayed.learning_rate(80), 0.5e-3)  # halfway down the cosine
    assert math.isclose(decayed.learning_rate(70), 0.5e-3 * (1 + math.cos(math.pi / 4)))
    assert 0 < decayed.learning_rate(99) < 2e-6
    with pytest.raises(ValueError, match="lr_decay_fraction"):
        TrainConfig(lr_decay_fraction=1.5)


def test_the_optimiser_steps_with_the_scheduled_learning_rate(tmp_path, sample_uint8):
    # with the whole run decaying, the last step's rate is far below lr: the saved optimiser state says so
    run(sample_uint8, tmp_path, 4, lr_decay_fraction=1.0)
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    want = TrainConfig(steps=4, **RESUME, lr_decay_fraction=1.0).learning_rate(3)
    assert want < 0.2 * RESUME["lr"]
    assert state["optimizer"]["param_groups"][0]["lr"] == want


def test_a_run_stopped_inside_the_learning_rate_decay_resumes_bit_exact(tmp_path, sample_uint8):
    straight, _ = run(sample_uint8, tmp_path / "a", 6, lr_decay_fraction=1.0)
    config = TrainConfig(steps=6, **RESUME, lr_decay_fraction=1.0)
    _, stopped = train_feature_map(sample_uint8, tmp_path / "b", config=config, architecture=TINY, progress=False,
                                   max_minutes=0.0)  # stops after its first step, inside the decay
    assert stopped["step"] == 1 and not stopped["finished"]
    resumed, summary = run(sample_uint8, tmp_path / "b", 6, lr_decay_fraction=1.0)
    assert summary["step"] == 6 and state_equal(straight.state_dict(), resumed.state_dict())


def test_ramp_is_a_fraction_of_the_run():
    """The README's --steps 20000 run used to end at p = 0.06 (a fixed 50k-step ramp) while evaluating at 0.15."""
    paper = TrainConfig()
    assert paper.ramp_length == 50_000  # 1/8 of 400k, the paper's schedule
    assert math.isclose(paper.probability(24_999), 0.075) and paper.probability(49_999) == 0.15
    for steps in (20_000, 50, 3):
        config = TrainConfig(steps=steps)
        assert config.probability(steps - 1) == config.p_max, steps
    assert math.isclose(TrainConfig(steps=20_000).probability(1_249), 0.075)  # halfway through its 2,500-step ramp
    fixed = TrainConfig(steps=100, ramp_steps=10)
    assert fixed.ramp_length == 10 and math.isclose(fixed.probability(4), 0.075)
    assert TrainConfig(steps=100, ramp_fraction=0.0).probability(0) == 0.15
    with pytest.raises(ValueError, match="ramp_fraction"):
        TrainConfig(ramp_fraction=1.5)


def test_regression_metrics_r2_values_and_undefined_labels():
    from mfd_loss.training import regression_metrics

    g = torch.Generator().manual_seed(0)
    target = torch.zeros(40, 3)
    target[:, 0] = torch.randn(40, generator=g)
    target[:, 1] = torch.randn(40, generator=g)  # label 2 stays 0: the op was never on
    prediction = target * torch.tensor([0.5, 1.0, 0.0]) + torch.tensor([0.0, 0.1, 0.2])
    with pytest.warns(UserWarning, match=r"undefined for 1 of 3 labels \(c\)"):
        metrics = regression_metrics(prediction, target, ["a", "b", "c"])
    t0, t1 = target[:, 0].double(), target[:, 1].double()
    assert math.isclose(metrics["r2"]["a"], 1 - (0.25 * t0.pow(2).sum() / (t0 - t0.mean()).pow(2).sum()).item())
    assert math.isclose(metrics["r2"]["b"], 1 - (40 * 0.01 / (t1 - t1.mean()).pow(2).sum()).item())
    assert math.isnan(metrics["r2"]["c"]) and set(metrics["undefined"]) == {"c"}
    assert "no image had this perturbation on" in metrics["undefined"]["c"]
    assert math.isclose(metrics["mse"]["c"], 0.04, rel_tol=1e-6)  # 0.2 is rounded to float32


def test_a_50_step_run_ends_at_p_max_and_says_why_r2_is_undefined(tmp_path, sample_uint8, capsys):
    """The issue's case: 50 steps with the default 2% held out (2 of 64 images). It used to train on p <= 0.00015
    and print R^2 = nan for 9 of 15 labels without a word."""
    config = TrainConfig(steps=50, batch_size=8, eval_every=0, checkpoint_every=1000)
    with pytest.warns(UserWarning) as caught:
        _, summary = train_feature_map(sample_uint8, tmp_path, config=config, architecture=TINY, device="cpu",
                                       progress=False)
    messages = [str(w.message) for w in caught]
    assert any("the held-out set has 2 images" in m and "too few for per-label R^2" in m for m in messages)
    assert any("per-label R^2 is undefined" in m for m in messages)
    rows = read_csv(tmp_path / "log.csv")
    assert float(rows[-1]["p"]) == 0.15 and int(rows[-1]["step"]) == 50
    metrics = summary["metrics"]
    undefined = {k for k, v in metrics["r2"].items() if math.isnan(v)}
    assert undefined and undefined == set(metrics["undefined"])  # every NaN comes with its reason
    out = capsys.readouterr().out
    assert "=undefined" in out and "nan" not in out


def test_fewer_than_two_held_out_images_is_refused(tmp_path, sample_uint8):
    config = TrainConfig(steps=1, batch_size=8, eval_every=0)
    with pytest.raises(ValueError, match="at least 2 held-out images"):
        train_feature_map(sample_uint8[:16], tmp_path, config=config, architecture=TINY, eval_data=sample_uint8[:1],
                          device="cpu", progress=False)


# ------------------------------------------------------------------------------------------ resume on other data, logs


def test_resume_on_other_data_is_refused(tmp_path, sample_uint8):
    run(sample_uint8[:32], tmp_path, 2)
    with pytest.raises(ValueError, match=r"run on other data.*32 images.*--no-resume"):
        run(sample_uint8[32:], tmp_path, 4)  # as many images, other content
    with pytest.raises(ValueError, match="run on other data"):
        run(sample_uint8[:40], tmp_path, 4)  # the same images and more
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["step"] == 2 and state["data_fingerprint"]["num_images"] == 32
    _, summary = run(sample_uint8[:32].clone(), tmp_path, 4)  # the same data (another tensor) resumes
    assert summary["step"] == 4


def test_recipe_mismatch_message_shows_both_values(tmp_path, sample_uint8):
    run(sample_uint8, tmp_path, 2)
    with pytest.raises(ValueError, match=r"recipe.lr: 0.001 in the checkpoint, 0.002 now"):
        run(sample_uint8, tmp_path, 4, lr=2e-3)


def test_resume_drops_log_rows_of_steps_the_checkpoint_does_not_hold(tmp_path, sample_uint8):
    run(sample_uint8, tmp_path, 3)
    with open(tmp_path / "log.csv", "a") as fh:  # a row written after the last checkpoint, then a crash
        fh.write("9,0.5,0.6,100,1.0\n")
    run(sample_uint8, tmp_path, 4)
    assert [int(r["step"]) for r in read_csv(tmp_path / "log.csv")] == [3, 4]
