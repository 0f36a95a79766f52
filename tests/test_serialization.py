"""Exported feature maps (model.safetensors + config.json): exact round trip, strict loading,
label-spec and checksum checks, recorded SHA-256, non-finite weights, strict JSON, float16 storage."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import mfd_loss
from mfd_loss import MFD, label_spec, load_feature_map, save_feature_map
from mfd_loss.hub.serialization import IntegrityError, sha256_file

SHIPPED = sorted((Path(mfd_loss.__file__).parent / "weights").glob("*/config.json"))


def strict_json(text):
    """json.loads with JSON's own grammar: NaN, Infinity and -Infinity are refused (as JSON.parse does)."""
    def refuse(name):
        raise ValueError(f"{name} is not JSON")
    return json.loads(text, parse_constant=refuse)


@pytest.fixture
def trained_like(make_map, images):
    """A tiny map with non-trivial BatchNorm statistics (a few train-mode passes on real images)."""
    fmap = make_map(seed=7)
    with torch.no_grad():
        for i in range(3):
            fmap(images[16 * i:16 * i + 16])
    return fmap.eval()


@pytest.fixture
def exported(trained_like, tmp_path):
    out = save_feature_map(trained_like, tmp_path / "map", label_spec=label_spec("all"),
                           metadata={"dataset": {"name": "cifar10-sample"}})
    return trained_like, out


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_round_trip_is_exact(exported, images):
    fmap, out = exported
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    loaded, config = load_feature_map(out)
    assert not loaded.training
    original = fmap.state_dict()
    restored = loaded.state_dict()
    assert original.keys() == restored.keys()
    assert all(torch.equal(original[k], restored[k]) for k in original)
    assert config["architecture"] == fmap.config.to_dict()
    assert config["label_spec"]["ops"] == list(label_spec("all").ops)
    assert config["dataset"] == {"name": "cifar10-sample"}
    with torch.no_grad():
        for a, b in zip(fmap(images[:4]), loaded(images[:4])):
            assert torch.equal(a, b)
    # the .safetensors file path works too
    again, _ = load_feature_map(out / "model.safetensors")
    assert all(torch.equal(original[k], again.state_dict()[k]) for k in original)


def test_mfd_loads_a_local_folder(exported, images):
    fmap, out = exported
    from_folder = MFD(pretrained=str(out))
    from_module = MFD(pretrained=None, feature_map=fmap)
    assert torch.equal(from_folder(images[:4], images[4:8]), from_module(images[:4], images[4:8]))
    assert not any(p.requires_grad for p in from_folder.feature_map.parameters())


def _rewrite_weights(out, edit, *, rehash=True):
    """Edit the weights file; with rehash, config.json records the new hash (a deliberate edit), so the
    structural checks are what is tested."""
    tensors = load_file(out / "model.safetensors")
    edit(tensors)
    save_file(tensors, out / "model.safetensors")
    if rehash:
        config = json.loads((out / "config.json").read_text())
        config["weights_sha256"] = sha256_file(out / "model.safetensors")
        (out / "config.json").write_text(json.dumps(config))


def test_unexpected_key_is_an_error(exported):
    _, out = exported
    _rewrite_weights(out, lambda t: t.__setitem__("extra.weight", torch.zeros(3)))
    with pytest.raises(ValueError, match=r"(?s)does not match the architecture.*extra\.weight"):
        load_feature_map(out)


def test_missing_key_is_an_error(exported):
    _, out = exported
    _rewrite_weights(out, lambda t: t.pop("head.weight"))
    with pytest.raises(ValueError, match=r"(?s)does not match the architecture.*head\.weight"):
        load_feature_map(out)


def test_misshaped_tensor_is_an_error(exported):
    _, out = exported
    _rewrite_weights(out, lambda t: t.__setitem__("head.bias", torch.zeros(14)))
    with pytest.raises(ValueError, match=r"(?s)does not match the architecture.*head\.bias"):
        load_feature_map(out)


def test_label_spec_mismatch_at_load(exported):
    _, out = exported
    config = json.loads((out / "config.json").read_text())
    config["label_spec"]["labels"][0]["name"] = "zoom"
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"label spec mismatch.*zoom"):
        load_feature_map(out)


def test_label_count_inconsistent_with_architecture(exported):
    _, out = exported
    config = json.loads((out / "config.json").read_text())
    config["label_spec"] = label_spec("geometric").to_dict()  # 7 labels for a 15-output head
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"label spec has 7 labels but the architecture has 15 outputs"):
        load_feature_map(out)


def test_saving_with_a_wrong_label_spec_is_refused(trained_like, tmp_path):
    with pytest.raises(ValueError, match=r"label spec has 3 labels but the feature map has 15 outputs"):
        save_feature_map(trained_like, tmp_path / "bad", label_spec=label_spec("degradation"))
    assert not (tmp_path / "bad" / "model.safetensors").exists()


def test_checksum(exported):
    _, out = exported
    weights = out / "model.safetensors"
    good = sha256(weights)
    load_feature_map(out, expected_sha256=good)  # the right hash loads
    with pytest.raises(ValueError, match=r"checksum mismatch.*expected " + "0" * 64):
        load_feature_map(out, expected_sha256="0" * 64)
    # a file changed after publication fails its pinned hash
    _rewrite_weights(out, lambda t: t["head.bias"].add_(1e-3))
    with pytest.raises(ValueError, match=r"checksum mismatch"):
        load_feature_map(out, expected_sha256=good)


