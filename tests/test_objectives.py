"""AYT tangent loss, pseudo-Huber and the objective registry (mfd_loss.consistency)."""

from __future__ import annotations

import math
import os
import re

import pytest
import torch
from torch import nn

from mfd_loss import MFD, FeatureMapConfig, VGGFeatureMap
from mfd_loss.consistency import (
    ICT_HUBER_CONSTANT, OBJECTIVES, ConsistencyObjective, TangentLoss, blend_losses, build_objective, pseudo_huber,
    ramp, squared_l2, tangent_loss,
)


@pytest.fixture(scope="module")
def mfd():
    torch.manual_seed(0)
    return MFD(pretrained=None, feature_map=VGGFeatureMap(FeatureMapConfig(arch="vgg11", width=0.125)))


@pytest.fixture()
def pair():
    g = torch.Generator().manual_seed(1)
    target = torch.rand(4, 3, 32, 32, generator=g) * 2 - 1
    prediction = (target + 0.3 * torch.randn(4, 3, 32, 32, generator=g)).clamp(-1.2, 1.2)
    weight = torch.tensor([1.0, 3.0, 0.5, 7.0])
    return prediction, target, weight


def _input_grad(distance_fn, prediction, target):
    x = prediction.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(distance_fn(x, target).sum(), x)
    return g


def _unit(g):
    flat = g.float().flatten(1)
    return (flat / flat.norm(dim=1, keepdim=True)).view_as(g)


