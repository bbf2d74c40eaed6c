"""Baselines: verifying truth, persistence and the climatology ensemble on tiny labelled cases."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from simdiff.base.errors import DataError
from simdiff.data.time_features import time_features
from simdiff.evaluate.baselines import (
    climatology_ensemble,
    climatology_needs_care,
    persistence,
    truth_at,
    valid_times,
)


def daily(n: int = 4 * 365) -> xr.Dataset:
    """Daily states whose value is the day index: (time, y, x)."""
    time = pd.date_range("2001-01-01", periods=n, freq="D")
    values = np.arange(n, dtype=float)[:, None, None] * np.ones((1, 2, 3))
    return xr.Dataset({"t": (("time", "y", "x"), values)}, coords={"time": time})


def test_truth_at_picks_the_valid_time_and_nans_outside_the_record():
    truth = daily(30)
    init = truth["time"].isel(time=[0, 20])
    lead = xr.DataArray(
        np.array([0, 2, 15], dtype="timedelta64[D]").astype("timedelta64[ns]"), dims="lead_time"
    )
    out = truth_at(truth, init, lead)
    assert out["t"].dims == ("init_time", "lead_time", "y", "x")
    got = out["t"].isel(y=0, x=0).values
    np.testing.assert_array_equal(got[0], [0, 2, 15])
    np.testing.assert_array_equal(got[1, :2], [20, 22])
    assert np.isnan(got[1, 2])  # day 35 is past the record
    np.testing.assert_array_equal(out["verified"].values, [[True, True, True], [True, True, False]])


def test_truth_at_float_days_and_persistence_lead_zero_is_exact():
    time = np.arange(0.0, 50.0, 0.1)  # float days with round-off (0.1 * k)
    truth = xr.Dataset({"q": (("time", "x"), np.sin(time)[:, None] * np.ones((1, 4)))}, coords={"time": time})
    init = xr.DataArray(time[[3, 17]], dims="init_time")
    lead = xr.DataArray([0.0, 0.3], dims="lead_time")
    out = truth_at(truth, init, lead)
    np.testing.assert_allclose(out["q"].isel(x=0).values, np.sin(time[[[3, 6], [17, 20]]]))
    pers = persistence(truth, init, lead)
    assert pers["q"].dims == ("init_time", "lead_time", "x")
    np.testing.assert_array_equal(pers["q"].isel(lead_time=0).values, out["q"].isel(lead_time=0).values)
    np.testing.assert_array_equal(pers["q"].isel(lead_time=1).values, pers["q"].isel(lead_time=0).values)


def _doy_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = np.abs(pd.DatetimeIndex(a).day_of_year.values - pd.DatetimeIndex(b).day_of_year.values)
    return np.minimum(d, 365 - d)


def test_climatology_picks_same_season_and_is_deterministic():
    train = daily()
    init = xr.DataArray(pd.to_datetime(["2006-01-10", "2006-07-01"]), dims="init_time")
    lead = xr.DataArray(np.array([0, 10], dtype="timedelta64[D]").astype("timedelta64[ns]"), dims="lead_time")
    vt = valid_times(init, lead)
    ens = climatology_ensemble(train, vt, members=20, seed=3)
    assert ens["t"].dims == ("realization", "init_time", "lead_time", "y", "x")
    day = ens["t"].isel(y=0, x=0).values.astype(int)  # the training day index of each member
    picked = train["time"].values[day]
    for i in range(2):
        for j in range(2):
            assert (_doy_distance(picked[:, i, j], np.repeat(vt.values[i, j], 20)) <= 15).all()
            assert len(set(day[:, i, j])) == 20  # without replacement
    again = climatology_ensemble(train, vt, members=20, seed=3)
    np.testing.assert_array_equal(again["t"].values, ens["t"].values)
    other = climatology_ensemble(train, vt, members=20, seed=4)
    assert not np.array_equal(other["t"].values, ens["t"].values)
    # keyed by the valid time: the same valid time alone gets the same members
    alone = climatology_ensemble(train, vt.isel(init_time=[1]), members=20, seed=3)
    np.testing.assert_array_equal(alone["t"].values, ens["t"].isel(init_time=[1]).values)


def test_climatology_from_time_features_matches_datetime_and_respects_hour():
    time = pd.date_range("2001-01-01", periods=3 * 365 * 4, freq="6h")
    train = xr.Dataset(
        {"t": (("time", "x"), np.arange(time.size, dtype=float)[:, None] * np.ones((1, 2)))},
        coords={"time": time},
    )
    vt = xr.DataArray(
        np.array([["2004-03-05T18:00"]], dtype="datetime64[ns]"), dims=("init_time", "lead_time")
    )
    a = climatology_ensemble(train, vt, members=8, seed=1)
    b = climatology_ensemble(train, vt, members=8, seed=1, time_features=time_features(train["time"]))
    np.testing.assert_array_equal(a["t"].values, b["t"].values)
    picked = time[a["t"].isel(x=0).values.astype(int).ravel()]
    assert (picked.hour == 18).all()


def test_climatology_window_widens_for_monthly_data_and_excludes_the_valid_time():
    time = pd.date_range("2000-01-01", periods=60, freq="MS")  # 5 Januaries
    train = xr.Dataset(
        {"t": (("time", "x"), np.arange(60.0)[:, None] * np.ones((1, 2)))}, coords={"time": time}
    )
    vt = xr.DataArray(np.array([["2002-01-01"]], dtype="datetime64[ns]"), dims=("init_time", "lead_time"))
    ens = climatology_ensemble(train, vt, members=4, seed=0)
    months = time[ens["t"].isel(x=0).values.astype(int).ravel()]
    assert set(months.month) == {1} and pd.Timestamp("2002-01-01") not in months
    wide = climatology_ensemble(train, vt, members=8, seed=0)  # only 4 other Januaries: nearest months
    assert set(time[wide["t"].isel(x=0).values.astype(int).ravel()].month) <= {12, 1, 2}


def test_climatology_without_season_draws_random_training_states():
    time = np.arange(100.0)
    train = xr.Dataset({"q": (("time", "x"), time[:, None] * np.ones((1, 2)))}, coords={"time": time})
    vt = xr.DataArray([[5.0, 7.0]], dims=("init_time", "lead_time"))
    ens = climatology_ensemble(train, vt, members=30, seed=0)
    idx = ens["q"].isel(x=0).values.astype(int)
    assert all(len(set(idx[:, 0, j])) == 30 for j in range(2))
    assert 5 not in idx[:, 0, 0] and 7 not in idx[:, 0, 1]
    assert ens.attrs["simdiff_climatology"]["pools"] == {"hour_and_season": 0, "season": 0, "any": 2}
    assert not ens.attrs["simdiff_climatology"]["weak"]
    assert not ens.attrs["simdiff_climatology"]["seasonal"]
    assert not climatology_needs_care(ens.attrs["simdiff_climatology"])  # every state is its climatology
    few = climatology_ensemble(train, vt, members=100)  # more members than states: with replacement
    info = few.attrs["simdiff_climatology"]
    assert info["with_replacement"] == 2 and info["weak"] and info["smallest_pool"] == 99
    assert 5 not in few["q"].isel(x=0, init_time=0, lead_time=0).values
    with pytest.raises(DataError, match="members"):
        climatology_ensemble(train, vt, members=0)


def test_climatology_falls_back_on_a_short_record():
    """One day of 10-min frames, trained on the morning: the evening's hours are not in train."""
    time = pd.date_range("2020-10-31", periods=72, freq="10min")  # 00:00 .. 11:50
    train = xr.Dataset({"p": (("time", "x"), np.arange(72.0)[:, None] * np.ones((1, 2)))},
                       coords={"time": time})
    vt = xr.DataArray(np.array([["2020-10-31T05:00", "2020-10-31T20:00"]], dtype="datetime64[ns]"),
                      dims=("init_time", "lead_time"))
    ens = climatology_ensemble(train, vt, members=4, seed=0)
    info = ens.attrs["simdiff_climatology"]
    assert info["pools"] == {"hour_and_season": 1, "season": 1, "any": 0}
    assert info["seasonal"] and climatology_needs_care(info)  # the evening fell back from its hour
    picked = time.values[ens["p"].isel(x=0).values.astype(int)]
    offset = np.abs(picked[:, 0, 0] - np.datetime64("2020-10-31T05:00"))
    assert (offset < np.timedelta64(30, "m")).all()  # same hour (within half an hour) where it exists
    assert len(set(picked[:, 0, 1])) == 4  # the evening: any hour of the same day
    other_year = xr.DataArray(np.array([["2021-05-01T20:00"]], dtype="datetime64[ns]"),
                              dims=("init_time", "lead_time"))
    far = climatology_ensemble(train, other_year, members=4, seed=0)
    assert far.attrs["simdiff_climatology"]["pools"]["any"] == 1


def test_dask_backed_baselines_equal_numpy():
    truth = daily(3 * 365)
    init = truth["time"].isel(time=[400, 800])
    lead = xr.DataArray(np.array([0, 3], dtype="timedelta64[D]").astype("timedelta64[ns]"), dims="lead_time")
    lazy = truth.chunk({"time": 50})
    a, b = truth_at(truth, init, lead), truth_at(lazy, init, lead)
    assert b["t"].chunks is not None
    xr.testing.assert_identical(a, b.compute())
    vt = valid_times(init, lead)
    xr.testing.assert_identical(
        climatology_ensemble(truth, vt, 5), climatology_ensemble(lazy, vt, 5).compute()
    )