def test_save_records_the_weights_hash_and_every_load_checks_it(exported, images):
    _, out = exported
    weights = out / "model.safetensors"
    assert json.loads((out / "config.json").read_text())["weights_sha256"] == sha256_file(weights)
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0x01  # one bit flipped inside a tensor: the file still parses
    weights.write_bytes(bytes(data))
    load_file(weights)  # safetensors alone would not notice
    for load in (lambda: load_feature_map(out), lambda: MFD(pretrained=str(out)),
                 lambda: mfd_loss.VGGFeatureMap.from_pretrained(out)):
        with pytest.raises(IntegrityError, match=r"(?s)model\.safetensors has SHA-256 .*config\.json records .*"
                                                 r"was not loaded\. Restore the folder"):
            load()


def test_non_finite_weights_are_refused_at_load_and_save(exported, trained_like, tmp_path):
    _, out = exported
    _rewrite_weights(out, lambda t: t["stages.0.0.weight"].view(-1)[:3].fill_(float("nan")))
    with pytest.raises(ValueError, match=r"non-finite \(NaN or Inf\) weights.*'stages\.0\.0\.weight' \(3 of"):
        load_feature_map(out)
    with pytest.raises(ValueError, match=r"non-finite"):
        MFD(pretrained=str(out))
    broken = trained_like.state_dict()
    bad = {k: v.clone() for k, v in broken.items()}
    bad["head.bias"][0] = float("inf")
    copy_ = mfd_loss.build_feature_map(trained_like.config)
    copy_.load_state_dict(bad)
    with pytest.raises(ValueError, match=r"non-finite.*'head\.bias'"):
        save_feature_map(copy_, tmp_path / "inf", label_spec=label_spec("all"))
    with pytest.raises(ValueError, match=r"non-finite.*'head\.bias'"):
        MFD(feature_map=copy_)


@pytest.mark.parametrize("path", SHIPPED, ids=[p.parent.name for p in SHIPPED])
def test_shipped_configs_are_strict_json(path):
    config = strict_json(path.read_text())
    ranges = [entry["range"] for entry in config["label_spec"]["labels"]]
    assert [None, None] in ranges  # unbounded (normally distributed) labels are written as null
    assert config["weights_sha256"] == sha256_file(path.parent / "model.safetensors")


def test_exported_config_is_strict_json_and_old_infinity_configs_still_load(exported):
    fmap, out = exported
    save_feature_map(fmap, out, label_spec=label_spec("all"), metadata={
        "metrics": {"r2": {"scale_w": float("nan")}, "best": float("inf")}, "steps": torch.tensor(3)})
    config = strict_json((out / "config.json").read_text())
    assert config["metrics"] == {"r2": {"scale_w": None}, "best": None} and config["steps"] == 3
    assert config["label_spec"]["labels"][0]["range"] == [None, None]
    assert config["label_spec"]["labels"][1]["range"] == [-2.0, 0.0]
    # a config written by mfd-loss 0.1 (Infinity in the label ranges, no recorded hash) still loads
    for entry in config["label_spec"]["labels"]:
        entry["range"] = [float("-inf") if entry["range"][0] is None else entry["range"][0],
                          float("inf") if entry["range"][1] is None else entry["range"][1]]
    del config["weights_sha256"]
    (out / "config.json").write_text(json.dumps(config))
    assert "Infinity" in (out / "config.json").read_text()
    loaded, _ = load_feature_map(out)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), fmap.state_dict().values()))


def test_float16_export_loads_close_to_float32(trained_like, tmp_path, images):
    full = save_feature_map(trained_like, tmp_path / "fp32", label_spec=label_spec("all"))
    half = save_feature_map(trained_like, tmp_path / "fp16", label_spec=label_spec("all"), dtype=torch.float16)
    assert json.loads((half / "config.json").read_text())["storage_dtype"] == "float16"
    assert load_file(half / "model.safetensors")["head.weight"].dtype == torch.float16
    ratio = (half / "model.safetensors").stat().st_size / (full / "model.safetensors").stat().st_size
    assert 0.45 < ratio < 0.6
    loaded, _ = load_feature_map(half)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    ref = trained_like.state_dict()
    for k, v in loaded.state_dict().items():
        if v.is_floating_point():
            torch.testing.assert_close(v, ref[k], rtol=1e-3, atol=1e-4)
        else:
            assert torch.equal(v, ref[k])
    x, y = images[:8], images[8:16]
    d16 = MFD(pretrained=None, feature_map=loaded)(x, y)
    d32 = MFD(pretrained=None, feature_map=trained_like)(x, y)
    torch.testing.assert_close(d16, d32, rtol=1e-2, atol=0)


def test_unsupported_schema_and_missing_files(exported, tmp_path):
    _, out = exported
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "schema_version": 99}))
    with pytest.raises(ValueError, match=r"schema_version 99 is not supported"):
        load_feature_map(out)
    (out / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        load_feature_map(out)
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors"):
        load_feature_map(tmp_path / "empty-folder")
