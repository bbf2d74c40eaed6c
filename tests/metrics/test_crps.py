"""CRPS against published reference cases and closed forms."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from simdiff.metrics.crps import crps

NAN = np.nan


def ens(members, dims=("realization",)) -> xr.DataArray:
    return xr.DataArray(np.asarray(members, dtype=float), dims=dims)


@pytest.mark.parametrize(
    ("y", "members", "expected"),
    [(0.0, [0, 1], 0.25), (0.0, [0, 0, 1], 1 / 9), (2.0, [0, 1], 1.25)],
)
def test_textbook_cases(y, members, expected):
    assert float(crps(ens(members), xr.DataArray(y))) == pytest.approx(expected, abs=1e-12)


# The five-station ensemble of the `scores` package's tests (nci/scores, tests/probabilty/
# crps_test_data.py): members per station, NaN members dropped, station 104 has no observation.
STATIONS = [101, 102, 103, 104, 105]
FCST = [[0.0, 4, 3, 7], [1, -1, 2, 4], [0, 1, 4, NAN], [2, 3, 4, 1], [2, NAN, NAN, NAN]]
OBS = [2.0, 3, 1, NAN, 4]


def stations() -> tuple[xr.DataArray, xr.DataArray]:
    f = xr.DataArray(FCST, dims=("stn", "realization"), coords={"stn": STATIONS})
    o = xr.DataArray(OBS, dims="stn", coords={"stn": STATIONS})
    return f, o


def test_scores_five_station_reference():
    f, o = stations()
    np.testing.assert_allclose(crps(f, o).values, [1.125, 1.0, 0.444444, NAN, 2.0], atol=1e-6)
    np.testing.assert_allclose(crps(f, o, fair=True).values, [0.666667, 0.666667, 0.0, NAN, NAN], atol=1e-6)


def test_weighted_mean_skips_nan_points_and_their_weights():
    f, o = stations()
    w = xr.DataArray([1.0, 2, 1, 0, 2], dims="stn", coords={"stn": STATIONS})
    per = np.array([1.125, 1.0, 4 / 9, 2.0])
    expected = (per * [1, 2, 1, 2]).sum() / 6
    assert float(crps(f, o, weights=w)) == pytest.approx(expected, rel=1e-12)


def test_gaussian_limit():
    """A large N(0, 1) ensemble against 0 tends to 2 phi(0) - 1/sqrt(pi) = 0.23369."""
    rng = np.random.default_rng(0)
    x = ens(rng.standard_normal(200_000))
    exact = 2 / np.sqrt(2 * np.pi) - 1 / np.sqrt(np.pi)
    assert exact == pytest.approx(0.23369, abs=1e-5)
    assert float(crps(x, xr.DataArray(0.0), fair=True)) == pytest.approx(exact, abs=3e-3)


def test_sorted_formula_equals_the_pair_sum_on_random_data():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((7, 5))
    y = rng.standard_normal(7)
    brute = np.abs(x - y[:, None]).mean(1) - np.abs(x[:, :, None] - x[:, None, :]).sum((1, 2)) / (2 * 25)
    got = crps(xr.DataArray(x, dims=("case", "realization")), xr.DataArray(y, dims="case"))
    np.testing.assert_allclose(got.values, brute, rtol=1e-12)


def test_dask_and_datasets_give_the_same_numbers():
    f, o = stations()
    eager = crps(f, o)
    lazy = crps(f.chunk({"stn": 2, "realization": 2}), o.chunk({"stn": 2}))
    np.testing.assert_allclose(lazy.compute().values, eager.values)
    ds = crps(xr.Dataset({"a": f}), xr.Dataset({"a": o}))
    np.testing.assert_allclose(ds["a"].values, eager.values)


def test_agrees_with_scores_where_installed():
    scores = pytest.importorskip("scores.probability", reason="the `scores` package is not installed")
    rng = np.random.default_rng(2)
    f = xr.DataArray(rng.gamma(2, 1, (50, 9)), dims=("pt", "realization"))
    o = xr.DataArray(rng.gamma(2, 1, 50), dims="pt")
    ref = scores.crps_for_ensemble(f, o, "realization", method="ecdf", preserve_dims="all")
    np.testing.assert_allclose(crps(f, o).values, ref.values, rtol=1e-10)
