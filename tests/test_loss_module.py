"""The MFD module: frozen, eval-locked feature map; argument and input errors; range warnings."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from mfd_loss import MFD, InputRangeWarning, ManifoldFeatureDistance, manifold_feature_distance


class Parent(nn.Module):
    """A model that owns its loss, as consistency-model training code does."""

    def __init__(self, feature_map):
        super().__init__()
        self.net = nn.Conv2d(3, 3, 3, padding=1)
        self.loss = MFD(pretrained=None, feature_map=feature_map)

    def forward(self, x, target):
        return self.loss(self.net(x), target)


def bn_buffers(module):
    return {name: b.clone() for name, b in module.named_buffers()}


# --------------------------------------------------------------------------------------- frozen map


def test_backward_reaches_input_only(loss_fn, images):
    x = images[:4].clone().requires_grad_(True)
    loss_fn(x, images[4:8]).sum().backward()
    params = list(loss_fn.feature_map.parameters())
    assert params and all(not p.requires_grad for p in params)
    assert all(p.grad is None for p in params)
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_parent_optimizer_never_updates_feature_map(make_map, images):
    parent = Parent(make_map(seed=3))
    before = {k: v.clone() for k, v in parent.loss.feature_map.state_dict().items()}
    net_before = parent.net.weight.detach().clone()
    opt = torch.optim.SGD(parent.parameters(), lr=1.0)
    parent.train()
    for _ in range(2):
        opt.zero_grad()
        parent(images[:4], images[4:8]).mean().backward()
        opt.step()
    assert not torch.equal(parent.net.weight, net_before)  # the model itself did train
    after = parent.loss.feature_map.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BN running stats


def test_parent_train_keeps_feature_map_in_eval(make_map, images):
    parent = Parent(make_map(seed=4))
    parent.eval()
    parent.train()
    assert parent.training and parent.loss.training  # the loss module records the mode ...
    assert not parent.loss.feature_map.training  # ... but its map stays in eval
    bns = [m for m in parent.loss.feature_map.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(not m.training for m in bns)
    parent.loss.train(True)
    assert not parent.loss.feature_map.training
    stats = bn_buffers(parent.loss.feature_map)
    with torch.no_grad():
        for i in range(3):
            parent(images[8 * i:8 * i + 8], images[32:40])
    after = bn_buffers(parent.loss.feature_map)
    assert stats and all(torch.equal(stats[k], after[k]) for k in stats)


def test_host_calls_never_reach_the_map(make_map, images):
    parent = Parent(make_map(seed=6))
    fmap = parent.loss.feature_map
    map_tensors = {id(t) for t in [*fmap.parameters(), *fmap.buffers()]}
    parent.train().requires_grad_(True)  # ECT's and diffusers' loops do this to the whole model
    assert not any(p.requires_grad for p in fmap.parameters())
    assert not fmap.training
    host_tensors = [*parent.parameters(), *parent.buffers(), *parent.state_dict(keep_vars=True).values()]
    assert host_tensors and not map_tensors & {id(t) for t in host_tensors}
    assert not any("feature_map" in name for name, _ in [*parent.named_parameters(), *parent.named_buffers()])
    assert fmap not in list(parent.modules())
    parent.apply(lambda m: nn.init.zeros_(m.weight) if isinstance(m, nn.Conv2d) else None)  # a host init pass
    assert fmap.stages[0][0].weight.abs().sum() > 0
    with pytest.raises(AttributeError, match="fixed when the loss is built"):
        parent.loss.feature_map = make_map(seed=7)


def test_device_and_dtype_moves_reach_the_map(make_map, images):
    parent = Parent(make_map(seed=8))
    ref = parent.loss(images[:2], images[2:4])
    parent.double()  # dtype casts reach the map as they would any submodule
    assert all(p.dtype == torch.float64 for p in parent.loss.feature_map.parameters())
    torch.testing.assert_close(parent.loss(images[:2].double(), images[2:4].double()), ref.double()
                               if ref.dtype == torch.float64 else ref, rtol=1e-4, atol=1e-4, check_dtype=False)
    parent.float().to("meta")
    assert all(p.device.type == "meta" for p in parent.loss.feature_map.parameters())


def test_callers_module_is_not_frozen(make_map, images):
    mine = make_map(seed=5)
    assert mine.training
    loss = MFD(pretrained=None, feature_map=mine)
    assert mine.training
    assert all(p.requires_grad for p in mine.parameters())
    assert loss.feature_map is not mine
    # training my module further does not change the loss's copy
    ref = loss(images[:2], images[2:4])
    with torch.no_grad():
        for p in mine.parameters():
            p.add_(0.5)
    assert torch.equal(loss(images[:2], images[2:4]), ref)


def test_alias_and_repr(loss_fn):
    assert MFD is ManifoldFeatureDistance
    text = repr(loss_fn)
    assert "distance='group'" in text and "reduction='none'" in text


def test_normalize_maps_unit_range_to_model_range(tiny_map, images):
    a01, b01 = (images[:4] + 1) / 2, (images[4:8] + 1) / 2
    plain = MFD(pretrained=None, feature_map=tiny_map)
    unit = MFD(pretrained=None, feature_map=tiny_map, normalize=True)
    torch.testing.assert_close(unit(a01, b01), plain(a01 * 2 - 1, b01 * 2 - 1))


# --------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "make_pred, match",
    [
        (lambda x: x[0, 0], r"4-D \(N, C, H, W\)"),
        (lambda x: x[:2].flatten(1), r"4-D \(N, C, H, W\).*\(2, 3072\)"),
        (lambda x: x[0], r"unsqueeze\(0\)"),
        (lambda x: ((x[:2] + 1) * 127.5).to(torch.uint8), r"floating-point.*torch.uint8"),
        (lambda x: x[:2].long(), r"floating-point.*torch.int64"),
        (lambda x: x[:2, :1], r"1 channel.*3-channel"),
        (lambda x: torch.cat([x[:2], x[:2, :1]], 1), r"4 channel.*3-channel"),
        (lambda x: x[:2].permute(0, 2, 3, 1), r"channels-last \(N, H, W, C\).*permute\(0, 3, 1, 2\)"),
        (lambda x: x[:2, :, :16, :16], r"trained on 32x32 images and inputs are 16x16.*pad them to 32x32"),
        (lambda x: x[:0], r"empty batch"),
    ],
)
def test_bad_prediction_shapes_and_dtypes(loss_fn, images, make_pred, match):
    pred = make_pred(images)
    with pytest.raises(ValueError, match=match):
        loss_fn(pred, pred.clone())


def test_size_other_than_training_resolution(loss_fn, make_map, images):
    big = torch.nn.functional.interpolate(images[:2], size=(48, 48), mode="bilinear")
    with pytest.raises(ValueError, match=r"trained on 32x32 images and inputs are 48x48.*'tiles'.*'antialias'"):
        loss_fn(big, big)
    loss64 = MFD(pretrained=None, feature_map=make_map(resolution=(64, 64)))
    with pytest.raises(ValueError, match=r"trained on 64x64 images and inputs are 32x32"):
        loss64(images[:2], images[2:4])
    up = torch.nn.functional.interpolate(images[:2], size=(64, 64), mode="bilinear")
    assert loss64(up, up.flip(-1)).shape == (2,)


def test_target_is_validated_too(loss_fn, images):
    with pytest.raises(ValueError, match=r"target.*channels-last"):
        loss_fn(images[:2], images[:2].permute(0, 2, 3, 1))
    with pytest.raises(ValueError, match=r"target must be a 4-D"):
        loss_fn(images[:2], images[0])


def test_shape_mismatch(loss_fn, images):
    with pytest.raises(ValueError, match=r"prediction \(2, 3, 32, 32\) and target \(3, 3, 32, 32\).*same shape"):
        loss_fn(images[:2], images[2:5])


@pytest.mark.parametrize("weight", [torch.ones(2, 1), torch.ones(3), torch.ones(()), [1.0, 1.0]])
def test_bad_weight_shape(loss_fn, images, weight):
    with pytest.raises(ValueError, match=r"weight must be a tensor of shape \(N,\) = \(2,\)"):
        loss_fn(images[:2], images[2:4], weight=weight)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("where", ["prediction", "target"])
def test_nan_and_inf_raise(loss_fn, images, bad, where):
    x, y = images[:2].clone(), images[2:4].clone()
    (x if where == "prediction" else y)[1, 2, 5, 7] = bad
    with pytest.raises(ValueError, match=rf"{where} contains NaN or Inf"):
        loss_fn(x, y)
    unit = MFD(pretrained=None, feature_map=loss_fn.feature_map, normalize=True)
    with pytest.raises(ValueError, match=rf"{where} contains NaN or Inf"):
        unit((x + 1) / 2, (y + 1) / 2)


def test_unknown_distance_and_reduction(tiny_map, images):
    with pytest.raises(ValueError, match=r"distance must be one of \('group', 'squared'\), got 'l2'"):
        MFD(pretrained=None, feature_map=tiny_map, distance="l2")
    with pytest.raises(ValueError, match=r"reduction must be one of .*got 'avg'"):
        MFD(pretrained=None, feature_map=tiny_map, reduction="avg")
    with pytest.raises(ValueError, match=r"distance must be one of"):
        manifold_feature_distance(tiny_map, images[:2], images[2:4], distance="L1")
    with pytest.raises(ValueError, match=r"reduction must be one of"):
        manifold_feature_distance(tiny_map, images[:2], images[2:4], reduction="batchmean")


@pytest.mark.parametrize("name", ["cifar10", "mnist", "org/repo", "some/folder"])
def test_pretrained_and_feature_map_both_or_neither(tiny_map, tmp_path, name):
    # any name, the default's spelling included: the map would silently not be the one asked for
    with pytest.raises(ValueError, match=rf"either pretrained= or feature_map=, not both.*{name}"):
        MFD(pretrained=name, feature_map=tiny_map)
    with pytest.raises(ValueError, match=r"either pretrained= or feature_map=, not both"):
        MFD(pretrained=str(tmp_path), feature_map=tiny_map)
    mine = MFD(feature_map=tiny_map)  # the default pretrained= does not count as given
    assert mine.config == {} and mine.feature_map.config == tiny_map.config
    with pytest.raises(ValueError, match=r"pass pretrained=.*or feature_map="):
        MFD(pretrained=None)
    with pytest.raises(ValueError, match=r"pass pretrained=.*or feature_map="):
        MFD(pretrained=None, feature_map=None)


def test_unknown_pretrained_name():
    with pytest.raises(KeyError, match=r"no pretrained feature map named 'no-such-map'"):
        MFD(pretrained="no-such-map")


# --------------------------------------------------------------------------------------- range warnings


def range_warnings(fn):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fn()
    return [w for w in caught if issubclass(w.category, InputRangeWarning)]


def test_warns_on_unit_range_data(loss_fn, images):
    a, b = (images[:4] + 1) / 2, (images[4:8] + 1) / 2
    with pytest.warns(InputRangeWarning, match=r"looks like data in \[0, 1\].*normalize=True"):
        loss_fn(a, b)


def test_warns_on_8bit_range_data(loss_fn, sample_uint8):
    a, b = sample_uint8[:4].float(), sample_uint8[4:8].float()
    with pytest.warns(InputRangeWarning, match=r"8-bit data in \[0, 255\]"):
        loss_fn(a, b)
    unit = MFD(pretrained=None, feature_map=loss_fn.feature_map, normalize=True)
    with pytest.warns(InputRangeWarning, match=r"8-bit data in \[0, 255\].*x / 255"):
        unit(a, b)


def test_warns_on_model_range_data_with_normalize(tiny_map, images):
    unit = MFD(pretrained=None, feature_map=tiny_map, normalize=True)
    with pytest.warns(InputRangeWarning, match=r"looks like data in \[-1, 1\].*drop normalize=True"):
        unit(images[:4], images[4:8])


def test_no_warning_for_correct_range_or_slight_overshoot(tiny_map, images):
    plain = MFD(pretrained=None, feature_map=tiny_map)
    unit = MFD(pretrained=None, feature_map=tiny_map, normalize=True)
    x, y = images[:4], images[4:8]
    over_x, over_y = x * 1.05, y * 1.05  # real images stretched to [-1.05, 1.05]
    assert over_x.min() < -1.0 and over_x.max() > 1.0
    assert range_warnings(lambda: plain(x, y)) == []
    assert range_warnings(lambda: plain(over_x, over_y)) == []
    assert range_warnings(lambda: unit((x + 1) / 2, (y + 1) / 2)) == []
    assert range_warnings(lambda: unit((over_x + 1) / 2, (over_y + 1) / 2)) == []  # [-0.025, 1.025]
    # and the overshooting input still gives a finite positive value
    assert bool((plain(over_x, over_y) > 0).all())


# --------------------------------------------------------------------------------------- call path (issue 11)
# Warnings once per instance at the caller's line, value checks that can be switched off for graph capture,
# explicit resizing, the training data range of non-image maps, and devices.

import copy as _copy  # noqa: E402
import json  # noqa: E402

import torch.nn.functional as F  # noqa: E402

from mfd_loss import FeatureMapConfig, TrainConfig, VGGFeatureMap, train_feature_map  # noqa: E402
from mfd_loss.consistency import tangent_loss  # noqa: E402


def test_range_warning_once_per_instance_at_callers_line(tiny_map, images):
    """100 calls on [0, 1] data gave 189 warnings from loss.py; now one, pointing at this file."""
    loss = MFD(pretrained=None, feature_map=tiny_map)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # no deduplication by Python: the module itself must warn once
        for i in range(100):
            loss((images[i % 8:i % 8 + 2] + 1) / 2, (images[8:10] + 1) / 2)
    hits = [w for w in caught if issubclass(w.category, InputRangeWarning)]
    assert len(hits) == 1 and "once per MFD instance" in str(hits[0].message)
    assert hits[0].filename == __file__
    other = MFD(pretrained=None, feature_map=tiny_map)  # a new instance warns again
    assert len(range_warnings(lambda: other((images[:2] + 1) / 2, (images[2:4] + 1) / 2))) == 1


def test_range_warning_through_a_parent_and_tangent_loss_points_here(tiny_map, images):
    parent = Parent(tiny_map)
    caught = range_warnings(lambda: parent((images[:2] + 1) / 2, (images[2:4] + 1) / 2))
    assert len(caught) == 1 and caught[0].filename == __file__  # Parent.forward's line, in this file
    loss = MFD(pretrained=None, feature_map=tiny_map)
    caught = range_warnings(lambda: tangent_loss((images[:2] + 1) / 2, (images[2:4] + 1) / 2, loss))
    assert len(caught) == 1 and caught[0].filename == __file__


def test_functional_range_warning_once_per_call_site(tiny_map, images):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")  # Python's default: once per (message, line)
        for i in range(50):
            manifold_feature_distance(tiny_map, (images[i % 8:i % 8 + 2] + 1) / 2, (images[8:10] + 1) / 2)
    hits = [w for w in caught if issubclass(w.category, InputRangeWarning)]
    assert len(hits) == 1 and hits[0].filename == __file__


def test_validate_args_off_skips_value_checks_only(tiny_map, images):
    loss = MFD(pretrained=None, feature_map=tiny_map, validate_args=False)
    x = images[:2].clone()
    x[0, 0, 0, 0] = float("nan")
    assert torch.isnan(loss(x, images[2:4])[0])  # no check: NaN propagates instead of raising
    assert range_warnings(lambda: loss((images[:2] + 1) / 2, (images[2:4] + 1) / 2)) == []
    with pytest.raises(ValueError, match="channels-last"):  # shape checks always run
        loss(images[:2].permute(0, 2, 3, 1), images[2:4].permute(0, 2, 3, 1))
    with pytest.raises(ValueError, match="same shape"):
        loss(images[:2], images[2:5])
    assert "validate_args=False" in repr(loss)


@pytest.fixture(scope="module")
def capture_case():
    """MFD without value checks on a VGG11 map at 1/4 width, inputs and the eager result."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        fmap = VGGFeatureMap(FeatureMapConfig(arch="vgg11", width=0.25))
        g = torch.Generator().manual_seed(0)
        x, y = (torch.rand(2, 3, 32, 32, generator=g) * 2 - 1 for _ in range(2))
    loss = MFD(pretrained=None, feature_map=fmap, validate_args=False)
    return loss, x, y


