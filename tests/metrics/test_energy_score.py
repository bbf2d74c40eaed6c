"""Energy score: equals CRPS in one dimension; proper ordering in several."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from simdiff.metrics.crps import crps
from simdiff.metrics.energy_score import energy_score


def test_one_dimensional_energy_score_is_crps():
    rng = np.random.default_rng(0)
    f = xr.DataArray(rng.standard_normal((1, 6)), dims=("x", "realization"))
    y = xr.DataArray([0.3], dims="x")
    assert float(energy_score(f, y)) == pytest.approx(float(crps(f.isel(x=0), y.isel(x=0))), rel=1e-12)


def test_masked_cells_never_count_and_cases_are_kept():
    rng = np.random.default_rng(1)
    f = xr.DataArray(rng.standard_normal((3, 4, 5)), dims=("case", "x", "realization"))
    y = xr.DataArray(rng.standard_normal((3, 4)), dims=("case", "x"))
    y[:, 0] = np.nan
    a = energy_score(f, y, dims=["x"])
    f2 = f.copy()
    f2[:, 0] = 1e6  # changing masked cells changes nothing
    b = energy_score(f2, y, dims=["x"])
    assert a.dims == ("case",)
    np.testing.assert_allclose(a.values, b.values)


def test_a_sharper_correct_ensemble_scores_better():
    rng = np.random.default_rng(2)
    y = xr.DataArray(np.zeros(16), dims="x")
    good = xr.DataArray(rng.standard_normal((16, 20)) * 0.5, dims=("x", "realization"))
    wide = good * 4
    assert float(energy_score(good, y)) < float(energy_score(wide, y))
