"""KL in closed form, bounded latents, the masked weighted MSE, the spectral and the count terms."""

from __future__ import annotations

import math

import pytest
import torch

from simdiff.nets.bottleneck import BoundedBottleneck, gaussian_kl
from simdiff.nets.losses import ReconstructionLoss, count_error, masked_mse, spectral_loss


def test_kl_closed_form_matches_monte_carlo():
    g = torch.Generator().manual_seed(0)
    mean = torch.tensor([0.0, 1.5, -0.7])
    logvar = torch.tensor([0.0, -1.0, 0.8])
    std = torch.exp(0.5 * logvar)
    z = mean + std * torch.randn(400_000, 3, generator=g, dtype=torch.float64).float()
    log_q = -0.5 * ((z - mean) / std) ** 2 - torch.log(std) - 0.5 * math.log(2 * math.pi)
    log_p = -0.5 * z**2 - 0.5 * math.log(2 * math.pi)
    mc = (log_q - log_p).mean(0)
    torch.testing.assert_close(mc, gaussian_kl(mean, logvar), atol=1e-2, rtol=1e-2)
    assert gaussian_kl(torch.zeros(1), torch.zeros(1)).item() == 0.0


def test_bounded_bottleneck_is_bounded_and_identity_near_zero():
    b = BoundedBottleneck(bound=2.0)
    h = torch.tensor([-100.0, -1e-3, 0.0, 1e-3, 100.0])
    out = b(h.reshape(1, 5, 1, 1))
    z = out.z.flatten()
    assert z.abs().max() <= 2.0 and z.abs().max() > 1.99
    torch.testing.assert_close(z[1:4], h[1:4], atol=1e-8, rtol=1e-6)
    assert out.loss == 0


def test_masked_mse_ignores_masked_cells_and_counts_weights():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(2, 3, 4, 5, generator=g), torch.randn(2, 3, 4, 5, generator=g)
    mask = torch.ones(4, 5, dtype=torch.bool)
    mask[0, :2] = False
    w = torch.rand(4, 5, generator=g) + 0.5
    base = masked_mse(x, y, w, mask)
    x2 = x.clone()
    x2[..., 0, :2] = 1e6  # change only masked cells
    assert masked_mse(x2, y, w, mask) == base
    # Closed form: weighted mean over valid cells.
    m = mask.float() * w
    expected = ((x - y) ** 2 * m).sum() / (m.sum() * 6)
    torch.testing.assert_close(base, expected)
    # Weights count: putting all the weight on one cell gives that cell's error.
    w1 = torch.zeros(4, 5)
    w1[3, 4] = 1.0
    torch.testing.assert_close(masked_mse(x, y, w1, mask), ((x - y)[..., 3, 4] ** 2).mean())


def test_spectral_loss_zero_iff_amplitudes_equal():
    g = torch.Generator().manual_seed(2)
    y = torch.randn(2, 1, 8, 16, generator=g)
    mask = torch.ones(8, 16, dtype=torch.bool)
    shifted = torch.roll(y, 5, dims=-1)  # same amplitudes along x, different field
    assert spectral_loss(shifted, y, mask, [1]) < 1e-10
    assert spectral_loss(y, y, mask, [1]) == 0
    smooth = y.clone()
    smooth[..., 1::2] = smooth[..., ::2]  # loses small-scale energy
    assert spectral_loss(smooth, y, mask, [1]) > 1e-2


def test_reconstruction_loss_adds_the_spectral_term():
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(1, 2, 4, 8, generator=g), torch.randn(1, 2, 4, 8, generator=g)
    w, mask = torch.ones(4, 8), torch.ones(4, 8, dtype=torch.bool)
    plain = ReconstructionLoss()(x, y, w, mask, (False, True))
    spec = ReconstructionLoss(spectral_weight=0.5)(x, y, w, mask, (False, True))
    torch.testing.assert_close(spec["loss"], plain["mse"] + 0.5 * spec["spectral"])
    assert "spectral" not in plain


def test_count_error_is_the_squared_relative_error_of_the_weighted_sums():
    y = torch.rand(3, 2, 4, 5) + 0.5
    w = torch.rand(4, 5) + 0.1
    mask = torch.ones(4, 5, dtype=torch.bool)
    mask[0, 0] = False
    x = y.clone()
    x[0, 1] *= 1.1  # one field holds 10 % more everywhere
    x[2, 0, 0, 0] += 100.0  # a masked cell: counts for nothing
    assert count_error(y, y, w, mask) == 0
    torch.testing.assert_close(count_error(x, y, w, mask), torch.tensor(0.1**2 / 6), rtol=1e-4, atol=0)
    # per sample weights (crops) broadcast over channels
    per = w.expand(3, 4, 5)
    torch.testing.assert_close(count_error(x, y, per, mask.expand(3, 4, 5)), torch.tensor(0.1**2 / 6),
                               rtol=1e-4, atol=0)
    # a target that holds nothing counts the reconstruction's absolute sum
    zero = torch.zeros_like(y)
    assert count_error(zero, zero, w, mask) == 0 and count_error(y, zero, w, mask) > 1


def test_reconstruction_loss_adds_the_count_term_on_physical_amounts():
    y = torch.rand(2, 1, 3, 4, 4)
    x = y + 0.05
    w, mask = torch.ones(3, 4, 4), torch.ones(3, 4, 4, dtype=torch.bool)
    amounts = (torch.exp(x), torch.exp(y))
    out = ReconstructionLoss(count_weight=50.0)(x, y, w, mask, (False,) * 3, amounts)
    torch.testing.assert_close(out["loss"], out["mse"] + 50.0 * count_error(*amounts, w, mask))
    with pytest.raises(ValueError, match="physical amounts"):
        ReconstructionLoss(count_weight=1.0)(x, y, w, mask, (False,) * 3)
    with pytest.raises(ValueError, match="count_weight must be >= 0"):
        ReconstructionLoss(count_weight=-1.0)
