"""The autoencoder's reconstruction report: ``reconstruction.json`` and ``reconstruction.png``.

Written by the ``train-autoencoder`` stage on the test split, in physical units::

    {"compression_ratio": x,
     "variables": {KEY: {"rmse": x, "rmse_over_std": x, "spectrum_ratio_low": x}},
     "mean": {"rmse_over_std": x, "spectrum_ratio_low": x},   # over KEYs
     "n_samples": n, "spectrum_method": "..."}

``KEY`` is the variable name, or ``VAR@LEVEL`` per level of a ``level`` depth dim (a spatial
depth axis such as ``z`` of a volume is part of the field, not a level). With ``w`` the cell
weights restricted to valid cells ``V`` and all samples::

    rmse          = sqrt( sum_V w (recon - truth)^2 / sum_V w )
    rmse_over_std = rmse / sqrt( sum_V w (truth - mu)^2 / sum_V w ),  mu = sum_V w truth / sum_V w
    spectrum_ratio_low = mean over the lower half of the resolved wavenumbers (k > 0) of
                         E_recon(k) / E_truth(k), E averaged over samples
                         (see simdiff.metrics.spectra.field_spectrum for the method per grid)
"""

from __future__ import annotations

import math
from collections.abc import Collection
from pathlib import Path

import dask
import numpy as np
import xarray as xr

from simdiff.base.atomic import write_json
from simdiff.base.errors import DataError
from simdiff.data.field import SPATIAL_DEPTH_DIMS
from simdiff.evaluate.plots import format_level, reconstruction_figure, save_figure
from simdiff.metrics.spectra import field_spectrum, spectrum_ratio_low

JSON_NAME = "reconstruction.json"
PNG_NAME = "reconstruction.png"
METRICS = ("rmse", "rmse_over_std", "spectrum_ratio_low")


def _same_coords(a: xr.DataArray | xr.Dataset, b: xr.DataArray | xr.Dataset, dim: str) -> bool:
    """True when ``b`` has no coord on ``dim`` or it equals ``a``'s (numeric: to float tolerance)."""
    if dim not in a.coords or dim not in b.coords:
        return True
    x, y = np.asarray(a[dim].values), np.asarray(b[dim].values)
    if np.issubdtype(x.dtype, np.number) and np.issubdtype(y.dtype, np.number):
        return bool(np.allclose(x, y, rtol=1e-6, atol=1e-9))
    return bool(np.array_equal(x, y))


def _check_inputs(
    truth: xr.Dataset, recon: xr.Dataset, weights: xr.DataArray, compression_ratio: float, sample: int
) -> tuple[xr.Dataset, xr.DataArray]:
    """Validate shapes and labels; return recon and weights on truth's coords (positional)."""
    names, others = list(truth.data_vars), set(recon.data_vars)
    if not names:
        raise DataError("reconstruction report: the truth dataset has no variables")
    if set(names) != others:
        raise DataError(
            f"reconstruction report: truth has variables {sorted(map(str, names))} but the "
            f"reconstruction has {sorted(map(str, others))}; decode every channel of the store"
        )
    dims = tuple(truth[names[0]].dims)
    if len(dims) not in (3, 4):
        raise DataError(f"reconstruction report: variables must be (S, [D], Y, X), got {dims}")
    for name in names:
        t, r = truth[name], recon[name]
        if t.dims != dims or r.dims != dims or t.shape != r.shape:
            raise DataError(
                f"reconstruction report: variable {name!r} is {dict(t.sizes)} in the truth and "
                f"{dict(r.sizes)} in the reconstruction; both must be {dims} with equal sizes"
            )
    if tuple(weights.dims) != dims[1:] or any(weights.sizes[d] != truth.sizes[d] for d in dims[1:]):
        raise DataError(
            f"reconstruction report: weights have {dict(weights.sizes)}; expected dims {dims[1:]} "
            f"with sizes {[truth.sizes[d] for d in dims[1:]]} (pass Geometry.weights)"
        )
    for dim in dims:
        for label, other in (("reconstruction", recon), ("weights", weights)):
            if not _same_coords(truth, other, dim):
                raise DataError(
                    f"reconstruction report: the {label} has other {dim!r} coordinates than the "
                    f"truth; give both on the same grid and samples"
                )
    w = np.asarray(weights.values, dtype=float)
    if not np.isfinite(w).all() or (w < 0).any():
        raise DataError("reconstruction report: weights must be finite and >= 0 (pass Geometry.weights)")
    if not (math.isfinite(compression_ratio) and compression_ratio > 0):
        raise DataError(f"reconstruction report: compression_ratio={compression_ratio!r}; must be > 0")
    if not 0 <= sample < truth.sizes[dims[0]]:
        raise DataError(
            f"reconstruction report: sample={sample} out of range for {truth.sizes[dims[0]]} samples"
        )
    recon = xr.align(truth, recon, join="override")[1]
    weights = xr.align(truth[names[0]].isel({dims[0]: 0}, drop=True), weights, join="override")[1]
    return recon, weights.astype(np.float64)


