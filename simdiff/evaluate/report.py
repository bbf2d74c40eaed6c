"""The forecast report: ensemble scores against the truth and the baselines, per variable and lead.

``evaluate_forecast`` returns (and ``write_report`` writes as ``metrics.json``)::

    {"members": M, "cases": n_init, "lead_times": [LEAD, ...],
     "baselines": {"climatology": null | {"pools": {POOL: n}, "with_replacement", "smallest_pool",
                                          "training_states", "members", "weak", "seasonal"},
                   "persistence": bool, "ae_ceiling": bool},
     "variables": {KEY: {
        "crps", "crps_fair", "rmse", "spread", "spread_skill", "crps_climatology",
        "crps_persistence", "crps_ae_ceiling", "rank_histogram": [M + 1 floats],
        "spectrum_ratio", "by_lead": {LEAD: {the same keys}}}},
     "domain": {VAR: (for variables with a bounded domain) simdiff.evaluate.domain.domain_checks},
     "diurnal": {VAR: (sub-daily leads, dated inits) simdiff.evaluate.diurnal.diurnal_cycle},
     "spectra": {KEY: {"wavenumber", "truth", "members", ["ae_ceiling"], "method"}},
     "spectrum_method": "..."}

``KEY`` is the variable, or ``VAR@LEVEL`` per level of a ``level`` dim (as in
reconstruction.json); ``LEAD`` is the lead time as text ("6h", "1d", or the number). Every
score is a weighted mean over the valid cells (truth not NaN; masked cells never count) of
every case, with the cell weights (cos lat) in the average; ``by_lead`` keeps the lead, the top
level pools all leads. A score with nothing to score (no baseline given, no valid pair) is
``null``. With ``w`` the weights and ``<.>`` that weighted mean:

* ``crps``, ``crps_fair``: ``<CRPS>`` of the members, ecdf and fair (Ferro 2014) estimators
  (:mod:`simdiff.metrics.crps`).
* ``rmse = sqrt(<(mean_m x_m - y)^2>)``, ``spread = sqrt(<var_m x_m>)`` (ddof = 1), and
  ``spread_skill = sqrt((M + 1)/M) spread / rmse``: the finite-ensemble correction of Fortin
  et al. (2014) (:mod:`simdiff.metrics.calibration`), so a calibrated ensemble scores 1 for any M.
* ``crps_climatology``: the CRPS of :func:`~simdiff.evaluate.baselines.climatology_ensemble`
  (M training states of the valid time's season; needs ``train``); ``crps_persistence`` and
  ``crps_ae_ceiling``: the CRPS of a one-member forecast, i.e. ``<|x - y|>``, of persistence
  and of the autoencoder's decode(encode(truth)) at the valid time (the best a latent model
  can do).
* ``rank_histogram``: frequency of the truth's rank among the members (Hamill 2001; ties
  share their bins), weighted by the cell weights, so on a lat/lon grid each bin counts area.
* ``spectrum_ratio``: mean of ``E_members(k) / E_truth(k)`` over the lower half of the
  resolved wavenumbers (k > 0), as ``spectrum_ratio_low`` of the reconstruction report; the
  spectra follow the grid (:func:`simdiff.metrics.spectra.field_spectrum`) and are averaged
  over members and cases. The small scales are left out on purpose: there the ratio measures
  the autoencoder's smoothing, which ``crps_ae_ceiling`` and the spectra figure already show.

Out of core: on dask-backed inputs every score is built lazily and the whole report is
computed by one ``dask.compute``, which streams the forecast chunk by chunk (chunk the member
dim whole; the spectra need each field's periodic dims whole).

``evaluate_augmented`` scores synthetic samples for the augmentation use: per KEY pooled
quantiles, Wasserstein-1 to the test set (and the train-vs-test W1 as the floor a perfect
generator reaches), the spectrum ratio, and the nearest-neighbour memorisation summary. It
loads each variable's values (not out of core).
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Collection, Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import dask
import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from simdiff.base.atomic import atomic_file, scratch_dir, write_json
from simdiff.base.errors import DataError
from simdiff.data.field import SPATIAL_DEPTH_DIMS
from simdiff.evaluate.baselines import (
    INIT_DIM,
    LEAD_DIM,
    WINDOW_DAYS,
    climatology_ensemble,
    persistence,
    truth_at,
)
from simdiff.evaluate.diurnal import MORNING, applies, diurnal_cycle
from simdiff.evaluate.domain import domain_checks
from simdiff.evaluate.html import SCORES, index_html, write_csv
from simdiff.evaluate.plots import (
    certificate_figure,
    diurnal_figure,
    ensemble_figure,
    format_level,
    lead_time_figure,
    rank_histogram_figure,
    save_figure,
    spectra_figure,
    tails_figure,
)
from simdiff.evaluate.reconstruction import _same_coords
from simdiff.metrics.crps import crps
from simdiff.metrics.distribution import beyond_range, quantile_bands, wasserstein1
from simdiff.metrics.memorisation import memorisation
from simdiff.metrics.spectra import WAVENUMBER, field_spectrum, spectrum_ratio_low
from simdiff.metrics.weighting import weighted_sums

RANK = "rank"
JSON_NAME = "metrics.json"
CSV_NAME = "metrics.csv"
HTML_NAME = "index.html"


def lead_label(value: object) -> str:
    """A lead time as text: timedelta64 -> "6h" / "2d" / "90s", numbers -> "5" or "0.5"."""
    if isinstance(value, np.timedelta64):
        seconds = value.astype("timedelta64[ns]").astype(np.int64) / 1e9
        for unit, size in (("d", 86400.0), ("h", 3600.0), ("min", 60.0)):
            if seconds % size == 0:
                return f"{int(seconds // size)}{unit}"
        return f"{seconds:g}s"
    return format_level(value)


def _weighted_rank_counts(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Per point, the weight ``w`` spread over the truth's rank bins: x (..., M), y, w (...) -> (..., M + 1).

    A truth tied with ``t`` members shares ``w`` equally among ``t + 1`` bins (Hamill 2001); a point
    with a NaN member, a NaN truth or a NaN weight contributes nothing.
    """
    m = x.shape[-1]
    ok = ~np.isnan(y) & ~np.isnan(x).any(axis=-1) & ~np.isnan(w)
    below = (x < y[..., None]).sum(axis=-1)
    ties = (x == y[..., None]).sum(axis=-1)
    k = np.arange(m + 1)
    inside = (k >= below[..., None]) & (k <= (below + ties)[..., None])
    share = np.where(ok, w, 0.0) / (ties + 1)
    return inside * share[..., None]


