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
        (lambda x: x[:2, :, :16, :16], r"16x16 pixels.*at least 32x32"),
        (lambda x: x[:0], r"empty batch"),
    ],
)
def test_bad_prediction_shapes_and_dtypes(loss_fn, images, make_pred, match):
    pred = make_pred(images)
    with pytest.raises(ValueError, match=match):
        loss_fn(pred, pred.clone())


def test_size_other_than_training_resolution(loss_fn, make_map, images):
    big = torch.nn.functional.interpolate(images[:2], size=(48, 48), mode="bilinear")
    with pytest.raises(ValueError, match=r"trained on 32x32 images and inputs are 48x48.*interpolate"):
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


def test_pretrained_and_feature_map_both_or_neither(tiny_map, tmp_path):
    with pytest.raises(ValueError, match=r"either pretrained= or feature_map=, not both"):
        MFD(pretrained=str(tmp_path), feature_map=tiny_map)
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
