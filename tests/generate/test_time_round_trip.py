"""Forecast times round-trip as CF datetimes/timedeltas through zarr and netCDF, per calendar and
frequency, and the truth of every (init, lead) is found again by the evaluation's matching."""

from __future__ import annotations

from pathlib import Path

import cftime
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from conftest import _field, _write

from simdiff.evaluate.baselines import climatology_ensemble, truth_at
from simdiff.generate.output import create_partial, finalize, open_output, output_attrs, write_block
from simdiff.generate.template import forecast_template

N = 14
CASES = {
    "hourly": pd.date_range("2017-01-01", periods=N, freq="h"),
    "10min": pd.date_range("2020-10-31", periods=N, freq="10min"),
    "daily": pd.date_range("1999-12-25", periods=N, freq="D"),
    "monthly": pd.date_range("2010-01-01", periods=N, freq="MS"),  # 28- to 31-day steps
    "noleap_daily": xr.date_range("2001-02-20", periods=N, freq="D", calendar="noleap", use_cftime=True),
    "360_day_monthly": xr.date_range("2001-01-01", periods=N, freq="MS", calendar="360_day",
                                     use_cftime=True),
    "model_days": None,  # numeric time in days, no reference date (QG)
}


def _store(tmp: Path, times) -> object:
    t = 5.0 * np.arange(N) if times is None else times
    time = ("time", t, {"units": "days", "long_name": "model time"}) if times is None else t
    rng = np.random.default_rng(0)
    ds = xr.Dataset({"v": (("time", "y", "x"), rng.standard_normal((N, 3, 4)).astype(np.float32),
                           {"units": "K"})},
                    coords={"time": time, "y": ("y", np.arange(3.0)), "x": ("x", np.arange(4.0))})
    mask = np.ones((3, 4), bool)
    return _write(_field(ds, mask, frozenset(), np.ones((3, 4))), tmp / "train.zarr")


@pytest.mark.parametrize("fmt", ["zarr", "netcdf"])
@pytest.mark.parametrize("case", list(CASES))
def test_forecast_times_round_trip_and_match_the_truth(case, fmt, tmp_path):
    store = _store(tmp_path, CASES[case])
    inits, leads = [1, 6], [1, 2, 3]
    template = forecast_template(store, [0, 1], inits, leads)
    target = tmp_path / ("forecast.zarr" if fmt == "zarr" else "forecast.nc")
    create_partial(target, template, output_attrs(config="x", checksums={}, seed=0, title="t", command="t"))
    for init in inits:
        block = template.drop_vars("written").isel(init_time=0, drop=True).fillna(1.0)
        write_block(target, block[["v"]].reset_coords(drop=True).assign_coords(
            realization=template["realization"]), init=init)
    finalize(target)
    ds = open_output(target)
    truth = store.dataset()["time"].values
    # the times come back as the store's own type, exactly
    assert ds["init_time"].dtype == truth.dtype
    np.testing.assert_array_equal(ds["init_time"].values, truth[inits])
    np.testing.assert_array_equal(ds["valid_time"].values, truth[np.add.outer(inits, leads)])
    if CASES[case] is None:
        assert ds["lead_time"].dtype.kind == "f" and ds["lead_time"].attrs["units"] == "days"
    else:
        assert np.issubdtype(ds["lead_time"].dtype, np.timedelta64)
        if case in ("hourly", "10min", "daily"):  # regular steps: init + lead is the valid time
            np.testing.assert_array_equal(np.add.outer(ds["init_time"].values, ds["lead_time"].values),
                                          ds["valid_time"].values)
    if isinstance(truth[0], cftime.datetime):
        assert ds["init_time"].values[0].calendar == truth[0].calendar
    # evaluation's matching finds every (init, lead) truth on the forecast's valid_time
    states = xr.Dataset({"v": ("time", np.arange(N, dtype=float))}, coords={"time": truth})
    found = truth_at(states, ds["init_time"], ds["lead_time"], "time", valid_time=ds["valid_time"])
    assert bool(found["verified"].all())
    np.testing.assert_array_equal(found["v"].values, np.add.outer(inits, leads))
    clim = climatology_ensemble(states, found["valid_time"], 3)  # seasons from any calendar
    assert sum(clim.attrs["simdiff_climatology"]["pools"].values()) == len(inits) * len(leads)
    assert np.isfinite(clim["v"].values).all()
