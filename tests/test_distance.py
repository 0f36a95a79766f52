"""The distance d_phi of METHOD.md Sec. 4: values, invariances, dtypes, reductions, batch independence."""

from __future__ import annotations

import copy
import math
import pickle

import pytest
import torch

from mfd_loss import MFD, manifold_feature_distance

EPS = 1e-5  # METHOD.md Sec. 4


def naive_distance(feature_map, x, y, form):
    """Per-sample d_phi from an explicit loop over samples, taps and channels, in float64 Python."""
    with torch.no_grad():
        taps_x, taps_y = feature_map(x), feature_map(y)
    values = []
    for n in range(x.shape[0]):
        total = 0.0
        for a, b in zip(taps_x, taps_y):
            for c in range(a.shape[1]):
                diff = a[n, c].double() - b[n, c].double()
                squared = float((diff * diff).sum())
                total += math.sqrt(squared + EPS**2) - EPS if form == "group" else squared
        values.append(total)
    return torch.tensor(values, dtype=torch.float64)


@pytest.mark.parametrize("form", ["group", "squared"])
def test_equals_naive_loop_on_real_images(tiny_map, images, form):
    x, y = images[:3], images[3:6]
    near = images[6:8] + 0.01 * torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for pred, target in ((x, y), (images[6:8], near)):
        got = manifold_feature_distance(tiny_map, pred, target, distance=form)
        want = naive_distance(tiny_map, pred, target, form)
        assert got.dtype == torch.float32 and got.shape == (pred.shape[0],)
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-6)


def test_group_form_is_l1_on_the_head(tiny_map, images):
    """On the 1x1 taps the group term is |difference| per channel (METHOD Sec. 4), up to eps."""
    x, y = images[:2], images[2:4]
    with torch.no_grad():
        taps_x, taps_y = tiny_map(x), tiny_map(y)
    expected = torch.zeros(2, dtype=torch.float64)
    for a, b in zip(taps_x, taps_y):
        diff = (a.double() - b.double()).flatten(2)
        if diff.shape[-1] == 1:  # 1x1 tap: plain L1
            expected += diff.abs().sum((1, 2))
        else:
            expected += diff.pow(2).sum(-1).sqrt().sum(-1)
    got = manifold_feature_distance(tiny_map, x, y).double()
    groups = sum(t.shape[1] for t in taps_x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=groups * EPS)


@pytest.mark.parametrize("form", ["group", "squared"])
def test_zero_on_identical_inputs_and_nonnegative(tiny_map, images, form):
    same = manifold_feature_distance(tiny_map, images[:8], images[:8].clone(), distance=form)
    assert same.abs().max().item() <= 1e-6
    g = torch.Generator().manual_seed(1)
    pairs = [
        (images[:8], images[8:16]),
        (images[:8], images[:8] + 1e-4 * torch.randn(8, 3, 32, 32, generator=g)),
        (images[:8], images[:8].flip(-1)),
    ]
    for x, y in pairs:
        d = manifold_feature_distance(tiny_map, x, y, distance=form)
        assert bool((d >= 0).all()), d
        assert bool((d > 0).all())  # the pairs differ


@pytest.mark.parametrize("form", ["group", "squared"])
def test_symmetric(tiny_map, images, form):
    x, y = images[:6], images[6:12]
    torch.testing.assert_close(manifold_feature_distance(tiny_map, x, y, distance=form),
                               manifold_feature_distance(tiny_map, y, x, distance=form), rtol=1e-6, atol=0)