class TestTangentGradient:
    def test_normalized_identity_fp32(self, mfd, pair):
        prediction, target, weight = pair
        x = prediction.clone().requires_grad_(True)
        tangent_loss(x, target, mfd, weight).backward()
        expected = weight[:, None, None, None] * _unit(_input_grad(mfd, prediction, target)) / 4
        torch.testing.assert_close(x.grad, expected, rtol=1e-6, atol=1e-9)
        per_sample = x.grad.flatten(1).norm(dim=1)
        torch.testing.assert_close(per_sample, weight / 4)  # ECT's step size w_b / B

    def test_raw_identity(self, mfd, pair):
        prediction, target, weight = pair
        x = prediction.clone().requires_grad_(True)
        tangent_loss(x, target, mfd, weight, direction="raw", reduction="sum").backward()
        expected = weight[:, None, None, None] * _input_grad(mfd, prediction, target)
        torch.testing.assert_close(x.grad, expected, rtol=1e-6, atol=1e-9)

    def test_identity_under_autocast(self, mfd, pair):
        prediction, target, weight = pair
        layer = nn.Conv2d(3, 3, 1)
        with torch.no_grad():
            layer.weight.copy_(torch.eye(3)[:, :, None, None])
            layer.bias.zero_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            d_t = layer(prediction)  # bf16 under autocast, like a network's output
            assert d_t.dtype == torch.bfloat16
            loss = tangent_loss(d_t, target, mfd, weight)
            (grad,) = torch.autograd.grad(loss, d_t, retain_graph=True)
            g = _input_grad(mfd, d_t.detach(), target)
        assert loss.dtype == torch.float32 and math.isfinite(loss.item())
        expected = weight[:, None, None, None] * _unit(g) / 4
        torch.testing.assert_close(grad.float(), expected, rtol=1e-2, atol=1e-3 * expected.abs().max().item())
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in layer.parameters())

    def test_scale_invariance(self, mfd, pair):
        prediction, target, weight = pair
        grads = []
        for scale in (1.0, 37.5, 1e-3):
            x = prediction.clone().requires_grad_(True)
            tangent_loss(x, target, lambda a, b: scale * mfd(a, b), weight).backward()
            grads.append(x.grad)
        atol = 1e-5 * grads[0].abs().max().item()  # float32 rounding of the rescaled backward pass
        torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=atol)
        torch.testing.assert_close(grads[2], grads[0], rtol=1e-5, atol=atol)

    def test_raw_direction_scales(self, mfd, pair):
        prediction, target, weight = pair
        grads = []
        for scale in (1.0, 4.0):
            x = prediction.clone().requires_grad_(True)
            tangent_loss(x, target, lambda a, b: scale * mfd(a, b), direction="raw").backward()
            grads.append(x.grad)
        torch.testing.assert_close(grads[1], 4 * grads[0], rtol=1e-5, atol=1e-9)

    def test_pixel_distance_gives_ect_update(self, pair):
        """With d = ||x - y||^2 the replaced direction is ECT's own: the gradient of w * ||x - y||."""
        prediction, target, weight = pair
        a = prediction.clone().requires_grad_(True)
        tangent_loss(a, target, lambda x, y: (x - y).flatten(1).pow(2).sum(1), weight).backward()
        b = prediction.clone().requires_grad_(True)
        pseudo_huber(b, target, c=0.0, weight=weight, reduction="mean").backward()
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-9)

    def test_feature_map_untouched(self, mfd, pair):
        prediction, target, weight = pair
        probe = nn.Conv2d(3, 4, 3)  # a distance with trainable parameters: still no .grad
        x = prediction.clone().requires_grad_(True)
        loss = tangent_loss(x, target, lambda a, b: (probe(a) - probe(b)).flatten(1).pow(2).sum(1))
        loss = loss + tangent_loss(x, target, mfd, weight)
        loss.backward()
        assert all(p.grad is None for p in probe.parameters())
        assert all(p.grad is None and not p.requires_grad for p in mfd.feature_map.parameters())
        assert x.grad is not None

    def test_target_gets_no_gradient(self, mfd, pair):
        prediction, target, _ = pair
        y = target.clone().requires_grad_(True)
        x = prediction.clone().requires_grad_(True)
        tangent_loss(x, y, mfd).backward()
        assert y.grad is None

    def test_equal_inputs_give_zero_update(self, mfd, pair):
        _, target, _ = pair
        x = target.clone().requires_grad_(True)
        loss, distance = tangent_loss(x, target, mfd, return_distance=True)
        loss.backward()
        assert torch.equal(x.grad, torch.zeros_like(x)) and loss.item() == 0.0
        assert distance.abs().max().item() == 0.0

    def test_reduction_none_and_distance(self, mfd, pair):
        prediction, target, weight = pair
        values, distance = tangent_loss(prediction.clone().requires_grad_(True), target, mfd, weight,
                                        reduction="none", return_distance=True)
        torch.testing.assert_close(distance, mfd(prediction, target))
        assert torch.equal(values.detach(), weight * distance)  # the weighted distance, exactly
        assert not distance.requires_grad

    @pytest.mark.parametrize("direction", ["normalized", "raw"])
    def test_value_is_weighted_distance_and_tracks_progress(self, mfd, pair, direction):
        """The logged value equals mean_b w_b d_b and falls as the prediction approaches the target (it was the
        constant w_b / 2 before)."""
        prediction, target, weight = pair
        values = []
        for alpha in (1.0, 0.5, 0.1, 0.0):
            x = (target + alpha * (prediction - target)).requires_grad_(True)
            loss = tangent_loss(x, target, mfd, weight, direction=direction)
            torch.testing.assert_close(loss, (weight * mfd(x.detach(), target)).mean(), rtol=1e-6, atol=0.0)
            values.append(loss.item())
        assert values[0] > values[1] > values[2] > values[3] == 0.0
        sq = lambda a, b: (a - b).flatten(1).pow(2).sum(1)  # noqa: E731
        assert tangent_loss(prediction, target, sq, reduction="sum").item() == pytest.approx(
            float(sq(prediction, target).sum()), rel=1e-6)

    def test_works_under_no_grad(self, mfd, pair):
        prediction, target, weight = pair
        with torch.no_grad():
            values, distance = tangent_loss(prediction, target, mfd, weight, reduction="none", return_distance=True)
        torch.testing.assert_close(values, weight * mfd(prediction, target))
        torch.testing.assert_close(distance, mfd(prediction, target))

    def test_errors(self, mfd, pair):
        prediction, target, weight = pair
        with pytest.raises(ValueError, match="shape \\(N,\\)"):
            tangent_loss(prediction, target, lambda a, b: mfd(a, b).mean())
        with pytest.raises(ValueError, match="direction"):
            tangent_loss(prediction, target, mfd, direction="unit")
        with pytest.raises(ValueError, match="weight"):
            tangent_loss(prediction, target, mfd, weight[:2])
        with pytest.raises(ValueError, match="same shape"):
            tangent_loss(prediction, target[:2], mfd)
        with pytest.raises(ValueError, match="differentiably"):
            tangent_loss(prediction, target, lambda a, b: (a - b).detach().flatten(1).sum(1))


