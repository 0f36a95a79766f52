"""ECT schedule helpers against hand-computed values (mfd_loss.consistency)."""

from __future__ import annotations

import math

import pytest
import torch

from mfd_loss.consistency import (
    EDMDenoiser, consistency_weight, edm_preconditioning, one_step_sample, r_from_t, sample_noise_levels,
    two_step_sample,
)


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


class TestNoiseLevels:
    def test_log_normal_moments(self):
        t = sample_noise_levels(200_000, torch.Generator().manual_seed(0))
        log_t = t.double().log()
        assert abs(log_t.mean().item() - (-1.1)) < 0.02
        assert abs(log_t.std().item() - 2.0) < 0.02
        assert t.dtype == torch.float32 and bool((t > 0).all())

    def test_generator_replays(self):
        a = sample_noise_levels(8, torch.Generator().manual_seed(3), mean=0.5, std=0.1)
        b = sample_noise_levels(8, torch.Generator().manual_seed(3), mean=0.5, std=0.1)
        assert torch.equal(a, b)
        z = torch.randn(8, generator=torch.Generator().manual_seed(3))
        torch.testing.assert_close(a, torch.exp(0.5 + 0.1 * z))

    def test_rejects_bad_arguments(self):
        with pytest.raises(ValueError):
            sample_noise_levels(0)
        with pytest.raises(ValueError):
            sample_noise_levels(2, std=-1.0)


class TestMapping:
    @pytest.mark.parametrize("t", [0.002, 0.1, 1.0, 5.0, 80.0])
    def test_stage_zero_by_hand(self, t):
        expected = t * (1 - (1 + 8 * _sigmoid(-t)) / 256)
        assert r_from_t(torch.tensor([t], dtype=torch.float64)).item() == pytest.approx(expected, rel=1e-12)

    def test_known_values(self):
        r = r_from_t(torch.tensor([1.0, 80.0], dtype=torch.float64))
        assert r[0].item() == pytest.approx(0.9876893305821877, rel=1e-12)  # 1 - (1 + 8 sigmoid(-1)) / 256
        assert r[1].item() == pytest.approx(79.6875, rel=1e-12)  # 80 (1 - 1/256): sigmoid(-80) ~ 0

    def test_gap_ratio_bounds(self):
        t = torch.logspace(-3, 2, 50, dtype=torch.float64)
        ratio = (t - r_from_t(t)) / t
        assert bool((ratio >= 1 / 256 - 1e-12).all()) and bool((ratio < 5 / 256).all())

    def test_stage_and_parameters(self):
        t = torch.tensor([2.0], dtype=torch.float64)
        expected = 2.0 * (1 - 4.0 ** -3 * (1 + 3 * _sigmoid(-0.5 * 2.0)))
        assert r_from_t(t, q=4, k=3, b=0.5, stage=2).item() == pytest.approx(expected, rel=1e-12)

    def test_clamped_at_zero(self):
        assert r_from_t(torch.tensor([0.01]), q=1.5, k=8).item() == 0.0

    def test_rejects_bad_arguments(self):
        with pytest.raises(ValueError):
            r_from_t(torch.ones(1), q=1.0)
        with pytest.raises(ValueError):
            r_from_t(torch.ones(1), stage=-1)


def test_weight():
    t, r = torch.tensor([1.0, 80.0]), torch.tensor([0.75, 79.5])
    torch.testing.assert_close(consistency_weight(t, r), torch.tensor([4.0, 2.0]))
    with pytest.raises(ValueError):
        consistency_weight(t, t)


def test_edm_preconditioning_by_hand():
    sigma = torch.tensor([0.0, 0.5, 80.0], dtype=torch.float64)
    c = edm_preconditioning(sigma)
    torch.testing.assert_close(c.c_skip, torch.tensor([1.0, 0.5, 0.25 / 6400.25], dtype=torch.float64))
    torch.testing.assert_close(c.c_out, torch.tensor([0.0, 0.25 / math.sqrt(0.5), 40 / math.sqrt(6400.25)],
                                                     dtype=torch.float64))
    torch.testing.assert_close(c.c_in, torch.tensor([2.0, 1 / math.sqrt(0.5), 1 / math.sqrt(6400.25)], dtype=torch.float64))
    assert c.c_noise[1].item() == pytest.approx(math.log(0.5) / 4)
    assert math.isfinite(c.c_noise[0].item())
    # c_skip^2 sigma_d^2 ... EDM's unit-variance identity: c_skip^2 s_d^2 + c_out^2 ... = s_d^2 for the target scale
    assert torch.allclose(c.c_skip * 0.25 + c.c_out**2, torch.full_like(sigma, 0.25))


class _Zero(torch.nn.Module):
    def forward(self, x, c_noise):
        return torch.zeros_like(x)


def test_denoiser_boundary_condition():
    denoiser = EDMDenoiser(_Zero())
    x = torch.randn(3, 1, 4, 4)
    torch.testing.assert_close(denoiser(x, torch.zeros(3)), x)
    torch.testing.assert_close(denoiser(x, 0.5), 0.5 * x)
    with pytest.raises(ValueError):
        denoiser(x, torch.ones(2))


class _Recorder:
    def __init__(self):
        self.calls = []

    def __call__(self, x, sigma):
        self.calls.append((x.clone(), sigma.clone()))
        return torch.tanh(x)


def test_one_step_sample():
    rec = _Recorder()
    z = torch.randn(2, 3, 4, 4)
    out = one_step_sample(rec, z, sigma_max=80.0)
    torch.testing.assert_close(rec.calls[0][0], 80 * z)
    torch.testing.assert_close(rec.calls[0][1], torch.full((2,), 80.0))
    torch.testing.assert_close(out, torch.tanh(80 * z))


def test_two_step_sample():
    rec = _Recorder()
    z = torch.randn(2, 3, 4, 4)
    out = two_step_sample(rec, z, generator=torch.Generator().manual_seed(5))
    z2 = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(5))
    first = torch.tanh(80 * z)
    torch.testing.assert_close(rec.calls[1][0], first + 0.821 * z2)
    torch.testing.assert_close(rec.calls[1][1], torch.full((2,), 0.821))
    torch.testing.assert_close(out, torch.tanh(first + 0.821 * z2))
    with pytest.raises(ValueError):
        two_step_sample(rec, z, sigma_mid=100.0)
