"""Perturbations (METHOD.md Sec. 3) on real CIFAR-10 images: label ranges, on/off, probabilities,
reproducibility, replay, batch independence, and the geometric / colour / degradation semantics."""

from __future__ import annotations

import json
import math
from dataclasses import fields, replace

import pytest
import torch
import torch.nn.functional as F

from mfd_loss import LabelSpec, Perturbations, label_spec
from mfd_loss.perturbations import (
    ColourParams,
    DegradationParams,
    GeometricParams,
    apply_colour,
    apply_degradation,
    apply_geometric,
    gaussian_blur,
    sample_colour,
    sample_degradation,
    sample_geometric,
)

ALL_OPS = ("scale", "rotation", "anisotropic_scale", "translation", "brightness", "contrast", "hue",
           "saturation", "blur", "mixup", "noise")
FAMILIES = {
    "geometric": ("scale", "rotation", "anisotropic_scale", "translation"),
    "colour": ("brightness", "contrast", "hue", "saturation"),
    "degradation": ("blur", "mixup", "noise"),
}


def gen(seed):
    return torch.Generator().manual_seed(seed)


def take(params, index):
    """Slice every per-sample tensor of a params dataclass."""
    return type(params)(*(getattr(params, f.name)[index] for f in fields(params)))


def geo(n=1, **kw):
    z = torch.zeros(n)
    values = {"scale_w": z, "theta": z, "aniso_w": z, "aniso_r": z, "shift": torch.zeros(n, 2),
              "active": torch.ones(n, dtype=torch.bool)}
    values.update({k: torch.as_tensor(v, dtype=values[k].dtype).expand_as(values[k]).clone() for k, v in kw.items()})
    return GeometricParams(**values)


def col(n=1, **kw):
    z = torch.zeros(n)
    values = {"brightness_w": z, "contrast_w": z, "hue_theta": z, "saturation_w": z,
              "active": torch.ones(n, dtype=torch.bool)}
    values.update({k: torch.as_tensor(v, dtype=values[k].dtype).expand_as(values[k]).clone() for k, v in kw.items()})
    return ColourParams(**values)


def on_fraction(labels, spec, op):
    """Fraction of samples whose label entries for op are not all zero."""
    return (labels[:, spec.slices()[op]] != 0).any(1).float().mean().item()


# ------------------------------------------------------------------------------------------ label spec


def test_presets_label_counts():
    counts = {"geometric": 7, "geometric+colour": 12, "geometric+degradation": 10, "degradation": 3, "all": 15}
    for preset, k in counts.items():
        assert label_spec(preset).num_labels == k
        assert Perturbations(preset).spec.num_labels == k


def test_full_label_layout_follows_method_table():
    spec = label_spec("all")
    # METHOD.md Sec. 3 table: idx 0 scale, 1-2 rotation, 3-4 aniso, 5-6 translation, 7 brightness,
    # 8 contrast, 9-10 hue, 11 saturation, 12 blur, 13 mixup, 14 noise.
    starts = {"scale": (0, 1), "rotation": (1, 3), "anisotropic_scale": (3, 5), "translation": (5, 7),
              "brightness": (7, 8), "contrast": (8, 9), "hue": (9, 11), "saturation": (11, 12),
              "blur": (12, 13), "mixup": (13, 14), "noise": (14, 15)}
    assert {op: (s.start, s.stop) for op, s in spec.slices().items()} == starts
    # ops given in another order get the canonical layout
    assert label_spec(["noise", "scale", "hue"]).ops == ("scale", "hue", "noise")
    assert label_spec(["noise", "scale"]) == label_spec(["scale", "noise"])


def test_label_spec_dict_round_trip_and_mismatch():
    for preset in ("geometric", "degradation", "all"):
        spec = label_spec(preset)
        data = json.loads(json.dumps(spec.to_dict()))
        assert LabelSpec.from_dict(data) == spec
        assert [e["name"] for e in data["labels"]] == list(spec.labels)
    data = label_spec("all").to_dict()
    data["labels"][1]["name"] = "rotation_theta"
    with pytest.raises(ValueError, match=r"label spec mismatch.*rotation_theta"):
        LabelSpec.from_dict(data)
    data = label_spec("all").to_dict()
    data["labels"] = data["labels"][:-1]
    with pytest.raises(ValueError, match=r"label spec mismatch"):
        LabelSpec.from_dict(data)


@pytest.mark.parametrize(
    "ops, match",
    [(["scale", "warp"], r"unknown perturbation\(s\) \['warp'\]"), (["blur", "blur"], r"duplicate"), ([], r"at least one")],
)
def test_label_spec_errors(ops, match):
    with pytest.raises(ValueError, match=match):
        LabelSpec(tuple(ops))


def test_unknown_preset():
    with pytest.raises(ValueError, match=r"unknown preset 'colour-only'"):
        label_spec("colour-only")


# ------------------------------------------------------------------------------------------ label ranges