def _value_and_grad(fn, x, y):
    probe = x.clone().requires_grad_(True)
    value = fn(probe, y)
    (grad,) = torch.autograd.grad(value.sum(), probe)
    return value.detach(), grad


def test_compile_fullgraph_matches_eager(capture_case):
    loss, x, y = capture_case
    torch._dynamo.reset()
    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")  # capture only; inductor: the slow test
    value, grad = _value_and_grad(compiled, x, y)
    ref_value, ref_grad = _value_and_grad(loss, x, y)
    torch.testing.assert_close(value, ref_value, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-7)



def test_compile_captures_the_default_module_and_the_tangent_loss_without_graph_breaks(capture_case):
    """``torch.compile(MFD(...), fullgraph=True)`` with the defaults (value checks on: skipped while compiling),
    ``TangentLoss(MFD(...))`` with ECT's ``consistency_weight``, and plain ``torch.compile`` logs no graph break."""
    from torch._dynamo.utils import counters

    from mfd_loss import TangentLoss
    from mfd_loss.consistency import consistency_weight

    loss, x, y = capture_case
    checked = MFD(pretrained=None, feature_map=loss.feature_map)  # validate_args=True, the default
    torch._dynamo.reset()
    value, grad = _value_and_grad(torch.compile(checked, fullgraph=True, backend="aot_eager"), x, y)
    ref_value, ref_grad = _value_and_grad(checked, x, y)
    torch.testing.assert_close(value, ref_value, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-7)

    tangent = TangentLoss(checked)
    t, r = torch.tensor([2.0, 0.5]), torch.tensor([1.5, 0.25])

    def ayt_loss(prediction, target, t, r):
        return tangent(prediction, target, weight=consistency_weight(t, r))

    torch._dynamo.reset()
    counters.clear()
    value, grad = _value_and_grad(lambda a, b: torch.compile(ayt_loss, backend="aot_eager")(a, b, t, r), x, y)
    assert not counters["graph_break"], dict(counters["graph_break"])
    ref_value, ref_grad = _value_and_grad(lambda a, b: ayt_loss(a, b, t, r), x, y)
    torch.testing.assert_close(value, ref_value, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-7)
    torch._dynamo.reset()
    torch.compile(ayt_loss, fullgraph=True, backend="aot_eager")(x.clone().requires_grad_(True), y, t, r).backward()
    with pytest.raises(ValueError, match="t > r"):  # eagerly, the check still runs
        consistency_weight(r, t)


