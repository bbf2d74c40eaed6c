"""Do synthetic samples have the data's distribution? Quantiles and the Wasserstein-1 distance.

Both compare the pooled values of a variable (every valid cell of every sample): the
one-point marginal that augmentation must get right before anything else, heavy tails of
precipitation and densities included. NaN (masked) cells are left out.

Wasserstein-1 between two empirical distributions is the area between their CDFs
(Villani 2009; for 1-D, ``W1 = integral |F_a(x) - F_b(x)| dx``), computed exactly from the
merged sorted values.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

QUANTILES = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999)


def _values(da: xr.DataArray) -> np.ndarray:
    v = np.asarray(da.values, dtype=np.float64).ravel()
    return v[~np.isnan(v)]


def quantiles(data: xr.Dataset, q: tuple[float, ...] = QUANTILES) -> xr.Dataset:
    """Quantiles of each variable's pooled valid values.

    Args:
        data: variables of any dims (NaN = masked).
        q: the probabilities, 0.1 % ... 99.9 % by default.

    Returns:
        One variable per input variable over ``quantile``.
    """
    out = {}
    for name, da in data.data_vars.items():
        v = _values(da)
        if v.size == 0:
            raise ValueError(f"quantiles: variable {name!r} has no valid values")
        out[name] = xr.DataArray(np.quantile(v, q), dims="quantile", attrs=dict(da.attrs))
    return xr.Dataset(out, coords={"quantile": list(q)})


def wasserstein1_values(a: np.ndarray, b: np.ndarray) -> float:
    """Exact W1 between the empirical distributions of two 1-D samples."""
    a, b = np.sort(a), np.sort(b)
    if a.size == 0 or b.size == 0:
        raise ValueError("wasserstein1 needs at least one value on each side")
    x = np.concatenate([a, b])
    x.sort(kind="mergesort")
    cdf_a = np.searchsorted(a, x[:-1], side="right") / a.size
    cdf_b = np.searchsorted(b, x[:-1], side="right") / b.size
    return float(np.sum(np.abs(cdf_a - cdf_b) * np.diff(x)))


def wasserstein1(synthetic: xr.Dataset, reference: xr.Dataset) -> xr.Dataset:
    """W1 between each variable's pooled valid values in ``synthetic`` and ``reference``.

    Returns:
        One scalar per variable, in the variable's units.
    """
    return xr.Dataset(
        {
            name: xr.DataArray(wasserstein1_values(_values(synthetic[name]), _values(reference[name])))
            for name in reference.data_vars
        }
    )


def quantile_bands(
    da: xr.DataArray,
    sample_dim: str,
    q: tuple[float, ...] = QUANTILES,
    *,
    resamples: int = 200,
    max_values: int = 200_000,
    seed: int = 0,
) -> xr.Dataset:
    """Pooled quantiles with 95 % bootstrap bands, resampling whole samples.

    Cells of one sample are correlated, so the bootstrap draws samples (with replacement), not
    cells. Each resample pools at most ``max_values`` values: when the samples hold more, a fixed
    random subset of cells (the same for every resample) is pooled, so a tail quantile of a large
    grid costs a bounded sort; the point estimate ``value`` uses every valid cell.

    Returns:
        ``value``, ``lower``, ``upper`` over ``quantile``.
    """
    x = np.asarray(da.transpose(sample_dim, ...).values, dtype=np.float64).reshape(da.sizes[sample_dim], -1)
    n, cells = x.shape
    if n == 0:
        raise ValueError(f"quantile_bands: {da.name!r} has no samples")
    rng = np.random.default_rng(seed)
    keep = min(cells, max(1, max_values // n))
    sub = x[:, np.sort(rng.choice(cells, keep, replace=False))] if keep < cells else x
    boot = np.empty((resamples, len(q)))
    for b in range(resamples):
        v = sub[rng.integers(0, n, n)].ravel()
        v = v[~np.isnan(v)]
        boot[b] = np.quantile(v, q) if v.size else np.nan
    value = quantiles(xr.Dataset({"v": (("sample", "cell"), x)}), q)["v"].values  # x: loaded once
    return xr.Dataset(
        {"value": ("quantile", value), "lower": ("quantile", np.nanquantile(boot, 0.025, axis=0)),
         "upper": ("quantile", np.nanquantile(boot, 0.975, axis=0))},
        coords={"quantile": list(q)},
    )


def beyond_range(da: xr.DataArray, low: float, high: float) -> dict[str, float]:
    """The shares of ``da``'s valid values below ``low`` and above ``high`` (a real training
    range), and their sum."""
    v = _values(da)
    if v.size == 0:
        raise ValueError(f"beyond_range: {da.name!r} has no valid values")
    below, above = float(np.mean(v < low)), float(np.mean(v > high))
    return {"below": below, "above": above, "total": below + above}
