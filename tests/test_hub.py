"""Feature maps and the Hugging Face Hub: download, cache, offline, pinning, integrity, push, CLI.

Every test talks to a local stand-in of the Hub's file API (tests/hub_server.py) through the real
``huggingface_hub`` client; nothing reaches the internet. In-process tests point the client at the
stand-in by patching ``huggingface_hub.constants`` (it reads HF_ENDPOINT & co. once, at import); the
subprocess test sets the real environment variables.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hub_server import FakeHub

import mfd_loss
from mfd_loss import MFD, VGGFeatureMap, hub, label_spec, save_feature_map
from mfd_loss.hub import pretrained, serialization
from mfd_loss.cli import main as cli_main
from mfd_loss.hub.pretrained import PretrainedSpec, register_pretrained, unregister_pretrained
from mfd_loss.hub.serialization import IntegrityError

ROOT = Path(__file__).resolve().parents[1]
REPO = "org/tiny"
TOKEN = "hf_test_token"


# --- fixtures -----------------------------------------------------------------------------------------------
def _configure_client(monkeypatch, **values) -> None:
    """Set huggingface_hub settings in-process, as the HF_* variables would at import."""
    import huggingface_hub.constants as constants
    import huggingface_hub.file_download as file_download
    import huggingface_hub.hf_api as hf_api

    for name, value in values.items():
        monkeypatch.setattr(constants, name, value, raising=False)
        for module in (file_download, hf_api):  # huggingface_hub < 1.0 copies some of them at import
            if hasattr(module, name):
                monkeypatch.setattr(module, name, value)


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    """A running stand-in Hub, the client pointed at it, and an empty Hub cache under tmp_path."""
    with FakeHub() as server:
        _configure_client(monkeypatch, ENDPOINT=server.url, HF_HUB_OFFLINE=False,
                          HUGGINGFACE_CO_URL_TEMPLATE=server.url + "/{repo_id}/resolve/{revision}/{filename}",
                          HF_HUB_CACHE=str(tmp_path / "hf-cache"),
                          # the client caches its agent-detection registry under HF_HOME: not the real home
                          AGENT_HARNESSES_PATH=str(tmp_path / "agent_harnesses.json"))
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        yield server


def _export(folder: Path, fmap: VGGFeatureMap, **metadata) -> dict[str, bytes]:
    save_feature_map(fmap, folder, label_spec=label_spec("all"), metadata=metadata)
    hub.write_model_card(folder)
    return {name: (folder / name).read_bytes() for name in ("config.json", "model.safetensors", "README.md")}


@pytest.fixture
def published(fake_hub, tmp_path, make_map):
    """org/tiny with two commits on main (v1, then v2 with other weights) and a tag v1; returns their info."""
    v1 = _export(tmp_path / "v1", make_map(seed=1), dataset={"name": "cifar10"})
    v2 = _export(tmp_path / "v2", make_map(seed=2), dataset={"name": "cifar10"})
    c1 = fake_hub.commit(REPO, v1, message="v1")
    fake_hub.tag(REPO, "v1", c1)
    c2 = fake_hub.commit(REPO, v2, message="v2")
    fake_hub.reset_log()
    return {"c1": c1, "c2": c2, "v1": v1, "v2": v2, "dir1": tmp_path / "v1", "dir2": tmp_path / "v2"}


@contextlib.contextmanager
def registered(**fields):
    """Register a test-only named map; always unregistered afterwards (no leak into other tests)."""
    spec = PretrainedSpec(**{"description": "test map", "embedded": None, "channels": 3, "resolution": (32, 32),
                             "value_range": (-1.0, 1.0), "preset": "all", **fields})
    register_pretrained(spec)
    try:
        yield spec
    finally:
        unregister_pretrained(spec.name)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _snapshot_files(cache: Path) -> list[Path]:
    return sorted(p for p in cache.rglob("snapshots/*/*") if p.exists())


@pytest.fixture
def no_load(monkeypatch):
    """Counts reads of weights through safetensors: a rejected file must never be read."""
    calls = []
    real = serialization.load_file
    monkeypatch.setattr(serialization, "load_file", lambda path, *a, **k: calls.append(path) or real(path, *a, **k))
    return calls


# --- parsing and registry -----------------------------------------------------------------------------------
def test_repo_refs_parse():
    assert hub.parse_repo_ref("org/repo") == ("org/repo", None)
    assert hub.parse_repo_ref("org/repo@v1.0") == ("org/repo", "v1.0")
    assert hub.parse_repo_ref("org/repo@refs/pr/1") == ("org/repo", "refs/pr/1")
    for bad in ("repo", "org/repo/extra", "org/repo@", "/abs/path", "./rel/path", "org/../x", "org--x/y"):
        assert not hub.is_repo_ref(bad), bad
        with pytest.raises(ValueError, match="Hub model id"):
            hub.parse_repo_ref(bad)


def test_registry_register_list_unregister():
    with registered(name="unit-test-map", repo_id=REPO, revision="a" * 40, sha256="0" * 64) as spec:
        assert mfd_loss.list_pretrained()["unit-test-map"] == "test map"
        with pytest.raises(ValueError, match="already registered"):
            register_pretrained(spec)
    assert "unit-test-map" not in mfd_loss.list_pretrained()
    with pytest.raises(ValueError, match="sha256"):
        register_pretrained(PretrainedSpec("bad", "d", REPO, "a" * 40, "xyz", None, 3, (32, 32), (-1.0, 1.0), "all"))
    with pytest.raises(ValueError, match="Hub model id"):
        register_pretrained(PretrainedSpec("bad", "d", "noslash", "a" * 40, "0" * 64, None, 3, (32, 32), (-1.0, 1.0),
                                           "all"))
    assert "bad" not in mfd_loss.list_pretrained()
    with pytest.raises(KeyError, match="available"):
        pretrained.load_pretrained("no-such-map")


@pytest.mark.parametrize("name", sorted(mfd_loss.list_pretrained()))
def test_every_registered_map_loads_from_its_embedded_copy_without_network(name, fake_hub):
    spec = pretrained.get_pretrained_spec(name)
    found = pretrained.resolve_pretrained(name)
    if spec.embedded is None:
        pytest.skip(f"{name} ships no embedded copy")
    assert found.source == "embedded" and (found.path / "README.md").is_file()  # weights, config and model card
    assert serialization.sha256_file(found.path / "model.safetensors") == spec.sha256
    fmap, config = pretrained.load_pretrained(name)
    assert fmap.config.in_channels == spec.channels and tuple(fmap.config.resolution) == tuple(spec.resolution)
    assert tuple(config["input_range"]) == tuple(spec.value_range)
    assert fake_hub.requests == []


# --- local paths --------------------------------------------------------------------------------------------
def test_local_folder_and_file_make_no_request(fake_hub, tmp_path, tiny_map):
    folder = tiny_map.save_pretrained(tmp_path / "local")
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    for ref in (folder, str(folder), folder / "model.safetensors"):
        fmap, config = pretrained.load_pretrained(ref)
        assert _same_weights(fmap, tiny_map) and config["schema_version"] == serialization.SCHEMA_VERSION
    assert _same_weights(VGGFeatureMap.from_pretrained(folder), tiny_map)
    MFD(pretrained=str(folder))
    assert fake_hub.requests == []
    with pytest.raises(FileNotFoundError, match="does not exist"):
        pretrained.load_pretrained(str(tmp_path / "missing" / "map"))
    assert fake_hub.requests == []


def test_save_pretrained_is_strict_and_keeps_dtype(tmp_path, tiny_map):
    folder = tiny_map.save_pretrained(tmp_path / "fp16", dtype=torch.float16)
    loaded = VGGFeatureMap.from_pretrained(folder)
    again = loaded.save_pretrained(tmp_path / "again")  # default: the dtype it was loaded from
    assert (again / "model.safetensors").read_bytes() == (folder / "model.safetensors").read_bytes()
    config = json.loads((again / "config.json").read_text())
    assert config["storage_dtype"] == "float16" and config["schema_version"] == 1
    from safetensors.torch import load_file, save_file

    assert config["weights_sha256"] == serialization.sha256_file(again / "model.safetensors")
    tensors = load_file(folder / "model.safetensors")
    save_file({**tensors, "extra": torch.zeros(1)}, str(folder / "model.safetensors"))
    with pytest.raises(IntegrityError, match=r"config\.json records .* was not loaded"):
        VGGFeatureMap.from_pretrained(folder)  # the recorded hash catches the edit first
    edited = json.loads((folder / "config.json").read_text())
    edited["weights_sha256"] = serialization.sha256_file(folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps(edited))
    with pytest.raises(ValueError, match="does not match the architecture"):
        VGGFeatureMap.from_pretrained(folder)  # a deliberate edit still has to fit the architecture


def test_loss_save_pretrained_round_trips_every_option(tmp_path, tiny_map, images):
    loss = MFD(pretrained=None, feature_map=tiny_map, distance="squared", normalize=True, reduction="sum",
               resize="tiles", validate_args=False)
    folder = loss.save_pretrained(tmp_path / "loss")
    assert json.loads((folder / "config.json").read_text())["loss"] == {
        "distance": "squared", "normalize": True, "reduction": "sum", "resize": "tiles", "validate_args": False}
    again = MFD.from_pretrained(folder)
    assert (again.distance, again.normalize, again.reduction, again.resize, again.validate_args) == (
        "squared", True, "sum", "tiles", False)
    x, y = (images[:2].repeat(1, 1, 2, 2) + 1) / 2, (images[2:4].repeat(1, 1, 2, 2) + 1) / 2  # 64 px in [0, 1]
    with torch.no_grad():
        assert torch.equal(again(x, y), loss(x, y))
    assert MFD.from_pretrained(folder, resize=None).resize is None  # an argument still overrides the saved option


def test_nothing_in_the_package_imports_the_hub_re_export_module():
    """mfd_loss.hub only re-exports for users; the package imports the modules that hold the code (one way)."""
    import ast

    root = Path(mfd_loss.__file__).parent
    importers = []
    for path in sorted(root.rglob("*.py")):
        package = ["mfd_loss", *path.relative_to(root).parent.parts]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package[:len(package) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                if target == "mfd_loss.hub" or (target == "mfd_loss" and any(a.name == "hub" for a in node.names)):
                    importers.append(f"{path.relative_to(root)}:{node.lineno}")
    assert importers == []


# --- downloads and the cache --------------------------------------------------------------------------------
def test_first_download_then_cache_reuse(fake_hub, published, tmp_path):
    fmap, _ = pretrained.load_pretrained(REPO, token=TOKEN)
    assert fake_hub.count("GET", "/resolve/") == 2 and fake_hub.count("HEAD") == 2
    assert all(h.get("authorization") == f"Bearer {TOKEN}" for _, p, h in fake_hub.requests if "/resolve/" in p)
    cached = _snapshot_files(tmp_path / "hf-cache")
    assert {p.name: p.read_bytes() for p in cached} == {k: v for k, v in published["v2"].items() if k != "README.md"}
    fake_hub.reset_log()
    again, _ = pretrained.load_pretrained(REPO)  # a branch: one metadata request, no transfer
    assert fake_hub.count("GET", "/resolve/") == 0 and fake_hub.count("HEAD") == 1 and _same_weights(fmap, again)
    fake_hub.reset_log()
    pretrained.load_pretrained(f"{REPO}@{published['c2']}")  # a cached commit: no request at all
    MFD.from_pretrained(REPO, revision=published["c2"])
    assert fake_hub.requests == []


def test_offline_and_local_files_only_make_zero_requests(fake_hub, published, monkeypatch, tmp_path):
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE=1 or local_files_only=True") as err:
        pretrained.load_pretrained(REPO, local_files_only=True)  # cold cache
    assert "mfd-loss download org/tiny" in str(err.value) and fake_hub.requests == []
    pretrained.load_pretrained(REPO)  # warm the cache
    fake_hub.reset_log()
    pretrained.load_pretrained(REPO, local_files_only=True)
    _configure_client(monkeypatch, HF_HUB_OFFLINE=True)  # HF_HUB_OFFLINE=1 before huggingface_hub's import
    MFD(pretrained=REPO)
    _configure_client(monkeypatch, HF_HUB_OFFLINE=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # ... or set later: mfd-loss reads it at call time too
    VGGFeatureMap.from_pretrained(REPO)
    assert fake_hub.requests == []
    with pytest.raises(FileNotFoundError, match="not in the local Hub cache"):
        pretrained.load_pretrained("org/never-downloaded")
    assert fake_hub.requests == []


def test_pinned_revision_is_honoured(fake_hub, published):
    v1 = VGGFeatureMap.from_pretrained(published["dir1"])
    v2 = VGGFeatureMap.from_pretrained(published["dir2"])
    assert _same_weights(VGGFeatureMap.from_pretrained(f"{REPO}@{published['c1']}"), v1)
    assert _same_weights(VGGFeatureMap.from_pretrained(f"{REPO}@v1"), v1)  # a tag
    assert _same_weights(VGGFeatureMap.from_pretrained(REPO, revision=published["c1"]), v1)
    assert _same_weights(VGGFeatureMap.from_pretrained(REPO), v2)  # main moved on
    found = pretrained.resolve_pretrained(f"{REPO}@v1")
    assert found.revision == published["c1"] and found.path.name == published["c1"]
    with registered(name="pinned-map", repo_id=REPO, revision=published["c1"],
                    sha256=_sha(published["v1"]["model.safetensors"])):
        assert _same_weights(MFD(pretrained="pinned-map").feature_map, v1)
        with pytest.raises(ValueError, match="pinned"):
            pretrained.load_pretrained("pinned-map", revision="main")


def test_named_map_resolution_order(fake_hub, published, monkeypatch, tmp_path):
    weights = published["v1"]["model.safetensors"]
    embedded_root = tmp_path / "pkg-weights"
    (embedded_root / "tiny").mkdir(parents=True)
    for name, data in published["v1"].items():
        (embedded_root / "tiny" / name).write_bytes(data)
    monkeypatch.setattr(pretrained, "_embedded_root", lambda: embedded_root)
    with registered(name="tiny", repo_id=REPO, revision=published["c1"], sha256=_sha(weights), embedded="tiny"):
        assert pretrained.resolve_pretrained("tiny").source == "embedded"
        MFD(pretrained="tiny")
        assert fake_hub.requests == []  # embedded copy: no network even with an empty cache
        monkeypatch.setattr(pretrained, "_embedded_root", lambda: tmp_path / "nothing-here")
        assert pretrained.resolve_pretrained("tiny").source == "hub"
        assert fake_hub.count("GET", "/resolve/") == 2
        fake_hub.reset_log()
        assert pretrained.resolve_pretrained("tiny").source == "cache"
        MFD(pretrained="tiny")
        assert fake_hub.requests == []
        assert pretrained.download_pretrained("tiny").name == published["c1"]


def test_named_map_hash_mismatch_is_never_loaded(fake_hub, published, monkeypatch, tmp_path, no_load):
    good = _sha(published["v1"]["model.safetensors"])
    # the pinned commit holds other bytes than the registry's SHA-256 says
    with registered(name="tiny", repo_id=REPO, revision=published["c2"], sha256=good):
        with pytest.raises(IntegrityError, match=r"tiny.*checksum mismatch.*mfd-loss download tiny --force"):
            MFD(pretrained="tiny")
        assert no_load == []
    # a packaged copy that does not match
    embedded_root = tmp_path / "pkg-weights"
    (embedded_root / "tiny").mkdir(parents=True)
    for name, data in published["v2"].items():
        (embedded_root / "tiny" / name).write_bytes(data)
    monkeypatch.setattr(pretrained, "_embedded_root", lambda: embedded_root)
    with registered(name="tiny", repo_id=REPO, revision=published["c1"], sha256=good, embedded="tiny"):
        with pytest.raises(IntegrityError, match="reinstall mfd-loss"):
            pretrained.load_pretrained("tiny")
    assert no_load == []


def test_corrupted_cache_is_rejected_then_repaired(fake_hub, published, no_load):
    good = _sha(published["v1"]["model.safetensors"])
    with registered(name="tiny", repo_id=REPO, revision=published["c1"], sha256=good):
        folder = pretrained.download_pretrained("tiny")
        blob = (folder / "model.safetensors").resolve()
        data = bytearray(blob.read_bytes())
        data[-5] ^= 0xFF  # one flipped byte in the weights: still parses, wrong values
        blob.write_bytes(bytes(data))
        no_load.clear()
        with pytest.raises(IntegrityError, match=r"failed its integrity check.*--force"):
            MFD(pretrained="tiny")
        assert no_load == []
        MFD.from_pretrained("tiny", force_download=True)  # re-downloads the pinned file
        assert _sha(blob.read_bytes()) == good
    # any repo: a truncated cached file fails the Hub's own content hash and is not read
    folder = pretrained.download_pretrained(f"{REPO}@v1")
    blob = (folder / "model.safetensors").resolve()
    blob.write_bytes(blob.read_bytes()[:1000])
    no_load.clear()
    with pytest.raises(IntegrityError, match=rf"{REPO}@{published['c1']}.*integrity") as err:
        pretrained.load_pretrained(f"{REPO}@v1")
    assert f"mfd-loss download {REPO}@{published['c1']} --force" in str(err.value) and no_load == []


def test_corrupted_or_truncated_transfer_is_rejected(fake_hub, published, tmp_path, no_load):
    fake_hub.tamper["model.safetensors"] = lambda b: b[:-1] + bytes([b[-1] ^ 1])  # same size, one bit off
    with pytest.raises(IntegrityError, match=r"org/tiny@.*differs from the Hub's content hash"):
        pretrained.load_pretrained(REPO)
    assert no_load == []
    fake_hub.tamper["model.safetensors"] = lambda b: b[: len(b) // 2]  # server sends half the file
    with pytest.raises(ConnectionError, match="incomplete"):
        pretrained.load_pretrained("org/tiny@v1")
    snapshot = tmp_path / "hf-cache" / "models--org--tiny" / "snapshots" / published["c1"]
    assert not (snapshot / "model.safetensors").exists()
    del fake_hub.tamper["model.safetensors"]
    assert _same_weights(VGGFeatureMap.from_pretrained("org/tiny@v1"), VGGFeatureMap.from_pretrained(published["dir1"]))


def test_interrupted_download_is_resumed_or_retried(fake_hub, published, monkeypatch, tmp_path):
    import huggingface_hub.file_download as fd

    monkeypatch.setattr(fd.time, "sleep", lambda s: None)  # the client waits 1 s before resuming
    fake_hub.drop_after["model.safetensors"] = 1000  # connection lost after 1000 bytes
    try:
        fmap = VGGFeatureMap.from_pretrained(REPO)  # huggingface_hub >= 1.0 resumes by itself
    except ConnectionError as err:  # older clients give up: a clear error, nothing cached, then a retry works
        assert "retry" in str(err) and not _snapshot_files(tmp_path / "hf-cache")[1:]
        fmap = VGGFeatureMap.from_pretrained(REPO)
    gets = [p for m, p, _ in fake_hub.requests if m == "GET" and p.endswith("model.safetensors")]
    assert len(gets) == 2  # cut, then fetched again
    assert _same_weights(fmap, VGGFeatureMap.from_pretrained(published["dir2"]))
    fake_hub.fail_get["model.safetensors"] = 503  # a transfer that fails outright
    with pytest.raises(ConnectionError, match=r"503.*retry"):
        pretrained.load_pretrained("org/tiny@v1")
    assert not any(p.parent.name == published["c1"] and p.name == "model.safetensors"
                   for p in _snapshot_files(tmp_path / "hf-cache"))
    del fake_hub.fail_get["model.safetensors"]
    assert _same_weights(VGGFeatureMap.from_pretrained("org/tiny@v1"), VGGFeatureMap.from_pretrained(published["dir1"]))


def test_unknown_repo_revision_or_file_errors_name_it_and_the_fix(fake_hub, published, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"'org/missing' not found at http://127\.0\.0\.1.*token"):
        MFD(pretrained="org/missing")
    with pytest.raises(FileNotFoundError, match=r"revision 'nope' does not exist in the Hub repo 'org/tiny'.*@main"):
        MFD(pretrained="org/tiny@nope")
    fake_hub.commit("org/empty", {"README.md": b"hello"})
    with pytest.raises(FileNotFoundError, match=r"org/empty@main has no config\.json.*mfd-loss push"):
        pretrained.load_pretrained("org/empty")


def test_server_gone_after_download_loads_from_cache(fake_hub, published, monkeypatch):
    import huggingface_hub.utils._http as http

    monkeypatch.setattr(http.time, "sleep", lambda s: None)  # the client backs off before giving up
    reference = VGGFeatureMap.from_pretrained(REPO)
    fake_hub.stop()
    assert _same_weights(VGGFeatureMap.from_pretrained(REPO), reference)  # branch lookup fails -> cache
    assert _same_weights(MFD(pretrained=REPO).feature_map, reference)
    with pytest.raises(ConnectionError, match="could not reach the Hugging Face Hub"):
        pretrained.load_pretrained("org/not-cached")


def test_pickled_mfd_stores_its_hub_reference_and_verifies_it_on_unpickling(fake_hub, published, images, no_load):
    import pickle

    loss = MFD(pretrained=REPO)  # main = c2
    x, y = images[:4], images[4:8]
    snapshot = pickle.dumps(loss)
    weights = len(published["v2"]["model.safetensors"])
    assert len(snapshot) < weights / 4  # the reference, not the weights
    assert published["c2"].encode() in snapshot and _sha(published["v2"]["model.safetensors"]).encode() in snapshot
    fake_hub.commit(REPO, published["v1"], message="main moves on")  # unpickling still restores c2
    fake_hub.reset_log()
    restored = pickle.loads(snapshot)
    assert fake_hub.requests == []  # a cached commit: no request
    assert torch.equal(restored(x, y), loss(x, y))
    assert "pretrained='org/tiny'" in repr(restored)
    # the cached file changed since: the snapshot refuses it instead of loading other weights
    blob = (pretrained.download_pretrained(f"{REPO}@{published['c2']}") / "model.safetensors").resolve()
    data = bytearray(blob.read_bytes())
    data[-5] ^= 0xFF
    blob.write_bytes(bytes(data))
    no_load.clear()
    with pytest.raises(IntegrityError, match=r"integrity check"):
        pickle.loads(snapshot)
    assert no_load == []


# --- publishing ---------------------------------------------------------------------------------------------
def test_push_then_download_round_trips_bit_exactly(fake_hub, tmp_path, make_map, images):
    fmap = make_map(seed=3).eval()
    info = fmap.push_to_hub("me/pushed", token=TOKEN, metadata={"dataset": {"name": "cifar10"}, "license": "mit"})
    assert fake_hub.files("me/pushed").keys() == {"config.json", "model.safetensors", "README.md"}
    local = fmap.save_pretrained(tmp_path / "same", metadata={"dataset": {"name": "cifar10"}, "license": "mit"})
    assert fake_hub.files("me/pushed")["model.safetensors"] == (local / "model.safetensors").read_bytes()
    folder = pretrained.download_pretrained(f"me/pushed@{info.oid}")
    assert (folder / "model.safetensors").read_bytes() == (local / "model.safetensors").read_bytes()
    assert _same_weights(VGGFeatureMap.from_pretrained(f"me/pushed@{info.oid}"), fmap)

    loss = MFD(pretrained=None, feature_map=fmap, distance="squared", reduction="mean")
    info = loss.push_to_hub("me/loss", token=TOKEN)
    again = MFD.from_pretrained(f"me/loss@{info.oid}")
    assert (again.distance, again.reduction) == ("squared", "mean")
    x, y = images[:4], images[4:8]
    assert torch.equal(again(x, y), loss(x, y))
    from huggingface_hub import ModelCard

    card = ModelCard(fake_hub.files("me/pushed")["README.md"].decode())
    assert card.data.license == "mit" and card.data.library_name == "mfd-loss"
    assert "mfd-loss" in card.data.tags and card.data.datasets == ["uoft-cs/cifar10"]
    assert 'MFD(pretrained="me/pushed")' in card.text
    assert fake_hub.validated_cards  # the client validated the card's YAML before committing


def test_model_card_metadata_and_hand_written_cards(tmp_path, tiny_map):
    metrics = {"held_out": {"mse": {"scale_w": 0.1, "brightness_w": 0.2}, "r2": {"scale_w": 0.9, "brightness_w": 0.8},
                            "mse_mean": 0.15, "images": "cifar10 test, 64 images"}}
    recipe = {"steps": 10, "batch_size": 8, "optimizer": "RAdam"}
    folder = tiny_map.save_pretrained(tmp_path / "m", repo_id="org/carded", metadata={
        "dataset": {"name": "cifar10", "split": "train"}, "recipe": recipe, "metrics": metrics})
    from huggingface_hub import ModelCard

    card = ModelCard.load(folder / "README.md")
    assert card.data.metrics == ["mse", "r_squared"] and card.data.datasets == ["uoft-cs/cifar10"]
    assert card.data.eval_results[0].metric_value == 0.15 and card.data.model_name == "carded"
    assert serialization.sha256_file(folder / "model.safetensors") in card.text and '"RAdam"' in card.text
    (folder / "README.md").write_text("# my own card\n")
    tiny_map.save_pretrained(folder)
    assert (folder / "README.md").read_text() == "# my own card\n"  # hand-written cards are kept


# --- console commands ---------------------------------------------------------------------------------------
def _cli(*argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli_main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def test_cli_push_download_info(fake_hub, tmp_path, make_map):
    folder = make_map(seed=4).save_pretrained(tmp_path / "export", metadata={"recipe": {"steps": 3}})
    (folder / "checkpoint.pt").write_bytes(b"not published")
    code, out, err = _cli("push", folder, "me/cli-map", "--token", TOKEN)
    assert code == 0, err
    pushed = json.loads(out)
    assert pushed["sha256"] == serialization.sha256_file(folder / "model.safetensors")
    assert "checkpoint.pt" not in fake_hub.files("me/cli-map")
    code, out, err = _cli("download", pushed["pretrained"], "--cache-dir", tmp_path / "c2")
    assert code == 0, err
    path = Path(out.strip())
    assert path.name == pushed["revision"] and path.is_relative_to(tmp_path / "c2")
    assert (path / "model.safetensors").read_bytes() == (folder / "model.safetensors").read_bytes()
    fake_hub.reset_log()
    code, out, err = _cli("info", pushed["pretrained"], "--cache-dir", tmp_path / "c2", "--json")
    info = json.loads(out)
    assert code == 0 and fake_hub.requests == []
    assert info["sha256"] == pushed["sha256"] and info["architecture"]["arch"] == "vgg11"
    assert info["recipe"] == {"steps": 3} and len(info["label_spec"]["labels"]) == 15
    code, out, err = _cli("info", folder)
    assert code == 0 and "vgg11" in out and pushed["sha256"] in out and "scale_w" in out
    code, out, err = _cli("download", "org/absent")
    assert code == 2 and "org/absent" in err and "Traceback" not in err
    code, out, err = _cli("info", "no-such-name")
    assert code == 2 and "available" in err


def test_cli_info_shows_r2_as_training_does_with_undefined_labels(tmp_path, tiny_map):
    held_out = {"mse_mean": 0.25, "r2": {"scale_w": 0.5, "rotation_sin": None, "blur_sigma": 0.9876}}
    folder = tiny_map.save_pretrained(tmp_path / "m", metadata={"metrics": {"held_out": held_out}})
    code, out, err = _cli("info", folder)
    assert code == 0, err
    assert "  R^2:          scale_w=0.500 rotation_sin=undefined blur_sigma=0.988\n" in out  # JSON null: undefined


def test_cli_with_real_environment_variables(fake_hub, published, tmp_path, monkeypatch):
    """HF_ENDPOINT and HF_HOME as a user sets them, read by a fresh process; then HF_HUB_OFFLINE=1."""
    env = {**os.environ, "HF_ENDPOINT": fake_hub.url, "HF_HOME": str(tmp_path / "hf-home"), "PYTHONPATH": str(ROOT)}
    for name in ("HF_HUB_CACHE", "HF_HUB_OFFLINE", "HF_TOKEN"):
        env.pop(name, None)
    done = subprocess.run([sys.executable, "-m", "mfd_loss.cli", "download", REPO], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    path = Path(done.stdout.strip())
    assert path.is_relative_to(tmp_path / "hf-home" / "hub") and path.name == published["c2"]
    assert fake_hub.count("GET", "/resolve/") == 2
    fake_hub.reset_log()
    _configure_client(monkeypatch, HF_HUB_CACHE=str(tmp_path / "hf-home" / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, out, err = _cli("info", REPO, "--json")
    assert code == 0, err
    assert json.loads(out)["sha256"] == _sha(published["v2"]["model.safetensors"])
    assert fake_hub.requests == []


def test_train_then_push_to_hub(fake_hub, tmp_path, monkeypatch):
    """`mfd-loss train --push-to-hub` publishes the finished map, which then loads from the Hub."""
    import numpy as np

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    np.save(tmp_path / "x.npy", mfd_loss.load_sample_images()[0][:16].numpy())
    code, out, err = _cli("train", "--data", tmp_path / "x.npy", "--out", tmp_path / "run", "--arch", "vgg11",
                          "--width", "0.125", "--steps", "1", "--batch-size", "8", "--eval-fraction", "0.25",
                          "--push-to-hub", "me/trained-map")
    assert code == 0, err
    pushed = json.loads(out.strip().splitlines()[-1])
    assert pushed["pushed"] == "me/trained-map" and len(pushed["revision"]) == 40
    assert {"config.json", "model.safetensors", "README.md"} <= set(fake_hub.files("me/trained-map"))
    loaded = mfd_loss.MFD.from_pretrained(f"me/trained-map@{pushed['revision']}", cache_dir=tmp_path / "cache")
    assert loaded.feature_map.config.arch == "vgg11"
