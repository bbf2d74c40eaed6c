"""The continuous ranked probability score of an ensemble, xarray in and out.

For an ensemble ``x_1..x_M`` and an observation ``y`` (Gneiting & Raftery 2007, eq. 20)::

    CRPS      = (1/M) sum_i |x_i - y|  -  1/(2 M^2)      sum_{i,j} |x_i - x_j|
    fair CRPS = (1/M) sum_i |x_i - y|  -  1/(2 M (M-1)) sum_{i,j} |x_i - x_j|

The fair version (Ferro 2014) is the expected score of the ensemble's parent
distribution, unbiased whatever M; it needs M >= 2. The pair sum uses the sorted members,
``sum_{i,j} |x_i - x_j| = 2 sum_k (2k - M - 1) x_(k)``, so the cost is O(M log M) per point.

Members that are NaN are left out (M counts the valid ones); a NaN observation, or no
valid member, gives NaN. Points are then averaged with cell weights when ``weights`` is
given (NaN points and their weights drop out: masked cells never count).
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from simdiff.metrics.weighting import weighted_mean

Data = xr.DataArray | xr.Dataset


def _crps_core(x: np.ndarray, y: np.ndarray, fair: bool) -> np.ndarray:
    """CRPS per point; ``x`` (..., M) members last, ``y`` (...)."""
    x = np.sort(x, axis=-1)  # NaN sorts last
    valid = ~np.isnan(x)
    m = valid.sum(axis=-1)
    k = np.arange(1, x.shape[-1] + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        skill = np.nansum(np.abs(x - y[..., None]), axis=-1) / m
        coef = np.where(valid, 2 * k - m[..., None] - 1, 0)
        pair_sum = 2 * np.sum(coef * np.where(valid, x, 0.0), axis=-1)  # sum_{i,j} |x_i - x_j|
        spread = pair_sum / (2 * m * (m - 1)) if fair else pair_sum / (2 * m**2)
        out = skill - spread
    return np.where((m > (1 if fair else 0)) & ~np.isnan(y), out, np.nan)


def crps(
    forecast: Data,
    truth: Data,
    fair: bool = False,
    weights: xr.DataArray | None = None,
    member_dim: str = "realization",
) -> Data:
    """CRPS of ``forecast`` against ``truth``.

    Args:
        forecast: members along ``member_dim``, other dims as ``truth`` (broadcast).
        truth: the observations.
        fair: the fair (ensemble-size-unbiased) estimator of Ferro (2014).
        weights: cell weights (e.g. cos lat); when given the score is averaged over the
            weights' dims with them, skipping NaN points. Otherwise it is per point.
        member_dim: the ensemble dim.

    Returns:
        CRPS with ``truth``'s dims (less the weights' dims when weighted); float64.
    """
    score = xr.apply_ufunc(
        _crps_core,
        forecast,
        truth,
        kwargs={"fair": fair},
        input_core_dims=[[member_dim], []],
        dask="parallelized",
        output_dtypes=[np.float64],
        dask_gufunc_kwargs={"allow_rechunk": True},  # members may span chunks
    )
    if weights is None:
        return score
    return weighted_mean(score, weights)
