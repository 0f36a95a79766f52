"""Training a feature map on real images: it learns, resumes bit-exactly, refuses a changed recipe,
and writes its checkpoint atomically."""

from __future__ import annotations

import csv
import math
import os

import pytest
import torch

import mfd_loss.checkpoint
from mfd_loss import FeatureMapConfig, Perturbations, TrainConfig, load_feature_map, train_feature_map
from mfd_loss.checkpoint import atomic_write, load_checkpoint, save_checkpoint
from mfd_loss.trainer import evaluate_feature_map

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

    monkeypatch.setattr(mfd_loss.checkpoint.torch, "save", crashing_save)
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
    from mfd_loss.trainer import evaluate_feature_map

    images = load_sample_images()[0][:21]
    fmap = VGGFeatureMap(FeatureMapConfig(arch="vgg11", width=0.125))
    metrics = evaluate_feature_map(fmap, images, Perturbations("all", p=1.0), p=1.0, batch_size=10)
    assert metrics["num_images"] == 21
    assert all(v == v for v in metrics["r2"].values())  # every label varies at p = 1, so no NaN
