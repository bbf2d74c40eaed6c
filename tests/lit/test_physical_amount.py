"""The store's inverse normalisation in torch (simdiff.lit.physical): the profile lookup, the cap."""

from __future__ import annotations

import numpy as np
import torch

from simdiff.lit.physical import Y_MAX, PhysicalAmount, _interp
from simdiff.nets.losses import count_error


def test_interp_is_numpys_piecewise_linear_lookup_constant_past_the_ends():
    rng = np.random.default_rng(0)
    xp = np.sort(rng.uniform(0, 10, 7))
    fp = rng.standard_normal(7)
    x = np.r_[rng.uniform(-3, 13, 500), xp, -1e9, 1e9]
    got = _interp(torch.tensor(x), torch.tensor(xp), torch.tensor(fp)).numpy()
    np.testing.assert_allclose(got, np.interp(x, xp, fp), rtol=1e-12, atol=1e-12)
    one = _interp(torch.tensor(x), torch.tensor(xp[:1]), torch.tensor(fp[:1])).numpy()
    np.testing.assert_array_equal(one, np.full_like(x, fp[0]))


def test_a_wild_reconstruction_keeps_a_finite_count_term_and_gradient():
    """Per-channel statistics and no reference: x = scale * expm1(z std + mean), capped far past
    any physical amount so an untrained net's output cannot overflow the squared count error."""
    physical = PhysicalAmount(["rain"], np.array([1e-4]), np.array([0.5]), np.array([2.0]), {}, {})
    z = torch.tensor([[[[0.0, 1.0], [-3.0, 1e4]]]], requires_grad=True)  # (B=1, C=1, 2, 2)
    x = physical(z, torch.tensor([0]))
    np.testing.assert_allclose(x.detach().numpy().ravel()[:3], 1e-4 * np.expm1([0.5, 2.5, -5.5]).clip(0),
                               rtol=1e-6)
    assert x[0, 0, 1, 1] == torch.tensor(1e-4) * torch.expm1(torch.tensor(Y_MAX))
    err = count_error(x, physical(torch.zeros_like(z), torch.tensor([0])), torch.ones(2, 2),
                      torch.ones(2, 2, dtype=torch.bool))
    err.backward()
    assert torch.isfinite(err) and torch.isfinite(z.grad).all()