@pytest.mark.parametrize("bad, message", [
    ({"direction": "unit"}, "direction must be one of ('normalized', 'raw'), got 'unit'"),
    ({"reduction": "avg"}, "reduction must be one of"),
    ({"eps": 0.0}, "eps must be positive, got 0.0"),
])
def test_every_entry_point_refuses_bad_options_alike(mfd, pair, bad, message):
    """tangent_loss, TangentLoss and ConsistencyObjective share one check (the objective takes a direction only)."""
    prediction, target, _ = pair
    calls = [lambda: tangent_loss(prediction, target, mfd, **bad), lambda: TangentLoss(mfd, **bad)]
    if "direction" in bad:
        calls.append(lambda: ConsistencyObjective("mfd", distance=mfd, **bad))
    for call in calls:
        with pytest.raises(ValueError, match=re.escape(message)):
            call()


class TestTangentLossModule:
    def test_same_value_and_gradient_as_the_function(self, mfd, pair):
        prediction, target, weight = pair
        module = TangentLoss(mfd)
        a = prediction.clone().requires_grad_(True)
        value = module(a, target, weight)
        value.backward()
        b = prediction.clone().requires_grad_(True)
        tangent_loss(b, target, mfd, weight).backward()
        assert torch.equal(a.grad, b.grad)
        torch.testing.assert_close(value, (weight * mfd(prediction, target)).mean())
        torch.testing.assert_close(a.grad.flatten(1).norm(dim=1), weight / 4)  # w_b / B
        c = prediction.clone().requires_grad_(True)
        TangentLoss(mfd, direction="raw", reduction="sum")(c, target).backward()
        torch.testing.assert_close(c.grad, _input_grad(mfd, prediction, target), rtol=1e-6, atol=1e-9)
        assert TangentLoss(mfd, reduction="none")(prediction, target).shape == (4,)

    def test_adds_no_trainable_parameters(self, mfd, pair):
        """A host optimiser over a parent holding TangentLoss gets only the host's own parameters."""
        parent = nn.Module()
        parent.net = nn.Conv2d(3, 3, 1)
        parent.loss = TangentLoss(mfd)
        trainable = [p for p in parent.parameters() if p.requires_grad]
        assert len(trainable) == 2 and all(p is q for p, q in zip(trainable, parent.net.parameters()))
        assert not any(p.requires_grad for p in parent.loss.distance.feature_map.parameters())
        plain = TangentLoss(lambda a, b: (a - b).flatten(1).abs().sum(1))
        assert list(plain.parameters()) == [] and "direction='normalized'" in repr(plain)

    def test_errors(self, mfd):
        with pytest.raises(ValueError, match="direction"):
            TangentLoss(mfd, direction="unit")
        with pytest.raises(ValueError, match="reduction"):
            TangentLoss(mfd, reduction="avg")
        with pytest.raises(ValueError, match="eps"):
            TangentLoss(mfd, eps=0.0)
        with pytest.raises(ValueError, match="callable"):
            TangentLoss("mfd")


class TestPseudoHuber:
    def test_ict_constant(self):
        x, y = torch.zeros(2, 3, 32, 32), torch.full((2, 3, 32, 32), 0.1)
        c = ICT_HUBER_CONSTANT * math.sqrt(3 * 32 * 32)
        assert c == pytest.approx(0.029929, abs=1e-6)
        expected = math.sqrt(3072 * 0.01 + c * c) - c
        torch.testing.assert_close(pseudo_huber(x, y), torch.full((2,), expected))

    def test_ect_is_l2_norm(self):
        x, y = torch.zeros(2, 1, 4, 4), torch.ones(2, 1, 4, 4)
        torch.testing.assert_close(pseudo_huber(x, y, c=0.0), torch.full((2,), 4.0))

    @pytest.mark.parametrize("c", [0.0, None, 0.5])
    @pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
    def test_finite_gradient_at_equality(self, c, dtype):
        y = torch.randn(3, 3, 8, 8).to(dtype)
        x = y.clone().requires_grad_(True)
        value = pseudo_huber(x, y, c=c, weight=torch.ones(3), reduction="sum")
        value.backward()
        assert value.item() == 0.0
        assert torch.isfinite(x.grad).all() and x.grad.abs().max().item() == 0.0

    def test_partially_equal_batch(self):
        y = torch.zeros(2, 1, 2, 2)
        x = torch.stack([torch.zeros(1, 2, 2), torch.ones(1, 2, 2)]).requires_grad_(True)
        pseudo_huber(x, y, c=0.0, reduction="sum").backward()
        assert torch.equal(x.grad[0], torch.zeros(1, 2, 2))
        torch.testing.assert_close(x.grad[1], torch.full((1, 2, 2), 0.5))  # unit vector over 4 elements

    def test_errors(self):
        with pytest.raises(ValueError):
            pseudo_huber(torch.zeros(2, 3), torch.zeros(2, 3), c=-1.0)
        with pytest.raises(ValueError):
            pseudo_huber(torch.zeros(2, 3), torch.zeros(3, 3))

    def test_squared_l2(self):
        torch.testing.assert_close(squared_l2(torch.zeros(2, 4), torch.full((2, 4), 2.0)), torch.full((2,), 4.0))


