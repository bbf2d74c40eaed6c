"""Does an ensemble keep its variable's physical domain? Negative values, dry cells, wet intensities.

For a variable with a lower bound ``lo`` (precipitation, densities: 0), over the valid cells
(the truth is finite there) of every case and lead, cell-weighted like every other score:

* ``below_fraction``: the members' fraction of values below ``lo`` (a model that keeps its
  domain by construction scores exactly 0);
* ``dry_fraction`` ``{"members", "truth", "relative_error"}``: the fraction of values exactly
  at ``lo`` (a dry cell), members against the truth at the same valid times;
* ``wet_quantiles`` ``{"q": [..], "members": [..], "truth": [..]}``: quantiles of the values
  above ``lo`` (the intensity of the wet cells), from one weighted histogram per side on
  log-spaced bins (4000 bins spanning the truth's wet range widened 10x each way, so a
  quantile is resolved to ~0.3 % of its value); out of core: the truth is read first for the
  bins, then the members once for every figure.

With an upper bound ``hi`` the entry also has ``above_fraction``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr

#: The wet-intensity quantiles the report shows.
WET_QUANTILES = (0.5, 0.9, 0.99)
_BINS = 4000


def _weighted_quantiles(edges: np.ndarray, counts: np.ndarray, q: Sequence[float]) -> list[float | None]:
    """Quantiles from a weighted histogram, interpolated log-linearly inside a bin."""
    total = counts.sum()
    if not total > 0:
        return [None for _ in q]
    cdf = np.concatenate([[0.0], np.cumsum(counts) / total])
    log_edges = np.log(edges)
    return [float(np.exp(np.interp(p, cdf, log_edges))) for p in q]


def domain_checks(
    fc: xr.DataArray,
    obs: xr.DataArray,
    weights: xr.DataArray,
    lo: float | None,
    hi: float | None = None,
    *,
    member_dim: str = "realization",
    quantiles: Sequence[float] = WET_QUANTILES,
) -> dict[str, Any]:
    """The domain summary of one variable (schema: module docstring).

    Args:
        fc: members ``(member_dim, *obs.dims)``, physical units, lazy or not.
        obs: the verifying truth, NaN where there is nothing to verify.
        weights: cell weights broadcastable to ``obs``.
        lo, hi: the variable's domain (None: open on that side).
        member_dim: the ensemble dim.
        quantiles: wet-intensity quantiles.
    """
    valid = np.isfinite(obs)
    w = (weights * valid).broadcast_like(obs).fillna(0.0)
    wm = w.broadcast_like(fc)
    if fc.chunks is not None:  # stay out of core: the weights follow the members' chunks
        wm = wm.chunk(dict(zip(fc.dims, fc.chunks, strict=True)))
    fc = fc.where(wm > 0)
    out: dict[str, Any] = {"domain": [lo, hi]}

    def computed(lazy: dict[str, Any]) -> dict[str, Any]:
        return dict(zip(lazy, dask.compute(*lazy.values()), strict=True))

    # the truth first (it alone sets the histogram's bins), then one pass over the members
    truth: dict[str, Any] = {"total": w.sum()}
    if lo is not None:
        wet = obs.where(obs > lo)
        truth |= {"dry": (w * (obs == lo)).sum(), "wet_min": wet.min(), "wet_max": wet.max()}
    truth = {k: float(v) for k, v in computed(truth).items()}
    edges = None
    if lo is not None and np.isfinite(truth["wet_min"]) and np.isfinite(truth["wet_max"]):
        edges = np.geomspace(truth["wet_min"] / 10.0, truth["wet_max"] * 10.0, _BINS + 1)

    def hist(x: xr.DataArray, wx: xr.DataArray) -> Any:
        assert edges is not None
        inner = (edges[0], edges[-1] * (1 - 1e-12))
        wet_w = (wx * (x > lo)).data
        vals = da.clip(da.asarray(x.fillna(edges[0]).data), *inner)
        return da.histogram(vals, bins=edges, weights=da.asarray(wet_w).rechunk(vals.chunks))[0]

    lazy: dict[str, Any] = {"total": wm.sum()}
    if lo is not None:
        lazy |= {"below": (wm * (fc < lo)).sum(), "dry": (wm * (fc == lo)).sum()}
    if hi is not None:
        lazy["above"] = (wm * (fc > hi)).sum()
    if edges is not None:
        lazy |= {"hist": hist(fc, wm), "hist_truth": hist(obs, w)}
    members = computed(lazy)
    n_members, n_truth = float(members["total"]), truth["total"]
    if not n_members > 0:
        return out | {"note": "no valid cell to check"}
    if hi is not None:
        out["above_fraction"] = float(members["above"]) / n_members
    if lo is None:
        return out
    out["below_fraction"] = float(members["below"]) / n_members
    dry_m, dry_t = float(members["dry"]) / n_members, truth["dry"] / n_truth
    out["dry_fraction"] = {"members": dry_m, "truth": dry_t,
                           "relative_error": (dry_m - dry_t) / dry_t if dry_t > 0 else None}
    if edges is None:
        out["wet_quantiles"] = None
        return out
    q = [float(p) for p in quantiles]
    out["wet_quantiles"] = {"q": q, "members": _weighted_quantiles(edges, np.asarray(members["hist"]), q),
                            "truth": _weighted_quantiles(edges, np.asarray(members["hist_truth"]), q)}
    return out
