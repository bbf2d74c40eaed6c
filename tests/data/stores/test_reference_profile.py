"""A relative variable standardised by its reference's level (simdiff.data.stores.profile)."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import xarray as xr

from simdiff.base.errors import DataError
from simdiff.data.stores import profile as level_profile
from simdiff.data.stores.prepare import PrepareOptions
from simdiff.data.stores.stats import compute_statistics, denormalise, normalise, to_physical
from simdiff.data.transforms import Log1p

S, Z, Y, X = 30, 6, 7, 8


def _levels(n: int = 200_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Deformations d whose spread peaks at level t = 3 and vanishes towards t = 10."""
    rng = np.random.default_rng(seed)
    t = rng.uniform(0, 10, n)
    s = 0.3 * np.exp(-(((t - 3) / 2) ** 2)) + 0.01
    return t, 0.1 * np.sin(t) + s * rng.standard_normal(n)


def test_fit_is_the_binned_moments_with_a_scale_that_only_shrinks_towards_dense_levels() -> None:
    t, d = _levels()
    edges = np.linspace(0, 10, 11)
    p = level_profile.fit(level_profile.bin_moments(d, t, np.ones_like(t, bool), edges), edges)
    k = np.minimum((t // 1).astype(int), 9)
    mean = np.array([d[k == b].mean() for b in range(10)])
    std = np.array([d[k == b].std() for b in range(10)])
    np.testing.assert_allclose(p.level, np.arange(10) + 0.5)
    np.testing.assert_allclose(p.mean, mean, rtol=1e-9, atol=1e-12)
    # the running maximum of the bins' std from the dense end: up to the widest bin (next to
    # t = 3) the widest std, past it never more than the widest std above
    np.testing.assert_allclose(p.scale, np.maximum.accumulate(std[::-1])[::-1], rtol=1e-9)
    w = int(std.argmax())
    assert w in (2, 3)
    np.testing.assert_allclose(p.scale[: w + 1], std.max(), rtol=1e-9)
    np.testing.assert_allclose(p.scale[w + 1], std[w + 1:].max(), rtol=1e-9)
    assert np.all(np.diff(p.scale) <= 0)
    assert p.scale[-1] < 0.15 * p.scale[0]


def test_bins_with_too_few_cells_are_left_out_and_an_empty_profile_is_refused() -> None:
    t, d = _levels(n=5000)
    t[t > 9] = 9.0  # the last bin (9, 10] holds only t == 9.0 exactly, on its left edge: bin 9
    t[(t > 8) & (t < 9)] = 7.5  # bin 8 empty
    edges = np.linspace(0, 10, 11)
    p = level_profile.fit(level_profile.bin_moments(d, t, np.ones_like(t, bool), edges), edges)
    assert 8.5 not in p.level
    with pytest.raises(ValueError, match="no reference-level bin holds"):
        level_profile.fit(level_profile.bin_moments(d[:50], t[:50], np.ones(50, bool), edges), edges)


def test_forward_and_inverse_round_trip_on_numpy_and_lazy_dataarrays() -> None:
    t, d = _levels(n=1000)
    edges = np.linspace(0, 10, 6)
    p = level_profile.fit(level_profile.bin_moments(d, t, np.ones_like(t, bool), edges), edges)
    u = p.forward(d, t)
    np.testing.assert_allclose(p.inverse(u, t), d, rtol=1e-12, atol=1e-14)
    lazy = xr.DataArray(da.from_array(u, chunks=100), dims="cell")
    level = xr.DataArray(da.from_array(t, chunks=100), dims="cell")
    back = p.inverse(lazy, level)
    assert back.chunks is not None  # stays lazy
    np.testing.assert_allclose(back.values, d, rtol=1e-12, atol=1e-14)
    # past the end centres the profile is constant
    np.testing.assert_allclose(p.forward(np.array([1.0, 1.0]), np.array([-5.0, 50.0])),
                               [(1 - p.mean[0]) / p.scale[0], (1 - p.mean[-1]) / p.scale[-1]])


def _molecules(seed: int = 0) -> tuple[xr.Dataset, xr.Dataset, xr.DataArray, xr.DataArray]:
    """Densities with a cusp (a promolecule peak the data keeps to 0.5 %) and a bonding region
    (a broad bump the data changes by up to ~30 %), per sample."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.meshgrid(*(np.linspace(-1, 1, n) for n in (Z, Y, X)), indexing="ij")
    refs, rhos = [], []
    for c in rng.uniform(-0.4, 0.4, S):
        r2 = (xx - c) ** 2 + yy**2 + zz**2
        ref = 300 * np.exp(-r2 / 0.2) + 0.05 * np.exp(-r2 / 0.5)
        bonding = 0.05 * np.exp(-r2 / 0.5) / ref  # the broad part's share of the density
        deform = 0.3 * rng.standard_normal() * bonding + 0.005 * rng.standard_normal() * (1 - bonding)
        refs.append(ref)
        rhos.append(ref * np.exp(deform))
    dims = ("sample", "z", "y", "x")
    data = xr.Dataset({"density": (dims, np.stack(rhos).astype(np.float32))})
    reference = xr.Dataset({"density": (dims, np.stack(refs).astype(np.float32))})
    mask = xr.DataArray(np.ones((Z, Y, X), bool), dims=dims[1:])
    split = xr.DataArray(np.r_[np.zeros(24), np.ones(3), 2 * np.ones(3)].astype(np.int8), dims="sample")
    return data, reference, mask, split


def _store(data, reference, mask, split, bins: int) -> xr.Dataset:
    tr = {"density": Log1p(scale=1e-3)}
    stats = compute_statistics(data, mask, split, tr, block_samples=7, pool_depth=True, reference=reference,
                               profile_bins=bins)
    z = normalise(data, stats, mask, tr, block_samples=7, reference=reference).compute()
    return xr.Dataset(
        {"data": z, **stats.astype(np.float32)[["mean", "std"]].data_vars,
         **{v: stats[v] for v in level_profile.VARIABLES if v in stats}, "mask": mask,
         "reference": reference["density"].expand_dims(reference_channel=["density"], axis=1)},
        attrs={"transforms": {"density": tr["density"].spec()}},
    )


def test_a_store_with_a_profile_inverts_to_its_data_and_a_cusp_error_moves_little_charge() -> None:
    data, reference, mask, split = _molecules()
    flat = _store(data, reference, mask, split, bins=0)
    prof = _store(data, reference, mask, split, bins=8)
    assert "profile_level" not in flat and prof["profile_level"].dims == ("channel", "profile_bin")
    np.testing.assert_allclose(denormalise(prof)["density"].values, data["density"].values, rtol=2e-5)
    rows = np.array([[5, 5], [17, 2]])
    dims = ("realization", "lead_time", "channel", "z", "y", "x")
    out = to_physical(prof["data"].values[rows], dims, prof, rows)
    np.testing.assert_allclose(out["density"].values, data["density"].values[rows], rtol=2e-5)
    # the train moments of the standardised variable are those of u = (d - m(t)) / s(t)
    p = level_profile.from_dataset(prof, "density")
    level = np.log1p(reference["density"].values[:24].astype(np.float64) / 1e-3)
    d = np.log1p(data["density"].values[:24].astype(np.float64) / 1e-3) - level
    u = p.forward(d, level)
    np.testing.assert_allclose(prof["mean"].values[0, 0], u.mean(), rtol=1e-5)
    np.testing.assert_allclose(prof["std"].values[0, 0], u.std(), rtol=1e-5)

    # The same normalised error (one unit everywhere) changes the electron count of every
    # sample far less with the profile: the cusp, which holds most of the charge, barely moves.
    def count_change(store: xr.Dataset) -> np.ndarray:
        exact = denormalise(store)["density"].values.sum(axis=(1, 2, 3))
        off = denormalise(store.assign(data=store["data"] + 1.0))["density"].values.sum(axis=(1, 2, 3))
        return np.abs(off / exact - 1)

    assert np.all(count_change(prof) < 0.4 * count_change(flat))  # 0.31 here


def test_prepare_refuses_a_profile_of_one_bin() -> None:
    assert PrepareOptions(reference_profile=24).reference_profile == 24
    for bad in (1, -2, 2.5, True):
        with pytest.raises(DataError, match=r"prepare\.reference_profile"):
            PrepareOptions(reference_profile=bad)
