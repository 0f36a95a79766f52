"""The `mfd-loss` console command: recipes and defaults, help texts, one-line user errors, interrupted runs."""

from __future__ import annotations

import argparse
import re
import signal
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

import mfd_loss.training.data
from mfd_loss import FeatureMapConfig, TrainConfig, load_sample_images
from mfd_loss.cli import build_parser, main, train_settings
from mfd_loss.training import RECIPES, recipe_settings

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ["demo", "train", "export", "download", "push", "info"]


def _train_args(*extra):
    return build_parser().parse_args(["train", "--data", "x", "--out", "y", *extra])


# ------------------------------------------------------------------------------------------ recipes and defaults


def test_cli_defaults_are_trainconfig_defaults():
    config, arch = train_settings(_train_args())
    assert asdict(config) == asdict(TrainConfig())
    assert (arch.arch, arch.width) == (FeatureMapConfig().arch, FeatureMapConfig().width)


def test_paper_recipe_and_explicit_flags_override_it():
    config, arch = train_settings(_train_args("--recipe", "paper"))
    assert (arch.arch, arch.width) == ("vgg16", 1.0)
    assert (config.steps, config.batch_size, config.lr, config.p_max) == (400_000, 512, 1e-4, 0.15)
    assert config.ramp_length == 50_000 and config.precision == "bf16"
    config, arch = train_settings(_train_args("--recipe", "paper", "--steps", "3", "--batch-size", "8",
                                              "--width", "0.125", "--precision", "fp32"))
    assert (config.steps, config.batch_size, arch.width, config.precision) == (3, 8, 0.125, "fp32")
    assert (config.lr, config.p_max, arch.arch) == (1e-4, 0.15, "vgg16")  # the rest stays the recipe's


def test_ramp_fraction_and_ramp_steps_exclude_each_other():
    with pytest.raises(ValueError, match="not both"):
        train_settings(_train_args("--ramp-fraction", "0.5", "--ramp-steps", "10"))
    assert train_settings(_train_args("--steps", "80", "--ramp-fraction", "0.5"))[0].ramp_length == 40
    assert train_settings(_train_args("--steps", "80", "--ramp-steps", "7"))[0].ramp_length == 7


def _documented_recipes() -> dict[str, dict[str, str]]:
    """The recipe table of docs/training.md: {recipe: {setting: cell text}}."""
    text = (ROOT / "docs" / "training.md").read_text()
    block = text[text.index("<!-- recipe-table -->"):text.index("<!-- /recipe-table -->")]
    rows = [[c.strip().strip("`") for c in line.strip().strip("|").split("|")]
            for line in block.splitlines() if line.startswith("|") and not line.startswith("|---")]
    header, body = rows[0], rows[1:]
    return {name: {row[0]: row[i] for row in body} for i, name in enumerate(header) if i > 0}


def test_docs_recipe_table_matches_the_code():
    documented = _documented_recipes()
    assert set(documented) == set(RECIPES)
    for name, cells in documented.items():
        settings = recipe_settings(name)
        assert set(cells) <= set(settings), set(cells) - set(settings)
        for field, cell in cells.items():
            value = settings[field]
            expected = "unset" if value is None else value
            assert cell == str(expected) or (isinstance(value, float) and float(cell) == value), (name, field, cell)