def _rank_counts(forecast: xr.DataArray, truth: xr.DataArray, weights: xr.DataArray, member_dim: str,
                 reduce: Sequence[Hashable]) -> xr.DataArray:
    """Weighted rank counts summed over ``reduce``: -> (kept dims, rank); lazy on dask."""
    w = weights.astype(np.float64).where(truth.notnull())  # NaN weight drops the point
    counts = xr.apply_ufunc(
        _weighted_rank_counts,
        forecast,
        truth,
        w,
        input_core_dims=[[member_dim], [], []],
        output_core_dims=[[RANK]],
        dask="parallelized",
        output_dtypes=[np.float64],
        dask_gufunc_kwargs={"output_sizes": {RANK: forecast.sizes[member_dim] + 1}, "allow_rechunk": True},
    )
    return counts.sum(list(reduce))


def _cell_weights(field: xr.DataArray, weights: xr.DataArray | None) -> xr.DataArray:
    """Weights over ``field``'s ([level], Y, X), float64, chunked like ``field``.

    Built blockwise from ``ones_like(field)`` so that on dask every task makes its own weight
    block: one shared in-memory weight array, a root of every task, makes dask's scheduler hold
    far more forecast chunks at once (measured: 3x the peak RSS in benchmarks/bench_evaluate_oc.py).
    """
    ones = xr.ones_like(field, dtype=np.float64)
    if weights is None:
        return ones
    w = xr.align(field, weights.astype(np.float64), join="override")[1]
    return ones * (w.values if w.chunks is None else w)


