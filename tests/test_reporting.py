"""--report-to: TensorBoard event files read back with TensorBoard's own reader, wandb offline, clear errors."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from mfd_loss.training.reporting import NullReporter, image_grid, make_reporter


def test_tensorboard_event_file_is_written_and_read_back(tmp_path, images):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    reporter = make_reporter("tensorboard", tmp_path / "tb")
    reporter.scalars({"train/loss": 0.5, "train/lr": 1e-3}, step=1)
    reporter.scalars({"train/loss": 0.25, "eval/r2/scale_w": 0.75}, step=2)
    batch = images[:6]
    reporter.images("train/perturbed", batch, step=2)
    reporter.close()

    events = list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert len(events) == 1
    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0, "scalars": 0}).Reload()
    loss = acc.Scalars("train/loss")
    assert [(e.step, e.value) for e in loss] == [(1, 0.5), (2, 0.25)]
    assert acc.Scalars("eval/r2/scale_w")[0].value == 0.75
    assert acc.Scalars("train/lr")[0].value == pytest.approx(1e-3)
    (image,) = acc.Images("train/perturbed")
    grid = image_grid(batch)  # 6 images of 32 px, 3 per row, 2 px apart: 2 rows
    assert image.step == 2 and (image.height, image.width) == tuple(grid.shape[1:]) == (2 + 2 * 34, 2 + 3 * 34)


def test_wandb_offline_run_records_the_scalars(tmp_path, monkeypatch, images):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    reporter = make_reporter("wandb", tmp_path / "wb", config={"lr": 1e-3}, name="test")
    reporter.scalars({"train/loss": 0.5}, step=1)
    reporter.images("train/perturbed", images[:4], step=1)
    reporter.scalars({"train/loss": 0.25}, step=2)
    reporter.close()
    # wandb >= 0.2x has no Python reader for its offline transaction log (run-*.wandb); the image is a plain file
    (run,) = (tmp_path / "wb").glob("wandb/offline-run-*")
    (log,) = run.glob("run-*.wandb")
    assert b"train/loss" in log.read_bytes()
    (png,) = run.glob("files/media/images/train/perturbed_1_*.png")
    from PIL import Image

    assert Image.open(png).size == (2 + 2 * 34, 2 + 2 * 34)  # 4 images of 32 px, 2 per row


@pytest.mark.parametrize("name, module, extra", [("tensorboard", "torch.utils.tensorboard", "mfd-loss[tensorboard]"),
                                                 ("wandb", "wandb", "mfd-loss[wandb]")])
def test_a_missing_library_names_the_extra_to_install(name, module, extra, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    with pytest.raises(ImportError, match=extra.replace("[", r"\[").replace("]", r"\]")):
        make_reporter(name, tmp_path)


def test_none_reports_nothing_and_bad_names_are_refused(tmp_path):
    reporter = make_reporter("none")
    assert isinstance(reporter, NullReporter)
    reporter.scalars({"x": 1.0}, 0)
    reporter.close()
    assert not any(tmp_path.iterdir())
    with pytest.raises(ValueError, match="tensorboard"):
        make_reporter("tensorbord", tmp_path)
    with pytest.raises(ValueError, match="log directory"):
        make_reporter("tensorboard")


def test_image_grid_maps_minus_one_one_to_unit_range_and_greys_other_channel_counts():
    x = torch.linspace(-2, 2, 2 * 4 * 8 * 8).reshape(2, 4, 8, 8)
    grid = image_grid(x)
    assert grid.shape == (3, 2 + 8 + 2, 2 + 2 * 10) and grid.min() >= 0 and grid.max() <= 1
    assert torch.equal(grid[0], grid[1])  # a 4-channel latent is shown as its first channel, in grey
    one = image_grid(-torch.ones(1, 1, 4, 4))
    assert one[:, 2:6, 2:6].max() == 0  # -1 is black
    with pytest.raises(ValueError, match="N, C, H, W"):
        image_grid(torch.zeros(3, 8, 8))


def test_train_report_to_tensorboard_writes_loss_lr_r2_and_perturbed_inputs(tmp_path, sample_uint8):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from mfd_loss.cli import main as cli_main

    np.save(tmp_path / "x.npy", sample_uint8.numpy())
    code = cli_main(["train", "--data", str(tmp_path / "x.npy"), "--out", str(tmp_path / "run"), "--arch", "vgg11",
                     "--width", "0.125", "--steps", "4", "--batch-size", "8", "--ramp-steps", "1", "--p-max", "0.7",
                     "--eval-fraction", "0.25", "--eval-every", "2", "--checkpoint-every", "2",
                     "--report-to", "tensorboard"])
    assert code == 0
    acc = EventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={"images": 0, "scalars": 0}).Reload()
    tags = acc.Tags()
    assert {"train/loss", "train/lr", "train/images_per_second", "eval/mse_mean", "eval/r2/scale_w"} <= set(tags["scalars"])
    assert [e.step for e in acc.Scalars("eval/r2/scale_w")] == [2, 4]
    eval_rows = (tmp_path / "run" / "eval.csv").read_text().splitlines()[1:]
    assert [round(e.value, 5) for e in acc.Scalars("eval/mse_mean")] == [round(float(r.split(",")[1]), 5) for r in eval_rows]
    assert [e.step for e in acc.Images("train/perturbed_inputs")] == [2, 4]


def test_train_report_to_an_uninstalled_library_fails_before_loading_data(tmp_path, monkeypatch, capsys):
    from mfd_loss.cli import main as cli_main

    monkeypatch.setitem(sys.modules, "wandb", None)
    code = cli_main(["train", "--data", str(tmp_path / "missing.npy"), "--out", str(tmp_path / "run"),
                     "--report-to", "wandb"])
    err = capsys.readouterr().err
    assert code == 2 and "mfd-loss[wandb]" in err and "missing.npy" not in err


def test_consistency_example_reports_to_tensorboard(tmp_path, monkeypatch, sample_uint8):
    """examples/train_consistency_model.py --report-to tensorboard: log.jsonl's numbers and the sample grids."""
    pytest.importorskip("tensorboard")
    from pathlib import Path

    from conftest import load_script
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    examples = Path(__file__).resolve().parents[1] / "examples"
    monkeypatch.syspath_prepend(str(examples))
    training = load_script(examples / "_training.py")
    monkeypatch.setattr(training, "load_images", lambda dataset, split, data_dir=None: (sample_uint8, None))
    example = load_script(examples / "train_consistency_model.py")
    args = example.parse_args(["--out", str(tmp_path / "run"), "--steps", "2", "--batch-size", "8", "--log-every", "1",
                               "--eval-every", "2", "--fd-network", "none", "--num-samples", "4", "--no-progress",
                               "--channels", "8", "--channel-mult", "1,2", "--num-blocks", "1", "--attention", "none",
                               "--loss", "pseudo-huber", "--report-to", "tensorboard"])
    example.main(args)
    acc = EventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={"images": 0, "scalars": 0}).Reload()
    logged = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    losses = [entry["loss"] for entry in logged if "loss" in entry]
    assert [round(e.value, 4) for e in acc.Scalars("train/loss")] == [round(v, 4) for v in losses]
    assert {"samples/1step", "samples/2step"} <= set(acc.Tags()["images"])
    assert [e.step for e in acc.Images("samples/1step")] == [0, 2]
