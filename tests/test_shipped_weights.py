"""The feature maps shipped inside the package: integrity, strict loading, documented numbers, behaviour."""

import json
import shutil

import pytest

import mfd_loss
from mfd_loss import Perturbations, load_sample_images
from mfd_loss.hub.pretrained import embedded_path, get_pretrained_spec
from mfd_loss.hub.serialization import IntegrityError, load_feature_map, sha256_file
from mfd_loss.training import evaluate_feature_map

SHIPPED = [name for name in sorted(mfd_loss.list_pretrained()) if get_pretrained_spec(name).embedded]


def test_the_default_map_is_shipped():
    assert "cifar10" in SHIPPED, "MFD(pretrained='cifar10') must work offline from the package"


@pytest.mark.parametrize("name", SHIPPED)
def test_embedded_file_matches_its_pinned_hash_and_loads_strictly(name):
    spec = get_pretrained_spec(name)
    folder = embedded_path(spec)
    assert sha256_file(folder / "model.safetensors") == spec.sha256
    fmap, config = load_feature_map(folder, expected_sha256=spec.sha256)
    assert not fmap.training
    assert fmap.config.in_channels == spec.channels and tuple(fmap.config.resolution) == tuple(spec.resolution)
    assert config["label_spec"]["ops"] == list(mfd_loss.label_spec(spec.preset).ops)
    # weights are stored in float16; the recorded effect of that rounding on MFD values is under 0.1%
    assert config["storage_dtype"] == "float16"
    assert config["fp16_storage_max_relative_mfd_change"] < 1e-3


@pytest.mark.parametrize("name", SHIPPED)
def test_a_corrupted_copy_is_refused(name, tmp_path):
    spec = get_pretrained_spec(name)
    copy = tmp_path / name
    shutil.copytree(embedded_path(spec), copy)
    data = bytearray((copy / "model.safetensors").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="checksum mismatch"):
        load_feature_map(copy, expected_sha256=spec.sha256)


@pytest.mark.parametrize("name", SHIPPED)
def test_model_card_states_the_measured_r2(name):
    folder = embedded_path(get_pretrained_spec(name))
    config = json.loads((folder / "config.json").read_text())
    card = (folder / "README.md").read_text()
    r2 = config["metrics"]["held_out"]["r2"]
    assert len(r2) == config["architecture"]["num_labels"]
    for label, value in r2.items():
        assert f"| {label} | {value:.4f} |" in card
    assert config["recipe"]["steps_done"] > 0 and f'"steps_done": {config["recipe"]["steps_done"]}' in card


@pytest.mark.parametrize("name", SHIPPED)
def test_model_card_is_generated_by_the_template(name):
    from mfd_loss.hub import model_card

    spec = get_pretrained_spec(name)
    card = (embedded_path(spec) / "README.md").read_text()
    assert card == model_card(embedded_path(spec), repo_id=spec.repo_id)  # regenerate: mfd_loss.hub.write_model_card
    assert "## Intended use and limits" in card and "## Data and terms" in card


def test_cifar10_map_regresses_degradations_on_real_images():
    """Behaviour, not bookkeeping: on real test images with every op on, the shipped map recovers the
    noise level and the blur strength (the labels it learns first), far better than a constant guess."""
    fmap, config = load_feature_map(embedded_path(get_pretrained_spec("cifar10")))
    images = load_sample_images()[0]
    metrics = evaluate_feature_map(fmap, images, Perturbations(config["label_spec"]["ops"], p=0.5), p=0.5, seed=7)
    assert metrics["r2"]["noise_std"] > 0.5
    assert metrics["r2"]["blur_sigma"] > 0.5
