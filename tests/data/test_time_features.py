"""Time features: closed-form phases of the day and year on the unit circle."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from simdiff.data.time_features import TIME_FEATURES, is_datetime, time_features


def _features(*stamps: str) -> np.ndarray:
    time = xr.DataArray(np.array(stamps, dtype="datetime64[ns]"), dims="time")
    out = time_features(time)
    assert out.dims == ("time", "time_feature")
    assert out["time_feature"].values.tolist() == list(TIME_FEATURES)
    return out.values.astype(float)


def test_hour_of_day_phase() -> None:
    f = _features("2019-03-01T00:00", "2019-03-01T06:00", "2019-03-01T12:00", "2019-03-01T18:00")
    np.testing.assert_allclose(f[:, 0], [0, 1, 0, -1], atol=1e-6)   # sin_hour
    np.testing.assert_allclose(f[:, 1], [1, 0, -1, 0], atol=1e-6)   # cos_hour


def test_day_of_year_phase_counts_leap_years() -> None:
    # half a year: 182.5 days into 2019 (365 d), 183 days into 2020 (366 d)
    f = _features("2019-01-01T00:00", "2019-07-02T12:00", "2020-07-02T00:00")
    np.testing.assert_allclose(f[:, 2], [0, 0, 0], atol=1e-6)      # sin_doy
    np.testing.assert_allclose(f[:, 3], [1, -1, -1], atol=1e-6)    # cos_doy


def test_features_lie_on_unit_circles_and_are_continuous_over_new_year() -> None:
    f = _features("2019-12-31T23:00", "2020-01-01T00:00", "2020-01-01T01:00")
    np.testing.assert_allclose(f[:, 0] ** 2 + f[:, 1] ** 2, 1.0, atol=1e-6)
    np.testing.assert_allclose(f[:, 2] ** 2 + f[:, 3] ** 2, 1.0, atol=1e-6)
    assert np.abs(np.diff(f, axis=0)).max() < 2 * np.pi / 24 + 1e-6   # no jump at midnight/new year


def test_cftime_360_day_calendar() -> None:
    pytest.importorskip("cftime")
    time = xr.DataArray(xr.date_range("2001-07-01", periods=1, calendar="360_day", use_cftime=True),
                        dims="time")
    assert is_datetime(time)
    f = time_features(time).values
    np.testing.assert_allclose(f[0, 3], -1.0, atol=1e-6)  # day 181 of 360: half a year


def test_integer_axes_are_not_datetimes() -> None:
    month = xr.DataArray(np.array([1, 7]), dims="time")
    assert not is_datetime(month)
    with pytest.raises(TypeError, match="needs datetimes"):
        time_features(month)