def test_every_label_in_range_on_real_images(images):
    pert = Perturbations("all", p=1.0)
    spec = pert.spec
    out, labels = pert(images, generator=gen(0))
    assert out.shape == images.shape and out.dtype == images.dtype
    assert labels.shape == (64, 15) and labels.dtype == torch.float32
    assert bool(torch.isfinite(out).all()) and bool(torch.isfinite(labels).all())
    assert bool((out != images).any((1, 2, 3)).all())
    sl = spec.slices()
    lab = {op: labels[:, s] for op, s in sl.items()}
    for op in ("rotation", "hue"):
        assert bool((lab[op][:, 0] >= -2).all() and (lab[op][:, 0] <= 0).all())
        assert bool((lab[op][:, 1].abs() <= 1).all())
        # (cos - 1, sin) lies on the unit circle shifted by -1
        torch.testing.assert_close((lab[op][:, 0] + 1) ** 2 + lab[op][:, 1] ** 2, torch.ones(64))
    assert bool((lab["blur"] > 0).all() and (lab["blur"] <= 3).all())
    assert bool((lab["mixup"] >= 0).all() and (lab["mixup"] <= 0.5).all())
    assert bool((lab["noise"] >= 0).all() and (lab["noise"] < 0.5).all())
    # with p = 1 every op is on for every sample
    for op in ALL_OPS:
        assert on_fraction(labels, spec, op) == 1.0, op


def test_label_distributions_over_many_samples():
    n = 8192
    pert = Perturbations("all", p=1.0)
    params = pert.sample((n, 3, 8, 8), generator=gen(1))
    labels = pert.labels(params)
    lab = {op: labels[:, s] for op, s in pert.spec.slices().items()}
    tol = 5.0 / math.sqrt(n)  # ~5 standard errors for unit-variance quantities
    for op in ("scale", "translation", "brightness", "contrast", "saturation"):  # w ~ N(0, 1)
        assert abs(lab[op].mean().item()) < tol, op
        assert abs(lab[op].std().item() - 1.0) < 2 * tol, op
    for op in ("rotation", "hue"):  # theta ~ U(-pi, pi): E[cos] = E[sin] = 0
        assert abs(lab[op][:, 0].mean().item() + 1.0) < tol and abs(lab[op][:, 1].mean().item()) < tol
    # anisotropic: |label| = |w|, and r = 0 (sin part exactly 0) for about half of the samples
    norm = lab["anisotropic_scale"].norm(dim=1)
    assert abs(norm.pow(2).mean().item() - 1.0) < 3 * tol
    assert abs((lab["anisotropic_scale"][:, 1] == 0).float().mean().item() - 0.5) < tol
    assert abs(lab["blur"].mean().item() - 1.5) < 3 * tol and lab["blur"].min() > 0 and lab["blur"].max() <= 3
    assert abs(lab["blur"].max().item() - 3.0) < 0.01  # uniform up to 3
    assert abs(lab["mixup"].mean().item() - 0.125) < tol / 2  # 0.5 * E[Beta(1, 3)] = 0.125
    assert abs(lab["noise"].mean().item() - 0.25) < tol and lab["noise"].max() < 0.5
    # no NaN or 0 sigma anywhere
    assert bool(torch.isfinite(labels).all())


# ------------------------------------------------------------------------------------------ off = identity


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_off_is_identity_with_zero_labels(images, family):
    n = images.shape[0]
    if family == "geometric":
        params = sample_geometric(n, p={}, generator=gen(0))
        out = apply_geometric(images, params)
    elif family == "colour":
        params = sample_colour(n, p={op: 0.0 for op in FAMILIES["colour"]}, generator=gen(0))
        out = apply_colour(images, params)
    else:
        params = sample_degradation(tuple(images.shape), p={}, generator=gen(0))
        out = apply_degradation(images, params)
    assert torch.equal(out, images)
    for name, value in params.labels().items():
        assert bool((value == 0).all()), name
    # and through the pipeline restricted to that family
    pert = Perturbations(list(FAMILIES[family]), p=0.0)
    out, labels = pert(images, generator=gen(1))
    assert torch.equal(out, images) and bool((labels == 0).all())


def test_pipeline_off_is_identity(images):
    out, labels = Perturbations("all", p=0.0)(images, generator=gen(2))
    assert torch.equal(out, images)
    assert labels.shape == (64, 15) and bool((labels == 0).all())
    out, labels = Perturbations("all", p={})(images, generator=gen(2))
    assert torch.equal(out, images) and bool((labels == 0).all())


def test_clean_sample_iff_zero_label(images):
    """In a mixed batch, exactly the samples with an all-zero label come back bit-identical."""
    out, labels = Perturbations("all", p=0.1)(images, generator=gen(3))
    clean = (labels == 0).all(1)
    assert 0 < int(clean.sum()) < 64
    unchanged = (out == images).flatten(1).all(1)
    assert torch.equal(unchanged, clean)


