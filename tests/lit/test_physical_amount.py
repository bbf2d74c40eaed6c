"""The store's inverse normalisation in torch (simdiff.lit.physical): np.interp's profile lookup."""

from __future__ import annotations

import numpy as np
import torch

from simdiff.lit.physical import _interp


def test_interp_is_numpys_piecewise_linear_lookup_constant_past_the_ends():
    rng = np.random.default_rng(0)
    xp = np.sort(rng.uniform(0, 10, 7))
    fp = rng.standard_normal(7)
    x = np.r_[rng.uniform(-3, 13, 500), xp, -1e9, 1e9]
    got = _interp(torch.tensor(x), torch.tensor(xp), torch.tensor(fp)).numpy()
    np.testing.assert_allclose(got, np.interp(x, xp, fp), rtol=1e-12, atol=1e-12)
    one = _interp(torch.tensor(x), torch.tensor(xp[:1]), torch.tensor(fp[:1])).numpy()
    np.testing.assert_array_equal(one, np.full_like(x, fp[0]))
