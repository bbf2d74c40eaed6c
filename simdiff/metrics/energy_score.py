"""The energy score: the CRPS of a whole field, scored as one multivariate vector.

For members ``x_1..x_M`` and truth ``y``, vectors over the field's dims (Gneiting &
Raftery 2007, eq. 22)::

    ES = (1/M) sum_i ||x_i - y||  -  1/(2 M^2) sum_{i,j} ||x_i - x_j||

with the norm ``||v|| = sqrt(sum_c w_c v_c^2)`` over the field's cells, weighted by the cell
weights (normalised to sum to 1 over the valid cells, so the score does not grow with the
grid). Cells where the truth is NaN (masked) are left out. In one dimension it equals the
CRPS, which the tests check.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr


def energy_score(
    forecast: xr.DataArray,
    truth: xr.DataArray,
    dims: Sequence[str] | None = None,
    weights: xr.DataArray | None = None,
    member_dim: str = "realization",
) -> xr.DataArray:
    """Energy score of ``forecast`` against ``truth``, the vector running over ``dims``.

    Args:
        forecast: members along ``member_dim``.
        truth: the observation.
        dims: the dims that form one vector (default: every dim of ``truth``); the other
            dims (e.g. init_time, lead_time) are kept, one score each.
        weights: cell weights over (some of) ``dims``; default equal weights.
        member_dim: the ensemble dim.

    Returns:
        The score over the dims not in ``dims``.
    """
    dims = list(truth.dims) if dims is None else list(dims)
    w = xr.ones_like(truth, dtype=np.float64) if weights is None else xr.broadcast(weights, truth)[0]
    w = w.where(truth.notnull(), 0.0).fillna(0.0)
    w = w / w.sum(dims)

    def norm(v: xr.DataArray) -> xr.DataArray:
        return np.sqrt((w * v.fillna(0.0) ** 2).sum(dims))

    m = forecast.sizes[member_dim]
    members = [forecast.isel({member_dim: i}, drop=True) for i in range(m)]
    skill = sum(norm(x - truth) for x in members) / m
    pairs = sum(norm(members[i] - members[j]) for i in range(m) for j in range(i + 1, m))
    return skill - pairs / m**2  # sum over i<j counts each unordered pair once: 2/(2 M^2)
