"""The augmentation library (simdiff.generate.augment): the bounds filter, the keys, the store."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr
import zarr

from simdiff.base.errors import DataError
from simdiff.data.stores.training import TrainingStore
from simdiff.data.transforms import Identity, Log1p
from simdiff.generate.augment import (
    REASONS,
    BoundsFilter,
    augment_template,
    choose_sources,
    open_rows,
    physical,
    tally_rejections,
    training_range,
    write_rows,
)
from simdiff.generate.output import create_partial, finalize, is_complete, output_attrs, partial_path


def physical_train(store: TrainingStore) -> dict[str, np.ndarray]:
    """The train split in physical units, by plain numpy (z * std + mean, masked cells NaN)."""
    idx = store.indices("train")
    data, mean, std, mask = (store.array(n) for n in ("data", "mean", "std", "mask"))
    out = {}
    for c, name in enumerate(store.variables):
        x = data[idx, c].astype(np.float64) * std[c].astype(np.float32) + mean[c].astype(np.float32)
        out[name] = np.where(mask, x, np.nan)
    return out


def samples_like(store: TrainingStore, n: int, fill: dict[str, float]) -> xr.Dataset:
    """``n`` samples of the store's schema holding the constant ``fill[var]`` at valid cells."""
    mask = store.array("mask")
    dims = ("time", *store.layout.spatial_dims)
    return xr.Dataset({v: (dims, np.where(mask, np.full((n, *mask.shape), fill[v], np.float32), np.nan))
                       for v in store.variables})


def test_training_range_is_the_train_splits_physical_min_and_max(latlon_store):
    bounds = training_range(latlon_store)
    ref = physical_train(latlon_store)
    for name in latlon_store.variables:
        lo, hi = np.nanmin(ref[name]), np.nanmax(ref[name])
        tol = 1e-6 * (hi - lo)  # float32 de-normalisation round-off
        np.testing.assert_allclose(float(bounds["minimum"].sel(channel=name)), lo, rtol=0, atol=tol)
        np.testing.assert_allclose(float(bounds["maximum"].sel(channel=name)), hi, rtol=0, atol=tol)
    lo, hi = (float(bounds[k].sel(channel="t2m")) for k in ("minimum", "maximum"))
    assert 260 < lo < 280 < hi < 300  # t2m ~ 280 +- 5 K
    assert float(bounds["minimum"].sel(channel="tp")) >= -1e-9  # a gamma draw: non-negative


def test_filter_rejects_the_planted_values_and_only_those(latlon_store):
    store = latlon_store
    bounds = xr.Dataset({"minimum": ("channel", [270.0, 0.0]), "maximum": ("channel", [290.0, 1e-3])},
                        coords={"channel": ["t2m", "tp"]})
    mask = xr.DataArray(store.array("mask"), dims=store.layout.spatial_dims)
    s = samples_like(store, 7, {"t2m": 280.0, "tp": 1e-4})
    valid = np.argwhere(store.array("mask"))[5]
    hole = tuple(np.argwhere(~store.array("mask"))[0])
    t2m, tp = s["t2m"].values, s["tp"].values
    tp[1][tuple(valid)] = -1e-6            # 1: negative precipitation (inside the range margin -1e-4)
    t2m[2][tuple(valid)] = 290 + 20 * 0.1 + 0.01   # 2: just above max + m (max - min) = 292 K
    t2m[3][tuple(valid)] = 290 + 20 * 0.1 - 0.01   # 3: just inside the margin: accepted
    t2m[4][tuple(valid)] = np.inf          # 4: non-finite (and out of range)
    t2m[5][tuple(valid)] = np.nan          # 5: NaN at a valid cell
    t2m[6][hole] = 1e9                     # 6: a wild value at a masked cell is not data: accepted
    tp[6][hole] = -5.0
    filt = BoundsFilter(nonnegative=["tp"], range_margin=0.1, transform_domain=False)
    bad = filt.reasons(s, bounds, mask, {}, "time")
    assert bad.dims == ("time", "reject_reason") and list(bad["reject_reason"].values) == list(REASONS)
    expected = np.zeros((7, len(REASONS)), bool)
    expected[1, REASONS.index("negative")] = True
    expected[2, REASONS.index("range")] = True
    expected[4, REASONS.index("nonfinite")] = True
    expected[4, REASONS.index("range")] = True
    expected[5, REASONS.index("nonfinite")] = True
    np.testing.assert_array_equal(bad.values, expected)


