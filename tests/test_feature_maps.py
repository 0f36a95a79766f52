"""VGG-BN feature maps (METHOD.md Sec. 2): taps, feature_info, parameter count, config errors."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from mfd_loss import FeatureMapConfig, VGGFeatureMap, build_feature_map

# METHOD.md Sec. 2 and the VGG paper: convs per plan, and the channel count of every pooling stage.
CONVS = {"vgg11": 8, "vgg13": 10, "vgg16": 13, "vgg19": 16}
STAGE_CHANNELS = (64, 128, 256, 512, 512)


def expected_channels(width):
    return [max(8, round(c * width)) for c in STAGE_CHANNELS]


@pytest.mark.parametrize("arch", ["vgg11", "vgg13", "vgg16", "vgg19"])
@pytest.mark.parametrize("width", [0.05, 0.125, 0.5, 1.0])
def test_tap_shapes(arch, width, images):
    fmap = VGGFeatureMap(FeatureMapConfig(arch=arch, width=width, num_labels=7)).eval()
    with torch.no_grad():
        taps = fmap(images[:2])
    channels = expected_channels(width)
    want = [(2, c, 32 >> (i + 1), 32 >> (i + 1)) for i, c in enumerate(channels)] + [(2, 7, 1, 1)]
    assert [tuple(t.shape) for t in taps] == want
    convs = [m for m in fmap.modules() if isinstance(m, nn.Conv2d)]
    bns = [m for m in fmap.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(convs) == CONVS[arch] and len(bns) == CONVS[arch]
    assert all(m.kernel_size == (3, 3) and m.padding == (1, 1) for m in convs)
    # pooled taps follow a ReLU, so they are non-negative
    assert all(bool((t >= 0).all()) for t in taps[:-1])
    assert fmap.predict_labels(images[:2]).shape == (2, 7)


@pytest.mark.parametrize("width", [0.125, 1.0])
def test_feature_info_matches_taps(width, images):
    fmap = VGGFeatureMap(FeatureMapConfig(arch="vgg16", width=width)).eval()
    with torch.no_grad():
        taps = fmap(images[:1])
    info = fmap.feature_info
    assert len(info) == len(taps) == 6
    for entry, tap in zip(info[:-1], taps[:-1]):
        assert entry["channels"] == tap.shape[1]
        assert entry["reduction"] == 32 // tap.shape[-1] == 32 // tap.shape[-2]
    assert info[-1]["name"] == "head" and info[-1]["channels"] == 15 == taps[-1].shape[1]
    assert len({e["name"] for e in info}) == 6


def test_vgg16_full_width_parameter_count():
    fmap = VGGFeatureMap(FeatureMapConfig())
    plan = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    expected, c_in = 0, 3
    for c_out in plan:
        expected += 9 * c_in * c_out + 2 * c_out  # bias-free 3x3 conv + BN affine
        c_in = c_out
    expected += 512 * 15 + 15  # head
    count = sum(p.numel() for p in fmap.parameters())
    assert count == expected
    assert 14.6e6 < count < 14.8e6  # "about 14.7 M parameters"
    assert fmap.config.arch == "vgg16" and fmap.config.num_labels == 15


def test_other_resolution_and_channels(images):
    fmap = VGGFeatureMap(FeatureMapConfig(arch="vgg11", width=0.125, resolution=(64, 64), in_channels=1)).eval()
    x = torch.nn.functional.interpolate(images[:2].mean(1, keepdim=True), size=(64, 64), mode="bilinear")
    with torch.no_grad():
        taps = fmap(x)
    assert [t.shape[-1] for t in taps] == [32, 16, 8, 4, 2, 1]
    assert fmap.min_size == 32
    with pytest.raises(ValueError, match=r"3 channel\(s\).*takes 1-channel images"):
        fmap(images[:2])


def test_fewer_stages_at_smaller_resolution(images):
    """Below 32 px a VGG keeps the stages the size allows (explicit, never a crash inside the net)."""
    config = FeatureMapConfig(arch="vgg11", width=0.125, resolution=(28, 28))
    assert config.num_stages == 4
    fmap = VGGFeatureMap(config).eval()
    with torch.no_grad():
        taps = fmap(images[:2, :, 2:30, 2:30])
    assert [tuple(t.shape[-2:]) for t in taps] == [(14, 14), (7, 7), (3, 3), (1, 1), (1, 1)]
    assert len(fmap.feature_info) == len(taps)


def test_forward_validates_input(images):
    fmap = VGGFeatureMap(FeatureMapConfig(arch="vgg11", width=0.125)).eval()
    with pytest.raises(ValueError, match=r"channels-last"):
        fmap(images[:2].permute(0, 2, 3, 1))
    with pytest.raises(ValueError, match=r"at least 32x32"):
        fmap(images[:2, :, :20, :20])


def test_eval_mode_output_is_per_sample(images):
    fmap = VGGFeatureMap(FeatureMapConfig(arch="vgg11", width=0.125)).eval()
    with torch.no_grad():
        batch = fmap(images[:6])
        single = fmap(images[3:4])
    for a, b in zip(batch, single):
        torch.testing.assert_close(a[3:4], b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"arch": "vgg17"}, r"unknown feature-map architecture 'vgg17'"),
        ({"arch": "resnet50"}, r"unknown feature-map architecture"),
        ({"width": 0.0}, r"width must be positive"),
        ({"width": -0.5}, r"width must be positive"),
        ({"in_channels": 0}, r"in_channels and num_labels must be at least 1"),
        ({"num_labels": 0}, r"in_channels and num_labels must be at least 1"),
        ({"resolution": (16, 16), "num_stages": 5}, r"needs inputs of at least 32x32"),
        ({"resolution": (64, 24), "num_stages": 5}, r"needs inputs of at least 32x32"),
        ({"resolution": (1, 1)}, r"needs inputs of at least 2x2"),
        ({"num_stages": 6}, r"vgg16 has 1 to 5 stages, got num_stages=6"),
        ({"num_stages": 0}, r"has 1 to 5 stages"),
    ],
)
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FeatureMapConfig(**kwargs)


def test_config_dict_round_trip_and_build():
    config = FeatureMapConfig(arch="vgg13", width=0.25, num_labels=7, resolution=(48, 40), input_range=(0, 1))
    data = json.loads(json.dumps(config.to_dict()))
    assert FeatureMapConfig.from_dict(data) == config
    fmap = build_feature_map(data)
    assert isinstance(fmap, VGGFeatureMap) and fmap.config == config
    assert build_feature_map(config).config == config
    with pytest.raises(ValueError, match=r"unknown feature-map config keys \['depth'\]"):
        FeatureMapConfig.from_dict({**data, "depth": 3})
