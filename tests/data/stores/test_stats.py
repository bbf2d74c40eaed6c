"""Out-of-core statistics and their checks (simdiff.data.stores.stats)."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from simdiff.base.errors import DataError
from simdiff.data.stores.stats import compute_statistics, denormalise, normalise
from simdiff.data.transforms import Log1p

S, D, Y, X = 30, 3, 5, 7


def _fields(seed: int = 0) -> tuple[xr.Dataset, xr.DataArray, xr.DataArray]:
    """3D fields (time, level, lat, lon) whose val/test samples are shifted (to expose leakage)."""
    rng = np.random.default_rng(seed)
    level = np.array([850.0, 500.0, 200.0])
    a = (
        5.0 * level[None, :, None, None] / 100
        + rng.standard_normal((S, D, Y, X)) * (1 + np.arange(D))[:, None, None]
    )
    rain = rng.gamma(0.4, 2e-4, (S, D, Y, X)) * (rng.random((S, D, Y, X)) > 0.3)
    a[24:] += 100.0  # samples outside train differ strongly
    rain[24:] *= 50.0
    mask = np.ones((D, Y, X), bool)
    mask[0, 0, :4] = False
    mask[2, 1:3, 2] = False
    a[:, ~mask] = np.nan  # masked cells may hold NaN
    rain[:, ~mask] = -999.0  # ... or fill values out of log1p's domain
    dims = ("time", "level", "lat", "lon")
    data = xr.Dataset(
        {"a": (dims, a.astype(np.float32)), "rain": (dims, rain.astype(np.float32))},
        coords={"level": level, "time": np.arange(S)},
    )
    split = xr.DataArray(np.r_[np.zeros(24), np.ones(3), 2 * np.ones(3)].astype(np.int8), dims="time")
    return data, xr.DataArray(mask, dims=("level", "lat", "lon"), coords={"level": level}), split


@pytest.mark.parametrize("block", [1, 4, 30])
def test_statistics_equal_numpy_on_train_valid_cells(block: int) -> None:
    data, mask, split = _fields()
    tr = {"rain": Log1p(scale=1e-4)}
    stats = compute_statistics(data.chunk({"time": 7}), mask, split, tr, block_samples=block)
    assert stats["mean"].dims == ("channel", "level") and list(stats.channel.values) == ["a", "rain"]
    for name, f in (("a", lambda v: v), ("rain", lambda v: np.log1p(v / 1e-4))):
        x = data[name].values[:24].astype(np.float64)
        for d in range(D):
            vals = f(x[:, d][:, mask.values[d]])
            np.testing.assert_allclose(stats["mean"].sel(channel=name).values[d], vals.mean(), rtol=1e-12)
            np.testing.assert_allclose(stats["std"].sel(channel=name).values[d], vals.std(), rtol=1e-10)
    # leakage check: stats over all samples would be far off (val/test are shifted by 100)
    all_mean = np.nanmean(data["a"].values[:, 0][:, mask.values[0]])
    assert abs(stats["mean"].sel(channel="a").values[0] - all_mean) > 10


def test_pooled_depth_statistics_equal_numpy_over_all_levels() -> None:
    """A voxel grid's z axis shares one mean/std (broadcast over z), over valid train cells."""
    data, mask, split = _fields()
    stats = compute_statistics(data, mask, split, {}, block_samples=5, pool_depth=True)
    vals = data["a"].values[:24].astype(np.float64)[:, mask.values]  # (train, valid cells of all levels)
    np.testing.assert_allclose(stats["mean"].sel(channel="a").values, vals.mean(), rtol=1e-12)
    np.testing.assert_allclose(stats["std"].sel(channel="a").values, vals.std(), rtol=1e-10)
    assert stats["std"].sel(channel="a").shape == (D,)


