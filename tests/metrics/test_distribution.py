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
