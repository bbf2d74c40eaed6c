"""Is the ensemble as uncertain as it is wrong? Spread-skill ratio and rank histogram.

Spread and skill (Fortin et al. 2014, J. Hydrometeor. 15, 1708):

    spread = sqrt( mean over cases of the ensemble variance, ddof = 1 )
    skill  = sqrt( mean over cases of (ensemble mean - truth)^2 )

For a perfectly calibrated M-member ensemble, E[skill^2] = (M + 1)/M * E[spread^2]: the
ensemble mean of finitely many members carries sampling error of its own. So the
calibrated ratio is ``sqrt((M + 1)/M) * spread / skill`` (``ratio_corrected``), which is 1
for a calibrated ensemble whatever M; the raw ``spread / skill`` tends to sqrt(M/(M+1)).

Rank histogram (Hamill 2001): the rank of the truth among the M members, M + 1 bins;
ties share their rank equally among the tied positions, so a truth equal to k members
puts 1/(k+1) in each of k+1 bins. Frequencies over all valid points sum to 1; a calibrated
ensemble gives 1/(M+1) in each bin.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr

from simdiff.metrics.weighting import weighted_mean

Data = xr.DataArray | xr.Dataset


def _mean(x: Data, dims: Sequence[str] | None, weights: xr.DataArray | None) -> Data:
    if weights is None:
        return x.mean(dims, skipna=True)
    return weighted_mean(x, weights, dims)


def spread_skill(
    forecast: Data,
    truth: Data,
    weights: xr.DataArray | None = None,
    dims: Sequence[str] | None = None,
    member_dim: str = "realization",
) -> xr.Dataset:
    """Spread, skill and their ratios, averaged over ``dims`` (default: every dim of ``truth``).

    Args:
        forecast: members along ``member_dim`` (at least 2).
        truth: the observations.
        weights: cell weights for the average (NaN points and their weights drop out).
        dims: the dims averaged over (cases, grid); the rest are kept (e.g. lead_time).
        member_dim: the ensemble dim.

    Returns:
        Dataset with ``spread``, ``skill`` (RMSE of the ensemble mean), ``ratio`` =
        spread/skill and ``ratio_corrected`` = sqrt((M+1)/M) * ratio, per variable when
        the inputs are Datasets (``VAR_spread``...).
    """
    m = forecast.sizes[member_dim]
    if m < 2:
        raise ValueError(f"spread_skill needs at least 2 members along {member_dim!r}, got {m}")
    dims = list(truth.dims) if dims is None else list(dims)
    variance = forecast.var(member_dim, ddof=1)
    error2 = (forecast.mean(member_dim) - truth) ** 2
    valid = error2.notnull() & variance.notnull()
    spread = np.sqrt(_mean(variance.where(valid), dims, weights))
    skill = np.sqrt(_mean(error2.where(valid), dims, weights))
    ratio = spread / skill
    corrected = ratio * np.sqrt((m + 1) / m)
    parts = {"spread": spread, "skill": skill, "ratio": ratio, "ratio_corrected": corrected}
    if isinstance(truth, xr.Dataset):
        return xr.Dataset({f"{v}_{k}": part[v] for k, part in parts.items() for v in part.data_vars})
    return xr.Dataset(parts)


def _rank_counts(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Fractional rank counts (M + 1 bins) summed over all points; x (N, M), y (N)."""
    ok = ~np.isnan(y) & ~np.isnan(x).any(axis=-1)
    x, y = x[ok], y[ok]
    m = x.shape[-1]
    below = (x < y[:, None]).sum(axis=-1)
    ties = (x == y[:, None]).sum(axis=-1)
    counts = np.zeros(m + 1)
    for t in np.unique(ties):  # each point spreads 1 over bins below .. below + ties
        sel = ties == t
        for j in range(t + 1):
            np.add.at(counts, below[sel] + j, 1.0 / (t + 1))
    return counts


def rank_histogram(
    forecast: xr.DataArray, truth: xr.DataArray, member_dim: str = "realization"
) -> xr.DataArray:
    """Relative frequency of the truth's rank among the members, over every valid point.

    Args:
        forecast: members along ``member_dim``; points with any NaN member are left out.
        truth: the observations; NaN points are left out.
        member_dim: the ensemble dim.

    Returns:
        DataArray over ``rank`` = 0..M, summing to 1.
    """
    forecast, truth = xr.broadcast(forecast, truth, exclude=[member_dim])
    other = list(truth.dims)
    x = forecast.transpose(*other, member_dim).values.reshape(-1, forecast.sizes[member_dim])
    y = truth.transpose(*other).values.reshape(-1)
    counts = _rank_counts(x.astype(np.float64), y.astype(np.float64))
    total = counts.sum()
    if total == 0:
        raise ValueError("rank_histogram: no point has a valid truth and valid members")
    m = forecast.sizes[member_dim]
    return xr.DataArray(counts / total, dims="rank", coords={"rank": np.arange(m + 1)}, name="rank_histogram")