def _check(forecast: xr.Dataset, truth: xr.Dataset, member_dim: str, sample_dim: str) -> list[str]:
    """Names scored; raises DataError on a forecast that does not fit the truth."""
    for dim in (member_dim, INIT_DIM, LEAD_DIM):
        if dim not in forecast.dims:
            raise DataError(
                f"evaluate: the forecast has no {dim!r} dim (dims {dict(forecast.sizes)}); expected "
                f"({member_dim}, {INIT_DIM}, {LEAD_DIM}, [level], y, x) as `simdiff generate` writes"
            )
    m = forecast.sizes[member_dim]
    if m < 2:
        raise DataError(f"evaluate: the forecast has {m} member(s) along {member_dim!r}; need >= 2")
    names = [str(v) for v in forecast.data_vars]
    missing = sorted(set(names) - {str(v) for v in truth.data_vars})
    if not names or missing:
        raise DataError(
            f"evaluate: forecast variables {missing or names} are not in the truth (variables "
            f"{sorted(map(str, truth.data_vars))}); evaluate against the store the model was trained on"
        )
    for name in names:
        spatial = truth[name].dims[1:]
        if truth[name].dims[0] != sample_dim:
            raise DataError(f"evaluate: truth variable {name!r} has dims {truth[name].dims}; expected "
                            f"({sample_dim}, [level], y, x)")
        if set(forecast[name].dims) != {member_dim, INIT_DIM, LEAD_DIM, *spatial}:
            raise DataError(
                f"evaluate: forecast variable {name!r} has dims {forecast[name].dims}; expected "
                f"{(member_dim, INIT_DIM, LEAD_DIM, *spatial)} (the truth's grid)"
            )
        for dim in spatial:
            if forecast.sizes[dim] != truth.sizes[dim] or not _same_coords(truth, forecast, dim):
                raise DataError(
                    f"evaluate: forecast variable {name!r} has other {dim!r} coordinates than the "
                    "truth; generate on the store's grid"
                )
    return names


POINT_SCORES = ("crps", "crps_fair", "crps_climatology", "crps_persistence", "crps_ae_ceiling")


def _variable(
    fc: xr.DataArray, obs: xr.DataArray, w: xr.DataArray, baselines: Mapping[str, xr.DataArray | None],
    member_dim: str, level: tuple[str, ...], periodic: Collection[str], spectra: bool,
) -> dict[str, xr.Dataset]:
    """Lazy additive sums of one variable over its cases and cells, per ``(lead_time, [level])``:
    ``{"sums": numerators and weights, "spectra": weighted spectra}``. Sums of blocks of cases
    add up to the sums of all of them (:func:`_finish` turns them into scores)."""
    keep = (LEAD_DIM, *level)
    reduce = [d for d in obs.dims if d not in keep]
    point = {"crps": crps(fc, obs, member_dim=member_dim),
             "crps_fair": crps(fc, obs, fair=True, member_dim=member_dim)}
    if baselines["climatology"] is not None:
        point["crps_climatology"] = crps(baselines["climatology"], obs, member_dim=member_dim)
    for name in ("persistence", "ae_ceiling"):
        if baselines[name] is not None:
            point[f"crps_{name}"] = abs(baselines[name] - obs)
    sums: dict[str, xr.DataArray] = {}
    for k, v in point.items():
        sums[f"{k}:num"], sums[f"{k}:den"] = weighted_sums(v, w, reduce)
    variance = fc.var(member_dim, ddof=1)
    error2 = (fc.mean(member_dim) - obs) ** 2
    valid = error2.notnull() & variance.notnull()
    sums["spread:num"], sums["spread:den"] = weighted_sums(variance.where(valid), w, reduce)
    sums["rmse:num"], _ = weighted_sums(error2.where(valid), w, reduce)
    sums["rank_counts"] = _rank_counts(fc, obs, w, member_dim, reduce)
    out = {"sums": xr.Dataset(sums)}
    if spectra:
        parts = {"truth": field_spectrum(obs, weights=w, periodic=periodic, keep=keep),
                 "members": field_spectrum(fc, weights=w, periodic=periodic, keep=keep)}
        if baselines["ae_ceiling"] is not None:
            parts["ae_ceiling"] = field_spectrum(baselines["ae_ceiling"], weights=w, periodic=periodic,
                                                 keep=keep)
        # a block's spectra are means over its cases: they combine with the weight of its valid truth
        _, weight = weighted_sums(obs, w, reduce)
        spec = xr.Dataset({k: v * weight for k, v in parts.items()})
        spec["weight"] = weight
        spec.attrs["method"] = parts["truth"].attrs["method"]
        out["spectra"] = spec
    return out


def _compute(lazy: dict[str, dict[str, xr.Dataset]]) -> dict[str, dict[str, xr.Dataset]]:
    """Compute nested Datasets in one ``dask.compute`` (one pass over the dask inputs).

    The DataArrays are handed to dask one by one: ``dask.compute(dataset)`` of Datasets whose
    variables share graph layers fails with "Missing dependency" in dask 2026.8 / xarray 2026.9.
    """
    flat = [(n, part, v) for n in lazy for part in lazy[n] for v in lazy[n][part].data_vars]
    values = dask.compute(*(lazy[n][part][v] for n, part, v in flat))
    out: dict[str, dict[str, xr.Dataset]] = {n: {} for n in lazy}
    for (n, part, v), value in zip(flat, values, strict=True):
        out[n].setdefault(part, xr.Dataset(attrs=lazy[n][part].attrs))[v] = value.astype(np.float64)
    return out


