"""Spread-skill and rank histogram: closed forms and calibrated synthetic ensembles."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from simdiff.metrics.calibration import rank_histogram, spread_skill


def calibrated(m: int, n: int, seed: int = 0) -> tuple[xr.DataArray, xr.DataArray]:
    """Truth and members drawn from the same predictive distribution N(mu_case, 1)."""
    rng = np.random.default_rng(seed)
    mu = rng.standard_normal(n) * 3
    truth = xr.DataArray(mu + rng.standard_normal(n), dims="case")
    members = xr.DataArray(mu[:, None] + rng.standard_normal((n, m)), dims=("case", "realization"))
    return members, truth


@pytest.mark.parametrize("m", [3, 10])
def test_calibrated_ensemble_has_corrected_ratio_one(m):
    f, y = calibrated(m, 40_000)
    out = spread_skill(f, y)
    assert float(out["ratio_corrected"]) == pytest.approx(1.0, abs=0.02)
    assert float(out["ratio"]) == pytest.approx(np.sqrt(m / (m + 1)), abs=0.02)


def test_spread_and_skill_closed_form():
    f = xr.DataArray([[0.0, 2.0], [1.0, 3.0]], dims=("case", "realization"))
    y = xr.DataArray([0.0, 0.0], dims="case")
    out = spread_skill(f, y)
    assert float(out["spread"]) == pytest.approx(np.sqrt(2.0))  # var ddof=1 of (0, 2) and (1, 3) is 2
    assert float(out["skill"]) == pytest.approx(np.sqrt((1 + 4) / 2))


def test_weights_and_kept_dims():
    f = xr.DataArray(np.zeros((2, 2, 2)), dims=("lead_time", "lat", "realization"))
    f[..., 1] = 2.0
    y = xr.DataArray([[1.0, 3.0], [1.0, 1.0]], dims=("lead_time", "lat"))
    w = xr.DataArray([3.0, 1.0], dims="lat")
    out = spread_skill(f, y, weights=w, dims=["lat"])
    assert out["skill"].dims == ("lead_time",)
    np.testing.assert_allclose(out["skill"].values, [np.sqrt((3 * 0 + 1 * 4) / 4), 0.0])


def test_one_member_is_refused():
    with pytest.raises(ValueError, match="at least 2 members"):
        spread_skill(xr.DataArray([[1.0]], dims=("case", "realization")), xr.DataArray([1.0], dims="case"))


def test_rank_histogram_flat_for_calibrated_and_sums_to_one():
    f, y = calibrated(4, 50_000, seed=3)
    h = rank_histogram(f, y)
    assert h.sizes["rank"] == 5 and float(h.sum()) == pytest.approx(1.0)
    np.testing.assert_allclose(h.values, 0.2, atol=0.01)


def test_rank_histogram_shares_ties_equally():
    f = xr.DataArray([[1.0, 1.0, 2.0]], dims=("case", "realization"))
    y = xr.DataArray([1.0], dims="case")  # equal to two members: ranks 0, 1, 2 share it
    np.testing.assert_allclose(rank_histogram(f, y).values, [1 / 3, 1 / 3, 1 / 3, 0])


def test_rank_histogram_underdispersed_is_u_shaped():
    f, y = calibrated(4, 20_000, seed=4)
    h = rank_histogram(f * 0.3 + (1 - 0.3) * f.mean("realization"), y)  # too little spread
    assert h.values[0] > 0.3 and h.values[-1] > 0.3
