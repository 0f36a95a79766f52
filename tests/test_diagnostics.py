"""Tangent-alignment diagnostics: projections, nuisance tangents against real transformations, the L2 reference."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mfd_loss import MFD
from mfd_loss.diagnostics import (
    NUISANCE_DIRECTIONS, controlled_displacement, loss_gradient, nuisance_tangents, parallel_energy_fraction,
    random_init_like, tangent_alignment,
)


def _l2(x, y):
    return (x - y).flatten(1).pow(2).sum(1)


def _affine(images, matrix):
    """Resample images with a 2x3 affine matrix acting on normalised coordinates (bicubic, border)."""
    theta = matrix.to(images.dtype).expand(images.shape[0], 2, 3)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bicubic", padding_mode="border", align_corners=False)


def _cosine(a, b):
    return F.cosine_similarity(a.flatten(1).double(), b.flatten(1).double(), dim=1)


def test_fraction_is_one_inside_the_span_zero_outside_and_k_over_d_at_random():
    g = torch.Generator().manual_seed(0)
    tangents = torch.randn(16, 3, 2, 8, 8, generator=g)
    inside = torch.einsum("nk,nkchw->nchw", torch.randn(16, 3, generator=g), tangents)
    assert torch.allclose(parallel_energy_fraction(inside, tangents), torch.ones(16, dtype=torch.float64), atol=1e-9)
    q, _ = torch.linalg.qr(tangents.flatten(2).transpose(1, 2).double())
    noise = torch.randn(16, 128, generator=g, dtype=torch.float64)
    outside = noise - torch.einsum("ndk,nk->nd", q, torch.einsum("ndk,nd->nk", q, noise))
    assert parallel_energy_fraction(outside.view(16, 2, 8, 8), tangents).abs().max() < 1e-9
    random = parallel_energy_fraction(torch.randn(4000, 2, 8, 8, generator=g), tangents.repeat(250, 1, 1, 1, 1))
    assert random.mean().item() == pytest.approx(3 / 128, rel=0.1)


def test_dependent_tangents_count_once():
    """A repeated tangent vector spans one direction; the projector must not gain spurious ones."""
    g = torch.Generator().manual_seed(1)
    t = torch.randn(8, 1, 50, generator=g)
    tangents = torch.cat([t, 2 * t, -t], dim=1)
    v = torch.randn(8, 50, generator=g)
    expected = (v * t[:, 0]).sum(1).pow(2) / (t[:, 0].pow(2).sum(1) * v.pow(2).sum(1))
    assert torch.allclose(parallel_energy_fraction(v, tangents), expected.double(), atol=1e-6)


def test_zero_vector_gives_nan_and_bad_shapes_are_errors():
    assert parallel_energy_fraction(torch.zeros(2, 4), torch.randn(2, 1, 4)).isnan().all()
    with pytest.raises(ValueError, match=r"tangents \(N, K, \*S\)"):
        parallel_energy_fraction(torch.zeros(2, 4), torch.randn(2, 4))
    with pytest.raises(ValueError, match="3-channel"):
        nuisance_tangents(torch.zeros(1, 1, 8, 8), ["hue"])
    with pytest.raises(ValueError, match="unknown nuisance"):
        nuisance_tangents(torch.zeros(1, 3, 8, 8), ["shear"])


@pytest.mark.parametrize("name, matrix", [
    # affine_grid maps output coordinates to input coordinates: shifting content right by h pixels samples
    # at x - h, i.e. a translation of -2h/W in normalised units.
    ("shift_x", lambda h: torch.tensor([[1.0, 0.0, -2 * h / 32], [0.0, 1.0, 0.0]])),
    ("shift_y", lambda h: torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, -2 * h / 32]])),
    ("rotation", lambda h: torch.tensor([[math.cos(h), math.sin(h), 0.0], [-math.sin(h), math.cos(h), 0.0]])),
    ("scale", lambda h: torch.tensor([[1 / (1 + h), 0.0, 0.0], [0.0, 1 / (1 + h), 0.0]])),
])
def test_geometric_tangents_match_finite_differences_of_the_transformation(images, name, matrix):
    h = 1e-2
    x = images[:16]
    finite = (_affine(x, matrix(h)) - _affine(x, matrix(-h))) / (2 * h)
    tangent = nuisance_tangents(x, [name])[:, 0]
    assert _cosine(finite, tangent).mean() > 0.97
    # Units (pixels, radians, relative scale): bicubic resampling's own derivative at the pixel centres is
    # 1.5x the central difference (cubic convolution, a = -0.75), so only the order of magnitude is fixed.
    ratio = (finite.flatten(1).norm(dim=1) / tangent.flatten(1).norm(dim=1)).mean().item()
    assert 0.8 < ratio < 1.7


def test_colour_tangents_are_exact_derivatives(images):
    x = images[:8]
    h = 1e-3
    luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    grey = (x * luma).sum(1, keepdim=True)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    u = torch.ones(3) / math.sqrt(3)
    rot = torch.linalg.matrix_exp(h * torch.tensor([[0.0, -u[2], u[1]], [u[2], 0.0, -u[0]], [-u[1], u[0], 0.0]]))
    moved = {
        "brightness": x + h,
        "contrast": mean + (1 + h) * (x - mean),
        "saturation": grey + (1 + h) * (x - grey),
        "hue": torch.einsum("ij,njhw->nihw", rot, x),
    }
    tangents = nuisance_tangents(x, list(moved))
    for k, (name, y) in enumerate(moved.items()):
        assert _cosine((y - x) / h, tangents[:, k]).min() > 0.999, name


def test_default_directions_follow_the_channel_count(images):
    assert nuisance_tangents(images[:2]).shape == (2, len(NUISANCE_DIRECTIONS), 3, 32, 32)
    assert nuisance_tangents(images[:2, :1]).shape == (2, len(NUISANCE_DIRECTIONS) - 2, 1, 32, 32)


def test_controlled_displacement_makes_l2_exactly_one_half(images):
    x = images[:8]
    tangents = nuisance_tangents(x)
    prediction = controlled_displacement(x, tangents, 0.03, 0.03, torch.Generator().manual_seed(0))
    rms = (prediction - x).flatten(1).pow(2).mean(1).sqrt()
    assert torch.allclose(rms, torch.full((8,), 0.03 * math.sqrt(2)), rtol=1e-4)
    assert torch.allclose(tangent_alignment(_l2, prediction, x, tangents), torch.full((8,), 0.5, dtype=torch.float64),
                          atol=1e-6)
    along = controlled_displacement(x, tangents, 0.03, 0.0, torch.Generator().manual_seed(0))
    assert tangent_alignment(_l2, along, x, tangents).min() > 1 - 1e-6


def test_loss_gradient_touches_no_parameter_and_is_per_sample(images):
    loss = MFD(pretrained="cifar10")
    x, y = images[:4], images[4:8]
    grad = loss_gradient(loss, x, y)
    assert all(p.grad is None for p in loss.feature_map.parameters())
    single = loss_gradient(loss, x[:1], y[:1])
    # batched vs single convolutions round differently (float32 through 8 conv layers: ~1e-4 of values ~1); a
    # gradient that leaked between samples would differ by O(1)
    scale = single.abs().max()
    assert (grad[:1] - single).abs().max() < 1e-3 * scale
    assert (grad[1:2] - single).abs().max() > 0.1 * scale  # another sample's gradient is not the same


def test_shipped_map_turns_the_update_away_from_the_nuisance_span(images):
    """The measurement behind AYT's claim, on the shipped map: trained < random init < pixel L2 (0.5)."""
    x = images[:32]
    tangents = nuisance_tangents(x)
    prediction = controlled_displacement(x, tangents, 0.02, 0.02, torch.Generator().manual_seed(0))
    shipped = MFD(pretrained="cifar10")
    random_map = random_init_like(shipped, seed=0)
    trained = tangent_alignment(shipped, prediction, x, tangents).mean().item()
    control = tangent_alignment(random_map, prediction, x, tangents).mean().item()
    assert trained < 0.75 * control < 0.75 * 0.5


