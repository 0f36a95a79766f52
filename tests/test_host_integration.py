"""MFD inside someone else's training code (issue 11, items 1 and 2).

A small host module owns a network and an MFD, as ECT's and diffusers' training code hold their losses, and
goes through their patterns: ``host.train().requires_grad_(True)``, AdamW and EMAs built from
``host.parameters()``, a training step, checkpoints through ``state_dict()``, snapshots through ``pickle``,
DDP's broadcast of parameters and buffers. None of it may reach the feature map.
"""

from __future__ import annotations

import copy
import io
import pickle
import warnings

import pytest
import torch
from torch import nn

from mfd_loss import MFD
from mfd_loss.diagnostics import random_init_like


class Host(nn.Module):
    """A tiny consistency-model-like network that owns its loss (ECT pickles its loss; Lightning owns it)."""

    def __init__(self, loss: MFD | None = None, seed: int = 0):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.SiLU(), nn.Conv2d(16, 3, 3, padding=1))
        if loss is not None:
            self.loss = loss

    def forward(self, x):
        return x + 0.1 * self.net(x)


@pytest.fixture(scope="module")
def shipped() -> MFD:
    """MFD on the shipped cifar10 map (embedded in the package: no network)."""
    return MFD(pretrained="cifar10")


@pytest.fixture
def fixed(images):
    return images[:8], images[8:16]


def _map_tensors(loss: MFD) -> set[int]:
    fmap = loss.feature_map
    return {id(t) for t in [*fmap.parameters(), *fmap.buffers()]}


def test_ect_pattern_train_step_and_emas_leave_the_map_alone(shipped, fixed):
    host = Host(copy.deepcopy(shipped))
    x, y = fixed
    with torch.no_grad():
        before = host.loss(x, y)
    host.train().requires_grad_(True)  # ECT: net.train().requires_grad_(True)
    optimizer = torch.optim.AdamW(host.parameters(), lr=1e-2)
    ema = copy.deepcopy(host).eval().requires_grad_(False)  # ECT: ema = copy.deepcopy(net)
    shadow = [p.detach().clone() for p in host.parameters()]  # diffusers: EMAModel(net.parameters())
    handed_out = {id(p) for group in optimizer.param_groups for p in group["params"]} | {id(p) for p in
                                                                                          ema.parameters()}
    assert not handed_out & _map_tensors(host.loss) and not handed_out & _map_tensors(ema.loss)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(host.net.parameters()))
    assert not any(p.requires_grad for p in host.loss.feature_map.parameters())

    net_before = [p.detach().clone() for p in host.net.parameters()]
    optimizer.zero_grad()
    host.loss(host(x), y).mean().backward()
    optimizer.step()
    with torch.no_grad():
        for p_ema, p_net in zip(ema.parameters(), host.parameters()):  # ECT's EMA update
            p_ema.copy_(p_net.detach().lerp(p_ema, 0.999))
        for s_param, p_net in zip(shadow, host.parameters()):  # EMAModel.step
            s_param.sub_((1 - 0.999) * (s_param - p_net))

    assert any(not torch.equal(a, b) for a, b in zip(net_before, host.net.parameters()))  # the host did train
    assert all(p.grad is None for p in host.loss.feature_map.parameters())
    with torch.no_grad():
        assert torch.equal(host.loss(x, y), before)  # same value on the same inputs: the map did not move
        assert torch.equal(ema.loss(x, y), before)
    assert not host.loss.feature_map.training and not ema.loss.feature_map.training


def _bytes(state) -> int:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getbuffer().nbytes


def test_host_checkpoints_round_trip_strictly_with_and_without_mfd(shipped, fixed):
    with_mfd, without = Host(copy.deepcopy(shipped), seed=2), Host(seed=3)
    assert with_mfd.state_dict().keys() == without.state_dict().keys() == {"net.0.weight", "net.0.bias",
                                                                           "net.2.weight", "net.2.bias"}
    assert _bytes(with_mfd.state_dict()) == _bytes(without.state_dict())
    without.load_state_dict(with_mfd.state_dict(), strict=True)  # saved with MFD, loaded without
    assert all(torch.equal(a, b) for a, b in zip(without.parameters(), with_mfd.parameters()))
    fresh = Host(seed=4)
    with_mfd.load_state_dict(fresh.state_dict(), strict=True)  # saved without MFD, loaded with it
    assert all(torch.equal(a, b) for a, b in zip(fresh.parameters(), with_mfd.parameters()))
    x, y = fixed
    with torch.no_grad():
        assert torch.equal(with_mfd.loss(x, y), shipped(x, y))


def test_old_checkpoint_with_a_random_map_never_replaces_the_pretrained_one(shipped, fixed):
    # In mfd-loss 0.1 a host's state_dict carried "loss.feature_map.*"; such keys are ignored, never loaded, and
    # a warning says so when they differ from the MFD's own map.
    host = Host(copy.deepcopy(shipped))
    x, y = fixed
    with torch.no_grad():
        before = host.loss(x, y)
    random_map = random_init_like(shipped, seed=1).feature_map  # the same architecture, other weights
    old = {**host.state_dict(), **{f"loss.feature_map.{k}": v for k, v in random_map.state_dict().items()}}
    with pytest.warns(UserWarning, match=r"feature-map tensors under 'loss\.feature_map\.'.*ignored"):
        host.load_state_dict(old, strict=True)
    with torch.no_grad():
        assert torch.equal(host.loss(x, y), before)
    same = {**host.state_dict(), **{f"loss.feature_map.{k}": v for k, v in shipped.feature_map.state_dict().items()}}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same map: dropped without a word
        host.load_state_dict(same, strict=True)