def test_statistics_are_stable_for_large_offsets() -> None:
    rng = np.random.default_rng(1)
    x = 1e5 + rng.standard_normal((S, Y, X))  # float64; E[x^2] - E[x]^2 would keep ~6 digits
    data = xr.Dataset({"p": (("time", "y", "x"), x)})
    mask = xr.DataArray(np.ones((Y, X), bool), dims=("y", "x"))
    split = xr.DataArray(np.zeros(S, np.int8), dims="time")
    stats = compute_statistics(data, mask, split, {}, block_samples=4)
    np.testing.assert_allclose(stats["std"].values[0], x.std(), rtol=1e-11)
    assert stats["mean"].dims == ("channel",)


def test_normalise_then_denormalise_round_trip() -> None:
    data, mask, split = _fields()
    tr = {"rain": Log1p(scale=1e-4)}
    stats = compute_statistics(data, mask, split, tr, block_samples=8)
    z = normalise(data, stats, mask, tr, block_samples=8).compute()
    assert z.dtype == np.float32 and z.dims == ("time", "channel", "level", "lat", "lon")
    assert np.all(z.values[:, :, ~mask.values] == 0) and np.all(np.isfinite(z.values))
    train = z.values[:24][:, :, mask.values]  # (S_train, channel, valid cells)
    np.testing.assert_allclose(train.mean(axis=(0, 2)), 0, atol=1e-5)
    store = xr.Dataset(
        {
            "data": z,
            "mean": stats["mean"].astype(np.float32),
            "std": stats["std"].astype(np.float32),
            "mask": mask,
        },
        attrs={"transforms": {"rain": tr["rain"].spec()}, "variables": {"a": {"units": "m"}}},
    )
    back = denormalise(store)
    assert back["a"].attrs == {"units": "m"} and back["a"].dims == data["a"].dims
    for name in ("a", "rain"):
        orig = data[name].values
        np.testing.assert_allclose(
            back[name].values[:, mask.values], orig[:, mask.values], rtol=2e-5, atol=1e-9
        )
        assert np.isnan(back[name].values[:, ~mask.values]).all()


def test_nan_at_valid_cell_reports_count_and_first_index() -> None:
    data, mask, split = _fields()
    a = data["a"].values.copy()
    a[5, 1, 2, 3] = np.nan
    a[9, 0, 4, 4] = np.inf
    data["a"] = (data["a"].dims, a)
    with pytest.raises(
        DataError,
        match=r"'a' has 2 NaN/inf.*time=5 \(index 5\), level=500.0, lat=2, lon=3"
        r".*cell index \(1, 2, 3\).*mask those cells.*fill",
    ):
        compute_statistics(data, mask, split, {}, block_samples=4, origin="in.nc")


def test_negative_values_under_log1p_report_count() -> None:
    data, mask, split = _fields()
    r = data["rain"].values.copy()
    r[26, 2, 0, 0] = -1e-5  # in the test split: checked too
    r[27, 2, 0, 1] = -2e-5
    r[28, 2, 0, 2] = -3e-5
    data["rain"] = (data["rain"].dims, r)
    with pytest.raises(
        DataError,
        match=r"in.nc: variable 'rain' has 3 values outside the domain.*Log1p"
        r".*time=26 \(index 26\)",
    ):
        compute_statistics(data, mask, split, {"rain": Log1p(1e-4)}, block_samples=4, origin="in.nc")


def test_constant_variable_is_named() -> None:
    data, mask, split = _fields()
    data["flat"] = xr.full_like(data["a"], 273.15)
    with pytest.raises(DataError, match=r"variable 'flat' is constant on the train split at level index 0"):
        compute_statistics(data, mask, split, {}, block_samples=4)


def test_constant_at_one_level_names_the_level() -> None:
    data, mask, split = _fields()
    a = data["a"].values.copy()
    a[:24, 2] = 7.0  # constant on the train split at level index 2 only
    data["a"] = (data["a"].dims, a)
    with pytest.raises(DataError, match=r"'a' is constant on the train split at level index 2"):
        compute_statistics(data, mask, split, {}, block_samples=4)


