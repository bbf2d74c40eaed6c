"""Does a sub-daily forecast follow the diurnal cycle? The mean change per step by hour of day.

A forecast whose leads are shorter than a day and whose init times are dates can be checked
against the truth's daily cycle: warming over the morning, cooling in the evening. For each
(init, lead k) the step change ``x_k - x_{k-1}`` (``x_0`` the true state at the init time, for
the members and the truth alike) is averaged over the valid cells with the cell weights (over
every level), for the ensemble mean and for the truth at the same valid times; the steps are
then grouped by the local hour at which they end, and averaged per hour.

The local hour is local *solar* time: UTC plus the cell-weighted mean longitude / 15 h when
the field has a ``lon``/``longitude`` coordinate (one offset for the whole domain), else UTC
(``clock`` says which). A regional grid spanning a few degrees of longitude is off by
minutes; a global one would need an offset per cell, which this check does not do.

``morning`` sums the hourly means over the steps ending in ``(start, end]`` local hours (by
default 06-12): the mean change over the morning, members against truth, and their relative
error. It is ``complete`` when every step of the window has at least one case; with few
inits some hours have none and the sum covers only ``hours``. ``days`` makes the same sum per
local date, for each date whose every morning step has a case: how much the mornings of the
test period differ from one another (cloud, wind), which a mean over a few days hides.

With the training states, ``training`` gives the same statistics for every pair of
consecutive training states one forecast step apart (the record's own cycle), and
``morning["training"]`` its morning sum: a few test inits can fall on unusually sunny or
cloudy days, so the truth's morning alone does not say what the model could have learnt.
"""

from __future__ import annotations

import datetime
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
import xarray as xr

from simdiff.evaluate.baselines import INIT_DIM, LEAD_DIM
from simdiff.metrics.weighting import weighted_mean

LON_NAMES = ("lon", "longitude")
#: Local-solar hours (start, end] of the morning the check sums over.
MORNING = (6.0, 12.0)


def _hours(times: np.ndarray) -> np.ndarray:
    """Hour of day (fractional) of datetime64 or cftime values."""
    t = xr.DataArray(times.ravel(), dims="t")
    return (t.dt.hour + t.dt.minute / 60.0).values.reshape(times.shape)


def applies(init: xr.DataArray, lead: xr.DataArray) -> bool:
    """Dated inits and leads that are time spans shorter than a day."""
    if lead.size == 0 or not np.issubdtype(lead.dtype, np.timedelta64):
        return False
    cftime = bool(init.size) and hasattr(init.values.flat[0], "calendar")
    dated = np.issubdtype(init.dtype, np.datetime64) or cftime
    step = np.asarray(lead.values[:1]).astype("timedelta64[s]").astype(np.int64)[0]
    return bool(dated) and 0 < step < 86_400


def _offset_hours(field: xr.DataArray, weights: xr.DataArray) -> tuple[float, str]:
    for name in LON_NAMES:
        if name in field.coords and field[name].ndim >= 1:
            lon = ((field[name] + 180.0) % 360.0) - 180.0
            w = weights.where(field.notnull().any([d for d in field.dims if d not in weights.dims]))
            mean_lon = float(weighted_mean(lon.broadcast_like(w), w, list(w.dims)))
            return mean_lon / 15.0, "local solar (UTC + mean longitude / 15)"
    return 0.0, "UTC"


def diurnal_cycle(
    members: xr.DataArray,
    truth: xr.DataArray,
    initial: xr.DataArray,
    valid_time: xr.DataArray,
    weights: xr.DataArray,
    *,
    member_dim: str = "realization",
    window: Sequence[float] = MORNING,
    training: xr.DataArray | None = None,
    sample_dim: str = "time",
) -> dict[str, Any]:
    """The diurnal-cycle check of one variable.

    Args:
        members: ``(member, init, lead, *spatial)`` in physical units (NaN: masked).
        truth: ``(init, lead, *spatial)``, the truth at the valid times.
        initial: ``(init, *spatial)``, the truth at the init times.
        valid_time: ``(init, lead)`` dates of the valid times.
        weights: the cell weights over ``spatial``.
        window: the morning, ``(start, end]`` in local hours.
        training: ``(sample_dim, *spatial)`` the training states (dated), or None.

    Returns:
        ``{"clock", "offset_hours", "by_hour": {"hour", "members", "truth", "steps"},
        "morning": {"window", "hours", "complete", "members", "truth", "relative_error",
        "days": [{"date", "members", "truth"}], ["training"]}, ["training": {"hour", "mean",
        "steps"}]}``, changes per step in the variable's units.
    """
    spatial: list[Hashable] = [d for d in truth.dims if d not in (INIT_DIM, LEAD_DIM)]
    step_s = int(_seconds(np.asarray(truth[LEAD_DIM].values[:1]))[0]) if LEAD_DIM in truth.coords else 0
    # index coords only: a forecast carries valid_time (init, lead), a grid lat/lon aux coords
    offset, clock = _offset_hours(truth, weights)
    members, truth, initial = (a.reset_coords(drop=True) for a in (members, truth, initial))
    members = xr.align(truth, members, join="override", exclude=[member_dim])[1]
    initial = xr.align(truth.isel({LEAD_DIM: 0}, drop=True), initial, join="override", exclude=[INIT_DIM])[1]
    mean = members.mean(member_dim)
    start = initial.expand_dims({LEAD_DIM: [None]}).assign_coords({LEAD_DIM: [np.timedelta64(0, "s")]})

    def step_changes(x: xr.DataArray) -> np.ndarray:
        """(init, lead) area means of the cell-wise step change, over cells valid at both ends."""
        x = x.transpose(INIT_DIM, LEAD_DIM, *spatial)
        full = xr.concat([start.transpose(INIT_DIM, LEAD_DIM, *spatial).astype(x.dtype), x],
                         dim=LEAD_DIM, coords="minimal", compat="override", join="override")
        change = full.diff(LEAD_DIM)
        return np.asarray(weighted_mean(change, weights, spatial).values, dtype=float)

    d_mem = step_changes(mean.where(truth.notnull()))
    d_obs = step_changes(truth)
    hour = _local_hour(np.asarray(valid_time.values), offset)
    date = _local_date(np.asarray(valid_time.values), offset)
    hours = np.arange(24)
    ok = np.isfinite(d_mem) & np.isfinite(d_obs)
    by_m, steps = _by_hour(d_mem, hour, ok)
    by_t, _ = _by_hour(d_obs, hour, ok)
    lo, hi = float(window[0]), float(window[1])
    in_window = [int(h) for h in hours if lo < h <= hi or (h == 0 and lo < 24 <= hi)]
    covered = [h for h in in_window if steps[h]]
    f, t = _window_sum(by_m, covered), _window_sum(by_t, covered)
    rel = (f - t) / abs(t) if f is not None and t not in (None, 0.0) else None  # type: ignore[operator]
    out: dict[str, Any] = {
        "clock": clock,
        "offset_hours": offset,
        "by_hour": {"hour": hours.tolist(), "members": by_m, "truth": by_t, "steps": steps},
        "morning": {"window": [lo, hi], "hours": covered, "complete": len(covered) == len(in_window),
                    "members": f, "truth": t, "relative_error": rel,
                    "days": _mornings(d_mem, d_obs, hour, date, ok, in_window)},
    }
    if training is not None:
        by_r, n_r = record_cycle(training, weights, step_s, offset, sample_dim=sample_dim)
        out["training"] = {"hour": hours.tolist(), "mean": by_r, "steps": n_r}
        out["morning"]["training"] = _window_sum(by_r, [h for h in in_window if n_r[h]])
    return out