def test_transform_domain_rejects_negative_log1p_values_without_a_nonnegative_list(latlon_store):
    store = latlon_store
    bounds = training_range(store)
    mask = xr.DataArray(store.array("mask"), dims=store.layout.spatial_dims)
    s = samples_like(store, 2, {"t2m": 280.0, "tp": 0.0})
    s["tp"].values[1][tuple(np.argwhere(store.array("mask"))[0])] = -1e-12
    transforms = {"tp": Log1p(scale=1e-4), "t2m": Identity()}
    on = BoundsFilter(range_margin=None).reasons(s, bounds, mask, transforms, "time")
    assert on.sel(reject_reason="domain").values.tolist() == [False, True]
    assert not on.sel(reject_reason=["negative", "range", "nonfinite"]).values.any()
    off = BoundsFilter(range_margin=None, transform_domain=False).reasons(s, bounds, mask, transforms, "time")
    assert not off.values.any()


def test_filter_names_an_unknown_nonnegative_variable(latlon_store):
    with pytest.raises(DataError, match=r"nonnegative names \['precip'\].*t2m"):
        BoundsFilter(nonnegative=["precip"]).check_variables(latlon_store.variables, "train.zarr")
    with pytest.raises(DataError, match="range_margin"):
        BoundsFilter(range_margin=-0.1)


def test_sources_are_keyed_by_id_and_round_not_by_the_batch():
    pool = np.arange(100, 200)
    a = choose_sources(pool, [0, 1, 2, 3], 0, seed=5)
    assert set(a) <= set(pool)
    np.testing.assert_array_equal(choose_sources(pool, [3, 1], 0, seed=5), a[[3, 1]])
    assert not np.array_equal(choose_sources(pool, list(range(50)), 1, seed=5),
                              choose_sources(pool, list(range(50)), 0, seed=5))
    assert not np.array_equal(choose_sources(pool, list(range(50)), 0, seed=6),
                              choose_sources(pool, list(range(50)), 0, seed=5))
    np.testing.assert_array_equal(choose_sources(np.zeros(0, np.int64), [4, 9], 0, seed=5), [-1, -1])
    # uniform over the pool: 4000 draws over 4 entries, each within 5 sigma of 1000
    counts = np.bincount(choose_sources(np.arange(4), list(range(4000)), 0, seed=1), minlength=4)
    assert np.all(np.abs(counts - 1000) < 5 * np.sqrt(4000 * 0.25 * 0.75))


def test_draws_per_source_share_a_source_in_every_round():
    pool = np.arange(1000)
    ids = list(range(40))
    first = choose_sources(pool, ids, 0, seed=5, per_source=4)
    groups = first.reshape(10, 4)
    assert (groups == groups[:, :1]).all()  # ids 4g..4g+3 share one source
    assert len(set(groups[:, 0])) >= 9  # and the groups draw their own sources
    # a redraw keeps its group's source
    np.testing.assert_array_equal(choose_sources(pool, ids, 3, seed=5, per_source=4), first)
    np.testing.assert_array_equal(choose_sources(pool, [13, 2], 0, seed=5, per_source=4), first[[13, 2]])
    with pytest.raises(DataError, match="draws_per_source"):
        choose_sources(pool, ids, 0, seed=5, per_source=0)