def _add(total: dict[str, dict[str, xr.Dataset]] | None,
         block: dict[str, dict[str, xr.Dataset]]) -> dict[str, dict[str, xr.Dataset]]:
    """Block sums added to the running totals (in block order: the same bits every run)."""
    if total is None:
        return block
    return {n: {part: (total[n][part] + sums).assign_attrs(sums.attrs) for part, sums in block[n].items()}
            for n in block}


def _finish(sums: xr.Dataset, members: int) -> xr.Dataset:
    """Scores from sums (any kept dims): weighted means, RMSE, spread, spread-skill, rank counts."""

    def ratio(num: xr.DataArray, den: xr.DataArray) -> xr.DataArray:
        return (num / den).where(den > 0)

    scores = {k: ratio(sums[f"{k}:num"], sums[f"{k}:den"]) for k in POINT_SCORES if f"{k}:num" in sums}
    scores["rmse"] = np.sqrt(ratio(sums["rmse:num"], sums["spread:den"]))
    scores["spread"] = np.sqrt(ratio(sums["spread:num"], sums["spread:den"]))
    scores["spread_skill"] = scores["spread"] / scores["rmse"] * np.sqrt((members + 1) / members)
    scores["rank_counts"] = sums["rank_counts"]
    return xr.Dataset(scores)


def _spectra_of(spec: xr.Dataset) -> xr.Dataset:
    """Weighted spectrum sums -> mean spectra and the spectrum ratio (any kept dims)."""
    w = spec["weight"]
    out = xr.Dataset({k: (spec[k] / w).where(w > 0) for k in spec.data_vars if k != "weight"})
    out["spectrum_ratio"] = spectrum_ratio_low(out["truth"], out["members"])
    out.attrs["method"] = spec.attrs.get("method")
    return out


def _value(x: xr.DataArray) -> float | None:
    v = float(x)
    return v if math.isfinite(v) else None


def _entry(s: xr.Dataset) -> dict[str, Any]:
    """JSON entry of one KEY (and lead) from computed scalar scores."""
    e: dict[str, Any] = {k: (_value(s[k]) if k in s else None) for k in SCORES}
    counts = np.asarray(s["rank_counts"].values, dtype=float)
    total = counts.sum()
    e["rank_histogram"] = (counts / total).tolist() if total > 0 else None
    return e


