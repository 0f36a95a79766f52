"""The runnable integrations of docs/integrations.md, run as written for a few CPU steps on real CIFAR-10 images.

The page's diffusers and Lightning blocks are marked ``docs-test: skip`` (tests/test_docs.py would fail without
those packages); this file executes them in page order, in one namespace per host, and checks what a host
relies on: the model trains, the logged value moves, MFD's feature map keeps its pretrained weights and stays
out of optimisers, EMAs and checkpoints. Each test skips with a reason when its packages are missing.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from test_docs import extract_snippets  # the docs' own block extractor (tests/ is on sys.path under pytest)

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "integrations.md"


def _blocks(marker: str) -> list:
    """The page's skipped python blocks that name ``marker`` in their skip reason, in page order."""
    blocks = [s for s in extract_snippets(PAGE) if s.skip_reason and "test_integrations" in s.skip_reason
              and marker in s.skip_reason]
    assert len(blocks) == 2, f"expected a build block and a training block for {marker} in {PAGE.name}"
    return blocks


def _run(snippet, namespace: dict) -> None:
    code = compile("\n" * (snippet.line - 1) + snippet.code + "\n", str(PAGE), "exec")
    exec(code, namespace)


def _pretrained_map_state() -> dict[str, torch.Tensor]:
    from mfd_loss import MFD

    return {k: v.clone() for k, v in MFD(pretrained="cifar10").feature_map.state_dict().items()}


def _assert_map_untouched(mfd, reference: dict[str, torch.Tensor]) -> None:
    state = mfd.feature_map.state_dict()
    assert state.keys() == reference.keys()
    changed = [k for k, v in state.items() if not torch.equal(v.cpu(), reference[k])]
    assert not changed, f"training changed the feature map's tensors {changed[:5]}"
    assert not any(p.requires_grad for p in mfd.feature_map.parameters())
    assert not mfd.feature_map.training


def _assert_varies(values: list[float], what: str) -> None:
    assert len(values) >= 5 and all(torch.isfinite(torch.tensor(values))), f"{what}: {values}"
    assert len({round(v, 6) for v in values}) > 1, f"{what} is constant across steps: {values}"
    assert min(values) > 0


@pytest.fixture
def page_env(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the packaged map needs no network
    torch.manual_seed(0)
    return tmp_path


@pytest.mark.slow
def test_diffusers_loop_trains_and_keeps_mfd_out_of_optimiser_ema_and_checkpoint(page_env):
    pytest.importorskip("diffusers", reason="diffusers is not installed (pip install diffusers accelerate)")
    pytest.importorskip("accelerate", reason="accelerate is not installed (pip install diffusers accelerate)")
    build, train = _blocks("diffusers")
    namespace: dict = {"__name__": "__main__"}
    _run(build, namespace)
    model, unet, optimizer, ema = (namespace[k] for k in ("model", "unet", "optimizer", "ema"))
    unet_params = list(unet.parameters())
    before = [p.detach().clone() for p in unet_params]
    reference = _pretrained_map_state()

    # The host's requires_grad_(True) and parameters() did not reach the map: optimiser and EMA hold the UNet only.
    optimised = [p for group in optimizer.param_groups for p in group["params"]]
    assert {id(p) for p in optimised} == {id(p) for p in unet_params}
    assert [s.shape for s in ema.shadow_params] == [p.shape for p in unet_params]

    _run(train, namespace)
    trained, history = namespace["trained"], namespace["history"]
    _assert_varies(history, "the logged loss")
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, trained.unet.parameters())), \
        "the UNet's parameters did not change"
    assert any(not torch.equal(s.cpu(), b) for s, b in zip(ema.shadow_params, before)), "the EMA did not move"
    _assert_map_untouched(trained.loss_fn.distance, reference)

    # What the loop logs is the weighted distance mean_b w_b MFD_b of the step (not the constant-valued w_b / 2
    # of the paper's surrogate): replay one step of the host's training_loss with the same random draws.
    from mfd_loss import consistency

    x0 = next(iter(namespace["data"]))
    torch.manual_seed(1)
    logged = trained.training_loss(x0).item()
    torch.manual_seed(1)
    t = consistency.sample_noise_levels(x0.shape[0])
    r, noise = consistency.r_from_t(t), torch.randn_like(x0)
    w = consistency.consistency_weight(t, r)
    with torch.no_grad():
        d_t, d_r = (trained(x0 + s.view(-1, 1, 1, 1) * noise, s) for s in (t, r))
    expected = (w * trained.loss_fn.distance(d_t, d_r)).mean().item()
    assert logged == pytest.approx(expected, rel=1e-4)
    assert logged != pytest.approx((w / 2).mean().item(), rel=1e-2)

    state = torch.load(page_env / "model.pt", weights_only=True)
    assert state and all(k.startswith("unet.") for k in state), sorted(k for k in state if not k.startswith("unet."))
    assert (page_env / "cm-unet" / "config.json").is_file()
    assert tuple(namespace["sample"].shape) == (4, 3, 32, 32)


