"""EDM preconditioning and loss: Table 1 of Karras et al. (2022) and its consequences."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from simdiff.diffusion import EDMLoss, EDMPrecond, edm_coefficients, edm_loss_weight


def test_coefficients_match_table_1():
    sigma, sd = torch.tensor([0.5, 2.0]), 0.7
    c_skip, c_out, c_in, c_noise = edm_coefficients(sigma, sd)
    s2 = sigma**2 + sd**2
    torch.testing.assert_close(c_skip, sd**2 / s2)
    torch.testing.assert_close(c_out, sigma * sd / s2.sqrt())
    torch.testing.assert_close(c_in, 1 / s2.sqrt())
    torch.testing.assert_close(c_noise, sigma.log() / 4)


def test_unit_variance_target_and_weight():
    """lambda(sigma) c_out(sigma)^2 = 1: the loss weight exactly undoes the output scaling."""
    sigma = torch.logspace(-3, 2, 20)
    _, c_out, _, _ = edm_coefficients(sigma, 0.5)
    torch.testing.assert_close(edm_loss_weight(sigma, 0.5) * c_out**2, torch.ones(20))


class Zero(nn.Module):
    def forward(self, x, c_noise):
        return torch.zeros_like(x)


def test_precond_with_a_zero_network_is_the_skip_connection():
    x = torch.randn(3, 2, 4, 4)
    d = EDMPrecond(Zero(), sigma_data=1.0)(x, torch.tensor(1.0))
    torch.testing.assert_close(d, x / 2)


def test_loss_of_the_exact_gaussian_denoiser_is_its_known_value():
    """For y ~ N(0, s^2), D = s^2/(s^2+sigma^2) x has E|D - y|^2 = s^2 sigma^2/(s^2+sigma^2) per
    element, so lambda-weighted loss = (sigma^2 + s^2)/(sigma s)^2 * that = 1 at sigma_data = s."""
    s = 0.8
    g = torch.Generator().manual_seed(0)
    y = torch.randn(4096, 8, generator=g, dtype=torch.float64) * s

    def exact(x, sigma):
        sig = sigma.reshape(-1, 1)
        return s**2 / (s**2 + sig**2) * x

    loss, sigma = EDMLoss(sigma_data=s)(exact, y, generator=g)
    assert float(loss.mean()) == pytest.approx(1.0, rel=0.03)
    assert float(sigma.log().mean()) == pytest.approx(-1.2, abs=0.1)
    assert float(sigma.log().std()) == pytest.approx(1.2, abs=0.1)


def test_weighted_loss_ignores_zero_weight_cells():
    y = torch.zeros(2, 1, 4)

    def bad_on_last_cell(x, sigma):
        out = torch.zeros_like(x)
        out[..., -1] = 100.0
        return out

    w = torch.tensor([1.0, 1.0, 1.0, 0.0])
    loss, _ = EDMLoss()(bad_on_last_cell, y, weight=w, generator=torch.Generator().manual_seed(0))
    assert torch.all(loss == 0)
    assert math.isfinite(float(EDMLoss()(bad_on_last_cell, y, generator=torch.Generator())[0].mean()))