def evaluate_forecast(
    forecast: xr.Dataset,
    truth: xr.Dataset,
    *,
    train: xr.Dataset | None = None,
    ae_ceiling: xr.Dataset | None = None,
    weights: xr.DataArray | None = None,
    member_dim: str = "realization",
    periodic: Collection[str] = (),
    spectra: bool = True,
    sample_dim: str = "time",
    time_features: xr.DataArray | None = None,
    seed: int = 0,
    persistence_baseline: bool = True,
    window_days: float = WINDOW_DAYS,
    domains: Mapping[str, tuple[float | None, float | None]] | None = None,
    diurnal_window: Sequence[float] | None = MORNING,
    block_inits: int | None = 8,
) -> dict[str, Any]:
    """Score an ensemble forecast against the truth and the baselines (schema: module docstring).

    Args:
        forecast: ``(realization, init_time, lead_time, [level], Y, X)`` per variable, physical
            units, NaN at masked cells (as ``simdiff generate`` writes).
        truth: ``(sample_dim, [level], Y, X)`` physical states covering the valid times
            (``denormalise(TrainingStore(path).dataset())``).
        train: the training states for the climatology baseline (e.g. ``truth`` at the train
            split); None leaves ``crps_climatology`` null.
        ae_ceiling: decode(encode(truth)), same dims as ``truth``; None leaves
            ``crps_ae_ceiling`` null.
        weights: ``([level], Y, X)`` cell weights (``Geometry.weights``); default equal.
        member_dim: the ensemble dim.
        periodic: the periodic dims (``Geometry.periodic``): they pick the spectrum method.
        spectra: compute the spectra and ``spectrum_ratio`` (the most expensive part).
        sample_dim: the truth's sample dim (``store.layout.sample_dim``).
        time_features: the training states' ``(sample_dim, time_feature)`` features for the
            climatology's season (default: from the datetime coord).
        seed: the climatology's seed.
        persistence_baseline: score persistence (False leaves ``crps_persistence`` null).
        window_days: the climatology's day-of-year half-width
            (:func:`~simdiff.evaluate.baselines.climatology_ensemble`).
        domains: variable -> ``(lo, hi)`` physical domain (None: open side); each variable with
            a bound gets a ``domain`` entry (:func:`simdiff.evaluate.domain.domain_checks`).
        diurnal_window: the morning (local hours) of the diurnal-cycle check, made for sub-daily
            leads from dated inits (:mod:`simdiff.evaluate.diurnal`); None: no check.
        block_inits: inits scored per dask pass; the passes' additive sums (weighted score sums
            and weights, squared errors, variances, rank counts, weighted spectra) are added in
            order, so memory is bounded by a block whatever the number of cases (None: one pass).

    Returns:
        The metrics dict; lazy inputs are computed in one ``dask.compute``.

    Raises:
        DataError: a forecast whose dims, variables or grid do not fit the truth, fewer than two
            members, or no (init, lead) pair whose valid time is in the truth.
    """
    names = _check(forecast, truth, member_dim, sample_dim)
    init, lead = forecast[INIT_DIM], forecast[LEAD_DIM]
    vt = forecast["valid_time"] if "valid_time" in forecast.coords else None
    obs_all = truth_at(truth[names], init, lead, sample_dim, valid_time=vt)
    if not bool(obs_all["verified"].any()):
        wanted = np.asarray(obs_all["valid_time"].values).ravel()
        have = np.asarray(truth[sample_dim].values)
        raise DataError(
            f"evaluate: none of the forecast's {wanted.size} valid times "
            f"({'valid_time coord' if vt is not None else 'init_time + lead_time'}: {wanted[0]} .. "
            f"{wanted[-1]}, dtype {wanted.dtype}) is a sample of the truth's {sample_dim} ({have.size} "
            f"samples, {have[0]} .. {have[-1]}, dtype {have.dtype}); evaluate the forecast against "
            "the store it was initialised from, with its lead_time decoded in that store's units"
        )
    pers = persistence(truth[names], init, lead, sample_dim) if persistence_baseline else None
    members = forecast.sizes[member_dim]
    clim = None
    if train is not None:
        clim = climatology_ensemble(train[names], obs_all["valid_time"], members, time_features=time_features,
                                    seed=seed, sample_dim=sample_dim, window_days=window_days)
    baselines_info: dict[str, Any] = {
        "climatology": dict(clim.attrs["simdiff_climatology"]) if clim is not None else None,
        "persistence": persistence_baseline,
        "ae_ceiling": ae_ceiling is not None,
    }
    ae = None if ae_ceiling is None else truth_at(ae_ceiling[names], init, lead, sample_dim, valid_time=vt)

    inputs: dict[str, tuple[xr.DataArray, xr.DataArray, xr.DataArray, dict[str, xr.DataArray | None]]] = {}
    levels: dict[str, tuple[str, ...]] = {}
    domain: dict[str, Any] = {}
    for name in names:
        obs = obs_all[name].drop_vars(["valid_time", "verified"])
        spatial = obs.dims[2:]
        depth = spatial[0] if len(spatial) == 3 else None
        level = (depth,) if depth is not None and depth not in SPATIAL_DEPTH_DIMS else ()
        fc = forecast[name].transpose(member_dim, INIT_DIM, LEAD_DIM, *spatial)
        fc = xr.align(obs, fc, join="override", exclude=[member_dim])[1]
        w = _cell_weights(obs.isel({INIT_DIM: 0, LEAD_DIM: 0}, drop=True), weights)
        base = {"climatology": None if clim is None else clim[name].drop_vars("valid_time"),
                "persistence": None if pers is None else pers[name],
                "ae_ceiling": None if ae is None else ae[name].drop_vars(["valid_time", "verified"])}
        for k, v in base.items():
            if v is not None:
                base[k] = xr.align(obs, v, join="override", exclude=[member_dim])[1]
        inputs[name] = (fc, obs, w, base)
        levels[name] = level
        lo, hi = (domains or {}).get(name, (None, None))
        if lo is not None or hi is not None:
            domain[name] = domain_checks(fc, obs, w, lo, hi, member_dim=member_dim)
    # blocks of inits, each summed in one dask pass, added in order: memory bounded by a block
    n_init = forecast.sizes[INIT_DIM]
    step = n_init if not block_inits else max(int(block_inits), 1)
    totals: dict[str, dict[str, xr.Dataset]] | None = None
    for start in range(0, n_init, step):
        cut = {INIT_DIM: slice(start, start + step)}
        lazy = {}
        for name, (fc, obs, w, base) in inputs.items():
            part = {k: None if v is None else v.isel(cut) for k, v in base.items()}
            lazy[name] = _variable(fc.isel(cut), obs.isel(cut), w, part, member_dim, levels[name], periodic,
                                   spectra)
        totals = _add(totals, _compute(lazy))
    assert totals is not None

    leads = [lead_label(v) for v in lead.values]
    variables: dict[str, Any] = {}
    spectra_out: dict[str, Any] = {}
    method = None
    for name in names:
        sums = totals[name]["sums"]
        by_lead, pooled = _finish(sums, members), _finish(sums.sum(LEAD_DIM), members)
        spec_lead = spec_all = None
        if "spectra" in totals[name]:
            spec_lead = _spectra_of(totals[name]["spectra"])
            spec_all = _spectra_of(totals[name]["spectra"].sum(LEAD_DIM).assign_attrs(
                totals[name]["spectra"].attrs))
            by_lead["spectrum_ratio"] = spec_lead["spectrum_ratio"]
            pooled["spectrum_ratio"] = spec_all["spectrum_ratio"]
        keys = [(name, {})]
        if levels[name]:
            depth = levels[name][0]
            coord = pooled[depth].values if depth in pooled.coords else range(pooled.sizes[depth])
            keys = [(f"{name}@{format_level(c)}", {depth: i}) for i, c in enumerate(coord)]
        for key, where in keys:
            entry = _entry(pooled.isel(where))
            entry["by_lead"] = {
                label: _entry(by_lead.isel({**where, LEAD_DIM: j})) for j, label in enumerate(leads)
            }
            variables[key] = entry
            if spec_all is not None:
                spec = spec_all.drop_vars("spectrum_ratio").isel(where)
                method = spec.attrs.get("method")
                spectra_out[key] = {"wavenumber": np.asarray(spec[WAVENUMBER].values, dtype=float).tolist(),
                                    **{k: [_json_float(v) for v in spec[k].values] for k in spec.data_vars}}
    metrics: dict[str, Any] = {"members": int(members), "cases": int(forecast.sizes[INIT_DIM]),
                               "lead_times": leads, "baselines": baselines_info, "variables": variables}
    if domain:
        metrics["domain"] = domain
    if diurnal_window is not None and applies(init, lead):
        initial = persistence(truth[names], init, lead[:1], sample_dim).isel({LEAD_DIM: 0}, drop=True)
        metrics["diurnal"] = {
            name: diurnal_cycle(
                forecast[name], obs_all[name].drop_vars(["valid_time", "verified"]), initial[name],
                obs_all["valid_time"], _cell_weights(initial[name].isel({INIT_DIM: 0}, drop=True), weights),
                member_dim=member_dim, window=diurnal_window,
                training=None if train is None else train[name], sample_dim=sample_dim)
            for name in names
        }
    if spectra:
        metrics["spectra"] = spectra_out
        metrics["spectrum_method"] = method
    return metrics


