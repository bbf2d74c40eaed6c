"""Time features: the phase of the day and of the year as points on the unit circle.

For a time stamp with fractional hour of day ``h`` (0 <= h < 24) and day of year ``d``
(1-based, so ``d - 1 + h / 24`` counts days since 1 January 00:00) in a year of ``N`` days
(365 or 366; 360 in a 360_day cftime calendar)::

    sin_hour = sin(2 pi h / 24)              cos_hour = cos(2 pi h / 24)
    sin_doy  = sin(2 pi (d - 1 + h/24) / N)  cos_doy  = cos(2 pi (d - 1 + h/24) / N)

The sin/cos pair makes both cycles continuous across midnight and New Year (the
standard cyclical encoding of e.g. GraphCast's and GenCast's inputs). Only datetime axes
have features; an integer axis (ERA-Interim's ``month`` climatology, one sample per file)
has none.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

TIME_FEATURES = ("sin_hour", "cos_hour", "sin_doy", "cos_doy")


def is_datetime(time: xr.DataArray) -> bool:
    """True when ``time`` holds datetimes (numpy datetime64 or cftime objects)."""
    if np.issubdtype(time.dtype, np.datetime64):
        return True
    if time.dtype == object and time.size:
        return hasattr(time.values.flat[0], "calendar")
    return False


def time_features(time: xr.DataArray) -> xr.DataArray:
    """(time,) datetimes -> (time, time_feature) float32, features ``TIME_FEATURES``."""
    if not is_datetime(time):
        raise TypeError(f"time_features needs datetimes, got dtype {time.dtype}")
    dim = time.dims[0]
    hour = (time.dt.hour + time.dt.minute / 60.0 + time.dt.second / 3600.0).values.astype(float)
    doy = time.dt.dayofyear.values.astype(float)
    days_in_year = time.dt.days_in_year.values.astype(float)
    day_angle = 2.0 * np.pi * hour / 24.0
    year_angle = 2.0 * np.pi * (doy - 1.0 + hour / 24.0) / days_in_year
    values = np.stack(
        [np.sin(day_angle), np.cos(day_angle), np.sin(year_angle), np.cos(year_angle)], axis=-1
    ).astype(np.float32)
    return xr.DataArray(
        values,
        dims=(dim, "time_feature"),
        coords={dim: time.values, "time_feature": list(TIME_FEATURES)},
        name="time_features",
        attrs={"long_name": "sin/cos of hour of day and day of year", "units": "1"},
    )

