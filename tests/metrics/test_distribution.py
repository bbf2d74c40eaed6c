"""Quantiles, Wasserstein-1 and the memorisation check: closed forms and planted copies."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from simdiff.metrics.distribution import quantiles, wasserstein1, wasserstein1_values
from simdiff.metrics.memorisation import memorisation


def test_w1_of_a_shift_is_the_shift_and_of_identical_samples_zero():
    rng = np.random.default_rng(0)
    a = rng.standard_normal(1000)
    assert wasserstein1_values(a, a + 2.5) == pytest.approx(2.5, rel=1e-12)
    assert wasserstein1_values(a, a.copy()) == 0.0


def test_w1_closed_form_for_point_masses_and_unequal_sizes():
    # delta_0 vs half delta_0 + half delta_1: area between CDFs = 0.5
    assert wasserstein1_values(np.zeros(3), np.array([0.0, 1.0])) == pytest.approx(0.5)


def test_w1_between_gaussians_of_different_scale():
    """W1(N(0,1), N(0,s^2)) = |1 - s| sqrt(2/pi)."""
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal(400_000), 2 * rng.standard_normal(400_000)
    assert wasserstein1_values(a, b) == pytest.approx(np.sqrt(2 / np.pi), rel=0.01)


def test_datasets_skip_masked_cells():
    x = xr.Dataset({"pr": (("sample", "x"), [[0.0, np.nan], [1.0, np.nan]])})
    y = xr.Dataset({"pr": (("sample", "x"), [[0.0, 5.0], [1.0, -5.0]])})
    y_masked = y.where(x.notnull())
    assert float(wasserstein1(x, y_masked)["pr"]) == 0.0
    q = quantiles(x, q=(0.0, 0.5, 1.0))
    np.testing.assert_allclose(q["pr"].values, [0.0, 0.5, 1.0])


def test_memorisation_detects_copies_and_passes_novel_samples():
    rng = np.random.default_rng(2)
    dims = ("sample", "y", "x")
    pool = rng.standard_normal((300, 6, 6))
    train = xr.Dataset({"a": (dims, pool[:200])})
    test = xr.Dataset({"a": (dims, pool[200:250])})
    novel = xr.Dataset({"a": (dims, pool[250:300])})
    copies = xr.Dataset({"a": (dims, pool[:50] + 1e-3 * rng.standard_normal((50, 6, 6)))})
    w = xr.DataArray(np.ones((6, 6)), dims=("y", "x"))
    fresh = memorisation(novel, train, test, w)
    copied = memorisation(copies, train, test, w)
    assert 0.8 < fresh.attrs["median_ratio"] < 1.25
    assert copied.attrs["median_ratio"] < 0.01
    assert copied.attrs["fraction_closer_than_test_p05"] == 1.0
    # an exact copy is at distance 0; distances are RMS over cells
    exact = memorisation(train.isel(sample=slice(0, 3)), train, test, w)
    np.testing.assert_allclose(exact["nn_synthetic"].values, 0.0, atol=1e-6)


def test_quantile_bands_cover_the_true_quantiles_and_shrink_with_more_samples():
    from scipy.stats import norm

    from simdiff.metrics.distribution import quantile_bands

    rng = np.random.default_rng(3)
    q = (0.01, 0.5, 0.99, 0.999)

    def bands(n):
        da = xr.DataArray(rng.normal(size=(n, 16, 16)), dims=("time", "y", "x"))
        return quantile_bands(da, "time", q, resamples=200, seed=1)

    small, large = bands(40), bands(400)
    truth = norm.ppf(q)
    assert np.all(large["lower"].values < truth) and np.all(truth < large["upper"].values)
    assert np.all((large["upper"] - large["lower"]).values < (small["upper"] - small["lower"]).values)
    # the same seed gives the same bands
    da = xr.DataArray(np.arange(600.0).reshape(6, 10, 10), dims=("time", "y", "x"))
    a, b = (quantile_bands(da, "time", q, resamples=50, seed=2) for _ in range(2))
    xr.testing.assert_identical(a, b)


def test_beyond_range_counts_values_outside_the_training_range():
    from simdiff.metrics.distribution import beyond_range

    da = xr.DataArray([-2.0, -1.0, 0.0, 0.5, 1.0, 3.0, np.nan, 4.0])
    out = beyond_range(da, -1.0, 1.0)
    assert out == pytest.approx({"below": 1 / 7, "above": 2 / 7, "total": 3 / 7})