@pytest.mark.slow
def test_compile_inductor_fullgraph_matches_eager(capture_case):
    loss, x, y = capture_case
    torch._dynamo.reset()
    value = torch.compile(loss, fullgraph=True)(x, y)
    torch.testing.assert_close(value, loss(x, y), rtol=1e-4, atol=1e-5)


def test_export_matches_eager(capture_case):
    loss, x, y = capture_case
    program = torch.export.export(loss, (x, y))
    torch.testing.assert_close(program.module()(x, y), loss(x, y), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(program.module()(y, x), loss(y, x), rtol=1e-5, atol=1e-6)


def test_vmap_matches_eager(capture_case):
    loss, x, y = capture_case
    xs, ys = torch.stack([x, x.flip(-1), y]), torch.stack([y, y, x])
    batched = torch.func.vmap(loss)(xs, ys)
    expected = torch.stack([loss(a, b) for a, b in zip(xs, ys)])
    torch.testing.assert_close(batched, expected, rtol=1e-5, atol=1e-6)


# resolution


def test_resize_antialias_equals_resizing_first(tiny_map, images):
    big = F.interpolate(images[:3], size=(96, 96), mode="bicubic", align_corners=False).clamp(-1, 1)
    target = big.flip(-1)
    loss = MFD(pretrained=None, feature_map=tiny_map, resize="antialias")
    down = lambda x: F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False, antialias=True)  # noqa
    torch.testing.assert_close(loss(big, target), manifold_feature_distance(tiny_map, down(big), down(target)))
    small = images[:2, :, :20, :20]  # smaller than the map's minimum: upsampled
    assert loss(small, small.flip(-1)).shape == (2,)
    x = big.clone().requires_grad_(True)
    loss(x, target).sum().backward()
    assert x.grad.shape == big.shape and x.grad.abs().sum() > 0