def _local_hour(times: np.ndarray, offset: float) -> np.ndarray:
    """Whole local hour (0-23) of ``times`` at ``offset`` hours from UTC."""
    return np.floor((_hours(times) + offset) % 24.0 + 1e-9) % 24


def _local_date(times: np.ndarray, offset: float) -> np.ndarray:
    """Local date ``YYYY-MM-DD`` of ``times`` at ``offset`` h from UTC (the day of :func:`_local_hour`)."""
    shift = round(offset * 3600.0)
    t = xr.DataArray(times.ravel(), dims="t")
    if np.issubdtype(t.dtype, np.datetime64):
        t = t + np.timedelta64(shift, "s")
    else:  # cftime objects
        t = xr.DataArray(np.array([v + datetime.timedelta(seconds=shift) for v in t.values]), dims="t")
    return np.asarray(t.dt.strftime("%Y-%m-%d").values).reshape(times.shape)


def _mornings(d_mem: np.ndarray, d_obs: np.ndarray, hour: np.ndarray, date: np.ndarray, ok: np.ndarray,
              in_window: list[int]) -> list[dict[str, Any]]:
    """The morning's summed hourly means, members and truth, per local date with every hour covered."""
    days = []
    for day in sorted(set(date[ok].tolist())):
        on_day = ok & (date == day)
        by_m, steps = _by_hour(d_mem, hour, on_day)
        if in_window and all(steps[h] for h in in_window):
            by_t, _ = _by_hour(d_obs, hour, on_day)
            days.append({"date": day, "members": _window_sum(by_m, in_window),
                         "truth": _window_sum(by_t, in_window)})
    return days


def _by_hour(values: np.ndarray, hour: np.ndarray, ok: np.ndarray) -> tuple[list[float | None], list[int]]:
    """Mean of ``values`` where ``ok`` per hour 0..23 of ``hour`` (None where none), and the counts."""
    means: list[float | None] = []
    counts: list[int] = []
    for h in range(24):
        sel = ok & (hour == h)
        counts.append(int(sel.sum()))
        means.append(float(values[sel].mean()) if sel.any() else None)
    return means, counts


def _window_sum(by_hour: list[float | None], covered: list[int]) -> float | None:
    """The hourly means of ``covered`` summed (None when no hour is covered)."""
    return float(sum(by_hour[h] for h in covered)) if covered else None  # type: ignore[misc]


def _seconds(delta: np.ndarray) -> np.ndarray:
    """Time differences (timedelta64 or datetime.timedelta objects) in whole seconds."""
    delta = np.asarray(delta)
    if np.issubdtype(delta.dtype, np.timedelta64):
        return delta.astype("timedelta64[s]").astype(np.int64)
    return np.array([round(d.total_seconds()) for d in delta.ravel()], dtype=np.int64).reshape(delta.shape)


def record_cycle(
    states: xr.DataArray, weights: xr.DataArray, step_s: int, offset: float, *, sample_dim: str = "time"
) -> tuple[list[float | None], list[int]]:
    """The mean change per step by local hour over a record: every pair of consecutive states
    ``step_s`` seconds apart, the area mean (with ``weights``, over cells valid in both) of
    their change, grouped by the local hour (UTC + ``offset`` h) the step ends at.

    Returns ``(mean per hour 0..23 (None where no pair), pairs per hour)``.
    """
    times = np.asarray(states[sample_dim].values)
    spatial = [d for d in states.dims if d != sample_dim]
    if times.size < 2:
        return [None] * 24, [0] * 24
    gap = _seconds(times[1:] - times[:-1])
    change = states.reset_coords(drop=True).diff(sample_dim)
    mean = np.asarray(weighted_mean(change, weights, spatial).values, dtype=float)
    return _by_hour(mean, _local_hour(times[1:], offset), (gap == int(step_s)) & np.isfinite(mean))