def _json_float(v: object) -> float | None:
    f = float(v)  # type: ignore[arg-type]
    return f if math.isfinite(f) else None



def _level_keys(ds: xr.Dataset, name: str, sample_dim: str) -> list[tuple[str, dict[str, int]]]:
    """(KEY, isel) for a variable: ``VAR``, or ``VAR@LEVEL`` per level of a non-spatial depth dim."""
    dims = [d for d in ds[name].dims if d != sample_dim]
    if len(dims) == 3 and dims[0] not in SPATIAL_DEPTH_DIMS:
        depth = dims[0]
        coord = ds[depth].values if depth in ds.coords else np.arange(ds.sizes[depth])
        return [(f"{name}@{format_level(c)}", {depth: i}) for i, c in enumerate(coord)]
    return [(name, {})]


def _w1(a: xr.DataArray, b: xr.DataArray) -> float:
    return float(wasserstein1(xr.Dataset({"v": a}), xr.Dataset({"v": b}))["v"])


def _tails(synthetic: xr.Dataset, test: xr.Dataset) -> dict[str, Any]:
    """The quantile entry of a KEY: both sides with their bootstrap bands, and the quantiles
    where the synthetic value falls outside the held-out data's band."""
    q = np.asarray(test["quantile"].values)
    outside = (synthetic["value"] < test["lower"]) | (synthetic["value"] > test["upper"])
    return {
        "q": q.tolist(),
        "synthetic": synthetic["value"].values.tolist(),
        "synthetic_lower": synthetic["lower"].values.tolist(),
        "synthetic_upper": synthetic["upper"].values.tolist(),
        "test": test["value"].values.tolist(),
        "test_lower": test["lower"].values.tolist(),
        "test_upper": test["upper"].values.tolist(),
        "outside_test_band": q[outside.values].tolist(),
    }