def test_snapshot_pickle_stores_a_reference_not_the_weights(shipped, fixed, tiny_map):
    x, y = fixed
    bare = len(pickle.dumps(Host()))
    snapshot = pickle.dumps(Host(copy.deepcopy(shipped)))
    assert len(snapshot) - bare < 200_000  # the map itself is 9 MB in float32
    restored = pickle.loads(snapshot)
    with torch.no_grad():
        assert torch.equal(restored.loss(x, y), shipped(x, y))
    assert not restored.loss.feature_map.training
    assert not any(p.requires_grad for p in restored.loss.feature_map.parameters())
    assert _bytes(Host(copy.deepcopy(shipped))) - _bytes(Host()) < 200_000  # torch.save(model) pickles too

    # a map the user built keeps its weights (it has no reference to reload from)
    weights = sum(t.numel() * t.element_size() for t in tiny_map.state_dict().values())
    own = pickle.dumps(Host(MFD(feature_map=tiny_map)))
    assert len(own) - bare > weights
    # so does a named map edited after loading: a snapshot never reloads other values than it held
    edited = copy.deepcopy(shipped)
    with torch.no_grad():
        edited.feature_map.head.bias.add_(1.0)
    again = pickle.loads(pickle.dumps(edited))
    assert torch.equal(again.feature_map.head.bias, edited.feature_map.head.bias)


def _old_loss_class() -> type:
    """The loss class as mfd-loss 0.1 defined it (f1eecc9), under the real class's name: the map a
    registered submodule, and none of the later attributes (resize, validate_args, the input range, the
    warned-once flag, the map holder)."""

    def __init__(self, feature_map: nn.Module, normalize: bool = False):
        nn.Module.__init__(self)
        self.config = {}
        self.feature_map = feature_map.eval().requires_grad_(False)
        self.distance, self.normalize, self.reduction = "group", normalize, "none"

    return type("ManifoldFeatureDistance", (nn.Module,), {"__init__": __init__, "__module__": "mfd_loss.loss",
                                                          "__qualname__": "ManifoldFeatureDistance"})


@pytest.mark.parametrize("normalize", [False, True])
def test_unpickles_a_loss_pickled_before_0_1_0(tiny_map, fixed, monkeypatch, normalize):
    import mfd_loss.loss

    x, y = fixed
    if normalize:
        x, y = (x + 1) / 2, (y + 1) / 2
    old_class = _old_loss_class()
    with monkeypatch.context() as m:  # pickle an old object under the class's real name
        m.setattr(mfd_loss.loss, "ManifoldFeatureDistance", old_class)
        old = pickle.dumps(Host(old_class(copy.deepcopy(tiny_map), normalize=normalize)))
    restored = pickle.loads(old)
    assert type(restored.loss) is MFD and "feature_map" not in restored.loss._modules
    assert restored.loss.resize is None and restored.loss.validate_args
    with torch.no_grad():
        assert torch.equal(restored.loss(x, y), MFD(feature_map=tiny_map, normalize=normalize)(x, y))
    with pytest.warns(Warning, match="shown once"):  # the range warning works (and fires once)
        restored.loss(x * 255, y * 255)
    with pytest.raises(ValueError, match="NaN"):
        restored.loss(torch.full_like(x, float("nan")), y)


def test_ddp_broadcast_of_parameters_and_buffers_leaves_the_map_intact(shipped, fixed, tmp_path):
    x, y = fixed
    ours = Host(copy.deepcopy(shipped), seed=5)
    with torch.no_grad():
        before = ours.loss(x, y)
    # DDP copies rank 0's module.parameters() and module.buffers() into every rank at construction, and its
    # buffers on every forward (broadcast_buffers=True). Simulate a rank 0 whose map differs.
    rank0 = Host(random_init_like(shipped, seed=2), seed=6)
    with torch.no_grad():
        for dst, src in zip([*ours.parameters(), *ours.buffers()], [*rank0.parameters(), *rank0.buffers()]):
            dst.copy_(src)
    assert all(torch.equal(a, b) for a, b in zip(ours.parameters(), rank0.parameters()))  # the net was synced
    with torch.no_grad():
        assert torch.equal(ours.loss(x, y), before)

    # a real one-process DDP (gloo, CPU) over the host: forward, backward, the map untouched
    dist = torch.distributed
    if not dist.is_available():
        pytest.skip("torch.distributed is not available in this build")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        ddp = nn.parallel.DistributedDataParallel(ours)
        assert not {id(p) for p in ddp.parameters()} & _map_tensors(ours.loss)
        ours.loss(ddp(x), y).mean().backward()
        assert all(p.grad is None for p in ours.loss.feature_map.parameters())
    finally:
        dist.destroy_process_group()
    with torch.no_grad():
        assert torch.equal(ours.loss(x, y), before)


def test_torch_save_of_a_host_needs_weights_only_false_as_the_docs_say(shipped, fixed, tmp_path):
    """``torch.save(host)`` snapshots load back only with ``weights_only=False`` (torch >= 2.6 default is True);
    docs/hub.md and docs/troubleshooting.md, which recommend such snapshots, must say so."""
    import pickle as _pickle

    host = Host(copy.deepcopy(shipped))
    path = tmp_path / "host.pt"
    torch.save(host, path)
    with pytest.raises(_pickle.UnpicklingError):
        torch.load(path)
    again = torch.load(path, weights_only=False)
    x, y = fixed
    assert torch.equal(again.loss(x, y), host.loss(x, y))
    from pathlib import Path

    docs = Path(__file__).resolve().parents[1] / "docs"
    for page in ("hub.md", "troubleshooting.md"):
        assert "weights_only=False" in (docs / page).read_text(), page
