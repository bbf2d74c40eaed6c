"""The diurnal-cycle check: closed-form daily cycles, local solar time, and when it applies."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from simdiff.evaluate.diurnal import applies, diurnal_cycle, record_cycle
from simdiff.evaluate.report import evaluate_forecast

AMPLITUDE = 4.0  # K


def cycle(local_hours: np.ndarray) -> np.ndarray:
    """A daily cycle with its minimum at 06 and maximum at 18 local time."""
    return -AMPLITUDE * np.cos(2 * np.pi * (local_hours - 6.0) / 24.0)


def case(lon: np.ndarray, follow: float, members: int = 4) -> tuple[xr.Dataset, xr.Dataset]:
    """Hourly truth over 3 days; members follow ``follow`` times the cycle's change since the init,
    plus exactly cancelling member offsets (the ensemble mean is exact)."""
    time = np.datetime64("2017-01-01T00:00") + np.arange(72) * np.timedelta64(1, "h")
    utc = np.arange(72) % 24.0
    offset = float(np.mean(lon)) / 15.0
    lat = np.array([50.0, 51.0, 52.0])
    base = np.array([0.0, 1.0, 2.0])[:, None] + np.zeros((3, lon.size))
    t = 280.0 + cycle(utc + offset)[:, None, None] + base
    t[:, 0, 1] = np.nan  # a masked (sea) cell, at the mean longitude
    truth = xr.Dataset({"Tair": (("time", "lat", "lon"), t)}, coords={"time": time, "lat": lat, "lon": lon})
    init_pos = np.arange(0, 60, 3)
    lead = np.arange(1, 5) * np.timedelta64(1, "h")
    valid_pos = init_pos[:, None] + np.arange(1, 5)
    x0 = t[init_pos][:, None]
    mean = x0 + follow * (t[valid_pos] - x0)
    spread = np.linspace(-1.0, 1.0, members)[:, None, None, None, None]
    fc = xr.Dataset(
        {"Tair": (("realization", "init_time", "lead_time", "lat", "lon"), mean[None] + spread)},
        coords={"realization": np.arange(members), "init_time": time[init_pos], "lead_time": lead,
                "lat": lat, "lon": lon,
                "valid_time": (("init_time", "lead_time"), time[valid_pos])},  # as generate writes it
    )
    return fc, truth


def test_applies_to_sub_daily_leads_from_dates_only() -> None:
    dates = xr.DataArray(np.array(["2017-01-01T00"], dtype="datetime64[ns]"))
    hours = xr.DataArray(np.array([1, 2], dtype="timedelta64[h]").astype("timedelta64[ns]"))
    days = xr.DataArray(np.array([1, 2], dtype="timedelta64[D]").astype("timedelta64[ns]"))
    assert applies(dates, hours)
    assert not applies(dates, days)
    assert not applies(xr.DataArray([0.0]), xr.DataArray([1.0, 2.0]))  # QG: numeric time


@pytest.mark.parametrize("follow", [1.0, 0.5])
def test_morning_warming_and_hourly_changes_are_the_closed_form(follow: float) -> None:
    fc, truth = case(np.array([-6.0, -3.0, 0.0]), follow)
    out = evaluate_forecast(fc, truth, spectra=False)["diurnal"]["Tair"]
    offset = -3.0 / 15.0
    assert out["offset_hours"] == pytest.approx(offset)
    assert out["clock"].startswith("local solar")
    # every hour has steps (inits every 3 h, 4 hourly leads); a step ending at UTC hour u ends at
    # local hour floor(u + offset)
    by = out["by_hour"]
    assert all(n > 0 for n in by["steps"]) and sum(by["steps"]) == 20 * 4
    for h in range(24):
        u = (h + 1) % 24  # offset -0.2 h: UTC hour u is local hour u - 1 (+ 0.8)
        expected = cycle(np.array([u + offset]))[0] - cycle(np.array([u - 1 + offset]))[0]
        assert by["truth"][h] == pytest.approx(expected, abs=1e-9)
        assert by["members"][h] == pytest.approx(follow * expected, abs=1e-9)
    morning = out["morning"]
    assert morning["complete"] and morning["hours"] == [7, 8, 9, 10, 11, 12]
    warming = sum(cycle(np.array([u + offset]))[0] - cycle(np.array([u - 1 + offset]))[0]
                  for u in range(8, 14))
    assert morning["truth"] == pytest.approx(warming, abs=1e-9) and warming > 0
    assert morning["relative_error"] == pytest.approx(follow - 1.0, abs=1e-9)
    # each of the three local dates has its whole morning: the same sums day by day
    assert [d["date"] for d in morning["days"]] == ["2017-01-01", "2017-01-02", "2017-01-03"]
    for d in morning["days"]:
        assert d["truth"] == pytest.approx(warming, abs=1e-9)
        assert d["members"] == pytest.approx(follow * warming, abs=1e-9)


def test_local_solar_time_moves_the_cycle_with_longitude() -> None:
    """The same local-time cycle east of Greenwich: the hourly changes by local hour agree."""
    west = evaluate_forecast(*case(np.array([0.0, 0.0, 0.0]), 1.0), spectra=False)["diurnal"]["Tair"]
    east = evaluate_forecast(*case(np.array([90.0, 90.0, 90.0]), 1.0), spectra=False)["diurnal"]["Tair"]
    assert east["offset_hours"] == pytest.approx(6.0)
    np.testing.assert_allclose(east["by_hour"]["truth"], west["by_hour"]["truth"], atol=1e-9)


def test_no_check_without_dates_or_when_switched_off() -> None:
    fc, truth = case(np.array([0.0, 1.0, 2.0]), 1.0)
    assert "diurnal" not in evaluate_forecast(fc, truth, spectra=False, diurnal_window=None)
    numeric = fc.drop_vars("valid_time").assign_coords(init_time=np.arange(0.0, 60.0, 3.0),
                                                       lead_time=np.arange(1.0, 5.0))
    truth_n = truth.assign_coords(time=np.arange(72.0))
    assert "diurnal" not in evaluate_forecast(numeric, truth_n, spectra=False)


def test_a_partial_morning_says_which_hours_it_covers() -> None:
    fc, truth = case(np.array([0.0, 0.0, 0.0]), 1.0)
    fc = fc.isel(init_time=[2])  # init 06 UTC, leads to 10 UTC: steps ending 07..10
    out = diurnal_cycle(fc["Tair"], truth["Tair"].isel(time=[7, 8, 9, 10]).rename(time="lead_time")
                        .assign_coords(lead_time=fc.lead_time.values).expand_dims(init_time=fc.init_time.values),
                        truth["Tair"].isel(time=[6]).rename(time="init_time"),
                        xr.DataArray(truth.time.values[[7, 8, 9, 10]][None], dims=("init_time", "lead_time")),
                        xr.ones_like(truth["Tair"].isel(time=0, drop=True)))
    assert out["morning"]["hours"] == [7, 8, 9, 10] and not out["morning"]["complete"]
    assert out["morning"]["days"] == []  # no date has its whole morning
    assert out["morning"]["relative_error"] == pytest.approx(0.0, abs=1e-9)


def test_report_shows_the_check(tmp_path) -> None:
    from simdiff.evaluate.html import index_html, report_summary
    from simdiff.evaluate.report import report_figures

    metrics = evaluate_forecast(*case(np.array([0.0, 1.0, 2.0]), 0.5), spectra=False)
    assert "diurnal" in report_figures(metrics)
    page = index_html(metrics, [], [])
    assert "Diurnal cycle" in page and "local solar" in page
    line = next(s for s in report_summary(metrics) if "morning" in s)
    assert "relative error -0.5" in line
    assert "by local date (members / truth) 2017-01-01:" in line and "2017-01-03:" in line
    assert "by local date" in page


def test_the_training_record_gives_its_own_cycle_and_skips_gaps() -> None:
    """Training states on the same cycle: the record's mean change per local hour is the closed
    form; a pair of states further apart than one step does not count; evaluate reports it."""
    fc, truth = case(np.array([-6.0, -3.0, 0.0]), follow=0.5)
    offset = -3.0 / 15.0
    train = truth["Tair"].drop_isel(time=[30])  # one missing hour: the pair across it is skipped
    weights = xr.ones_like(truth["Tair"].isel(time=0, drop=True))
    by, n = record_cycle(train, weights, 3600, offset)
    assert sum(n) == 71 - 2  # 70 one-hour pairs around the gap, 69 left
    for h in range(24):
        u = (h + 1) % 24
        expected = cycle(np.array([u + offset]))[0] - cycle(np.array([u - 1 + offset]))[0]
        assert by[h] == pytest.approx(expected, abs=1e-9)
    out = evaluate_forecast(fc, truth, train=truth.drop_isel(time=[30]), spectra=False)["diurnal"]["Tair"]
    assert out["training"]["mean"] == pytest.approx(by, abs=1e-12)
    assert out["morning"]["training"] == pytest.approx(out["morning"]["truth"], abs=1e-9)
    assert evaluate_forecast(fc, truth, spectra=False)["diurnal"]["Tair"].get("training") is None


def test_local_dates_shift_with_the_offset_for_datetime64_and_cftime() -> None:
    """A step ending at 00:00 UTC ends on the previous local date west of Greenwich, and on the same
    one east of it, in the proleptic Gregorian and in a no-leap calendar alike."""
    import cftime

    from simdiff.evaluate.diurnal import _local_date

    dates = np.array(["2017-01-02T00:00", "2017-03-01T00:30"], dtype="datetime64[ns]")
    assert _local_date(dates, -0.2).tolist() == ["2017-01-01", "2017-03-01"]
    assert _local_date(dates, 0.2).tolist() == ["2017-01-02", "2017-03-01"]
    noleap = np.array([cftime.DatetimeNoLeap(2017, 1, 2), cftime.DatetimeNoLeap(2017, 3, 1)], dtype=object)
    assert _local_date(noleap, -0.2).tolist() == ["2017-01-01", "2017-02-28"]
