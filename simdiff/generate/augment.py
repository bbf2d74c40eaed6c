"""Synthetic samples in the exact schema of the source: draws, the physical-bounds filter, the store.

What a synthetic sample is. With an unconditional model (``conditioning.previous = 0``) a
sample is a draw ``x ~ p(x | c)``, where ``c`` are the labels / covariates / time features of a
real sample of the split when the model uses them (none: ``p(x)``). With a forecaster
(``previous = W - 1 >= 1``, the default QG model) it is a one-step draw
``x' ~ p(x_{t+1} | x_{t-W+2..t})`` from a real state ``x_t`` of the split (with the conditions of
the real ``x_{t+1}``): another plausible next state of a real trajectory. Either way the real
sample behind a draw is recorded as ``source_index`` (its index in the training store; -1 when
there is none).

Keys. The draw of sample id ``k`` in round ``r`` (``r = 0`` first; ``r > 0`` redraws a sample the
filter rejected) takes all its noise from the stream keyed ``(seed, SAMPLE_INIT, k, r + 1)``
(:mod:`simdiff.generate.noise`) and picks its real source uniformly from the split's candidates
with a numpy generator seeded by the key ``(seed, SAMPLE_INIT, k, -(r + 1))`` (with
``draws_per_source = m > 1``, ids ``k`` with one ``k // m`` share a source, keyed by
``(seed, SAMPLE_INIT, k // m, -1)``, redraws included). So sample ``k`` is
the same whatever the other ids, the batch, the rank, or a resume; bit for bit with batch-invariant
sampling, which draws the first round in fixed groups of ids ``k // G`` (``augment.member_group``,
:func:`simdiff.generate.rollout.draw_samples`) and the redraws row by row.

The filter (:class:`BoundsFilter`) rejects a candidate when, at a valid cell, a value is
non-finite (``nonfinite``), a variable declared non-negative is < 0 (``negative``), a value lies
outside the domain of the variable's transform, e.g. < 0 under log1p (``domain``), or outside
``[min - m (max - min), max + m (max - min)]`` of the training split (``range``; per variable,
physical units, :func:`training_range`). A candidate failing several tests counts once per
reason.

Store (zarr v3 through :mod:`simdiff.generate.output`: partial beside the target, rank-sharded
writes, publish by rename; or netCDF-4)::

  VAR           float32 (S, [D], Y, X)  one per source variable, physical units, NaN at masked
                                        cells, the source's variable attrs; S is the source's
                                        sample dim (``time``, ``sample``).
  S             int64 (S)               the position 0..n-1: synthetic samples have no real time,
                                        so the sample coordinate is an integer index (real
                                        samples' store indices are in source_index).
  synthetic     bool (S)                True for a generated sample.
  sample_id     int64 (S)               the draw id k (noise key) of a synthetic sample; -1 real.
  source_index  int64 (S)               the real sample that conditioned it (synthetic), the
                                        sample itself (real, merged); -1 when none.
  draws         int32 (S)               candidates drawn until one passed the filter; 0 real.
  label, covariates, time_features      the conditions of each sample, where the model uses them.
  [D], Y, X                             the source's coordinates with their attrs.

  attrs: output_attrs() provenance, simdiff_mode = "augment", simdiff_synthetic = 1,
         simdiff_filter (JSON: the filter and the bounds used), simdiff_rejected (JSON:
         reason -> rejected candidates, and "total").
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr
import zarr

from simdiff.base.errors import DataError
from simdiff.data.stores.stats import denormalise, to_physical
from simdiff.data.stores.training import TrainingStore
from simdiff.data.transforms import Bounded, Transform
from simdiff.generate.noise import SAMPLE_INIT, member_seed
from simdiff.generate.output import FOLDED, partial_path
from simdiff.generate.template import WRITTEN

#: Why a candidate is rejected, in the order of the ``reject_reason`` axis.
REASONS = ("nonfinite", "negative", "domain", "range")
#: Per-sample variables besides the fields (conditions are added where used).
REJECTIONS = "rejections"
MODE = "augment"


# -- the filter -----------------------------------------------------------------------------
def training_range(store: TrainingStore, split: str = "train") -> xr.Dataset:
    """Per variable, the min and max over the valid cells of ``split`` in physical units.

    One dask pass over the store (out of core): the stored fields de-normalised
    (:func:`simdiff.data.stores.stats.denormalise`), masked cells NaN and skipped.

    Returns:
        Dataset with ``minimum`` and ``maximum`` over ``channel`` (float64).
    """
    ds = store.dataset()
    idx = store.indices(split)
    if not idx.size:
        raise DataError(f"{store.path}: the {split!r} split is empty, so it gives no value range; "
                        "choose another split for the filter's range")
    phys = denormalise(ds.isel({store.layout.sample_dim: idx}))
    names = store.variables
    lows = [da.nanmin(da.asarray(phys[n].data)) for n in names]
    highs = [da.nanmax(da.asarray(phys[n].data)) for n in names]
    lo, hi = dask.compute(lows, highs)
    return xr.Dataset(
        {"minimum": ("channel", np.asarray(lo, dtype=np.float64)),
         "maximum": ("channel", np.asarray(hi, dtype=np.float64))},
        coords={"channel": np.asarray(names, dtype=object)},
        attrs={"split": split},
    )


@dataclass(frozen=True)
class BoundsFilter:
    """The physical-bounds filter of synthetic samples (see the module docstring).

    Args:
        nonnegative: variables that must be >= 0 at every valid cell (precipitation, density).
        range_margin: ``m``: accept values in ``[min - m (max - min), max + m (max - min)]`` of the
            training split; None: no range test.
        transform_domain: reject values outside the domain of the variable's transform (e.g.
            negative values of a log1p variable, which the transform could not have produced
            from real data).
    """

    nonnegative: Sequence[str] = field(default_factory=tuple)
    range_margin: float | None = 0.1
    transform_domain: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "nonnegative", tuple(str(v) for v in self.nonnegative))
        if self.range_margin is not None and not self.range_margin >= 0:
            raise DataError(f"augment.filter.range_margin={self.range_margin}: must be >= 0 or null "
                            "(no range test)")

    def spec(self) -> dict[str, Any]:
        """Plain-data description (for the output attrs)."""
        d = asdict(self)
        d["nonnegative"] = list(self.nonnegative)
        return d

    def check_variables(self, variables: Sequence[str], origin: str) -> None:
        """Raise if ``nonnegative`` names a variable the data does not have."""
        unknown = [v for v in self.nonnegative if v not in variables]
        if unknown:
            raise DataError(f"{origin}: augment.filter.nonnegative names {unknown}, which the training "
                            f"store does not have (variables {list(variables)}); fix the list")

    def reasons(
        self,
        samples: xr.Dataset,
        bounds: xr.Dataset,
        mask: xr.DataArray,
        transforms: Mapping[str, Transform],
        sample_dim: str,
    ) -> xr.DataArray:
        """Which test each sample fails: bool ``(sample_dim, reject_reason)``.

        Args:
            samples: one variable per source variable ``(S, [D], Y, X)``, physical units, NaN at
                masked cells.
            bounds: from :func:`training_range`.
            mask: bool ``([D], Y, X)``, True at valid cells.
            transforms: variable -> transform (the training store's).
            sample_dim: S.
        """
        self.check_variables([str(v) for v in samples.data_vars], "the samples")
        n = samples.sizes[sample_dim]
        out = np.zeros((n, len(REASONS)), dtype=bool)
        for name in samples.data_vars:
            v = samples[name]
            cells = [d for d in v.dims if d != sample_dim]
            valid = mask.astype(bool)

            def anywhere(bad: xr.DataArray, valid: xr.DataArray = valid, cells: list = cells) -> np.ndarray:
                return np.asarray((bad & valid).any(cells).transpose(sample_dim).values)

            out[:, 0] |= anywhere(~np.isfinite(v))
            if name in self.nonnegative:
                out[:, 1] |= anywhere(v < 0)
            t = transforms.get(str(name))
            if self.transform_domain and isinstance(t, Bounded):
                out[:, 2] |= anywhere(xr.apply_ufunc(t.invalid, v.fillna(0)))
            if self.range_margin is not None:
                lo = float(bounds["minimum"].sel(channel=name))
                hi = float(bounds["maximum"].sel(channel=name))
                pad = self.range_margin * (hi - lo)
                out[:, 3] |= anywhere((v < lo - pad) | (v > hi + pad))
        return xr.DataArray(out, dims=(sample_dim, "reject_reason"),
                            coords={"reject_reason": list(REASONS)})


# -- drawing --------------------------------------------------------------------------------
def choose_sources(pool: np.ndarray, ids: Sequence[int], round_: int, seed: int,
                   per_source: int = 1) -> np.ndarray:
    """The real sample behind draw ``(id, round_)``: ``pool[u]``, u keyed by ``(seed, -1, id, -(round_+1))``.

    With ``per_source = m > 1`` the ids come in groups ``k // m`` that share one source, keyed by
    ``(seed, -1, k // m, -1)`` in every round (a redraw keeps its group's source): m draws of
    the next state of one real state, which the successor test of evaluate needs.

    Returns:
        (B,) int64 entries of ``pool`` (-1 for every id when ``pool`` is empty).
    """
    if not len(pool):
        return np.full(len(ids), -1, dtype=np.int64)
    if per_source < 1:
        raise DataError(f"augment.draws_per_source={per_source}; it must be >= 1")
    keys = [(int(k), -(round_ + 1)) if per_source == 1 else (int(k) // per_source, -1) for k in ids]
    picks = [np.random.default_rng(member_seed(seed, SAMPLE_INIT, k, r)).integers(len(pool)) for k, r in keys]
    return np.asarray(pool, dtype=np.int64)[np.asarray(picks, dtype=np.int64)]


def physical(fields: np.ndarray, store: TrainingStore, rows: np.ndarray | None = None) -> xr.Dataset:
    """Normalised fields (B, C, [D], Y, X) -> one variable per source variable (B, [D], Y, X);
    ``rows`` (B): the store sample each stands for, whose reference field it is relative to
    (needed by a store with references only)."""
    return to_physical(fields, store.layout.data_dims, store.dataset(), rows).load()


# -- the store ------------------------------------------------------------------------------
def augment_template(
    store: TrainingStore,
    n_real: int,
    ids: Sequence[int],
    conditions: Mapping[str, xr.DataArray],
) -> xr.Dataset:
    """The empty augmented store: ``n_real`` real rows then one row per synthetic id.

    Args:
        store: the training store (variables, attrs, grid).
        n_real: real samples first (0 without merge).
        ids: synthetic draw ids, unique.
        conditions: name -> a template of one sample's condition, e.g. ``label`` () int64,
            ``covariates`` (covariate,) float32 (with its coords).

    Returns:
        Lazy Dataset for :func:`simdiff.generate.output.create_partial`.
    """
    ids = np.asarray(ids, dtype=np.int64)
    if ids.ndim != 1 or np.unique(ids).size != ids.size or (ids < 0).any():
        raise DataError(f"augment.samples: the ids must be unique and >= 0, got {ids.tolist()}")
    src = store.dataset()
    sdim = store.layout.sample_dim
    spatial = store.layout.spatial_dims
    n = int(n_real) + ids.size
    shape = tuple(int(src.sizes[d]) for d in spatial)
    info = store.attrs.get("variables", {})
    variables: dict[str, Any] = {}
    for name in store.variables:
        variables[name] = ((sdim, *spatial), da.full((n, *shape), np.nan, dtype=np.float32,
                                                     chunks=(1, *shape)), dict(info.get(name, {})))

    def per_sample(dtype: Any, attrs: dict[str, Any], extra: tuple[str, ...] = (),
                   extra_shape: tuple[int, ...] = ()) -> tuple:
        return ((sdim, *extra), da.zeros((n, *extra_shape), dtype=dtype, chunks=(1, *extra_shape)), attrs)

    variables["synthetic"] = per_sample(bool, {"long_name": "True for a sample drawn by simdiff augment"})
    variables["sample_id"] = per_sample(np.int64, {"long_name": "draw id (noise key) of a synthetic sample; "
                                                                "-1 for a real one", "units": "1"})
    variables["source_index"] = per_sample(np.int64, {
        "long_name": f"index in the training store's {sdim} of the real sample that conditioned a synthetic "
                     "one (the real sample itself when merged); -1 if none", "units": "1"})
    variables["draws"] = per_sample(np.int32, {"long_name": "candidates drawn until one passed the "
                                                            "physical-bounds filter; 0 for a real sample",
                                               "units": "1"})
    variables[REJECTIONS] = per_sample(np.int32, {"long_name": "rejected candidates per reason"},
                                       ("reject_reason",), (len(REASONS),))
    coords: dict[str, Any] = {
        sdim: xr.Variable((sdim,), np.arange(n, dtype=np.int64),
                          {"long_name": f"sample index (real samples first, then synthetic ones; synthetic "
                                        f"samples have no real {sdim})"}),
        "reject_reason": np.asarray(REASONS, dtype=object),
    }
    for name, cond in conditions.items():
        variables[name] = per_sample(cond.dtype, dict(cond.attrs), tuple(cond.dims), tuple(cond.shape))
        coords.update({k: v.variable for k, v in cond.coords.items() if k in cond.dims})
    for d in spatial:
        if d in src.coords:
            v = src[d].variable.load().copy(deep=True)
            v.encoding = {}
            coords[d] = v
    variables[WRITTEN] = per_sample(np.int8, {"long_name": "1 where this sample is written",
                                              "flag_values": np.array([0, 1], dtype=np.int8),
                                              "flag_meanings": "missing written"})
    ds = xr.Dataset(variables, coords=coords)
    ds.attrs["simdiff_mode"] = MODE
    return ds


def write_rows(target: str | Path, rows: Mapping[int, Mapping[str, Any]], *, done: bool = True) -> None:
    """Write per-row values into the partial store of ``target``; mark the rows written if ``done``.

    Each row is its own chunk of every array, so ranks writing different rows need no lock.

    Args:
        target: the final path (the partial store beside it must exist).
        rows: position -> {variable: value of that row}; variables not given are left as they are.
        done: mark the rows written (False: e.g. only the rejection counts of a row still open).
    """
    g = zarr.open_group(str(partial_path(target)), mode="r+")
    for pos, values in rows.items():
        for name, value in values.items():
            g[name][pos] = np.asarray(value, dtype=g[name].dtype)
        if done:
            g[WRITTEN][pos] = 1


def open_rows(target: str | Path) -> list[int]:
    """Positions of the rows not yet written in the partial store of ``target``."""
    g = zarr.open_group(str(partial_path(target)), mode="r")
    if g.attrs.get("simdiff_complete") == 1 or WRITTEN not in g:
        return []
    return [int(p) for p in np.flatnonzero(np.asarray(g[WRITTEN][...]) == 0)]


def tally_rejections(target: str | Path) -> dict[str, int]:
    """Fold the per-row rejection counts into ``simdiff_rejected`` and drop them; returns the tally.

    Idempotent and safe to kill at any point: the tally and the names it drops
    (``simdiff_folded``, which :func:`simdiff.generate.output.create_partial` leaves out when it
    matches a resumed run's layout) are recorded in one attribute write before anything is
    deleted, and a re-run finishes the deletion.
    """
    g = zarr.open_group(str(partial_path(target)), mode="r+")
    if "simdiff_rejected" not in g.attrs:
        counts = np.asarray(g[REJECTIONS][...]).sum(axis=0)
        tally = {r: int(c) for r, c in zip(REASONS, counts, strict=True)}
        draws = np.asarray(g["draws"][...])
        tally["total"] = int((draws[draws > 0] - 1).sum())  # every candidate before the accepted one
        folded = json.dumps([REJECTIONS, "reject_reason"])
        # one metadata write for both: zarr's ``attrs.update`` writes one key at a time, and a kill
        # between the two left a tally without the folded names (a resumed layout then differed)
        g.update_attributes({"simdiff_rejected": json.dumps(tally), FOLDED: folded})
    for name in (REJECTIONS, "reject_reason"):
        if name in g:
            del g[name]
    return json.loads(g.attrs["simdiff_rejected"])