# ------------------------------------------------------------------------------------------ probabilities


def test_per_op_probabilities_are_honoured():
    n = 8192
    probs = {"rotation": 0.3, "translation": 0.05, "hue": 0.5, "blur": 0.7, "noise": 1.0}
    pert = Perturbations("all", p=probs)
    labels = pert.labels(pert.sample((n, 3, 8, 8), generator=gen(4)))
    for op in ALL_OPS:
        want = probs.get(op, 0.0)
        tol = 4 * math.sqrt(want * (1 - want) / n) + 1e-9
        assert abs(on_fraction(labels, pert.spec, op) - want) <= tol, (op, on_fraction(labels, pert.spec, op))


def test_scalar_probability_and_call_override():
    n = 4096
    pert = Perturbations("geometric+degradation", p=0.25)
    labels = pert.labels(pert.sample((n, 3, 8, 8), generator=gen(5)))
    tol = 4 * math.sqrt(0.25 * 0.75 / n)
    for op in pert.spec.ops:
        assert abs(on_fraction(labels, pert.spec, op) - 0.25) <= tol, op
    labels = pert.labels(pert.sample((n, 3, 8, 8), generator=gen(5), p={"blur": 0.6}))
    assert abs(on_fraction(labels, pert.spec, "blur") - 0.6) <= 4 * math.sqrt(0.24 / n)
    assert on_fraction(labels, pert.spec, "scale") == 0.0


def test_parameters_do_not_depend_on_p():
    """The same generator state gives the same values whatever p; a higher p only turns more ops on."""
    pert = Perturbations("all")
    low = pert.labels(pert.sample((512, 3, 8, 8), generator=gen(6), p=0.2))
    high = pert.labels(pert.sample((512, 3, 8, 8), generator=gen(6), p=0.8))
    on_low = low != 0
    assert on_low.any()
    assert bool((high[on_low] == low[on_low]).all())
    assert int((high != 0).sum()) > int(on_low.sum())


@pytest.mark.parametrize(
    "p, match",
    [(1.5, r"must lie in \[0, 1\]"), (-0.1, r"must lie in \[0, 1\]"), ({"blur": 2.0}, r"'blur' must lie in \[0, 1\]"),
     ({"warp": 0.5}, r"not in the spec")],
)
def test_bad_probabilities(p, match):
    with pytest.raises(ValueError, match=match):
        Perturbations("all", p=p)


def test_probability_for_op_outside_spec():
    with pytest.raises(ValueError, match=r"\['hue'\] that are not in the spec"):
        Perturbations("geometric", p={"rotation": 0.5, "hue": 0.5})


# ------------------------------------------------------------------------------------------ randomness


def test_same_seed_same_result_different_seed_different(images):
    pert = Perturbations("all", p=0.5)
    a, la = pert(images, generator=gen(10))
    b, lb = pert(images, generator=gen(10))
    c, lc = pert(images, generator=gen(11))
    assert torch.equal(a, b) and torch.equal(la, lb)
    assert not torch.equal(a, c) and not torch.equal(la, lc)


def test_replay_is_exact(images):
    pert = Perturbations("all", p=0.7)
    params = pert.sample(tuple(images.shape), generator=gen(12))
    first = pert.apply(images, params)
    assert torch.equal(pert.apply(images, params), first)
    assert torch.equal(pert.labels(params), pert.labels(params))
    # sample + apply with a seed equals the one-call form with the same seed
    out, labels = pert(images, generator=gen(12))
    assert torch.equal(out, first) and torch.equal(labels, pert.labels(params))


