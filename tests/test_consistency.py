"""ECT schedule helpers against hand-computed values, and the ODE solvers against an exact Gaussian ODE
(mfd_loss.consistency, mfd_loss.consistency.sampling)."""

from __future__ import annotations

import math

import pytest
import torch

from mfd_loss.consistency import (
    EDMDenoiser, consistency_weight, distillation_target, edm_loss_weight, edm_preconditioning, one_step_sample,
    r_from_t, sample_noise_levels, two_step_sample,
)
from mfd_loss.consistency.sampling import edm_sigmas, heun_sample, ode_step


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


# ---------------------------------------------------------------------------- ODE steps on a Gaussian toy
# Data x0 ~ N(MU, S^2) in every coordinate: the exact EDM denoiser is D(x, sigma) = MU + S^2 / (S^2 + sigma^2) (x - MU)
# and the probability-flow ODE dx/dsigma = (x - D) / sigma is solved by x(r) - MU = (x(t) - MU) sqrt((S^2 + r^2) / (S^2 + t^2)).
MU, S = 0.3, 0.5


def _gaussian_denoiser(x, sigma):
    shrink = (S**2 / (S**2 + sigma**2)).view(-1, *([1] * (x.ndim - 1)))
    return MU + shrink * (x - MU)


def _exact(x, t, r):
    return MU + (x - MU) * math.sqrt((S**2 + r**2) / (S**2 + t**2))


def _step_error(solver: str, t: float, h: float) -> float:
    x = torch.linspace(-2, 2, 16).view(4, 1, 2, 2)
    out = ode_step(_gaussian_denoiser, x, t, t - h, solver)
    return float((out.double() - _exact(x.double(), t, t - h)).abs().max())


@pytest.mark.parametrize("solver, order", [("euler", 1), ("heun", 2)])
def test_ode_step_local_error_has_the_solver_order(solver, order):
    """A method of order p has local error C h^(p+1): halving the step divides it by 2^(p+1) (4 Euler, 8 Heun)."""
    t = 1.0
    errors = [_step_error(solver, t, h) for h in (0.2, 0.1, 0.05)]
    for big, small in zip(errors, errors[1:]):
        assert math.log2(big / small) == pytest.approx(order + 1, abs=0.25), errors
    if solver == "heun":
        assert errors[1] < _step_error("euler", t, 0.1) / 10  # second order beats first by far at h = 0.1


def test_ode_step_exact_for_a_constant_direction():
    """With D(x, sigma) = x - sigma v the direction d = v is constant: both solvers are exact (x_r = x + (r - t) v)."""
    v = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    x = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    t, r = torch.tensor([2.0, 1.0, 0.5]), torch.tensor([1.0, 0.0, 0.25])
    for solver in ("euler", "heun"):
        out = ode_step(lambda y, s: y - s.view(-1, 1, 1, 1) * v, x, t, r, solver)
        torch.testing.assert_close(out, x + (r - t).view(-1, 1, 1, 1) * v)


def test_ode_step_into_zero_is_the_denoised_estimate():
    x = torch.randn(2, 1, 3, 3)
    for solver in ("euler", "heun"):
        torch.testing.assert_close(ode_step(_gaussian_denoiser, x, 1.5, 0.0, solver), _gaussian_denoiser(x, torch.full((2,), 1.5)))


def test_ode_step_rejects_bad_input():
    x = torch.zeros(2, 1, 2, 2)
    with pytest.raises(ValueError, match="solver"):
        ode_step(_gaussian_denoiser, x, 1.0, 0.5, "rk4")
    with pytest.raises(ValueError, match="r < t"):
        ode_step(_gaussian_denoiser, x, 1.0, 1.0)
    with pytest.raises(ValueError, match="shape"):
        ode_step(_gaussian_denoiser, x, torch.ones(3), 0.5)


def test_edm_sigmas_by_hand():
    s = edm_sigmas(18).tolist()
    assert len(s) == 19 and s[-1] == 0.0
    assert s[0] == pytest.approx(80.0, rel=1e-12) and s[17] == pytest.approx(0.002, rel=1e-12)
    i = 5  # (80^(1/7) + 5/17 (0.002^(1/7) - 80^(1/7)))^7
    assert s[i] == pytest.approx((80 ** (1 / 7) + i / 17 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7, rel=1e-12)
    assert all(a > b for a, b in zip(s, s[1:]))
    with pytest.raises(ValueError):
        edm_sigmas(1)


def test_heun_sampler_converges_with_second_order_on_the_gaussian_toy():
    """The sampler's global error against the exact ODE map shrinks ~4x when the number of steps doubles
    (global order 2), and the 18-step chain is Richardson-consistent: its error is 4/3 of its distance to the
    36-step chain, up to the next order."""
    z = torch.randn(64, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    exact = _exact(80.0 * z.double(), 80.0, 0.0)
    chains = {n: heun_sample(_gaussian_denoiser, z, num_steps=n).double() for n in (18, 36, 72)}
    errors = [float((chains[n] - exact).abs().max()) for n in (18, 36, 72)]
    for big, small in zip(errors, errors[1:]):
        assert math.log2(big / small) == pytest.approx(2.0, abs=0.4), errors
    richardson = 4 / 3 * float((chains[18] - chains[36]).abs().max())
    assert errors[0] == pytest.approx(richardson, rel=0.15)


def test_edm_loss_weight_is_one_over_c_out_squared():
    sigma = torch.tensor([0.01, 0.5, 3.0, 80.0], dtype=torch.float64)
    torch.testing.assert_close(edm_loss_weight(sigma), edm_preconditioning(sigma).c_out ** -2)
    with pytest.raises(ValueError):
        edm_loss_weight(torch.tensor([0.0]))


def test_distillation_target_is_the_student_where_the_teacher_step_lands():
    x_t = torch.randn(3, 1, 2, 2, generator=torch.Generator().manual_seed(2))
    t, r = torch.tensor([2.0, 1.0, 0.3]), torch.tensor([1.9, 0.0, 0.29])
    student = lambda x, s: torch.tanh(x) * (1 + s.view(-1, 1, 1, 1))  # noqa: E731
    for solver in ("heun", "euler"):
        target = distillation_target(student, _gaussian_denoiser, x_t, t, r, solver)
        x_r = ode_step(_gaussian_denoiser, x_t, t, r, solver)
        torch.testing.assert_close(target[[0, 2]], student(x_r, r)[[0, 2]])
        torch.testing.assert_close(target[1], x_r[1])  # r = 0: the boundary, the teacher's own x_0
        torch.testing.assert_close(target[0], student(torch.as_tensor(_exact(x_t[0].double(), 2.0, 1.9)).float(),
                                                      torch.tensor([1.9]))[0], atol=2e-3, rtol=0)
