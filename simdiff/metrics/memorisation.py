"""Did the generator copy its training set? Nearest-neighbour distances to the training samples.

For every synthetic sample, the distance to its nearest training sample is compared with the
same distance for held-out test samples (which the model never saw): a generator that
memorises puts many synthetic samples much closer to the training set than real unseen
data ever is. Distances are root-mean-square differences over valid cells, weighted by the
cell weights, on whatever scale the inputs are given (normalised fields make variables
comparable).

Summary (``attrs``): ``median_ratio`` = median synthetic NN distance / median test NN
distance (about 1 when samples are as novel as real data, << 1 when copied), and
``fraction_closer_than_test_p05`` = share of synthetic samples nearer to the training set
than 95 % of test samples are (about 0.05 when novel).
"""

from __future__ import annotations

import numpy as np
import xarray as xr


def _matrix(data: xr.Dataset, sample_dim: str, sqrt_w: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(samples, features) float64: every variable's valid cells, times sqrt(weight)."""
    parts = []
    for name in data.data_vars:
        v = data[name].transpose(sample_dim, ...).values.reshape(data.sizes[sample_dim], -1)
        parts.append(np.nan_to_num(v[:, valid]) * sqrt_w)
    return np.concatenate(parts, axis=1).astype(np.float64)


def _nearest(a: np.ndarray, b: np.ndarray, block: int = 256) -> np.ndarray:
    """For each row of ``a``, the smallest squared Euclidean distance to a row of ``b``."""
    bb = (b**2).sum(axis=1)
    out = np.empty(a.shape[0])
    for i in range(0, a.shape[0], block):
        ai = a[i : i + block]
        d2 = (ai**2).sum(axis=1)[:, None] + bb[None, :] - 2.0 * ai @ b.T
        out[i : i + block] = np.maximum(d2.min(axis=1), 0.0)
    return out


def memorisation(
    synthetic: xr.Dataset,
    train: xr.Dataset,
    test: xr.Dataset,
    weights: xr.DataArray,
    sample_dim: str = "sample",
) -> xr.Dataset:
    """Nearest-neighbour distances to the training set, for synthetic and for test samples.

    Args:
        synthetic, train, test: the same variables over ``(sample_dim, *spatial)``; NaN where
            masked (the mask is taken from the first training sample).
        weights: cell weights over the spatial dims.
        sample_dim: the sample dim of all three.

    Returns:
        ``nn_synthetic`` (synthetic sample) and ``nn_test`` (test sample), RMS distances,
        with the summary in ``attrs``.
    """
    first = next(iter(train.data_vars))
    spatial = [d for d in train[first].dims if d != sample_dim]
    valid = train[first].isel({sample_dim: 0}).notnull().transpose(*spatial).values.ravel()
    w = np.broadcast_to(weights.transpose(*spatial).values, train[first].isel({sample_dim: 0}).shape)
    w = w.ravel()[valid]
    w = w / w.sum() / len(train.data_vars)  # RMS over all valid cells of all variables
    sqrt_w = np.sqrt(w)
    tr = _matrix(train, sample_dim, sqrt_w, valid)
    syn = np.sqrt(_nearest(_matrix(synthetic, sample_dim, sqrt_w, valid), tr))
    tst = np.sqrt(_nearest(_matrix(test, sample_dim, sqrt_w, valid), tr))
    summary = {
        "median_ratio": float(np.median(syn) / np.median(tst)),
        "fraction_closer_than_test_p05": float(np.mean(syn < np.quantile(tst, 0.05))),
    }
    return xr.Dataset(
        {"nn_synthetic": ("synthetic_sample", syn), "nn_test": ("test_sample", tst)}, attrs=summary
    )