def _variable_metrics(
    t: xr.DataArray, r: xr.DataArray, weights: xr.DataArray, periodic: Collection[str], keep: tuple[str, ...]
) -> tuple[xr.Dataset, str]:
    """Lazy metrics of one variable, reduced over everything but ``keep`` (the level dim)."""
    t, r = t.astype(np.float64), r.astype(np.float64)
    valid = t.notnull()
    reduce = [d for d in t.dims if d not in keep]
    w = weights.where(valid, 0.0)
    w_sum = w.sum(reduce)
    mse = (((r - t) ** 2).where(valid, 0.0) * w).sum(reduce) / w_sum
    mu = (t.where(valid, 0.0) * w).sum(reduce) / w_sum
    var = (((t - mu) ** 2).where(valid, 0.0) * w).sum(reduce) / w_sum
    spec_t = field_spectrum(t, weights=weights, periodic=periodic, keep=keep)
    spec_r = field_spectrum(r, weights=weights, periodic=periodic, keep=keep)
    metrics = xr.Dataset(
        {
            "rmse": np.sqrt(mse),
            "std": np.sqrt(var),
            "mean": mu,
            "spectrum_ratio_low": spectrum_ratio_low(spec_t, spec_r),
            "valid_weight": w_sum,
            "nan_mismatch": (t.isnull() != r.isnull()).sum(),
        }
    )
    return metrics, str(spec_t.attrs["method"])


def _finite(value: float, metric: str, key: str, hint: str) -> float:
    if not math.isfinite(value):
        raise DataError(
            f"reconstruction report: {metric} of {key!r} is {value} ({hint}); nothing was written"
        )
    return float(value)


def _entry(m: xr.Dataset, key: str) -> dict[str, float]:
    if float(m["valid_weight"]) <= 0:
        raise DataError(
            f"reconstruction report: {key!r} has no valid cell with positive weight; nothing was "
            "written (check the mask and the weights)"
        )
    rmse = _finite(float(m["rmse"]), "rmse", key, "the reconstruction has NaN or inf at valid cells")
    std = float(m["std"])
    # a constant truth leaves only round-off in std (~1e-16 |mean|): treat it as 0, not as a scale
    ratio = rmse / std if std > 1e-12 * abs(float(m["mean"])) else math.nan
    return {
        "rmse": rmse,
        "rmse_over_std": _finite(ratio, "rmse_over_std", key, f"the truth's weighted std is {std}"),
        "spectrum_ratio_low": _finite(
            float(m["spectrum_ratio_low"]), "spectrum_ratio_low", key,
            "the truth has no energy at some low wavenumber, or a spectrum is not finite",
        ),
    }


def reconstruction_report(
    truth: xr.Dataset,
    recon: xr.Dataset,
    *,
    weights: xr.DataArray,
    periodic: Collection[str],
    compression_ratio: float,
    out_dir: Path,
    sample: int = 0,
) -> dict:
    """Score a reconstruction and write ``out_dir/reconstruction.json`` and ``reconstruction.png``.

    Args:
        truth, recon: physical units, one variable per channel, dims ``(S, [D], Y, X)``
            (``D`` = ``level`` or ``z``), NaN at masked cells, the same NaN pattern in both.
        weights: ``([D], Y, X)`` cell weights (cos lat or ones), e.g. ``Geometry.weights``.
        periodic: the periodic dims (``Geometry.periodic``); they pick the spectrum method.
        compression_ratio: input elements / latent elements.
        out_dir: folder for the two files (created if missing).
        sample: the position along ``S`` drawn in the PNG.

    Returns:
        The report written to the JSON (see the module docstring).

    Raises:
        DataError: mismatched variables, dims, coords or NaN patterns, bad weights, or a
            metric that is NaN/inf (naming the variable); nothing is written then.
    """
    recon, weights = _check_inputs(truth, recon, weights, compression_ratio, sample)
    names = [str(n) for n in truth.data_vars]
    dims = tuple(truth[names[0]].dims)
    depth = dims[1] if len(dims) == 4 else None
    keep = (depth,) if depth is not None and depth not in SPATIAL_DEPTH_DIMS else ()
    lazy, method = {}, ""
    for name in names:
        lazy[name], method = _variable_metrics(truth[name], recon[name], weights, periodic, keep)
    computed = dict(zip(names, dask.compute(*lazy.values()), strict=True))  # one pass over dask data

    variables: dict[str, dict[str, float]] = {}
    for name, m in computed.items():
        mismatch = int(m["nan_mismatch"])
        if mismatch:
            raise DataError(
                f"reconstruction report: variable {name!r} is NaN at {mismatch} cells in one of truth "
                "and reconstruction but not the other; mask both alike (e.g. recon.where(mask))"
            )
        if keep:
            levels = truth[depth].values if depth in truth.coords else np.arange(truth.sizes[depth])
            for i, level in enumerate(levels):
                key = f"{name}@{format_level(level)}"
                variables[key] = _entry(m.isel({depth: i}), key)
        else:
            variables[name] = _entry(m, name)

    report = {
        "compression_ratio": float(compression_ratio),
        "variables": variables,
        "mean": {
            metric: float(np.mean([v[metric] for v in variables.values()]))
            for metric in ("rmse_over_std", "spectrum_ratio_low")
        },
        "n_samples": int(truth.sizes[dims[0]]),
        "spectrum_method": method,
    }
    out_dir = Path(out_dir)
    fig = reconstruction_figure(truth, recon, sample=sample)
    save_figure(fig, out_dir / PNG_NAME)
    write_json(report, out_dir / JSON_NAME)
    return report
