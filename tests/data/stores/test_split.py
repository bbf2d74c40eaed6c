"""Contiguous train/val/test splits and block ids (simdiff.data.stores.split)."""

from __future__ import annotations

import cftime
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from simdiff.base.errors import DataError
from simdiff.data.stores.split import block_ids, split_labels, split_sizes


def _time(n: int, freq: str = "6h") -> xr.DataArray:
    t = pd.date_range("2001-01-01", periods=n, freq=freq)
    return xr.DataArray(t, dims="time", coords={"time": t}, name="time")


def test_split_is_contiguous_in_sample_order() -> None:
    split = split_labels(_time(50), (0.8, 0.1, 0.1))
    assert split.dtype == np.int8 and split.dims == ("time",)
    np.testing.assert_array_equal(split.values, [0] * 40 + [1] * 5 + [2] * 5)
    assert split.attrs["flag_meanings"] == "train val test"
    # non-decreasing codes <=> contiguous blocks in order train, val, test
    assert np.all(np.diff(split.values) >= 0)


@pytest.mark.parametrize("n", [3, 7, 10, 11, 99, 1000])
def test_split_sizes_sum_and_nonempty(n: int) -> None:
    if n < 10:
        with pytest.raises(DataError, match=rf"{n} samples are too few.*at least 10 samples"):
            split_sizes(n, (0.8, 0.1, 0.1))
        return
    sizes = split_sizes(n, (0.8, 0.1, 0.1))
    assert sum(sizes) == n and min(sizes) >= 1
    assert abs(sizes[0] - 0.8 * n) <= 1


def test_zero_fraction_gives_empty_split() -> None:
    assert split_sizes(5, (0.8, 0.2, 0.0)) == (4, 1, 0)


def test_bad_fractions_are_refused() -> None:
    with pytest.raises(DataError, match="sum to 1"):
        split_sizes(100, (0.8, 0.1, 0.2))


def test_blocks_start_at_split_changes_and_gaps() -> None:
    t = pd.date_range("2001-01-01", periods=60, freq="1h")
    keep = np.ones(60, bool)
    keep[[10, 11, 30]] = False  # two gaps inside train (hours 10-11 and hour 30 missing)
    t = t[keep]
    sample = xr.DataArray(t, dims="time", coords={"time": t})
    split = split_labels(sample, (0.8, 0.1, 0.1))
    block = block_ids(split)
    assert block.dtype == np.int32
    # expected: new block after each gap and at each split change
    step = np.diff(t.values) / np.timedelta64(1, "h")
    new = np.r_[False, (step > 1) | (np.diff(split.values) != 0)]
    np.testing.assert_array_equal(block.values, np.cumsum(new))
    assert block.values.max() == 4  # 2 gaps + 2 split changes
    # invariant: inside a block, one split and a constant step
    for b in np.unique(block.values):
        idx = np.flatnonzero(block.values == b)
        assert np.all(np.diff(idx) == 1)
        assert len(np.unique(split.values[idx])) == 1
        assert np.all(np.diff(t.values[idx]) == np.timedelta64(1, "h"))


def test_calendar_months_are_not_gaps() -> None:
    t = pd.date_range("2000-01-01", periods=48, freq="MS")  # steps of 28-31 days
    split = split_labels(xr.DataArray(t, dims="time", coords={"time": t}), (0.5, 0.25, 0.25))
    np.testing.assert_array_equal(np.unique(block_ids(split).values), [0, 1, 2])


def test_cftime_axis_gap() -> None:
    dates = [cftime.Datetime360Day(2000, 1, 1) + pd.Timedelta(days=d) for d in (*range(20), 25, 26)]
    sample = xr.DataArray(np.array(dates, dtype=object), dims="time")
    sample = sample.assign_coords(time=sample)
    block = block_ids(split_labels(sample, (1.0, 0.0, 0.0)))
    np.testing.assert_array_equal(block.values, [0] * 20 + [1, 1])


def test_sample_dim_without_coordinate() -> None:
    sample = xr.DataArray(np.arange(10), dims="sample")
    block = block_ids(split_labels(sample, (0.6, 0.2, 0.2)))
    np.testing.assert_array_equal(block.values, [0] * 6 + [1] * 2 + [2] * 2)


def test_unsorted_time_is_refused() -> None:
    t = pd.DatetimeIndex(["2001-01-01", "2001-01-03", "2001-01-02", "2001-01-04"])
    sample = xr.DataArray(t, dims="time", coords={"time": t})
    with pytest.raises(DataError, match=r"not strictly increasing at index 2.*sortby"):
        block_ids(split_labels(sample, (1.0, 0.0, 0.0)))


def test_synthetic_samples_all_go_to_train_each_in_its_own_block():
    """A merged augmented store: 10 real samples then 4 synthetic ones; the real ones split
    8/1/1 as if alone, the synthetic ones are train, and no window crosses into or between them."""
    sample = xr.DataArray(np.arange(14), dims="time", coords={"time": np.arange(14)})
    fake = np.array([False] * 10 + [True] * 4)
    split = split_labels(sample, (0.8, 0.1, 0.1), synthetic=fake)
    assert split.values.tolist() == [0] * 8 + [1, 2] + [0] * 4
    blocks = block_ids(split, synthetic=fake).values
    assert blocks.tolist() == [0] * 8 + [1, 2, 3, 4, 5, 6]
    # interleaved: a real sample after a synthetic one starts a new block as well
    mixed = np.array([False, True, False, False, True, False, False, False, False, False])
    split = split_labels(sample[:10], (0.75, 0.125, 0.125), synthetic=mixed)
    assert (split.values[mixed] == 0).all() and (split.values[~mixed] == [0, 0, 0, 0, 0, 0, 1, 2]).all()
    assert block_ids(split, synthetic=mixed).values.tolist() == [0, 1, 2, 2, 3, 4, 4, 4, 5, 6]