def evaluate_augmented(
    synthetic: xr.Dataset,
    real_train: xr.Dataset,
    real_test: xr.Dataset,
    *,
    weights: xr.DataArray | None = None,
    periodic: Collection[str] = (),
    sample_dim: str = "time",
    synthetic_dim: str | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Does augmentation data look like held-out data without copying the training set?

    Args:
        synthetic: ``(synthetic_dim, [level], Y, X)`` generated samples, physical units.
        real_train, real_test: ``(sample_dim, [level], Y, X)`` training and held-out states.
        weights: ``([level], Y, X)`` cell weights; default equal.
        periodic: the periodic dims (pick the spectrum method).
        sample_dim: the real data's sample dim.
        synthetic_dim: the synthetic sample dim (default ``sample_dim``).

    Returns:
        ``{"samples": n, "variables": {KEY: {"quantiles": {"q", "synthetic", "test", their
        bootstrap bands "..._lower"/"..._upper", "outside_test_band"}, "beyond_train_range":
        {"train_min", "train_max", "below", "above", "total"}, "wasserstein1",
        "wasserstein1_train_test", "spectrum_ratio"}}, "memorisation": {"median_ratio",
        "fraction_closer_than_test_p05"}}``. Quantiles run from 0.1 % to 99.9 %, with 95 % bands
        from a bootstrap over whole samples (``seed`` keys it); ``beyond_train_range`` is the
        share of synthetic values outside the real training split's range. W1 is in the variable's units;
        ``wasserstein1_train_test`` is what a generator as good as fresh real data scores. The
        memorisation distances use each KEY standardised by the train mean and std (so variables
        in different units count alike).
    """
    names = [str(v) for v in real_test.data_vars]
    missing = sorted(set(names) - {str(v) for v in synthetic.data_vars})
    if missing:
        raise DataError(f"evaluate_augmented: synthetic samples lack variables {missing}; generate every "
                        "variable of the store")
    syn_dim = synthetic_dim or sample_dim
    syn = synthetic[names].rename({syn_dim: sample_dim}) if syn_dim != sample_dim else synthetic[names]
    first = real_test[names[0]].isel({sample_dim: 0}, drop=True)
    w = xr.ones_like(first, dtype=np.float64) if weights is None else weights.astype(np.float64)
    variables: dict[str, Any] = {}
    standard = {}
    for name in names:
        for key, where in _level_keys(real_test, name, sample_dim):
            # each side loaded once: quantiles, bands, range, W1 and spectra all read it
            s, tr, te = (d[name].isel(where).load() for d in (syn, real_train, real_test))
            wk = w.isel({k: v for k, v in where.items() if k in w.dims})
            qs, qt = (quantile_bands(d, sample_dim, seed=seed) for d in (s, te))
            low, high = float(tr.min()), float(tr.max())
            spec_t = field_spectrum(te, weights=wk, periodic=periodic)
            spec_s = field_spectrum(s, weights=wk, periodic=periodic)
            variables[key] = {
                "quantiles": _tails(qs, qt),
                "beyond_train_range": {"train_min": low, "train_max": high, **beyond_range(s, low, high)},
                "wasserstein1": _w1(s, te),
                "wasserstein1_train_test": _w1(tr, te),
                "spectrum_ratio": _json_float(spectrum_ratio_low(spec_t, spec_s)),
            }
            mu, sd = float(tr.mean()), float(tr.std())
            standard[key] = [(d - mu) / sd for d in (s, tr, te)]
    key_dim = "_key"
    stacked = [xr.concat([standard[k][i] for k in standard], dim=key_dim, coords="minimal", compat="override",
                         join="override") for i in range(3)]
    wk = xr.concat([w.isel({k: v for k, v in where.items() if k in w.dims}) for name in names
                    for _, where in _level_keys(real_test, name, sample_dim)], dim=key_dim,
                   coords="minimal", compat="override", join="override")
    mem = memorisation(*(xr.Dataset({"standardised": x}) for x in stacked), weights=wk, sample_dim=sample_dim)
    summary: dict[str, Any] = {k: _json_float(v) for k, v in mem.attrs.items()}
    summary["verdict"] = nearest_neighbour_verdict(summary["median_ratio"],
                                                   summary["fraction_closer_than_test_p05"])
    return {"samples": int(syn.sizes[sample_dim]), "variables": variables, "memorisation": summary}


def nearest_neighbour_verdict(median_ratio: float | None, closer: float | None) -> str:
    """The nearest-neighbour check in one sentence (for unconditional draws; a forecaster's
    next-state draws sit near their sources' true successors, which are training samples, and
    are judged by the successor test instead)."""
    if median_ratio is None or closer is None:
        return "undecided: the distances are not finite"
    numbers = (f"median distance ratio {median_ratio:.2f}, {100 * closer:.0f} % of synthetic samples nearer "
               "to the training set than 95 % of unseen samples (5 % when novel)")
    if median_ratio >= 0.8 and closer <= 0.1:
        return ("no sign of copying: synthetic samples are as far from the training set as unseen real "
                f"data ({numbers})")
    if median_ratio < 0.5 or closer > 0.25:
        return (f"synthetic samples sit much closer to the training set than unseen real data ({numbers}): "
                "copying, unless they are next-state draws (then read the successor test)")
    return f"synthetic samples sit somewhat closer to the training set than unseen real data ({numbers})"


def report_figures(
    metrics: dict[str, Any],
    *,
    forecast: xr.Dataset | None = None,
    truth: xr.Dataset | None = None,
    sample_dim: str = "time",
    case: int = 0,
    lead: int = 0,
    member_dim: str = "realization",
) -> dict[str, Figure]:
    """The report's figures by file stem: ``ensemble`` (needs ``forecast`` and ``truth``), ``lead_time``,
    ``rank_histogram``, ``spectra`` (when the metrics have spectra) and ``diurnal`` (when they
    have the diurnal-cycle check)."""
    figures: dict[str, Figure] = {}
    if forecast is not None and truth is not None:
        fc = forecast.isel({INIT_DIM: [case], LEAD_DIM: [lead]})
        names = [str(v) for v in fc.data_vars]
        obs = truth_at(truth[names], fc[INIT_DIM], fc[LEAD_DIM], sample_dim)
        figures["ensemble"] = ensemble_figure(obs, fc, member_dim=member_dim)
    if metrics.get("variables"):
        figures["lead_time"] = lead_time_figure(metrics)
        figures["rank_histogram"] = rank_histogram_figure(metrics)
    if metrics.get("spectra"):
        figures["spectra"] = spectra_figure(metrics)
    if metrics.get("diurnal"):
        figures["diurnal"] = diurnal_figure(metrics)
    if metrics.get("certificate"):
        figures["certificate"] = certificate_figure(metrics["certificate"])
    for section in ("augment", "samples"):
        if (metrics.get(section) or {}).get("variables"):
            figures[f"{section}_tails"] = tails_figure(metrics[section])
    return figures


def write_report(
    metrics: dict[str, Any], out_dir: str | Path, figures: Mapping[str, Figure] | None = None
) -> Path:
    """Publish ``out_dir``: ``metrics.json``, ``metrics.csv``, one PNG per figure, ``index.html``.

    Args:
        metrics: :func:`evaluate_forecast`'s dict, optionally with an ``"augment"`` entry from
            :func:`evaluate_augmented` (or only that entry).
        out_dir: the report folder (e.g. ``run_dir/report``).
        figures: PNG stem -> Figure; default :func:`report_figures` of ``metrics`` (no maps).

    The report is built in a temporary folder beside ``out_dir`` and renamed into place; an
    existing report is replaced whole (moved aside, then deleted), so ``out_dir`` never holds a
    mix of two runs or a half-written file.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = scratch_dir(out_dir)
    try:
        figures = report_figures(metrics) if figures is None else figures
        pngs = []
        for stem, fig in figures.items():
            save_figure(fig, tmp / f"{stem}.png")
            pngs.append(f"{stem}.png")
        write_json(metrics, tmp / JSON_NAME)
        data_files = [JSON_NAME]
        if metrics.get("variables"):
            write_csv(metrics, tmp / CSV_NAME)
            data_files.append(CSV_NAME)
        with atomic_file(tmp / HTML_NAME) as fh:
            fh.write(index_html(metrics, pngs, data_files))
        old = None
        if out_dir.exists():
            old = scratch_dir(out_dir, "old")
            os.replace(out_dir, old / out_dir.name)
        os.replace(tmp, out_dir)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