def test_resize_tiles_averages_tile_distances(tiny_map, images):
    x = torch.cat([torch.cat([images[0:2], images[2:4]], -1), torch.cat([images[4:6], images[6:8]], -1)], -2)
    y = torch.cat([torch.cat([images[8:10], images[10:12]], -1), torch.cat([images[12:14], images[14:16]], -1)], -2)
    assert x.shape == (2, 3, 64, 64)
    loss = MFD(pretrained=None, feature_map=tiny_map, resize="tiles")
    tiles = [manifold_feature_distance(tiny_map, images[i:i + 2], images[i + 8:i + 10]) for i in (0, 2, 4, 6)]
    torch.testing.assert_close(loss(x, y), torch.stack(tiles).mean(0))
    torch.testing.assert_close(loss(images[:2], images[8:10]), tiles[0])  # native size: unchanged
    with pytest.raises(ValueError, match=r"multiple of the map's 32x32, got 48x64.*antialias"):
        loss(x[:, :, :48], y[:, :, :48])
    with pytest.raises(ValueError, match=r"resize must be one of"):
        MFD(pretrained=None, feature_map=tiny_map, resize="bilinear")


# training data range (latents)


def test_data_range_is_applied_and_checked(make_map, images):
    latent_map = make_map(seed=6, in_channels=4, data_range=(-4, 4)).eval()
    g = torch.Generator().manual_seed(0)
    raw = torch.randn(4, 4, 32, 32, generator=g).clamp(-4, 4) * 1.5  # "latents" in about [-4, 4]
    raw_y = raw + 0.3 * torch.randn(4, 4, 32, 32, generator=g)
    loss = MFD(pretrained=None, feature_map=latent_map)
    torch.testing.assert_close(loss(raw, raw_y), manifold_feature_distance(latent_map, raw / 4, raw_y / 4))
    assert range_warnings(lambda: loss(raw, raw_y)) == []
    # the same latents to a map that declares no data range: warned, not silently accepted
    plain = MFD(pretrained=None, feature_map=make_map(seed=6, in_channels=4))
    caught = range_warnings(lambda: plain(raw, raw_y))
    assert len(caught) == 1 and "far outside" in str(caught[0].message)
    with pytest.raises(ValueError, match=r"trained on data in \[-4.0, 4.0\].*drop normalize=True"):
        MFD(pretrained=None, feature_map=latent_map, normalize=True)
    with pytest.raises(ValueError, match="data_range"):
        FeatureMapConfig(data_range=(1.0, -1.0))


