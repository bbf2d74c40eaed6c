"""Is the true next state just one more member? Memorisation for conditioned draws.

A forecaster's draws ``x'_1..x'_M ~ p(x_{t+1} | x_t)`` from one source state ``x_t`` and the true
successor ``y = x_{t+1}`` are exchangeable when the model is right: then ``y`` is
indistinguishable from another member. Two summaries of that, per source with ``M >= 2``:

* ``distance_ratio`` = mean member-to-truth distance / mean member-to-member distance
  (pooled over sources). For exchangeable draws ``E|x' - y| = E|x' - x''|``, so the ratio is 1;
  > 1: the members are tighter than their distance to the truth (under-dispersed or biased);
  < 1: the members cluster on the truth more than on each other (over-dispersed, or the model
  reproduces the true successor: copying).
* the *pre-rank* of the truth: among the ``M + 1`` fields, each field's mean distance to the
  other ``M`` is ranked; the truth's rank, normalised to ``[0, 1]`` as ``(rank - 1) / M``, is
  uniform for exchangeable draws (mean 0.5). 0: the truth is the most central field (the
  members surround it, as when copied); 1: the truth is the outlier. This is the average-rank
  pre-rank of multivariate rank histograms (Thorarinsdottir, Scheuerer & Heinz 2016).

Copying and over-dispersion both push both summaries down, so the verdict is read against the
same summaries for draws from *held-out* source states, which the model cannot have copied
(:func:`simdiff.evaluate.successors.successor_verdict`). A model that copies training transitions is
much closer to the true successors of training states than to those of unseen states.

Distances are Euclidean over the features as given: the caller standardises the fields and
multiplies them by sqrt(normalised cell weight), which makes them weighted RMS differences
(:class:`simdiff.evaluate.successors.Standardiser`); features NaN anywhere are left out. The
95 % intervals come from a bootstrap over sources.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

#: Bootstrap resamples of the sources for the intervals.
BOOTSTRAP = 1000


def _distances(fields: np.ndarray) -> np.ndarray:
    """(K, K) RMS distances between the rows of ``fields`` (K, F) (features carry their weights)."""
    sq = (fields**2).sum(axis=1)
    d2 = sq[:, None] + sq[None, :] - 2.0 * fields @ fields.T
    np.fill_diagonal(d2, 0.0)
    return np.sqrt(np.maximum(d2, 0.0))


def _interval(values: np.ndarray, statistic, rng: np.random.Generator) -> list[float]:
    """The 2.5 % and 97.5 % points of ``statistic`` over bootstrap resamples of ``values``' rows."""
    n = len(values)
    stats = [statistic(values[rng.integers(0, n, n)]) for _ in range(BOOTSTRAP)]
    return [float(np.quantile(stats, 0.025)), float(np.quantile(stats, 0.975))]


def successor_test(members: xr.DataArray, truth: xr.DataArray, source_dim: str = "source",
                   member_dim: str = "member", seed: int = 0) -> xr.Dataset:
    """Exchangeability of the true successor with the members drawn from its source state.

    Args:
        members: ``(source_dim, member_dim, *features)`` draws, M >= 2 per source, on the scale
            the distances are to be taken (NaN features are left out).
        truth: ``(source_dim, *features)`` the true successor of each source, on the same scale.
        seed: the bootstrap's generator seed (the intervals are reproducible).

    Returns:
        Per source ``d_truth`` (mean member-to-truth distance), ``d_members`` (mean
        member-to-member distance) and ``truth_rank`` (normalised pre-rank, 0..1); attrs:
        ``sources``, ``members``, ``distance_ratio`` and ``rank_mean`` each with a 95 % bootstrap
        interval (``..._ci``), and ``truth_most_central`` (the share of sources where the truth
        is the most central field; 1 / (M + 1) when exchangeable).
    """
    features = [d for d in members.dims if d not in (source_dim, member_dim)]
    m = members.transpose(source_dim, member_dim, *features).values.astype(np.float64)
    y = truth.transpose(source_dim, *features).values.astype(np.float64)
    s, k = m.shape[:2]
    if k < 2:
        raise ValueError(f"successor_test: {k} member(s) per source; the test needs at least 2")
    if y.shape[0] != s:
        raise ValueError(f"successor_test: {s} sources of members but {y.shape[0]} truths")
    m, y = m.reshape(s, k, -1), y.reshape(s, -1)
    valid = ~(np.isnan(m).any(axis=(0, 1)) | np.isnan(y).any(axis=0))
    m, y = m[:, :, valid], y[:, valid]
    d_truth, d_members, rank = np.empty(s), np.empty(s), np.empty(s)
    for i in range(s):
        d = _distances(np.concatenate([m[i], y[i][None]]))
        d_truth[i] = d[:k, k].mean()
        d_members[i] = d[:k, :k].sum() / (k * (k - 1))
        centrality = d.sum(axis=1) / k  # each field's mean distance to the other k
        below = np.sum(centrality[:k] < centrality[k])
        ties = np.sum(centrality[:k] == centrality[k])
        rank[i] = (below + 0.5 * ties) / k
    rng = np.random.default_rng(seed)
    pairs = np.stack([d_truth, d_members], axis=1)
    ratio = float(d_truth.sum() / d_members.sum())
    attrs = {
        "sources": int(s),
        "members": int(k),
        "distance_ratio": ratio,
        "distance_ratio_ci": _interval(pairs, lambda p: p[:, 0].sum() / p[:, 1].sum(), rng),
        "rank_mean": float(rank.mean()),
        "rank_mean_ci": _interval(rank, np.mean, rng),
        "truth_most_central": float(np.mean(rank == 0.0)),
        "truth_most_central_if_exchangeable": 1.0 / (k + 1),
    }
    return xr.Dataset(
        {"d_truth": (source_dim, d_truth), "d_members": (source_dim, d_members),
         "truth_rank": (source_dim, rank)},
        attrs=attrs,
    )