@pytest.mark.slow
def test_lightning_module_trains_logs_and_keeps_mfd_out_of_ema_and_checkpoint(page_env):
    pytest.importorskip("lightning", reason="lightning is not installed (pip install lightning)")
    build, train = _blocks("lightning")
    namespace: dict = {"__name__": "__main__"}
    _run(build, namespace)
    module = namespace["module"]
    before = [p.detach().clone() for p in module.denoiser.parameters()]
    reference = _pretrained_map_state()
    net_keys = set(module.denoiser.state_dict())

    # configure_optimizers hands self.parameters() over: exactly the denoiser's.
    optimised = [p for group in module.configure_optimizers().param_groups for p in group["params"]]
    assert {id(p) for p in optimised} == {id(p) for p in module.denoiser.parameters()}

    _run(train, namespace)
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, module.denoiser.parameters())), \
        "the denoiser's parameters did not change"
    _assert_map_untouched(module.loss_fn.distance, reference)

    (metrics,) = page_env.glob("logs/**/metrics.csv")
    with metrics.open(newline="") as fh:
        logged = [float(row["train/weighted_mfd"]) for row in csv.DictReader(fh) if row.get("train/weighted_mfd")]
    _assert_varies(logged, "train/weighted_mfd")

    # The checkpoint holds the EMA weights ("state_dict") and the current ones: both the denoiser's only.
    checkpoint = torch.load(page_env / "ayt.ckpt", map_location="cpu", weights_only=False)
    for key in ("state_dict", "current_model_state"):
        assert {k.removeprefix("denoiser.") for k in checkpoint[key]} == net_keys, (key, sorted(checkpoint[key]))
    ema_weights = [checkpoint["state_dict"]["denoiser." + name] for name, _ in module.denoiser.named_parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(ema_weights, before)), "the EMA weights did not move"
    assert (page_env / "ayt.ckpt").stat().st_size < 1_000_000  # MFD's map alone is 9 MB


def test_openai_cm_recipe_passes_loss_norm_through_and_every_recipe_names_what_it_was_verified_against():
    """At openai/consistency_models e32b69e ``--loss_norm`` never reaches KarrasDenoiser: the recipe must edit
    ``cm/script_util.py`` and ``scripts/cm_train.py`` (without them ``--loss_norm mfd`` trains with LPIPS)."""
    text = PAGE.read_text()
    section = text[text.index("## Consistency Models (openai/consistency_models)"):text.index("## diffusers")]
    assert "+++ b/cm/script_util.py" in section and '+    loss_norm="lpips",' in section
    assert "+        loss_norm=loss_norm," in section
    assert '+    model_and_diffusion_kwargs["loss_norm"] = args.loss_norm' in section
    assert "the training scripts pass `--loss_norm` through" not in text
    table = text[text.index("| host |"):text.index("## What changes")]
    for host, pin in [("ECT", "4311059"), ("Consistency Models", "e32b69e"), ("diffusers", "diffusers 0."),
                      ("PyTorch Lightning", "lightning 2.")]:
        row = next(line for line in table.splitlines() if line.startswith(f"| [{host}]"))
        assert pin in row, f"the {host} row names no verified commit or version: {row}"


@pytest.mark.parametrize("script, env", [("verify_ect.py", "MFD_ECT_CHECKOUT"),
                                         ("verify_openai_cm.py", "MFD_OPENAI_CM_CHECKOUT")])
def test_host_recipe_scripts_against_a_checkout(script, env):
    """Runs a ``.ci/host_recipes`` script when a host checkout is given (no network here: skipped otherwise)."""
    import os
    import subprocess
    import sys

    checkout = os.environ.get(env)
    if not checkout:
        pytest.skip(f"set {env} to a checkout of the host at the commit docs/integrations.md names")
    result = subprocess.run([sys.executable, str(ROOT / ".ci" / "host_recipes" / script), checkout],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and "OK:" in result.stdout, result.stdout + result.stderr
