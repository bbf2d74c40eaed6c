"""Memorisation for next-state draws, in plain language.

Draws ``x'_1..x'_M`` from one real state and that state's true successor are compared with
:func:`simdiff.metrics.indistinguishability.successor_test`: once for draws from *training*
states (the augmented dataset), once for draws from *held-out* states (the forecast's first
lead, when there is one). The nearest-neighbour check misleads here: a good one-step draw sits
next to its source's real successor, which is a training sample, so it looks copied without
being copied. What copying does show is a difference between the two: a model that reproduces
training transitions is much closer to the true successors of training states than to those of
states it never saw.

Fields are compared standardised per variable and level (the training split's mean and
standard deviation) and weighted by the cell weights, as the nearest-neighbour check.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import dask
import numpy as np
import xarray as xr

from simdiff.data.field import SPATIAL_DEPTH_DIMS
from simdiff.metrics.indistinguishability import successor_test

#: Train/test distance ratios further apart than this (and with disjoint intervals) read as copying.
COPYING_RATIO = 0.8


@dataclass(frozen=True)
class Standardiser:
    """Standardises fields by the training split's mean and std (per level of a non-spatial
    depth dim) and weights them by sqrt(cell weight / total weight), stacked over ``_variable``:
    Euclidean distances of the result are weighted RMS differences in standard deviations.

    :meth:`fit` reads the training split once; calling the standardiser on fields with any leading
    dims (e.g. ``source``, ``member``) before the fields' own costs no further pass over it.
    """

    mean: dict[str, xr.DataArray]
    std: dict[str, xr.DataArray]
    weights: xr.DataArray
    features: frozenset[str]

    @classmethod
    def fit(cls, train: xr.Dataset, weights: xr.DataArray, sample_dim: str) -> Standardiser:
        """The moments of every variable of ``train`` over ``sample_dim`` and the cells, in one pass."""
        names = [str(n) for n in train.data_vars]
        moments = []
        for name in names:
            da = train[name]
            fields = [d for d in da.dims if d != sample_dim]
            per_level = fields[:1] if len(fields) == 3 and fields[0] not in SPATIAL_DEPTH_DIMS else []
            over = [d for d in da.dims if d not in per_level]
            moments += [da.mean(over), da.std(over)]
        moments = list(dask.compute(*moments))
        features = frozenset({"_variable", *(d for d in train[names[0]].dims if d != sample_dim)})
        return cls(dict(zip(names, moments[0::2], strict=True)), dict(zip(names, moments[1::2], strict=True)),
                   weights.astype(np.float64), features)

    def __call__(self, ds: xr.Dataset) -> xr.DataArray:
        parts = [(ds[name] - self.mean[name]) / self.std[name] for name in self.mean]
        stacked = xr.concat(parts, dim="_variable", coords="minimal", compat="override", join="override")
        first = stacked.isel({d: 0 for d in stacked.dims if d not in self.features}, drop=True)
        w = self.weights.broadcast_like(first).where(first.notnull(), 0.0)
        return stacked * np.sqrt(w / float(w.sum()))


def _summary(test: xr.Dataset) -> dict[str, Any]:
    return {k: (v if isinstance(v, (int, list)) else float(v)) for k, v in test.attrs.items()}


def successor_memorisation(
    train_members: xr.DataArray,
    train_truth: xr.DataArray,
    held_out_members: xr.DataArray | None = None,
    held_out_truth: xr.DataArray | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """The exchangeability test for draws from training states, its held-out reference, and a verdict.

    Args:
        train_members, held_out_members: ``(source, member, ...)`` standardised fields
            (:class:`Standardiser`).
        train_truth, held_out_truth: ``(source, ...)`` each source's true successor.

    Returns:
        ``{"train": summary, "held_out": summary or None, "verdict": str, "copying": bool}``;
        a summary as :func:`successor_test`'s attrs.
    """
    train = _summary(successor_test(train_members, train_truth, seed=seed))
    held = None
    if held_out_members is not None and held_out_truth is not None:
        held = _summary(successor_test(held_out_members, held_out_truth, seed=seed))
    copying, verdict = successor_verdict(train, held)
    return {"train": train, "held_out": held, "copying": copying, "verdict": verdict}


def _ratio(s: dict[str, Any]) -> str:
    lo, hi = s["distance_ratio_ci"]
    return f"{s['distance_ratio']:.2f} [{lo:.2f}, {hi:.2f}]"


def _dispersion(s: dict[str, Any]) -> str:
    lo, hi = s["distance_ratio_ci"]
    if lo > 1.0:
        return ("the members lie closer to each other than to the true successor: under-dispersed or "
                "biased draws")
    if hi < 1.0:
        return "the members spread wider than their distance to the true successor: over-dispersed draws"
    return "the true successor looks like one more member"


def successor_verdict(train: dict[str, Any], held_out: dict[str, Any] | None) -> tuple[bool, str]:
    """(copying, one sentence) from the train summary and, when there is one, the held-out one.

    Copying: the train distance ratio below ``COPYING_RATIO`` times the held-out one, with
    disjoint 95 % intervals. Without a held-out reference copying and over-dispersion cannot be
    told apart, and the sentence says so.
    """
    if held_out is not None:
        t_hi = train["distance_ratio_ci"][1]
        h_lo = held_out["distance_ratio_ci"][0]
        if t_hi < h_lo and train["distance_ratio"] < COPYING_RATIO * held_out["distance_ratio"]:
            return True, (
                f"memorisation: draws from training states sit closer to their true successors "
                f"(distance ratio {_ratio(train)}) than draws from unseen states (ratio "
                f"{_ratio(held_out)}): the model reproduces training transitions"
            )
        return False, (
            f"no sign of memorisation: draws from training states are no closer to their true successors "
            f"(distance ratio {_ratio(train)}) than draws from unseen states are to theirs (ratio "
            f"{_ratio(held_out)}); on unseen states {_dispersion(held_out)}"
        )
    if train["distance_ratio_ci"][1] < 1.0:
        return False, (
            f"undecided: the draws cluster on the true successors of training states more than on each "
            f"other (distance ratio {_ratio(train)}), which copying and over-dispersion both do; a "
            "forecast on held-out states (simdiff generate) tells them apart"
        )
    return False, f"no sign of memorisation (distance ratio {_ratio(train)}): {_dispersion(train)}"


def by_source(draws: xr.Dataset, sample_dim: str, source: np.ndarray) -> tuple[xr.Dataset, np.ndarray]:
    """Draws grouped by their source: ``(source, member, ...)`` over the sources with the most
    common count of at least 2 draws (the first ``M`` of each, in store order), and those sources.

    Returns:
        The grouped draws (an empty ``source`` dim when no source has 2 draws) and the sources.
    """
    source = np.asarray(source, dtype=np.int64)
    values, counts = np.unique(source[source >= 0], return_counts=True)
    many = counts >= 2
    if not many.any():
        return draws.isel({sample_dim: slice(0, 0)}), np.zeros(0, np.int64)
    m = int(np.min(counts[many]))
    chosen = values[many]
    rows = [np.flatnonzero(source == s)[:m] for s in chosen]
    grouped = draws.isel({sample_dim: np.concatenate(rows)})
    grouped = grouped.drop_vars([n for n, c in grouped.coords.items() if sample_dim in c.dims])
    return grouped.coarsen({sample_dim: m}).construct({sample_dim: ("source", "member")}), chosen
