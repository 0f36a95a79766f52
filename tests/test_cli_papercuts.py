"""The CLI's first hour: explicit paths are honoured, defaults agree, help points where a user can go."""

from __future__ import annotations

import pytest

from mfd_loss.cli import build_parser
from mfd_loss.cli import main as cli_main
from mfd_loss.training.datasets import find_data_dir


def test_an_explicit_data_dir_that_does_not_exist_is_an_error(tmp_path, monkeypatch, capsys):
    (tmp_path / "shared" / "data" / "cifar10").mkdir(parents=True)  # a data folder above the working directory
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert find_data_dir() == tmp_path / "shared" / "data"  # found when nothing is given
    with pytest.raises(FileNotFoundError, match="nope does not exist"):
        find_data_dir(tmp_path / "nope")
    code = cli_main(["train", "--data", "cifar10", "--data-dir", str(tmp_path / "nope"), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "--data-dir" in err and "nope does not exist" in err
    assert not (tmp_path / "r").exists()


def test_help_points_to_documentation_a_wheel_user_can_reach_and_lists_every_recipe(capsys):
    from mfd_loss.training import RECIPES

    parser = build_parser()
    assert "docs/index.md" not in parser.format_help()
    train = parser._subparsers._group_actions[0].choices["train"]
    text = train.format_help()
    for name in RECIPES:
        assert f"\n  {name} " in text, name  # cpu and cpu-long included


def test_train_export_dtype_default_matches_export():
    parser = build_parser()
    train = parser.parse_args(["train", "--data", "x", "--out", "y"])
    export = parser.parse_args(["export", "run", "out"])
    assert train.export_dtype == export.dtype == "float16"


def test_an_unknown_pretrained_name_is_a_value_error_and_a_key_error_printed_as_text():
    from mfd_loss import MFD

    with pytest.raises(ValueError) as info:
        MFD("cifar100")
    assert isinstance(info.value, KeyError)
    assert str(info.value).startswith("no pretrained feature map named 'cifar100'")  # no quotes around the text


def test_an_unwritable_out_fails_before_the_data_is_loaded(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code = cli_main(["train", "--data", str(tmp_path / "missing.npy"), "--out", str(blocker / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "a-file" in err and "missing.npy" not in err, err


def test_push_without_a_reachable_hub_prints_one_line_and_exits_2(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from mfd_loss import MFD

    MFD("cifar10").save_pretrained(tmp_path / "map")
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "HF_ENDPOINT": "http://127.0.0.1:9",  # nothing listens there
           "HF_TOKEN": "hf_not_a_real_token", "HF_HUB_DISABLE_TELEMETRY": "1"}
    env.pop("HF_HUB_OFFLINE", None)
    result = subprocess.run([sys.executable, "-m", "mfd_loss.cli", "push", str(tmp_path / "map"), "org/repo"],
                            capture_output=True, text=True, env=env, timeout=120)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("mfd-loss push: error:"), result.stderr


def test_a_safetensors_file_loads_with_its_config_beside_it_and_says_so_without(tmp_path):
    import shutil

    import torch

    from mfd_loss import MFD

    MFD("cifar10").save_pretrained(tmp_path / "saved")
    (tmp_path / "named").mkdir()
    shutil.copy(tmp_path / "saved" / "model.safetensors", tmp_path / "named" / "my-map.safetensors")
    shutil.copy(tmp_path / "saved" / "config.json", tmp_path / "named" / "config.json")
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.equal(MFD(pretrained=str(tmp_path / "named" / "my-map.safetensors"))(x, -x), MFD("cifar10")(x, -x))
    (tmp_path / "alone").mkdir()
    shutil.copy(tmp_path / "saved" / "model.safetensors", tmp_path / "alone" / "model.safetensors")
    with pytest.raises(FileNotFoundError, match="loads only with the config.json that describes its architecture"):
        MFD(pretrained=str(tmp_path / "alone" / "model.safetensors"))