def test_larger_perturbation_gives_larger_distance(tiny_map, images):
    g = torch.Generator().manual_seed(2)
    noise = torch.randn(4, 3, 32, 32, generator=g)
    x = images[:4]
    small = manifold_feature_distance(tiny_map, x, x + 0.02 * noise)
    large = manifold_feature_distance(tiny_map, x, x + 0.2 * noise)
    assert bool((large > small).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("form", ["group", "squared"])
def test_finite_gradient_at_equal_inputs(loss_fn, images, dtype, form):
    loss_fn.distance = form
    x = images[:4].to(dtype).requires_grad_(True)
    d = loss_fn(x, x.detach().clone())
    assert d.dtype == torch.float32 and d.shape == (4,)
    assert d.abs().max().item() <= 1e-6
    d.sum().backward()
    assert x.grad is not None and x.grad.dtype == dtype
    assert bool(torch.isfinite(x.grad).all())
    # next to the diagonal the gradient is finite and non-zero
    x2 = (images[:4] + 0.05 * images[4:8]).to(dtype).requires_grad_(True)
    loss_fn(x2, images[:4].to(dtype)).sum().backward()
    assert bool(torch.isfinite(x2.grad).all()) and x2.grad.float().abs().sum() > 0
    # the module's weights were not converted by the call
    assert all(p.dtype == torch.float32 for p in loss_fn.feature_map.parameters())


@pytest.mark.parametrize("form", ["group", "squared"])
def test_finite_gradient_under_bf16_autocast(loss_fn, images, form):
    loss_fn.distance = form
    x = images[:4].clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        d = loss_fn(x, x.detach().clone())
        d_far = loss_fn(x, images[4:8])
    assert d.dtype == torch.float32
    assert d.abs().max().item() <= 1e-6
    (d.sum() + d_far.sum()).backward()
    assert bool(torch.isfinite(x.grad).all()) and x.grad.abs().sum() > 0
    # bf16 autocast values track the fp32 ones
    torch.testing.assert_close(d_far.detach(), loss_fn(images[:4], images[4:8]), rtol=0.1, atol=0)
    assert all(p.dtype == torch.float32 for p in loss_fn.feature_map.parameters())


def test_weight_multiplies_per_sample(loss_fn, images):
    x, y = images[:5], images[5:10]
    w = torch.tensor([0.0, 1.0, 2.5, 10.0, 0.3])
    torch.testing.assert_close(loss_fn(x, y, weight=w), loss_fn(x, y) * w, rtol=1e-6, atol=0)
    torch.testing.assert_close(manifold_feature_distance(loss_fn.feature_map, x, y, weight=w, reduction="sum"),
                               (loss_fn(x, y) * w).sum(), rtol=1e-6, atol=0)


@pytest.mark.parametrize("n", [1, 4])
def test_reductions(tiny_map, images, n):
    x, y = images[:n], images[10:10 + n]
    none = MFD(pretrained=None, feature_map=tiny_map, reduction="none")(x, y)
    mean = MFD(pretrained=None, feature_map=tiny_map, reduction="mean")(x, y)
    total = MFD(pretrained=None, feature_map=tiny_map, reduction="sum")(x, y)
    assert none.shape == (n,) and none.ndim == 1
    assert mean.shape == () and total.shape == ()
    torch.testing.assert_close(mean, none.mean())
    torch.testing.assert_close(total, none.sum())
    w = torch.linspace(0.5, 2.0, n)
    weighted = MFD(pretrained=None, feature_map=tiny_map, reduction="mean")(x, y, weight=w)
    torch.testing.assert_close(weighted, (none * w).mean())
    # a per-sample weight of shape (N,) multiplies element-wise; no silent (N, N) broadcast
    assert (none * w).shape == (n,)


def test_sample_value_independent_of_batch(loss_fn, images):
    x, y = images[:8], images[8:16]
    full = loss_fn(x, y)
    for i in (0, 5):
        alone = loss_fn(x[i:i + 1], y[i:i + 1])
        torch.testing.assert_close(alone, full[i:i + 1], rtol=1e-5, atol=1e-6)
    # same sample among different batch-mates and at another position
    other = loss_fn(torch.cat([images[40:43], x[5:6]]), torch.cat([images[50:53], y[5:6]]))
    torch.testing.assert_close(other[3], full[5], rtol=1e-5, atol=1e-6)


def test_channels_last_gives_same_values(loss_fn, images):
    x, y = images[:4], images[4:8]
    ref = loss_fn(x, y)
    cl = loss_fn(x.contiguous(memory_format=torch.channels_last), y.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(cl, ref, rtol=1e-5, atol=1e-6)
    mixed = loss_fn(x.contiguous(memory_format=torch.channels_last), y)
    torch.testing.assert_close(mixed, ref, rtol=1e-5, atol=1e-6)


def test_repeated_calls_give_identical_output(loss_fn, images):
    x, y = images[:4], images[4:8]
    first = loss_fn(x, y)
    loss_fn(images[20:30], images[30:40])  # an unrelated call in between leaves no state behind
    assert torch.equal(loss_fn(x, y), first)
    assert torch.equal(loss_fn(x, y), first)


def test_deepcopy_and_pickle_round_trip(loss_fn, images):
    x, y = images[:4], images[4:8]
    ref = loss_fn(x, y)
    copied = copy.deepcopy(loss_fn)
    restored = pickle.loads(pickle.dumps(loss_fn))
    assert torch.equal(copied(x, y), ref)
    assert torch.equal(restored(x, y), ref)
    assert not restored.feature_map.training
    assert not any(p.requires_grad for p in restored.feature_map.parameters())


def test_target_gets_gradient_only_when_it_requires_grad(loss_fn, images):
    x = images[:2].clone().requires_grad_(True)
    y = images[2:4].clone().requires_grad_(True)
    loss_fn(x, y).sum().backward()
    assert y.grad is not None and bool(torch.isfinite(y.grad).all()) and y.grad.abs().sum() > 0
    x2 = images[:2].clone().requires_grad_(True)
    y2 = images[2:4].clone()
    d = loss_fn(x2, y2)
    d.sum().backward()
    assert y2.grad is None and x2.grad.abs().sum() > 0


def test_functional_matches_module(loss_fn, images):
    x, y = images[:3], images[3:6]
    torch.testing.assert_close(manifold_feature_distance(loss_fn.feature_map, x, y), loss_fn(x, y))
    loss_fn.distance = "squared"
    torch.testing.assert_close(manifold_feature_distance(loss_fn.feature_map, x, y, distance="squared"),
                               loss_fn(x, y))