def test_physical_inverts_the_store_normalisation(latlon_store):
    store = latlon_store
    idx = store.indices("train")[:3]
    phys = physical(np.asarray(store.data[idx]), store)
    ref = physical_train(store)
    for name in store.variables:
        spread = np.nanmax(ref[name]) - np.nanmin(ref[name])
        np.testing.assert_allclose(phys[name].values, ref[name][:3], rtol=0, atol=1e-6 * spread)
        assert phys[name].attrs == store.attrs["variables"][name]


def test_store_is_partial_until_every_row_is_written_then_carries_the_counts(latlon_store, tmp_path):
    store = latlon_store
    target = tmp_path / "augmented.zarr"
    template = augment_template(store, 2, [7, 3, 11], {})
    attrs = output_attrs(config="augment: {}\n", checksums={}, seed=0, title="t", command="simdiff augment")
    create_partial(target, template, attrs)
    assert partial_path(target).exists() and not target.exists() and not is_complete(target)
    assert open_rows(target) == [0, 1, 2, 3, 4]
    fields = samples_like(store, 1, {"t2m": 281.0, "tp": 2e-4})
    row = {v: fields[v].values[0] for v in store.variables}
    write_rows(target, {0: {**row, "synthetic": False, "sample_id": -1, "source_index": 4, "draws": 0},
                        1: {**row, "synthetic": False, "sample_id": -1, "source_index": 5, "draws": 0}})
    write_rows(target, {2: {**row, "synthetic": True, "sample_id": 7, "source_index": 9, "draws": 3,
                            "rejections": [0, 1, 2, 0]}})
    write_rows(target, {3: {"rejections": [0, 0, 1, 0], "draws": 1}}, done=False)  # still open
    assert open_rows(target) == [3, 4]
    with pytest.raises(DataError, match="not written yet"):
        finalize(target)
    assert not target.exists()
    for pos, sid in ((3, 3), (4, 11)):
        counts = [0, 0, 1, 0] if pos == 3 else [0] * 4
        write_rows(target, {pos: {**row, "synthetic": True, "sample_id": sid, "source_index": -1,
                                  "draws": 2 if pos == 3 else 1, "rejections": counts}})
    tally = tally_rejections(target)
    assert tally == {"nonfinite": 0, "negative": 1, "domain": 3, "range": 0, "total": 3}
    assert tally_rejections(target) == tally  # idempotent (a resumed publish)
    # a run killed after the tally, before publishing: its re-run (same template) resumes the store
    assert create_partial(target, template, attrs) == partial_path(target) and open_rows(target) == []
    finalize(target)
    assert is_complete(target) and not partial_path(target).exists()
    ds = xr.open_zarr(target)
    assert json.loads(ds.attrs["simdiff_rejected"]) == tally
    assert "rejections" not in ds and "written" not in ds and "reject_reason" not in ds.coords
    assert json.loads(ds.attrs["simdiff_folded"]) == ["rejections", "reject_reason"]  # what was dropped
    assert ds["synthetic"].values.tolist() == [False, False, True, True, True]
    assert ds["sample_id"].values.tolist() == [-1, -1, 7, 3, 11]
    assert ds["time"].values.tolist() == [0, 1, 2, 3, 4]
    assert ds["t2m"].dims == ("time", "lat", "lon") and ds["t2m"].attrs == store.attrs["variables"]["t2m"]
    src = store.dataset()
    for c in ("lat", "lon"):
        np.testing.assert_array_equal(ds[c].values, src[c].values)
        assert ds[c].attrs == src[c].attrs
    np.testing.assert_array_equal(np.isnan(ds["t2m"].values[4]), ~store.array("mask"))
    assert zarr.open_group(str(target), mode="r").attrs["simdiff_complete"] == 1


def test_template_refuses_repeated_or_negative_ids(latlon_store):
    with pytest.raises(DataError, match="unique"):
        augment_template(latlon_store, 0, [1, 1], {})
    with pytest.raises(DataError, match="unique"):
        augment_template(latlon_store, 0, [-2], {})