class TestBlendAndRegistry:
    def test_ramp(self):
        assert [ramp(s, 4) for s in (0, 2, 4, 9)] == [0.0, 0.5, 1.0, 1.0]
        assert ramp(0, 0) == 1.0
        assert blend_losses(torch.tensor(1.0), torch.tensor(2.0), step=1, scale=3.0, ramp_steps=2).item() == 4.0

    def test_blended_gradient(self, mfd, pair):
        prediction, target, weight = pair
        objective = ConsistencyObjective("mfd", distance=mfd, blend=2.0, ramp_steps=10)
        x = prediction.clone().requires_grad_(True)
        objective(x, target, weight, step=5).loss.backward()
        ect = weight[:, None, None, None] * _unit(prediction - target) / 4
        tangent = weight[:, None, None, None] * _unit(_input_grad(mfd, prediction, target)) / 4
        torch.testing.assert_close(x.grad, ect + 2.0 * 0.5 * tangent, rtol=1e-5, atol=1e-8)

    def test_mfd_objective_logs_the_weighted_distance(self, mfd, pair):
        prediction, target, weight = pair
        objective = ConsistencyObjective("mfd", distance=mfd)
        far = objective(prediction.clone().requires_grad_(True), target, weight)
        torch.testing.assert_close(far.loss, (weight * far.distance).mean())
        near = objective((target + 0.1 * (prediction - target)).requires_grad_(True), target, weight)
        assert near.loss.item() < far.loss.item()

    def test_names(self):
        assert set(OBJECTIVES) == {"mfd", "lpips", "pseudo-huber", "l2"}
        with pytest.raises(ValueError, match="unknown objective"):
            build_objective("lpips-vgg")

    def test_pixel_objectives(self, pair):
        prediction, target, weight = pair
        out = build_objective("pseudo-huber")(prediction, target, weight)
        torch.testing.assert_close(out.loss, (weight * (prediction - target).flatten(1).norm(dim=1)).mean())
        ict = build_objective("pseudo-huber", huber_c=None)(prediction, target, weight)
        assert ict.loss.item() < out.loss.item()
        l2 = build_objective("l2")(prediction, target)
        torch.testing.assert_close(l2.loss, (prediction - target).pow(2).mean())

    def test_mfd_objective_from_folder(self, mfd, pair, tmp_path):
        from mfd_loss import save_feature_map
        from mfd_loss.perturbations import label_spec

        save_feature_map(mfd.feature_map, tmp_path, label_spec=label_spec("all"))
        objective = build_objective("mfd", mfd_pretrained=tmp_path)
        prediction, target, weight = pair
        out = objective(prediction.clone().requires_grad_(True), target, weight)
        torch.testing.assert_close(out.distance, mfd(prediction, target))
        assert not any(p.requires_grad for p in objective.parameters())  # the frozen map is no optimiser's

    def test_lpips_without_backbone_weights_is_clear(self):
        pytest.importorskip("lpips")
        import torchvision

        cached = os.path.join(torch.hub.get_dir(), "checkpoints",
                              os.path.basename(torchvision.models.AlexNet_Weights.IMAGENET1K_V1.url))
        if os.path.exists(cached):
            pytest.skip("AlexNet ImageNet weights are cached here")
        from mfd_loss.consistency import LPIPSDistance

        with pytest.raises(RuntimeError, match="LPIPS \\(alex\\) needs torchvision's ImageNet weights.*alexnet-owt"):
            LPIPSDistance("alex", allow_download=False)

    def test_lpips_tangent_with_random_backbone(self, pair):
        pytest.importorskip("lpips")
        from mfd_loss.consistency import LPIPSDistance

        distance = LPIPSDistance("alex", pretrained_backbone=False)
        prediction, target, weight = pair
        x = prediction.clone().requires_grad_(True)
        tangent_loss(x, target, distance, weight).backward()
        torch.testing.assert_close(x.grad.flatten(1).norm(dim=1), weight / 4)
        grey = distance(prediction[:, :1], target[:, :1])
        assert grey.shape == (4,)