def _referenced(seed: int = 0) -> tuple[xr.Dataset, xr.Dataset, xr.DataArray, xr.DataArray]:
    """Densities with cusps (a sharp per-sample peak) and their references: the same peaks
    (the 'promolecule') without the smooth deformation the data adds."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.meshgrid(*(np.linspace(-1, 1, n) for n in (4, Y, X)), indexing="ij")
    ref = np.stack([300 * np.exp(-((xx - c) ** 2 + yy**2 + zz**2) / 0.01) + 1e-3 * np.exp(-(xx**2 + yy**2))
                    for c in rng.uniform(-0.5, 0.5, S)])
    rho = ref * np.exp(0.3 * rng.standard_normal((S, 1, 1, 1)) * np.exp(-(xx**2 + yy**2 + zz**2)))
    dims = ("sample", "z", "y", "x")
    data = xr.Dataset({"density": (dims, rho.astype(np.float32))})
    reference = xr.Dataset({"density": (dims, ref.astype(np.float32))})
    mask = xr.DataArray(np.ones((4, Y, X), bool), dims=dims[1:])
    split = xr.DataArray(np.r_[np.zeros(24), np.ones(3), 2 * np.ones(3)].astype(np.int8), dims="sample")
    return data, reference, mask, split


def test_statistics_and_normalisation_relative_to_a_reference_field() -> None:
    """With a reference, the moments are those of T(x) - T(ref) and the stored values invert
    through the same reference to the data (a density relative to its promolecule)."""
    data, reference, mask, split = _referenced()
    tr = {"density": Log1p(scale=1e-3)}
    stats = compute_statistics(data, mask, split, tr, block_samples=7, pool_depth=True, reference=reference)
    rel = (np.log1p(data["density"].values[:24].astype(np.float64) / 1e-3)
           - np.log1p(reference["density"].values[:24].astype(np.float64) / 1e-3))
    np.testing.assert_allclose(stats["mean"].values[0, 0], rel.mean(), rtol=1e-10)
    np.testing.assert_allclose(stats["std"].values[0, 0], rel.std(), rtol=1e-9)
    z = normalise(data, stats, mask, tr, block_samples=7, reference=reference).compute()
    store = xr.Dataset(
        {"data": z, "mean": stats["mean"].astype(np.float32), "std": stats["std"].astype(np.float32),
         "mask": mask,
         "reference": reference["density"].expand_dims(reference_channel=["density"], axis=1)},
        attrs={"transforms": {"density": tr["density"].spec()}},
    )
    back = denormalise(store)["density"].values
    np.testing.assert_allclose(back, data["density"].values, rtol=2e-5)
    # a model output of 0 everywhere (the train mean) decodes to the reference times exp(mean):
    # cusps in place, never negative
    zero = denormalise(store.assign(data=xr.zeros_like(store["data"])))["density"].values
    assert zero.min() >= 0
    peaks = reference["density"].values.reshape(S, -1).argmax(1)
    np.testing.assert_array_equal(zero.reshape(S, -1).argmax(1), peaks)


def test_to_physical_takes_each_fields_reference_by_store_row() -> None:
    from simdiff.data.stores.stats import to_physical

    data, reference, mask, split = _referenced()
    tr = {"density": Log1p(scale=1e-3)}
    stats = compute_statistics(data, mask, split, tr, block_samples=7, pool_depth=True, reference=reference)
    z = normalise(data, stats, mask, tr, block_samples=7, reference=reference).compute()
    store = xr.Dataset(
        {"data": z, "mean": stats["mean"].astype(np.float32), "std": stats["std"].astype(np.float32),
         "mask": mask, "reference": reference["density"].expand_dims(reference_channel=["density"], axis=1)},
        attrs={"transforms": {"density": tr["density"].spec()}},
    )
    rows = np.array([[5, 5], [17, 2]])  # (realization, lead) -> store sample
    fields = z.values[rows]
    out = to_physical(fields, ("realization", "lead_time", "channel", "z", "y", "x"), store, rows)
    np.testing.assert_allclose(out["density"].values, data["density"].values[rows], rtol=2e-5)
    with pytest.raises(ValueError, match=r"relative to per-sample reference fields: give the store sample"):
        to_physical(fields, ("realization", "lead_time", "channel", "z", "y", "x"), store)
