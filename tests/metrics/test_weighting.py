"""The fixed-order weighted mean equals xarray's weighted mean and the hand computation."""

from __future__ import annotations

import numpy as np
import xarray as xr

from simdiff.metrics.weighting import weighted_mean


def test_weighted_mean_skips_nan_points_and_their_weights() -> None:
    x = xr.DataArray([[1.0, np.nan, 3.0], [4.0, 5.0, np.nan]], dims=("t", "lat"))
    w = xr.DataArray([0.5, 2.0, 1.0], dims="lat")
    out = weighted_mean(x, w, ["t", "lat"])
    assert float(out) == (0.5 * 1 + 1 * 3 + 0.5 * 4 + 2 * 5) / (0.5 + 1 + 0.5 + 2)
    per_t = weighted_mean(x, w, ["lat"])
    np.testing.assert_allclose(per_t.values, [(0.5 + 3) / 1.5, (2 + 10) / 2.5], rtol=1e-15)
    # all points NaN, or no weight on the valid ones: NaN, not 0
    assert np.isnan(weighted_mean(x.where(False), w)).all()
    assert np.isnan(float(weighted_mean(x.isel(lat=[0]), 0.0 * w.isel(lat=[0]), ["t", "lat"])))


def test_weighted_mean_agrees_with_xarray_and_on_dask() -> None:
    rng = np.random.default_rng(0)
    x = xr.DataArray(rng.standard_normal((6, 5, 7)), dims=("t", "y", "x"))
    x = x.where(rng.random(x.shape) > 0.1)
    w = xr.DataArray(rng.random((5, 7)), dims=("y", "x"))
    ref = x.weighted(w).mean(["t", "y", "x"], skipna=True)
    np.testing.assert_allclose(float(weighted_mean(x, w, ["t", "y", "x"])), float(ref), rtol=1e-13)
    lazy = weighted_mean(x.chunk({"t": 2}), w, ["y", "x"]).compute()
    np.testing.assert_allclose(lazy.values, x.weighted(w).mean(["y", "x"]).values, rtol=1e-13)
    ds = xr.Dataset({"a": x, "b": 2 * x})
    np.testing.assert_allclose(weighted_mean(ds, w)["b"].values, 2 * weighted_mean(x, w).values, rtol=1e-14)
