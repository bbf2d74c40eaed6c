"""Cell-weighted means that skip NaN points, summed in a fixed order.

``x.weighted(w).mean(dims)`` contracts with an einsum whose summation order is not fixed from
one interpreter to the next: two runs of ``simdiff evaluate`` differed in the last bit of some
scores, following ``PYTHONHASHSEED``. :func:`weighted_mean` computes the same mean as two plain
sums, ``sum(w x) / sum(w)`` over the valid points, which numpy and dask reduce in an order set
by the array layout and chunks alone, so equal inputs give equal bits.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import xarray as xr

Data = xr.DataArray | xr.Dataset


def weighted_sums(
    x: Data, weights: xr.DataArray, dims: Sequence[Hashable] | None = None
) -> tuple[Data, Data]:
    """``(sum(w x), sum(w))`` over ``dims`` (default: the weights' dims) and the points where
    ``x`` is valid (NaN weights count as 0). Sums of disjoint blocks add up to the whole's."""
    dims = list(weights.dims) if dims is None else list(dims)
    w = weights.fillna(0.0)
    return (x.fillna(0.0) * w).sum(dims), (x.notnull() * w).sum(dims)


def weighted_mean(x: Data, weights: xr.DataArray, dims: Sequence[Hashable] | None = None) -> Data:
    """Mean of ``x`` over ``dims`` (default: the weights' dims) with ``weights``, NaN points and
    their weights left out; NaN where no valid point has weight."""
    num, den = weighted_sums(x, weights, dims)
    return (num / den).where(den != 0)