def test_random_init_like_is_the_same_loss_on_a_seeded_untrained_map(tiny_map, images):
    trained = MFD(pretrained=None, feature_map=tiny_map, distance="squared", normalize=True, reduction="sum",
                  resize="tiles", validate_args=False).double()
    state = torch.random.get_rng_state()
    control = random_init_like(trained, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's random stream is untouched
    assert control.feature_map.config == trained.feature_map.config
    assert (control.distance, control.normalize, control.reduction, control.resize, control.validate_args) == (
        "squared", True, "sum", "tiles", False)
    a, b = trained.feature_map.state_dict(), control.feature_map.state_dict()
    convolutions = [k for k in a if k.endswith("weight") and a[k].ndim == 4]
    assert a.keys() == b.keys() and convolutions and all(not torch.equal(a[k], b[k]) for k in convolutions)
    assert all(t.dtype == torch.float64 for t in b.values() if t.is_floating_point())  # the original's dtype
    assert not control.feature_map.training and not any(p.requires_grad for p in control.feature_map.parameters())
    again, other = random_init_like(tiny_map, seed=3), random_init_like(tiny_map, seed=4)  # a map works too
    c, d = again.feature_map.state_dict(), other.feature_map.state_dict()
    assert all(torch.equal(b[k].float(), c[k]) for k in convolutions)  # seeded: the same control every time
    assert not all(torch.equal(c[k], d[k]) for k in convolutions)
    assert (again.distance, again.reduction, again.resize) == ("group", "none", None)  # MFD's defaults
    x, y = (images[:2] + 1) / 2, (images[2:4] + 1) / 2
    assert control(x.double(), y.double()).shape == ()
    with pytest.raises(TypeError, match="MFD or a feature map"):
        random_init_like(torch.nn.Conv2d(3, 3, 1))