def test_paper_recipe_smoke_on_cpu(tmp_path, capsys):
    """--recipe paper (bf16 autocast, VGG16-BN) runs end to end at tiny sizes and exports a loadable map."""
    np.save(tmp_path / "x.npy", load_sample_images()[0][:24].numpy())
    code = main(["train", "--recipe", "paper", "--data", str(tmp_path / "x.npy"), "--out", str(tmp_path / "run"),
                 "--steps", "2", "--batch-size", "8", "--width", "0.125", "--eval-size", "8", "--eval-fraction",
                 "0.25", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    config = mfd_loss.load_feature_map(tmp_path / "run")[1]
    assert config["recipe"]["precision"] == "bf16" and config["recipe"]["batch_size"] == 8
    assert config["architecture"]["arch"] == "vgg16" and config["recipe"]["steps_done"] == 2


# ------------------------------------------------------------------------------------------ help texts


def _subparsers(parser):
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


@pytest.mark.parametrize("command", COMMANDS)
def test_help_states_each_default_once_and_cites_shipped_docs(command):
    sub = _subparsers(build_parser())[command]
    formatter = sub._get_formatter()
    for action in sub._actions:
        if action.help in (None, argparse.SUPPRESS):
            continue
        text = formatter._expand_help(action)  # the help line as printed, "(default: ...)" included
        assert text.lower().count("(default") <= 1, (action.dest, text)
        assert "(default: None)" not in text and "(default: False)" not in text, (action.dest, text)
    full = sub.format_help()
    assert not re.search(r"\(default: ([^)]*)\) \(default: \1\)", full)
    for private in ("METHOD.md", "CONVENTIONS.md", "STYLE.md", "shared/"):
        assert private not in full, private
    for cited in re.findall(r"docs/[\w./-]+\.md", full):
        assert (ROOT / cited).is_file(), cited


def test_train_help_shows_the_recipe_values():
    help_text = _subparsers(build_parser())["train"].format_help()
    assert "--recipe" in help_text and "paper" in help_text
    assert re.search(r"--precision.*recipes: default fp32, paper bf16", " ".join(help_text.split()))


# ------------------------------------------------------------------------------------------ one-line user errors


def _errors(tmp_path):
    return {
        "train": ["train", "--data", str(tmp_path / "no-such-folder"), "--out", str(tmp_path / "run")],
        "export": ["export", str(tmp_path / "no-run"), str(tmp_path / "out")],
        "demo": ["demo", "--num-images", "0"],
        "push": ["push", str(tmp_path / "no-map"), "me/repo", "--token", "x"],
        "info": ["info", "no-such-map-name"],
        "download": ["download", "no-such-map-name", "--local-files-only"],
    }


@pytest.mark.parametrize("command", COMMANDS)
def test_user_errors_are_one_line_with_exit_code_2(command, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    argv = _errors(tmp_path)[command]
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"mfd-loss {command}: error: "), err
    assert "Traceback" not in err
    with pytest.raises(Exception):  # --debug: the exception itself, with its traceback
        main([*argv, "--debug"])


def test_demo_num_images_zero_says_what_is_allowed(capsys):
    assert main(["demo", "--num-images", "0"]) == 2
    assert "num_images must lie in [2, 64]" in capsys.readouterr().err


def test_cuda_without_a_gpu_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    np.save(tmp_path / "x.npy", load_sample_images()[0][:16].numpy())
    assert main(["train", "--data", str(tmp_path / "x.npy"), "--out", str(tmp_path / "run"), "--device", "cuda",
                 "--steps", "1", "--batch-size", "8"]) == 2
    assert "torch.cuda.is_available() is False" in capsys.readouterr().err


def test_device_defaults_to_cuda_when_available(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert mfd_loss.training.default_device() == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert mfd_loss.training.default_device() == "cpu"
    assert _train_args().device is None  # the CLI leaves the choice to default_device()


# ------------------------------------------------------------------------------------------ interrupted runs


class _SignalAtBatch(torch.utils.data.Dataset):
    """Wraps a data set; sends `signum` to this process while fetching batch number `at` (counting from 1)."""

    def __init__(self, inner, signum, at):
        self.inner, self.signum, self.at, self.batches = inner, signum, at, 0

    def __len__(self):
        return len(self.inner)

    def __getitem__(self, i):
        return self.inner[i]

    def __getitems__(self, indices):
        self.batches += 1
        if self.batches == self.at:
            signal.raise_signal(self.signum)
        return [self.inner[i] for i in indices]


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_interrupted_train_checkpoints_and_exits_non_zero(tmp_path, capsys, monkeypatch, signum, code):
    real_open = mfd_loss.training.open_image_source

    def open_with_signal(source, **kwargs):
        dataset = real_open(source, **kwargs)
        return _SignalAtBatch(dataset, signum, at=3) if kwargs.get("split") == "train" else dataset

    monkeypatch.setattr(mfd_loss.training.data, "open_image_source", open_with_signal)
    np.save(tmp_path / "x.npy", load_sample_images()[0][:24].numpy())
    argv = ["train", "--data", str(tmp_path / "x.npy"), "--out", str(tmp_path / "run"), "--arch", "vgg11",
            "--width", "0.125", "--steps", "6", "--batch-size", "8", "--eval-fraction", "0", "--device", "cpu"]
    assert main(argv) == code
    err = capsys.readouterr().err
    assert f"interrupted by {signal.Signals(signum).name}" in err and "rerun the same command to resume" in err
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert 1 <= state["step"] < 6  # stopped early, with a checkpoint
    assert not (tmp_path / "run" / "model.safetensors").exists()
    monkeypatch.setattr(mfd_loss.training.data, "open_image_source", real_open)
    assert main(argv) == 0  # the rerun resumes and finishes
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["step"] == 6
