"""Reference forecasts a generative ensemble must beat: the verifying truth, persistence, climatology.

All take and return labelled xarray and stay lazy on dask-backed input (the states are picked
with vectorised ``isel``, which dask turns into a gather, chunk by chunk).

Times. A forecast has ``init_time`` (values of the truth's sample coord) and ``lead_time``
(timedelta64 for datetime stores, a number in the sample coord's units otherwise); its valid
time is ``init_time + lead_time``. A valid time that is not a sample of the truth (outside the
record, or in a gap) gives NaN for that (init, lead) pair: nothing is dropped, so the result
always has the forecast's ``(init_time, lead_time)`` and the scores' NaN handling leaves the
pair out. Numeric sample coords match to within 1e-6 of their median spacing (float days
accumulate round-off); datetimes match exactly.

Climatology (the "no skill beyond the season" reference, e.g. Leutbecher & Palmer 2008,
J. Comput. Phys. 227, 3515, sect. 5): for each valid time, ``members`` training states of
the same season and time of day, falling back on short records (:data:`POOLS`): same hour of
day and day of year within ``window_days`` (widened to the nearest days of that hour), then
the day-of-year window at any hour, then any training state. Without a season (QG: float
time, a statistically stationary flow) the pool is every training state. A state at exactly
the valid time is never in the pool (it would be the answer). ``members`` states are drawn
from the pool without replacement (with replacement when the pool is smaller) by a random
stream keyed by ``(seed, valid time)``, so a valid time gets the same members whatever else
is evaluated with it. The ensemble's ``simdiff_climatology`` attribute records the pools used.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from simdiff.base.errors import DataError
from simdiff.data.time_features import TIME_FEATURES, is_datetime, time_features

INIT_DIM = "init_time"
LEAD_DIM = "lead_time"
MEMBER_DIM = "realization"
#: Default half-width of the climatology's day-of-year window, days.
WINDOW_DAYS = 15.0
_DAYS_PER_YEAR = 365.2425


def valid_times(init_time: xr.DataArray, lead_time: xr.DataArray) -> xr.DataArray:
    """``init_time + lead_time`` on the grid of both: (init_time), (lead_time) -> (init_time, lead_time)."""
    init = xr.DataArray(np.asarray(init_time.values), dims=INIT_DIM, coords={INIT_DIM: init_time.values})
    lead = xr.DataArray(np.asarray(lead_time.values), dims=LEAD_DIM, coords={LEAD_DIM: lead_time.values})
    return (init + lead).rename("valid_time")


def _positions(samples: np.ndarray, wanted: np.ndarray, name: str) -> np.ndarray:
    """Position of each ``wanted`` time among ``samples`` (-1 where absent); any shape."""
    flat = wanted.ravel()
    if np.issubdtype(samples.dtype, np.datetime64) or samples.dtype == object:
        try:
            pos = pd.Index(samples).get_indexer(flat)
        except (TypeError, ValueError) as err:
            raise DataError(
                f"{name}: valid times of dtype {wanted.dtype} cannot be looked up in the truth's "
                f"sample coord of dtype {samples.dtype} ({err}); give lead_time as timedelta64 for "
                "datetime stores"
            ) from err
        return pos.reshape(wanted.shape)
    if not np.issubdtype(np.asarray(flat).dtype, np.number):
        raise DataError(
            f"{name}: valid times are {wanted.dtype} but the truth's sample coord is numeric "
            f"({samples.dtype}); give init_time and lead_time in the sample coord's units"
        )
    s = np.asarray(samples, dtype=float)
    order = np.argsort(s)
    s_sorted = s[order]
    spacing = float(np.median(np.diff(s_sorted))) if s.size > 1 else 1.0
    tol = 1e-6 * (abs(spacing) or 1.0)
    i = np.clip(np.searchsorted(s_sorted, flat), 1, max(s.size - 1, 1))
    left, right = s_sorted[i - 1], s_sorted[np.minimum(i, s.size - 1)]
    nearest = np.where(np.abs(flat - left) <= np.abs(flat - right), i - 1, np.minimum(i, s.size - 1))
    hit = np.abs(s_sorted[nearest] - flat) <= tol
    return np.where(hit, order[nearest], -1).reshape(wanted.shape)


def _states(
    truth: xr.Dataset, positions: xr.DataArray, sample_dim: str, found: xr.DataArray | None
) -> xr.Dataset:
    """``truth`` at integer ``positions`` (any dims), the sample coord dropped; NaN where not ``found``."""
    if sample_dim not in truth.dims:
        raise DataError(f"baselines: the truth has no sample dim {sample_dim!r} (dims {dict(truth.sizes)})")
    out = truth.isel({sample_dim: positions.clip(min=0)}).drop_vars(sample_dim, errors="ignore")
    return out if found is None else out.where(found)


def truth_at(
    truth: xr.Dataset,
    init_time: xr.DataArray,
    lead_time: xr.DataArray,
    sample_dim: str = "time",
    valid_time: xr.DataArray | None = None,
) -> xr.Dataset:
    """The verifying states: ``truth`` at ``init_time + lead_time``.

    Args:
        truth: physical states ``(sample_dim, [level], y, x)``.
        init_time: ``(init_time)`` values of ``truth[sample_dim]``.
        lead_time: ``(lead_time)`` timedelta64 (datetime stores) or numbers in the sample coord's units.
        sample_dim: the truth's sample dim (``store.layout.sample_dim``).
        valid_time: ``(init_time, lead_time)`` valid times to look up instead of
            ``init_time + lead_time`` (a forecast's own ``valid_time`` coordinate: on a monthly or
            calendar-irregular record the k-th next sample is not ``init + k * step``).

    Returns:
        ``(init_time, lead_time, [level], y, x)`` with coords ``valid_time`` and ``verified``
        (bool: the valid time is a sample of ``truth``); NaN for the pairs that are not (see the
        module docstring).
    """
    if valid_time is not None:  # no arithmetic: cftime values do not add numpy timedeltas
        valid = xr.DataArray(np.asarray(valid_time.transpose(INIT_DIM, LEAD_DIM).values),
                             dims=(INIT_DIM, LEAD_DIM), coords={INIT_DIM: init_time.values,
                                                                LEAD_DIM: lead_time.values},
                             name="valid_time")
    else:
        valid = valid_times(init_time, lead_time)
    pos = _positions(np.asarray(truth[sample_dim].values), np.asarray(valid.values), "truth_at")
    positions = xr.DataArray(pos, dims=valid.dims, coords=valid.coords)
    out = _states(truth, positions, sample_dim, positions >= 0)
    return out.assign_coords(valid_time=valid, verified=positions >= 0)


def persistence(
    truth: xr.Dataset, init_time: xr.DataArray, lead_time: xr.DataArray, sample_dim: str = "time"
) -> xr.Dataset:
    """The state at the initial time, for every lead: a deterministic forecast.

    Returns:
        ``(init_time, lead_time, [level], y, x)``; NaN where an init time is not a sample of
        ``truth``.
    """
    pos = _positions(np.asarray(truth[sample_dim].values), np.asarray(init_time.values), "persistence")
    positions = xr.DataArray(pos, dims=INIT_DIM, coords={INIT_DIM: np.asarray(init_time.values)})
    out = _states(truth, positions, sample_dim, positions >= 0)
    lead = xr.DataArray(np.asarray(lead_time.values), dims=LEAD_DIM, coords={LEAD_DIM: lead_time.values})
    return out.broadcast_like(lead).transpose(INIT_DIM, LEAD_DIM, ...)


def _phases(
    times: np.ndarray, features: xr.DataArray | None, dim: str
) -> tuple[np.ndarray, np.ndarray] | None:
    """(hour of day, day of year as a fraction of the year in [0, 1)) per time; None without a season."""
    if features is not None:
        f = features.transpose(dim, "time_feature")
        missing = set(TIME_FEATURES) - {str(n) for n in f["time_feature"].values}
        if missing:
            raise DataError(
                f"climatology_ensemble: time_features lack {sorted(missing)}; pass the store's "
                f"time_features array (features {list(TIME_FEATURES)})"
            )
        sel = {n: np.asarray(f.sel(time_feature=n).values, dtype=float) for n in TIME_FEATURES}
    else:
        coord = xr.DataArray(times, dims=dim)
        if not is_datetime(coord):
            return None
        tf = time_features(coord)
        sel = {n: np.asarray(tf.sel(time_feature=n).values, dtype=float) for n in TIME_FEATURES}
    hour = np.mod(np.arctan2(sel["sin_hour"], sel["cos_hour"]) * 24.0 / (2 * np.pi), 24.0)
    year = np.mod(np.arctan2(sel["sin_doy"], sel["cos_doy"]) / (2 * np.pi), 1.0)
    return hour, year


def _circular(a: np.ndarray, b: float, period: float) -> np.ndarray:
    d = np.abs(a - b) % period
    return np.minimum(d, period - d)


def _seed_key(value: object) -> int:
    """A non-negative integer that identifies one valid time (ns for datetimes, float bits else)."""
    if isinstance(value, np.datetime64):
        return int(value.astype("datetime64[ns]").astype(np.int64)) & (2**63 - 1)
    if hasattr(value, "calendar"):  # cftime
        return abs(hash(value.isoformat()))
    return int(np.float64(value).view(np.int64)) & (2**63 - 1)


#: The climatology's pools, in the order it falls back through them (recorded per valid time).
POOLS = ("hour_and_season", "season", "any")


def _pool(
    n: int, exclude: int, members: int, phase: tuple[np.ndarray, np.ndarray] | None,
    hour: float | None, year: float | None, window_days: float,
) -> tuple[np.ndarray, str]:
    """The states a valid time draws from and the name of the pool (see :data:`POOLS`)."""
    every = np.ones(n, dtype=bool)
    if exclude >= 0:
        every[exclude] = False
    if phase is None or hour is None or year is None:
        return every, "any"
    days = _circular(phase[1], year, 1.0) * _DAYS_PER_YEAR
    same_hour = every & (_circular(phase[0], hour, 24.0) < 0.5)
    if same_hour.sum() >= members:
        in_window = same_hour & (days <= window_days)
        if in_window.sum() >= members:
            return in_window, "hour_and_season"
        nearest = np.argsort(np.where(same_hour, days, np.inf), kind="stable")[:members]
        pool = np.zeros(n, dtype=bool)
        pool[nearest] = True  # the window widened to the `members` nearest days of this hour
        return pool, "hour_and_season"
    in_window = every & (days <= window_days)
    if in_window.sum() >= members:
        return in_window, "season"
    return every, "any"


def climatology_ensemble(
    train_truth: xr.Dataset,
    valid_times: xr.DataArray,
    members: int,
    *,
    time_features: xr.DataArray | None = None,
    seed: int = 0,
    sample_dim: str = "time",
    window_days: float = WINDOW_DAYS,
) -> xr.Dataset:
    """Training states of the valid time's season and hour, as an ensemble.

    The pool of each valid time falls back in the order of :data:`POOLS`: training states at the
    same hour of day (within half an hour) and within ``window_days`` of its day of year (widened
    to the ``members`` nearest days of that hour when the window holds fewer); when the record has
    fewer than ``members`` states at that hour (a day of radar, say), every state within the
    day-of-year window whatever its hour; then any training state. A record without a season
    (numeric time) uses any training state. When a pool holds fewer than ``members`` states, the
    members are drawn with replacement. What was used is in the result's ``simdiff_climatology``
    attribute: the valid times per pool, the draws with replacement, the smallest pool, and
    ``weak`` (some pool held fewer than twice the members, so the baseline is close to a fixed
    set of states and its CRPS is a poor yardstick) and ``seasonal`` (whether the record has a
    season to match).

    Args:
        train_truth: physical training states ``(sample_dim, [level], y, x)``.
        valid_times: ``(init_time, lead_time)`` valid times (:func:`valid_times`).
        members: states per valid time.
        time_features: optional ``(sample_dim, time_feature)`` sin/cos features of the training
            states (the store's ``time_features``); used instead of the datetime coord.
        seed: the random stream's seed (the stream is keyed by ``(seed, valid time)``).
        sample_dim: the training states' sample dim.
        window_days: half-width of the day-of-year window.

    Returns:
        ``(realization, init_time, lead_time, [level], y, x)``, realization ``0..members-1``.

    Raises:
        DataError: ``members < 1`` or no training state at all.
    """
    times = np.asarray(train_truth[sample_dim].values)
    if members < 1 or times.size < 1:
        raise DataError(
            f"climatology_ensemble: {members} members asked from {times.size} training states; "
            "it needs at least one member and one training state"
        )
    vt = np.asarray(valid_times.values)
    train_phase = _phases(times, time_features, sample_dim)
    valid_phase = _phases(vt.ravel(), None, "valid") if train_phase is not None else None
    if train_phase is not None and valid_phase is None:
        raise DataError(
            f"climatology_ensemble: the training states have a season but the valid times are "
            f"{vt.dtype}; give init_time as datetimes and lead_time as timedelta64"
        )
    flat = vt.ravel()
    same_time = _positions(times, flat, "climatology_ensemble")
    picks = np.empty((members, flat.size), dtype=np.int64)
    used = dict.fromkeys(POOLS, 0)
    replaced, smallest = 0, times.size
    for i, value in enumerate(flat):
        hour, year = (valid_phase[0][i], valid_phase[1][i]) if valid_phase is not None else (None, None)
        pool, name = _pool(times.size, int(same_time[i]), members, train_phase, hour, year, window_days)
        states = np.flatnonzero(pool)
        if not states.size:  # the only training state is the valid time itself
            states = np.arange(times.size)
        used[name] += 1
        smallest = min(smallest, int(states.size))
        replace = states.size < members
        replaced += int(replace)
        rng = np.random.default_rng([seed, _seed_key(value)])
        picks[:, i] = rng.choice(states, size=members, replace=replace)
    positions = xr.DataArray(
        picks.reshape(members, *vt.shape),
        dims=(MEMBER_DIM, *valid_times.dims),
        coords={MEMBER_DIM: np.arange(members), **{d: valid_times[d] for d in valid_times.dims}},
    )
    out = _states(train_truth, positions, sample_dim, None)
    out.attrs = {"simdiff_climatology": {
        "pools": used, "with_replacement": replaced, "smallest_pool": smallest,
        "training_states": int(times.size), "members": int(members),
        "weak": bool(smallest < 2 * members), "seasonal": train_phase is not None,
    }}
    return out.assign_coords(valid_time=(valid_times.dims, vt))


def climatology_needs_care(info: dict) -> bool:
    """True when a climatology (its ``simdiff_climatology`` record) is a weak yardstick: a pool
    under twice the members, or, on a record with a season, valid times that fell back from their
    hour and season (a record without one, such as QG's numeric time, draws from every training
    state by design: that is its climatology, not a fallback)."""
    fell_back = info.get("seasonal", True) and (info["pools"].get("season") or info["pools"].get("any"))
    return bool(info["weak"] or fell_back)