@pytest.mark.parametrize("family", ["geometric", "colour", "blur+noise"])
def test_sample_output_independent_of_batch(images, family):
    x = images[:16]
    if family == "geometric":
        params, fn = sample_geometric(16, p=dict.fromkeys(FAMILIES["geometric"], 0.8), generator=gen(13)), apply_geometric
    elif family == "colour":
        params, fn = sample_colour(16, p=dict.fromkeys(FAMILIES["colour"], 0.8), generator=gen(13)), apply_colour
    else:
        params = sample_degradation(tuple(x.shape), p={"blur": 0.8, "noise": 0.8}, generator=gen(13))
        fn = apply_degradation
    full = fn(x, params)
    for i in range(0, 16, 3):
        one = take(params, slice(i, i + 1))
        if isinstance(one, DegradationParams):
            one = replace(one, partner=torch.zeros(1, dtype=torch.long))  # mixup is off
        torch.testing.assert_close(fn(x[i:i + 1], one), full[i:i + 1], rtol=0, atol=1e-5)
    # reversing the batch reverses the output
    rev = torch.arange(15, -1, -1)
    rparams = take(params, rev)
    if isinstance(rparams, DegradationParams):
        rparams = replace(rparams, partner=torch.zeros(16, dtype=torch.long))
    torch.testing.assert_close(fn(x[rev], rparams), full[rev], rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------------------ geometric


def interior_error(a, b, margin):
    return (a - b)[..., margin:-margin, margin:-margin].abs().mean().item()


@pytest.mark.parametrize("axis", ["x", "y"])
def test_translation_shifts_content_by_w_times_eighth_of_size(images, axis):
    x = images[:8]
    shift = torch.tensor([1.0, 0.0]) if axis == "x" else torch.tensor([0.0, 1.0])
    dim = -1 if axis == "x" else -2
    out = apply_geometric(x, geo(8, shift=shift))  # w = 1 -> 0.125 * 32 = 4 pixels right / down
    right = interior_error(out, torch.roll(x, 4, dim), 6)
    for wrong in (-4, 3, 5, 0):
        assert right < 0.3 * interior_error(out, torch.roll(x, wrong, dim), 6), wrong
    assert right < 0.05
    # w = -0.5 moves 2 pixels the other way
    out = apply_geometric(x, geo(8, shift=-0.5 * shift))
    assert interior_error(out, torch.roll(x, -2, dim), 4) < 0.3 * interior_error(out, torch.roll(x, 2, dim), 4)


def test_rotation_by_quarter_turn_turns_the_way_rot90_does(images):
    x = images[:8]
    out = apply_geometric(x, geo(8, theta=math.pi / 2))
    # the authors' sign (METHOD.md Sec. 3): +pi/2 is torch.rot90(x, k=1, dims=(-2, -1)), counter-clockwise
    # on screen. A square image rotated about its centre needs no padding, so the whole frame is compared.
    counter = (out - torch.rot90(x, 1, (-2, -1))).abs().mean().item()
    clockwise = (out - torch.rot90(x, -1, (-2, -1))).abs().mean().item()
    assert counter < 0.02 and counter < 0.05 * clockwise
    half = apply_geometric(x, geo(8, theta=math.pi))
    assert (half - torch.rot90(x, 2, (-2, -1))).abs().mean().item() < 0.02


def _rotation_pixels(theta):
    """Destination of a source position (x right, y down) under the authors' rotation sign, written out."""
    c, s = math.cos(theta), math.sin(theta)
    return lambda x, y: (c * x + s * y, -s * x + c * y)


def test_geometric_composition_order_scale_rotate_stretch_translate():
    # independent formula: M = T . A(r) . R(theta) . S, with A(r) = R(r) diag(a, 1/a) R(r)^T in the output frame
    from mfd_loss.perturbations.geometric import content_matrix
    scale_w, theta, aniso_w, aniso_r, shift = 1.3, 0.7, -0.9, 0.4, (0.5, -1.0)
    params = geo(1, scale_w=scale_w, theta=theta, aniso_w=aniso_w, aniso_r=aniso_r, shift=torch.tensor(shift))
    m = content_matrix(params, 32, 32)[0]
    for px, py in ((3.0, -5.0), (-7.5, 2.0), (0.0, 0.0)):
        x, y = 2 ** (0.2 * scale_w) * px, 2 ** (0.2 * scale_w) * py  # scale first
        x, y = _rotation_pixels(theta)(x, y)  # then rotate
        u, v = _rotation_pixels(-aniso_r)(x, y)  # coordinates along the stretch axes (axis angle r)
        a = 2 ** (0.2 * aniso_w)
        x, y = _rotation_pixels(aniso_r)(a * u, v / a)  # stretch, back to the output frame
        x, y = x + shift[0] * 0.125 * 32, y + shift[1] * 0.125 * 32  # translate last
        got = m @ torch.tensor([px, py, 1.0], dtype=m.dtype)
        torch.testing.assert_close(got[:2], torch.tensor([x, y], dtype=m.dtype), rtol=0, atol=1e-5)  # float32 params


def test_anisotropic_axis_angle_uses_the_rotation_sign(images):
    # stretching along axes at angle r is rotating by -r, stretching along x/y, rotating back by r
    x = images[:4]
    r, w = 0.6, 2.0
    direct = apply_geometric(x, geo(4, aniso_w=w, aniso_r=r))
    composed = apply_geometric(apply_geometric(apply_geometric(x, geo(4, theta=-r)), geo(4, aniso_w=w)), geo(4, theta=r))
    other = apply_geometric(x, geo(4, aniso_w=w, aniso_r=-r))
    right = interior_error(direct, composed, 8)
    assert right < 0.05 and right < 0.35 * interior_error(direct, other, 8)


def test_isotropic_scale_magnifies_about_the_centre(images):
    x = images[:8]
    out = apply_geometric(x, geo(8, scale_w=5.0))  # factor 2^(0.2 * 5) = 2: the centre 16x16 fills the frame
    zoomed = F.interpolate(x[..., 8:24, 8:24], scale_factor=2, mode="bicubic", align_corners=False)
    smaller = F.interpolate(x[..., 4:28, 4:28], size=(32, 32), mode="bicubic", align_corners=False)
    right = interior_error(out, zoomed, 2)
    assert right < 0.05 and right < 0.3 * interior_error(out, smaller, 2)


def test_identity_warp_is_exact(images):
    x = images[:8]
    out = apply_geometric(x, geo(8))  # active, all parameters neutral
    torch.testing.assert_close(out, x, rtol=0, atol=1e-5)


@pytest.mark.parametrize("pixels", [(1, 0), (0, -2), (3, 5), (-7, 4)])
def test_integer_pixel_translation_is_exact_with_reflect_padding(images, pixels):
    x = images[:8]
    dx, dy = pixels
    out = apply_geometric(x, geo(8, shift=torch.tensor([dx / 4.0, dy / 4.0])))  # 0.125 * 32 = 4 px per unit
    # independent formula: reflect-pad without repeating the edge pixel (..., 2, 1, 0, 1, 2, ...), then crop
    pad = 8
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    want = padded[..., pad - dy:pad - dy + 32, pad - dx:pad - dx + 32]
    torch.testing.assert_close(out, want, rtol=0, atol=1e-5)


def _sinusoid(fx, fy, size=64):
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    return torch.cos(2 * math.pi * (fx * xx + fy * yy)).expand(1, 3, size, size).contiguous()


def _naive_bilinear(x, params):
    """The warp without the 2x resampling: bilinear sampling straight on the pixel grid."""
    from mfd_loss.perturbations.geometric import content_matrix
    n, _, h, w = x.shape
    inv = torch.linalg.inv(content_matrix(params, h, w)).float()
    to_pixels = torch.diag(torch.tensor([w / 2.0, h / 2.0, 1.0]))
    to_unit = torch.diag(torch.tensor([2.0 / w, 2.0 / h, 1.0]))
    grid = F.affine_grid((to_unit @ inv @ to_pixels)[:, :2], [n, 1, h, w], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def test_near_identity_warp_keeps_high_frequencies():
    # the v1 resampler low-passed even at neutral parameters (gain 0.70 at 0.45 cycles/px); now the gain is 1
    for f in (0.2, 0.3, 0.4, 0.45):
        s = _sinusoid(f, 0.0)
        out = apply_geometric(s, geo(1))
        inner = (slice(None), slice(None), slice(16, 48), slice(16, 48))
        gain = (out[inner] * s[inner]).sum() / (s[inner] ** 2).sum()
        assert abs(gain.item() - 1.0) < 1e-4, f


@pytest.mark.parametrize("case", ["zoom_out", "rotation"])
def test_zoom_out_and_rotation_do_not_alias(case):
    # a pattern pushed past the output's Nyquist frequency must vanish, not fold back to a low frequency
    # (input RMS 0.71; measured: zoom-out 0.10 vs naive 0.45, rotation 0.10 vs naive 0.25)
    if case == "zoom_out":  # 0.42 cycles/px shrunk by 0.62 -> 0.68 cycles/px
        s, params, ratio = _sinusoid(0.42, 0.0), geo(1, scale_w=math.log2(0.62) / 0.2), 0.3
    else:  # (0.45, 0.45) cycles/px turned by 45 degrees -> (0.64, 0)
        s, params, ratio = _sinusoid(0.45, 0.45), geo(1, theta=math.pi / 4), 0.5
    inner = (slice(None), slice(None), slice(20, 44), slice(20, 44))
    rms = lambda t: t[inner].pow(2).mean().sqrt().item()
    ours, naive = rms(apply_geometric(s, params)), rms(_naive_bilinear(s, params))
    assert naive > 0.2  # the naive sampler aliases: the pattern survives at a false frequency
    assert ours < 0.15 and ours < ratio * naive


def test_warp_preserves_dtype_and_inactive_samples(images):
    x = images[:4].to(torch.bfloat16)
    params = geo(4, theta=0.3)
    params = replace(params, active=torch.tensor([True, False, True, False]))
    out = apply_geometric(x, params)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out[1], x[1]) and torch.equal(out[3], x[3])
    assert not torch.equal(out[0], x[0])


# ------------------------------------------------------------------------------------------ colour


def grey(x):
    return x.mean(1, keepdim=True).expand_as(x).clone()


def test_brightness_adds_a_fifth_of_w(images):
    x = images[:6]
    w = torch.tensor([1.0, -1.0, 0.5, 2.0, -2.5, 0.0])
    out = apply_colour(x, col(6, brightness_w=w))
    torch.testing.assert_close(out, x + 0.2 * w[:, None, None, None], rtol=0, atol=1e-5)


def test_contrast_scales_about_mid_grey(images):
    x = images[:6]
    w = torch.tensor([1.0, -1.0, 0.5, 2.0, -2.5, 0.3])
    out = apply_colour(x, col(6, contrast_w=w))
    factor = (2.0 ** (0.5 * w))[:, None, None, None]
    torch.testing.assert_close(out, factor * x, rtol=0, atol=1e-5)  # pivot 0 = mid-grey of [-1, 1]
    # composed after brightness: c (x + 0.2 b)
    out = apply_colour(x, col(6, contrast_w=w, brightness_w=1.5))
    torch.testing.assert_close(out, factor * (x + 0.3), rtol=0, atol=1e-5)


@pytest.mark.parametrize("op", ["hue_theta", "saturation_w"])
def test_hue_and_saturation_keep_grey_pixels(images, op):
    x = grey(images[:6])
    value = torch.tensor([2.0, -1.0, 0.5, 3.0, -2.5, 1.3])
    out = apply_colour(x, col(6, **{op: value}))
    torch.testing.assert_close(out, x, rtol=0, atol=1e-5)
    # on colour images they change the pixels but keep each pixel's grey level (channel mean)
    out = apply_colour(images[:6], col(6, **{op: value}))
    assert (out - images[:6]).abs().amax((1, 2, 3)).min() > 0.01
    torch.testing.assert_close(out.mean(1), images[:6].mean(1), rtol=0, atol=1e-5)


def test_hue_rotates_chroma_and_third_turn_permutes_channels(images):
    x = images[:6]
    theta = torch.tensor([0.4, -1.0, 2.0, -3.0, 1.0, 3.1])
    out = apply_colour(x, col(6, hue_theta=theta))
    chroma_in, chroma_out = x - grey(x), out - grey(out)
    torch.testing.assert_close(chroma_out.norm(dim=1), chroma_in.norm(dim=1), rtol=1e-4, atol=1e-5)
    cos = (chroma_in * chroma_out).sum(1) / (chroma_in.norm(dim=1) * chroma_out.norm(dim=1)).clamp_min(1e-12)
    strong = chroma_in.norm(dim=1) > 0.05
    for i in range(6):
        torch.testing.assert_close(cos[i][strong[i]], torch.cos(theta[i]).expand(int(strong[i].sum())),
                                   rtol=0, atol=1e-3)
    # a rotation by 2 pi / 3 about (1, 1, 1) maps red -> green -> blue -> red
    third = apply_colour(x, col(6, hue_theta=2 * math.pi / 3))
    torch.testing.assert_close(third, x[:, [2, 0, 1]], rtol=0, atol=1e-5)


def test_saturation_scales_chroma_by_two_to_the_w(images):
    x = images[:6]
    w = torch.tensor([1.0, -1.0, 0.5, -3.0, 0.2, -0.7])
    out = apply_colour(x, col(6, saturation_w=w))
    torch.testing.assert_close(out - grey(out), (2.0 ** w)[:, None, None, None] * (x - grey(x)), rtol=0, atol=1e-5)


def test_colour_inactive_samples_untouched(images):
    x = images[:4]
    params = replace(col(4, brightness_w=1.0, hue_theta=1.0), active=torch.tensor([False, True, False, True]))
    # an inactive sample holds neutral values in sampled params; here it is forced off via `active`
    out = apply_colour(x, params)
    assert torch.equal(out[0], x[0]) and torch.equal(out[2], x[2])
    assert not torch.equal(out[1], x[1])


def test_rgb_only_ops_refuse_single_channel(images):
    x1 = images[:4].mean(1, keepdim=True)
    with pytest.raises(ValueError, match=r"RGB-only ops \(hue, saturation\).*1 channel"):
        Perturbations("all", p=0.5).sample(tuple(x1.shape), generator=gen(0))
    with pytest.raises(ValueError, match=r"hue and saturation perturbations need 3-channel RGB"):
        apply_colour(x1, col(4, hue_theta=1.0))
    with pytest.raises(ValueError, match=r"3-channel RGB"):
        apply_colour(x1, col(4, saturation_w=1.0))
    # ops defined for any channel count work on grey images
    out = apply_colour(x1, col(4, brightness_w=1.0))
    torch.testing.assert_close(out, x1 + 0.2, rtol=0, atol=1e-5)
    out, labels = Perturbations("geometric+degradation", p=1.0)(x1, generator=gen(0))
    assert out.shape == x1.shape and labels.shape == (4, 10) and bool(torch.isfinite(out).all())


# ------------------------------------------------------------------------------------------ degradation


def test_blur_sigma_never_zero_and_kernel_finite(images):
    params = sample_degradation((4096, 3, 8, 8), p={"blur": 1.0}, generator=gen(20))
    assert bool((params.blur_sigma > 0).all()) and bool((params.blur_sigma <= 3).all())
    x = images[:4]
    for sigma in (torch.zeros(4), torch.full((4,), 1e-30), torch.full((4,), 1e-7), torch.full((4,), 3.0)):
        out = gaussian_blur(x, sigma)
        assert bool(torch.isfinite(out).all()), sigma
    torch.testing.assert_close(gaussian_blur(x, torch.zeros(4)), x, rtol=0, atol=1e-6)
    torch.testing.assert_close(gaussian_blur(x, torch.full((4,), 1e-7)), x, rtol=0, atol=1e-6)


def test_blur_matches_a_direct_2d_gaussian_in_the_interior(images):
    x = images[:3]
    sigma = torch.tensor([0.7, 1.5, 2.2])
    out = gaussian_blur(x, sigma)
    r = 9
    t = torch.arange(-r, r + 1, dtype=torch.float64)
    for i, s in enumerate(sigma.tolist()):
        k2 = torch.exp(-(t[:, None] ** 2 + t[None, :] ** 2) / (2 * s * s))
        k2 = (k2 / k2.sum()).to(torch.float32)
        ref = F.conv2d(x[i:i + 1], k2.expand(3, 1, -1, -1).contiguous(), groups=3)  # valid region 14x14
        torch.testing.assert_close(out[i:i + 1, :, r:-r, r:-r], ref, rtol=0, atol=1e-5)
    # blurring removes high frequencies
    assert (out[..., 1:] - out[..., :-1]).abs().mean() < 0.7 * (x[..., 1:] - x[..., :-1]).abs().mean()


def test_mixup_partner_is_never_the_sample_itself():
    for n in (2, 3, 7, 64):
        for seed in range(20):
            params = sample_degradation((n, 3, 4, 4), p={"mixup": 1.0}, generator=gen(seed))
            assert bool((params.partner != torch.arange(n)).all())
            assert bool((params.partner >= 0).all() and (params.partner < n).all())
    params = sample_degradation((2, 3, 4, 4), p={"mixup": 1.0}, generator=gen(0))
    assert params.partner.tolist() == [1, 0]
    with pytest.raises(ValueError, match=r"mixup needs a batch of at least 2"):
        sample_degradation((1, 3, 4, 4), p={"mixup": 0.5}, generator=gen(0))


def test_mixup_blends_towards_partner_perturbed_image(images):
    x = images[:8]
    params = sample_degradation(tuple(x.shape), p={"mixup": 1.0}, generator=gen(21))
    lam = params.mixup_lambda[:, None, None, None]
    assert bool((params.mixup_lambda > 0).all())
    out = apply_degradation(x, params)
    torch.testing.assert_close(out, x + lam * (x[params.partner] - x), rtol=0, atol=1e-6)
    # in the pipeline the partner enters after its own warp, colour transform and blur (METHOD.md Sec. 3)
    pert = Perturbations(["translation", "brightness", "blur", "mixup"], p=1.0)
    p = pert.sample(tuple(x.shape), generator=gen(22))
    pre = gaussian_blur(apply_colour(apply_geometric(x, p.geometric), p.colour), p.degradation.blur_sigma)
    lam = p.degradation.mixup_lambda[:, None, None, None]
    partner = p.degradation.partner
    torch.testing.assert_close(pert.apply(x, p), pre + lam * (pre[partner] - pre), rtol=0, atol=1e-5)
    assert (pert.apply(x, p) - (pre + lam * (x[partner] - pre))).abs().max() > 0.01  # not the clean partner


def test_noise_has_unit_rms_before_scaling(images):
    x = images[:8]
    params = sample_degradation(tuple(x.shape), p={"noise": 1.0}, generator=gen(23))
    rms = params.noise.pow(2).mean((1, 2, 3)).sqrt()
    torch.testing.assert_close(rms, torch.ones(8), rtol=0, atol=1e-5)
    out = apply_degradation(x, params)
    added = (out - x) / params.noise_std[:, None, None, None]
    torch.testing.assert_close(added.pow(2).mean((1, 2, 3)).sqrt(), torch.ones(8), rtol=0, atol=1e-4)
    # the pattern is Gaussian-like: zero mean, not constant
    assert params.noise.mean().abs() < 0.05 and params.noise.std() > 0.9


def test_degradation_order_blur_then_mixup_then_noise(images):
    x = images[:8]
    params = sample_degradation(tuple(x.shape), p={"blur": 1.0, "mixup": 1.0, "noise": 1.0}, generator=gen(24))
    lam = params.mixup_lambda[:, None, None, None]
    blurred = gaussian_blur(x, params.blur_sigma)
    want = blurred + lam * (blurred[params.partner] - blurred) + params.noise_std[:, None, None, None] * params.noise
    torch.testing.assert_close(apply_degradation(x, params), want, rtol=0, atol=1e-5)


def test_resampling_filter_is_an_orthogonal_wavelet_and_up_down_is_identity(images):
    from mfd_loss.perturbations.resampling import downsample2x, symlet_lowpass, upsample2x
    h = torch.tensor(symlet_lowpass(), dtype=torch.float64)
    assert h.numel() == 12 and abs(h.sum().item() - math.sqrt(2)) < 1e-12
    for k in range(6):  # sum_n h[n] h[n + 2k] = delta_k
        assert abs((h[: h.numel() - 2 * k] * h[2 * k:]).sum().item() - (1.0 if k == 0 else 0.0)) < 1e-12
    # half-band low-pass: |H| / sqrt(2) is 1 at DC, 1/sqrt(2) at the original Nyquist, 0 at pi
    w = torch.tensor([0.0, math.pi / 2, math.pi], dtype=torch.float64)
    n = torch.arange(12, dtype=torch.float64)
    mag = (h[None] * torch.exp(-1j * w[:, None] * n[None])).sum(1).abs() / math.sqrt(2)
    torch.testing.assert_close(mag, torch.tensor([1.0, 2 ** -0.5, 0.0], dtype=torch.float64), rtol=0, atol=1e-9)
    x = images[:4]
    up = upsample2x(x)
    assert up.shape[-2:] == (2 * 32 + 10, 2 * 32 + 10)
    torch.testing.assert_close(downsample2x(up), x, rtol=0, atol=1e-5)


def test_resampling_filter_has_the_authors_orientation():
    from mfd_loss.perturbations.resampling import filter_delay, symlet_lowpass
    # METHOD.md Sec. 3: the symlet-6 low-pass in the orientation whose first taps are these (the time reverse,
    # used by pipeline 2, is also exact at the identity but mirrors every warp through a 180-degree turn)
    first = symlet_lowpass()[:6]
    want = (0.01540, 0.00349, -0.11799, -0.04831, 0.49105, 0.78764)
    assert all(abs(a - b) < 1e-5 for a, b in zip(first, want)), first
    assert filter_delay() == 5.0


@pytest.mark.parametrize("scale_w, theta", [(2.0, 0.0), (0.0, 0.5), (1.0, 0.3)])
def test_warp_of_a_centred_point_lands_where_the_authors_filter_puts_it(scale_w, theta):
    # A 2x2 block at the centre of a 32x32 image is symmetric under a 180-degree turn, so the two filter
    # orientations give outputs that are 180-degree turns of each other: the sub-pixel centroid offset of a
    # zoomed or rotated block flips sign. With the authors' orientation it lies down-right of the centre
    # (+0.014 px both ways for a 1.32x zoom); with the reversed filter up-left.
    from mfd_loss.perturbations.geometric import content_matrix, warp

    x = torch.zeros(1, 1, 32, 32)
    x[..., 15:17, 15:17] = 1.0
    params = GeometricParams(torch.tensor([scale_w]), torch.tensor([theta]), torch.zeros(1), torch.zeros(1),
                             torch.zeros(1, 2), torch.ones(1, dtype=torch.bool))
    y = warp(x, content_matrix(params, 32, 32))[0, 0].double()
    rows, cols = torch.meshgrid(torch.arange(32.0, dtype=torch.float64), torch.arange(32.0, dtype=torch.float64),
                                indexing="ij")
    dx = ((y * cols).sum() / y.sum() - 15.5).item()
    assert dx > 0.01, dx


def test_reflect_pad_beyond_the_image_size_continues_the_mirror():
    from mfd_loss.perturbations.resampling import reflect_pad
    x = torch.arange(5.0).expand(1, 1, 5, 5)
    row = reflect_pad(x, 9)[0, 0, 9]  # independent formula: index i -> mirror with period 2 (n - 1)
    want = [(lambda j: j if j < 5 else 8 - j)((i - 9) % 8) for i in range(23)]
    assert row.tolist() == [float(v) for v in want]


def test_label_spec_records_its_pipeline_version_and_old_files_are_version_1():
    from mfd_loss.perturbations import PIPELINE_VERSION

    spec = label_spec("all")
    assert spec.pipeline == PIPELINE_VERSION == 3
    data = json.loads(json.dumps(spec.to_dict()))
    assert data["pipeline"] == 3 and LabelSpec.from_dict(data) == spec
    old = {k: v for k, v in data.items() if k != "pipeline"}  # a config.json of mfd-loss 0.1
    assert LabelSpec.from_dict(old).pipeline == 1 and LabelSpec.from_dict(old) != spec
    # the pipeline produces only the current conventions: labels of another version are refused
    with pytest.raises(ValueError, match=r"pipeline 1, but this mfd-loss implements pipeline 3"):
        Perturbations(LabelSpec.from_dict(old))


def test_shipped_maps_declare_the_pipeline_they_were_trained_with():
    from mfd_loss.hub.pretrained import embedded_path, get_pretrained_spec, list_pretrained

    folders = [embedded_path(get_pretrained_spec(name)) for name in list_pretrained()]
    assert any(folder is not None for folder in folders)
    for name, folder in zip(list_pretrained(), folders):
        if folder is None:
            continue
        config = json.loads((folder / "config.json").read_text())
        spec = LabelSpec.from_dict(config["label_spec"])
        assert spec.pipeline == config["label_spec"].get("pipeline", 1)
        assert "pipeline" in config["label_spec"], name  # stated explicitly, not left to the default
