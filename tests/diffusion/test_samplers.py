"""Samplers against the closed-form probability-flow ODE of Gaussian data.

For data ~ N(0, s^2 I) the exact denoiser is D(x; sigma) = s^2 / (s^2 + sigma^2) x, and the
ODE dx/dsigma = (x - D)/sigma = sigma x / (s^2 + sigma^2) solves to
x(sigma) = x(sigma_max) sqrt((s^2 + sigma^2) / (s^2 + sigma_max^2)).
"""

from __future__ import annotations

import math

import pytest
import torch

from simdiff.diffusion import (
    classifier_free_guidance,
    karras_sigmas,
    sample_dpmpp_2m,
    sample_euler,
    sample_heun,
)

S = 0.5  # data std
SIGMA_MIN, SIGMA_MAX = 0.002, 80.0


def exact_denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    return S**2 / (S**2 + sigma**2) * x


def start(n: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=g, dtype=torch.float64) * SIGMA_MAX


def exact_end(x0: torch.Tensor) -> torch.Tensor:
    return x0 * math.sqrt(S**2 / (S**2 + SIGMA_MAX**2))


def error(sampler, steps: int) -> float:
    x0 = start()
    sigmas = karras_sigmas(steps, SIGMA_MIN, SIGMA_MAX)
    out = sampler(exact_denoiser, x0, sigmas)
    return float((out - exact_end(x0)).abs().max() / exact_end(x0).abs().max())


def test_karras_sigmas_shape_ends_and_rho():
    s = karras_sigmas(10, 0.002, 80.0)
    assert s.shape == (11,) and s[-1] == 0
    assert float(s[0]) == pytest.approx(80.0) and float(s[-2]) == pytest.approx(0.002)
    assert torch.all(s[1:] < s[:-1])
    assert float(karras_sigmas(3, 1.0, 9.0, rho=1.0)[1]) == pytest.approx(5.0)  # rho=1: linear


@pytest.mark.parametrize("steps", [16, 32, 64])
def test_heun_beats_euler_from_16_steps(steps):
    assert error(sample_heun, steps) < error(sample_euler, steps)


@pytest.mark.parametrize("steps", [16, 32])
def test_heun_error_falls_at_least_3x_when_steps_double(steps):
    assert error(sample_heun, steps) / error(sample_heun, 2 * steps) >= 3.0


def test_euler_is_first_order_and_dpmpp_2m_second_order():
    e16, e32 = error(sample_euler, 16), error(sample_euler, 32)
    assert 1.6 < e16 / e32 < 2.6
    d16, d32 = error(sample_dpmpp_2m, 16), error(sample_dpmpp_2m, 32)
    assert d16 / d32 > 3.0 and d32 < e32


def test_all_samplers_converge():
    assert error(sample_euler, 256) < 2e-2  # first order: 1.1e-2 measured
    for sampler in (sample_heun, sample_dpmpp_2m):  # second order: 2.1e-4 measured
        assert error(sampler, 256) < 1e-3, sampler.__name__


def test_stochastic_heun_recovers_the_data_variance():
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(20_000, generator=g, dtype=torch.float64) * SIGMA_MAX
    sigmas = karras_sigmas(64, SIGMA_MIN, SIGMA_MAX)
    out = sample_heun(exact_denoiser, x0, sigmas, generator=g, s_churn=20.0, s_tmin=0.05, s_tmax=50.0)
    assert float(out.std()) == pytest.approx(S, rel=0.02)  # sampling error of the std: 0.5 %
    # churn really changes the path: the deterministic end point differs
    det = sample_heun(exact_denoiser, x0, sigmas)
    assert float((out - det).abs().mean()) > 0.05


def test_samplers_are_pure_functions():
    x0, sigmas = start(), karras_sigmas(8, SIGMA_MIN, SIGMA_MAX)
    a = sample_heun(exact_denoiser, x0, sigmas, generator=torch.Generator().manual_seed(3), s_churn=5.0)
    b = sample_heun(exact_denoiser, x0, sigmas, generator=torch.Generator().manual_seed(3), s_churn=5.0)
    assert torch.equal(a, b) and torch.equal(x0, start())


def test_classifier_free_guidance_mixes_estimates():
    def denoise(x, sigma, label=None):
        return x * 0 + (1.0 if label is None else 3.0)

    x, sigma = torch.zeros(2), torch.tensor(1.0)
    assert float(classifier_free_guidance(denoise, {"label": 1}, {}, 1.0)(x, sigma)[0]) == 3.0
    assert float(classifier_free_guidance(denoise, {"label": 1}, {}, 0.0)(x, sigma)[0]) == 1.0
    assert float(classifier_free_guidance(denoise, {"label": 1}, {}, 2.0)(x, sigma)[0]) == 5.0