def test_trained_latent_map_records_and_applies_its_range(tmp_path):
    """End to end: a map trained on float data in [-4, 4] records the range; MFD then takes raw latents."""
    g = torch.Generator().manual_seed(0)
    latents = (torch.rand(16, 4, 32, 32, generator=g) * 8 - 4)
    config = TrainConfig(steps=2, batch_size=4, eval_every=0, eval_size=4, eval_fraction=0.0, checkpoint_every=2)
    model, summary = train_feature_map(latents, tmp_path, config=config, input_range=(-4, 4), progress=False,
                                       architecture=FeatureMapConfig(arch="vgg11", width=0.125))
    assert summary["finished"]
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["architecture"]["data_range"] == [-4.0, 4.0]
    loss = MFD(pretrained=str(tmp_path))
    assert loss.feature_map.config.data_range == (-4.0, 4.0)
    x, y = latents[:2], latents[2:4]
    torch.testing.assert_close(loss(x, y), manifold_feature_distance(loss.feature_map, x / 4, y / 4))
    assert range_warnings(lambda: loss(x, y)) == []


# devices


def test_follows_the_inputs_device_once(tiny_map):
    """A loss held by a non-Module host (KarrasDenoiser) is never moved by .to(); it follows its inputs."""
    loss = MFD(pretrained=None, feature_map=tiny_map)
    moves = []
    original = loss.feature_map.to
    loss.feature_map.to = lambda *a, **k: (moves.append(a), original(*a, **k))[1]
    x, y = torch.zeros(2, 3, 32, 32, device="meta"), torch.zeros(2, 3, 32, 32, device="meta")
    for _ in range(3):
        out = loss(x, y)
        assert out.device.type == "meta" and out.shape == (2,)
    assert len(moves) == 1  # moved on the first call only
    assert all(p.device.type == "meta" for p in loss.feature_map.parameters())
    assert next(tiny_map.parameters()).device.type == "cpu"  # the caller's map is untouched


