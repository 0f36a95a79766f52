"""Continuous-time consistency objective (METHOD.md Sec. 5b) and the JVP safety of the package.

Tiny nets, float64 where a tangent is compared with a finite difference: every test runs in seconds.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import mfd_loss
from mfd_loss import MFD, FeatureMapConfig
from mfd_loss.consistency import (
    ContinuousConsistencyLoss, EDMDenoiser, continuous_consistency_loss, feature_tangent_loss, feature_vector,
    tangent_loss, teacher_velocity,
)
from mfd_loss.feature_maps import ResNetFeatureMap

from conftest import make_tiny_map

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from unet import UNet  # noqa: E402


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().norm() / b.detach().norm())


def _unet_denoiser(dtype: torch.dtype = torch.float64, dropout: float = 0.0, seed: int = 0) -> EDMDenoiser:
    """The example U-Net (attention at 16x16, dropout), tiny, with every weight random (its output conv starts
    at zero, which would make the network's part of the tangent vanish)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = UNet(in_channels=3, channels=8, channel_mult=(1, 2), num_blocks=1, attention=(16,), dropout=dropout)
        with torch.no_grad():
            for p in net.parameters():
                p.normal_(0.0, 0.3 / max(1, p[0].numel()) ** 0.5)
    return EDMDenoiser(net).to(dtype)


def _mfd(dtype: torch.dtype = torch.float64, **options) -> MFD:
    return MFD(pretrained=None, feature_map=make_tiny_map(seed=1), **options).to(dtype)


def _batch(images: torch.Tensor, dtype: torch.dtype = torch.float64, n: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x0 = images[:n].to(dtype)
    sigma = torch.tensor([0.15, 0.7, 2.5][:n], dtype=dtype)
    eps = torch.randn(x0.shape, generator=g).to(dtype)
    return x0, sigma, eps


# Finite-difference steps in float64 (fixed seeds throughout): a difference that crosses a ReLU / max-pool kink
# of a map is meaningless, so the maps alone take a step of 1e-7 (rounding error ~1e-9 relative, kinks rarely
# crossed: 1e-6 crossed one for 2 of 12 random ResNets); the U-Net objective, with larger values, 1e-6.
H = 1e-7


def _central_difference(fn, x: torch.Tensor, sigma: torch.Tensor, v: torch.Tensor, h: float = 1e-6) -> torch.Tensor:
    """d/dsigma fn(x + (s - sigma) v, s) at s = sigma, by a central difference (float64)."""
    with torch.no_grad():
        return (fn(x + h * v, sigma + h) - fn(x - h * v, sigma - h)) / (2 * h)


# ------------------------------------------------------------------------------------------ JVP safety
def _components(dtype):
    """(name, function of one image batch, input channels): the shipped maps, other map families, the MFD
    (both forms, with and without value checks), the example U-Net."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(2)
        resnet = ResNetFeatureMap(FeatureMapConfig(arch="resnet10", width=0.125, num_labels=7))
    losses = [(f"shipped-{name}", MFD(pretrained=name)) for name in sorted(mfd_loss.list_pretrained())]
    losses.append(("resnet10", MFD(pretrained=None, feature_map=resnet)))
    out = [(name, lambda x, m=m.to(dtype): feature_vector(m, x), m.feature_map.config.in_channels)
           for name, m in losses]
    target = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(5)).to(dtype) * 2 - 1
    for form in ("group", "squared"):
        for validate in (True, False):
            mfd = _mfd(dtype, distance=form, validate_args=validate)
            out.append((f"mfd-{form}-validate{validate}", lambda x, m=mfd: m(x, target), 3))
    unet = _unet_denoiser(dtype).net.eval()
    out.append(("unet", lambda x: unet(x, torch.full((x.shape[0],), 0.3, dtype=x.dtype)), 3))
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_jvp_equals_reverse_mode_and_finite_difference(dtype):
    """torch.func.jvp through every shipped map, the MFD and the example U-Net equals reverse mode J.v
    (double-backward) and, in float64, a central finite difference."""
    g = torch.Generator().manual_seed(0)
    for name, fn, channels in _components(dtype):
        x = (torch.rand(2, channels, 32, 32, generator=g) * 1.6 - 0.8).to(dtype)
        v = torch.randn(x.shape, generator=g).to(dtype)
        _, forward = torch.func.jvp(fn, (x,), (v,))
        _, reverse = torch.autograd.functional.jvp(fn, x, v)
        assert _rel(forward, reverse) < (1e-10 if dtype == torch.float64 else 1e-4), name
        if dtype == torch.float64:
            with torch.no_grad():
                difference = (fn(x + H * v) - fn(x - H * v)) / (2 * H)
            assert _rel(forward, difference) < 1e-6, name


def test_denoiser_jvp_along_the_ode_in_float64(images):
    """EDMDenoiser (float64 stays float64) under jvp in (x, sigma): the derivative along the ODE."""
    model = _unet_denoiser(torch.float64).eval()
    x0, sigma, eps = _batch(images)
    x = x0 + sigma[:, None, None, None] * eps
    out, tangent = torch.func.jvp(model, (x, sigma), (eps, torch.ones_like(sigma)))
    assert out.dtype == torch.float64
    assert _rel(tangent, _central_difference(model, x, sigma, eps)) < 1e-7


def test_objective_has_no_data_dependent_branch_without_validate_args():
    """On the meta device any .item() / bool(tensor) raises: with validate_args=False the whole objective (JVP
    through the U-Net with attention and dropout and through the MFD, prediction, backward) runs there."""
    with torch.device("meta"):
        model = EDMDenoiser(UNet(in_channels=3, channels=8, channel_mult=(1, 2), num_blocks=1, attention=(16,),
                                 dropout=0.2))
    mfd = _mfd(torch.float32, validate_args=False).to("meta")
    x = torch.empty(2, 3, 32, 32, device="meta")
    sigma = torch.empty(2, device="meta")
    out = continuous_consistency_loss(model, x, sigma, x, mfd, validate_args=False)
    out.loss.backward()
    assert out.loss.shape == () and out.tangent_norm.shape == (2,)
    with pytest.raises(RuntimeError):  # the checks read values, which meta tensors do not have
        continuous_consistency_loss(model, x, sigma, x, mfd, validate_args=True)


# ------------------------------------------------------------------------------------------ the objective
def _prediction_grad(out) -> torch.Tensor:
    (grad,) = torch.autograd.grad(out.loss, out.prediction)
    return grad


def _expected_grad(distance, prediction, tangent, weight, c=0.1):
    """w_b J_Phi^T T^_b / B, T^_b = T_b / (rms(T_b) + c), pulled back by reverse mode."""
    t_hat = tangent / (tangent.pow(2).mean(1, keepdim=True).sqrt() + c)
    y = prediction.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(feature_vector(distance, y), y, weight[:, None] * t_hat / y.shape[0])
    return grad


@pytest.mark.parametrize("space", ["feature", "pixel"])
def test_gradient_and_value_match_a_finite_difference_tangent(images, space):
    """Gradient w.r.t. the prediction = w_b J_Phi^T T^_b / B and value = mean_b ||T_b||, with T the central
    difference of Phi(f) along the ODE (float64, the example U-Net, consistency training: v = eps)."""
    model = _unet_denoiser(torch.float64).eval()
    distance = _mfd() if space == "feature" else None
    x0, sigma, eps = _batch(images)
    x = x0 + sigma[:, None, None, None] * eps
    tangent = _central_difference(lambda x_, s_: feature_vector(distance, model(x_, s_)), x, sigma, eps)
    out = continuous_consistency_loss(model, x, sigma, eps, distance)
    assert _rel(out.tangent_norm, tangent.norm(dim=1)) < 1e-6
    assert abs(float(out.loss) - float(tangent.norm(dim=1).mean())) < 1e-6 * float(out.loss)
    expected = _expected_grad(distance, out.prediction, tangent, 1 / sigma)
    assert _rel(_prediction_grad(out), expected) < 1e-6
    weighted = continuous_consistency_loss(model, x, sigma, eps, distance, weight=torch.tensor([1.0, 2.0, 0.5]).double(),
                                           reduction="sum")
    expected = _expected_grad(distance, out.prediction, tangent, torch.tensor([3.0, 6.0, 1.5]).double())
    assert _rel(_prediction_grad(weighted), expected) < 1e-6


def _angles(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    cos = torch.nn.functional.cosine_similarity(a.flatten(1), b.flatten(1), dim=1)
    return torch.arccos(cos.clamp(-1, 1))


GAPS = (0.064, 0.016, 0.004, 0.001)


def _angles_to_the_discrete_update(images, distance, discrete_grad):
    """Per sample, the angle between the continuous gradient and a discrete update at r = t (1 - gap)."""
    model = _unet_denoiser(torch.float64).eval()
    x0, t, eps = _batch(images)
    x_t = x0 + t[:, None, None, None] * eps
    continuous = _prediction_grad(continuous_consistency_loss(model, x_t, t, eps, distance))
    rows = []
    for gap in GAPS:
        r = t * (1 - gap)
        with torch.no_grad():
            d_r = model(x0 + r[:, None, None, None] * eps, r)
        d_t = model(x_t, t)
        rows.append(_angles(continuous, discrete_grad(d_t, d_r, t, r)))
    return torch.stack(rows)  # (gaps, samples)


def _smooth_mfd(distance: str) -> MFD:
    """The tiny map with ReLU -> softplus and max-pool -> average pool: smooth, so the Taylor argument holds
    without the jitter of ReLU kinks crossed between D_r and D_t."""
    fmap = make_tiny_map(seed=1)
    for stage in fmap.stages:
        for i, layer in enumerate(stage):
            if isinstance(layer, nn.ReLU):
                stage[i] = nn.Softplus(beta=4.0)
            elif isinstance(layer, nn.MaxPool2d):
                stage[i] = nn.AvgPool2d(2)
    return MFD(pretrained=None, feature_map=fmap, distance=distance).double()


def _ayt_update(squared: MFD):
    def update(d_t, d_r, t, r):
        (grad,) = torch.autograd.grad(tangent_loss(d_t, d_r, squared, 1 / (t - r)), d_t)
        return grad
    return update


def test_feature_direction_is_the_limit_of_the_discrete_ayt_update(images):
    """AYT's discrete update with the squared feature distance, J_Phi^T (Phi(D_t) - Phi(D_r)) normalised, turns
    into the continuous J_Phi^T T as r -> t: the per-sample angle between them is linear in t - r (a 4x smaller
    gap, a 4x smaller angle) for a smooth map; with a ReLU map (the shipped family) the same trend, with jitter."""
    angles = _angles_to_the_discrete_update(images, _smooth_mfd("group"), _ayt_update(_smooth_mfd("squared")))
    print("\nsmooth map, angle (rad) per sample at (t - r)/t =", GAPS, "\n", angles.T)
    ratios = angles[:-1] / angles[1:]
    assert bool(((ratios > 3.5) & (ratios < 4.5)).all()), ratios
    relu = _angles_to_the_discrete_update(images, _mfd(), _ayt_update(_mfd(distance="squared")))
    print("ReLU map, angle (rad) per sample\n", relu.T)
    slope = (relu[0] / relu[-1]).log() / torch.tensor(GAPS[0] / GAPS[-1]).log()  # log-log slope over 64x
    assert bool(((slope > 0.8) & (slope < 1.5)).all()), slope
    assert bool((relu[-1] < 1e-3).all())


def test_pixel_direction_is_the_ect_limit(images):
    """distance=None: the gradient (w_b / B) df/dsigma / (rms + c) is the r -> t limit of ECT's update (the L2 norm
    ||D_t - D_r|| / (t - r)): the same direction up to an angle linear in t - r."""
    def ect(d_t, d_r, t, r):  # ECT's gradient w (D_t - D_r) / ||D_t - D_r|| in float64 (pseudo_huber reduces in float32)
        diff = (d_t - d_r).detach()
        return diff / (t - r)[:, None, None, None] / diff.flatten(1).norm(dim=1)[:, None, None, None]

    angles = _angles_to_the_discrete_update(images, None, ect)
    print("\npixel-space angle (rad) per sample at (t - r)/t =", GAPS, "\n", angles.T)
    ratios = angles[:-1] / angles[1:]
    assert bool(((ratios > 3.5) & (ratios < 4.5)).all()), ratios


def test_dropout_draw_is_shared_between_the_jvp_and_the_prediction(images):
    """With dropout on, the tangent must be the derivative of the very function that made the prediction: the
    prediction equals a plain forward under the same seed, the gradient uses the tangent of that same dropout
    draw, and the RNG ends where one forward leaves it."""
    model = _unet_denoiser(torch.float64, dropout=0.5).train()
    distance = _mfd()
    x0, sigma, eps = _batch(images)
    x = x0 + sigma[:, None, None, None] * eps

    def seeded(x_, s_):
        torch.manual_seed(123)
        return feature_vector(distance, model(x_, s_))

    tangent = _central_difference(seeded, x, sigma, eps)
    torch.manual_seed(123)
    with torch.no_grad():
        reference = model(x, sigma)
    after_one_forward = torch.get_rng_state()
    torch.manual_seed(123)
    out = continuous_consistency_loss(model, x, sigma, eps, distance)
    assert torch.equal(torch.get_rng_state(), after_one_forward)
    assert torch.equal(out.prediction.detach(), reference)
    assert _rel(out.tangent_norm, tangent.norm(dim=1)) < 1e-6
    assert _rel(_prediction_grad(out), _expected_grad(distance, reference, tangent, 1 / sigma)) < 1e-6


def test_the_jvp_runs_attention_on_the_math_backend(images):
    """PyTorch's flash / memory-efficient SDPA kernels have no forward-mode AD: the JVP pass must select the
    math backend, and the prediction pass must get the host's settings back."""
    seen = []

    def model(x, sigma):
        seen.append((torch.backends.cuda.flash_sdp_enabled(), torch.backends.cuda.mem_efficient_sdp_enabled()))
        return x / (1 + sigma[:, None, None, None] ** 2)

    x = images[:2]
    continuous_consistency_loss(model, x, torch.tensor([0.5, 1.0]), torch.ones_like(x), None)
    assert seen == [(False, False), (True, True)]


def test_autocast_prediction_with_a_float32_tangent(images):
    """Under the host's bf16 autocast the JVP pass runs in float32 (PyTorch's forward-mode AD fails under autocast
    where GroupNorm feeds a convolution, as in the U-Net): the tangent equals the float32 one, the prediction is
    bf16-computed, the gradient finite."""
    model = _unet_denoiser(torch.float32).eval()
    x0, sigma, eps = _batch(images, torch.float32)
    x = x0 + sigma[:, None, None, None] * eps
    single = continuous_consistency_loss(model, x, sigma, eps, None)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = continuous_consistency_loss(model, x, sigma, eps, None)
    torch.testing.assert_close(mixed.tangent_norm, single.tangent_norm, rtol=1e-6, atol=0)
    assert _rel(mixed.prediction.detach(), single.prediction.detach()) > 1e-4  # the prediction ran in bf16
    mixed.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_host_tangent_recipe_equals_the_full_objective(images):
    """A host that computes the pixel tangent df/dsigma itself (sCM code) gets the same loss and gradient."""
    model = _unet_denoiser(torch.float64).eval()
    distance = _mfd()
    x0, sigma, eps = _batch(images)
    x = x0 + sigma[:, None, None, None] * eps
    with torch.no_grad():
        _, pixel_tangent = torch.func.jvp(model, (x, sigma), (eps, torch.ones_like(sigma)))
    host = feature_tangent_loss(model(x, sigma), pixel_tangent, sigma, distance)
    full = continuous_consistency_loss(model, x, sigma, eps, distance)
    assert _rel(host.tangent_norm, full.tangent_norm) < 1e-10
    assert _rel(_prediction_grad(host), _prediction_grad(full)) < 1e-10
    # inside the host's bf16 autocast the JVP through the map runs in float32 (it fails under autocast)
    single = _mfd(torch.float32)
    prediction, pixel_tangent = host.prediction.detach().float(), pixel_tangent.float()
    expected = feature_tangent_loss(prediction, pixel_tangent, sigma.float(), single).tangent_norm
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = feature_tangent_loss(prediction.requires_grad_(True), pixel_tangent, sigma.float(), single)
    torch.testing.assert_close(mixed.tangent_norm, expected, rtol=1e-6, atol=0)


def test_distillation_velocity_and_the_module(images):
    """teacher_velocity is (x - D(x, sigma)) / sigma; the module form gives the function's result; float32 runs
    and agrees with float64."""
    teacher = _unet_denoiser(torch.float64, seed=3).eval()
    model = _unet_denoiser(torch.float64).eval()
    x0, sigma, eps = _batch(images)
    x = x0 + sigma[:, None, None, None] * eps
    v = teacher_velocity(teacher, x, sigma)
    with torch.no_grad():
        assert torch.allclose(v * sigma[:, None, None, None], x - teacher(x, sigma))
    loss_fn = ContinuousConsistencyLoss(_mfd(), reduction="none")
    out = loss_fn(model, x, sigma, v)
    assert out.loss.shape == (3,) and torch.equal(out.loss.detach(), out.tangent_norm)
    single = loss_fn.to(torch.float32)(model.float(), x.float(), sigma.float(), v.float())
    assert single.loss.dtype == torch.float32
    assert _rel(single.tangent_norm.double(), out.tangent_norm) < 1e-3


def test_feature_vector_is_what_the_squared_mfd_compares(images):
    """||Phi(x) - Phi(y)||^2 is the squared MFD, also with normalize=True ([0, 1] inputs mapped like the MFD)."""
    mfd = MFD(pretrained=None, feature_map=make_tiny_map(seed=1), distance="squared", normalize=True).double()
    x, y = (images[:2].double() + 1) / 2, (images[2:4].double() + 1) / 2
    with torch.no_grad():
        expected = mfd(x, y)
        got = (feature_vector(mfd, x) - feature_vector(mfd, y)).pow(2).sum(1)
    assert _rel(got, expected) < 1e-12
    tiles = MFD(pretrained=None, feature_map=make_tiny_map(seed=1), distance="squared", resize="tiles").double()
    x, y = images[:4].double().reshape(2, 3, 64, 32), images[4:8].double().reshape(2, 3, 64, 32)  # 2 tiles each
    with torch.no_grad():  # the MFD averages its tiles' distances; Phi holds every tile of its sample
        got = (feature_vector(tiles, x) - feature_vector(tiles, y)).pow(2).sum(1)
        assert _rel(got, 2 * tiles(x, y)) < 1e-12


def test_bad_input_raises_clear_errors(images):
    model = _unet_denoiser(torch.float32).eval()
    x = images[:2]
    sigma = torch.tensor([0.5, 1.0])
    with pytest.raises(ValueError, match="velocity"):
        continuous_consistency_loss(model, x, sigma, x[:, :1], None)
    with pytest.raises(ValueError, match="sigma must be a tensor of shape"):
        continuous_consistency_loss(model, x, sigma[:1], x, None)
    with pytest.raises(ValueError, match="sigma must be positive"):
        continuous_consistency_loss(model, x, torch.tensor([0.5, 0.0]), x, None)
    with pytest.raises(ValueError, match="NaN"):
        continuous_consistency_loss(model, x, sigma, x * float("nan"), None)
    with pytest.raises(ValueError, match="c must be positive"):
        continuous_consistency_loss(model, x, sigma, x, None, c=0.0)
    with pytest.raises(TypeError, match="MFD or None"):
        ContinuousConsistencyLoss(nn.MSELoss())
    with pytest.raises(ValueError, match="tangent must have prediction's shape"):
        feature_tangent_loss(x, x[:, :1], sigma, None)