def test_data_parallel_replicas_never_move_the_shared_map(tiny_map, images):
    """nn.DataParallel runs one replica per GPU in parallel threads; each must use a map on its own device
    rather than move the map all replicas share (here the CPU stands for GPU 0 and meta for GPU 1)."""
    loss = MFD(pretrained=None, feature_map=tiny_map)
    on_cpu = loss.feature_map
    x, y = images[:2], images[2:4]
    with torch.no_grad():
        expected = loss(x, y)
    replicas = [loss._replicate_for_data_parallel() for _ in range(2)]  # DataParallel replicates every forward
    meta = [r(x.to("meta"), y.to("meta")) for r in replicas]
    assert all(out.device.type == "meta" and out.shape == (2,) for out in meta)
    assert all(p.device.type == "cpu" for p in on_cpu.parameters())  # the shared map stayed where it was
    assert loss.feature_map is on_cpu and all(r.feature_map is on_cpu for r in replicas)
    copies = loss._frozen.copies
    assert list(copies) == [torch.device("meta")] and copies[torch.device("meta")] is not on_cpu  # one copy, reused
    with torch.no_grad():
        assert torch.equal(replicas[0](x, y), expected)  # the replica on the map's device uses the map itself
        assert torch.equal(loss(x, y), expected)
    loss.double()  # moving or casting the original drops the copies made from its old state
    assert not loss._frozen.copies


def test_device_mismatch_errors_name_both_devices(tiny_map, images):
    meta_map = _copy.deepcopy(tiny_map).to("meta")
    with pytest.raises(ValueError, match=r"feature map is on meta but the inputs are on cpu.*feature_map.to\('cpu'\)"):
        manifold_feature_distance(meta_map, images[:2], images[2:4])
    loss = MFD(pretrained=None, feature_map=tiny_map)
    with pytest.raises(ValueError, match=r"prediction is on cpu but target is on meta"):
        loss(images[:2], torch.zeros(2, 3, 32, 32, device="meta"))
