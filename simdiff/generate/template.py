"""The empty output stores of ``simdiff generate``: coordinates, variables and their CF attributes.

:func:`forecast_template` and :func:`sample_template` build lazy (all-NaN, dask) Datasets with
the schema described in :mod:`simdiff.generate.output` from the training store the model was
trained on: the source's variables with their units and names, its spatial coordinates and
attrs (value ranges dropped), the realization/init/lead coordinates, and the ``written``
bookkeeping array, chunked one member and one init per chunk so ranks write without locks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

from simdiff.base.errors import DataError
from simdiff.data.stores.training import TrainingStore

WRITTEN = "written"
#: Variable attrs carried from the source onto generated data.
VARIABLE_ATTRS = ("units", "standard_name", "long_name")
#: Coordinate attrs that describe the source file's values, not the generated ones.
DROPPED_ATTRS = ("actual_range", "valid_range", "valid_min", "valid_max", "_FillValue")
_UNIT_DIMS = {"forecast": ("realization", "init_time"), "sample": ("realization",),
              "conditional": ("realization", "condition")}
#: Unit dims: chunked 1, so each rank writes its own chunks.
_ONE = ("realization", "init_time", "condition")
#: Per-sample conditions of the training store copied onto a conditional output (per condition).
COPIED_CONDITIONS = ("label", "n_electrons", "n_atoms", "atom_numbers", "atom_positions", "origin")


# -- the template ---------------------------------------------------------------------------
def _clean(attrs: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in attrs.items() if k not in DROPPED_ATTRS}


def _spatial(store: TrainingStore, src: xr.Dataset) -> tuple[tuple[str, ...], tuple[int, ...], dict]:
    dims = store.layout.spatial_dims
    shape = tuple(int(src.sizes[d]) for d in dims)
    coords = {}
    for d in dims:
        if d in src.coords:
            v = src[d].variable.load().copy(deep=True)
            v.attrs, v.encoding = _clean(v.attrs), {}
            coords[d] = v
    return dims, shape, coords


def _chunks(dims: Sequence[str], shape: Sequence[int], chunks: Mapping[str, int] | None) -> tuple[int, ...]:
    """Default 1 along realization/init_time, whole along the rest; ``chunks`` overrides the rest."""
    chunks = dict(chunks or {})
    for d in _ONE:
        if chunks.get(d, 1) != 1:
            raise ValueError(
                f"chunks[{d!r}] = {chunks[d]}: realization and init_time chunks must be 1, the unit "
                "each rank writes on its own (no two ranks may share a chunk)"
            )
    unknown = set(chunks) - set(dims)
    if unknown:
        raise ValueError(f"chunks names dims {sorted(unknown)} that the output does not have ({list(dims)})")
    return tuple(1 if d in _ONE else min(int(chunks.get(d, n)), n)
                 for d, n in zip(dims, shape, strict=True))


def _variables(store: TrainingStore, dims: tuple[str, ...], shape: tuple[int, ...],
               chunks: Mapping[str, int] | None, unit_dims: tuple[str, ...]) -> dict[str, Any]:
    blocks = _chunks(dims, shape, chunks)
    info = store.attrs.get("variables", {})
    out: dict[str, Any] = {}
    for name in store.variables:
        attrs = {k: info.get(name, {})[k] for k in VARIABLE_ATTRS if k in info.get(name, {})}
        out[name] = (dims, da.full(shape, np.nan, dtype=np.float32, chunks=blocks), attrs)
    unit_shape = shape[: len(unit_dims)]
    out[WRITTEN] = (unit_dims, da.zeros(unit_shape, dtype=np.int8, chunks=(1,) * len(unit_dims)),
                    {"long_name": "1 where the block of this member (and init) is written",
                     "flag_values": np.array([0, 1], dtype=np.int8), "flag_meanings": "missing written"})
    return out


def _modal_step(values: np.ndarray, sample_dim: str, path: Path) -> Any:
    if values.size < 2:
        raise DataError(f"{path}: {sample_dim} has {values.size} value(s); pass lead_step to set the "
                        "lead spacing")
    steps, counts = np.unique(np.diff(values), return_counts=True)
    return steps[np.argmax(counts)]


def forecast_template(
    store: TrainingStore,
    members: Sequence[int],
    init_indices: Sequence[int],
    lead_steps: Sequence[int],
    *,
    lead_step: Any = None,
    chunks: Mapping[str, int] | None = None,
) -> xr.Dataset:
    """The empty forecast store for ``store``: lazy NaN variables, coordinates, variable attrs.

    Args:
        store: the training store the model was trained on (names, units, grid, times).
        members: member ids (realization values), unique.
        init_indices: indices into the store's samples of the initial conditions, unique.
        lead_steps: lead steps ``k >= 0`` (in samples), unique and increasing.
        lead_step: the spacing of one step (timedelta64 for datetime stores, a number in the
            sample coordinate's unit otherwise); default: the most common sample spacing.
        chunks: chunk sizes for ``lead_time`` and the spatial dims (default whole).

    Returns:
        Dataset with ``VAR (realization, init_time, lead_time, [D], Y, X)`` and ``written
        (realization, init_time)``, lazy, ready for :func:`create_partial`.
    """
    src = store.dataset()
    sdim = store.layout.sample_dim
    if sdim not in src.coords:
        raise DataError(f"{store.path}: the store has no {sdim!r} coordinate, so forecasts have no init "
                        f"times; use sample mode (sample_template) instead")
    members, inits = _ids(members, "members"), _ids(init_indices, "init_indices")
    leads = _ids(lead_steps, "lead_steps")
    if inits.min() < 0 or inits.max() >= store.n_samples:
        raise ValueError(f"init_indices must lie in [0, {store.n_samples}), got {inits.tolist()}")
    if leads.min() < 0 or np.any(np.diff(leads) <= 0):
        raise ValueError(f"lead_steps must be >= 0 and increasing, got {leads.tolist()}")
    times = src[sdim].values
    tattrs = dict(src[sdim].attrs)
    units = str(tattrs.get("units", ""))
    is_datetime = np.issubdtype(times.dtype, np.datetime64)
    dated = is_datetime or " since " in units
    step = lead_step if lead_step is not None else _modal_step(times, sdim, store.path)
    lead_values = leads * step
    init_values = times[inits]
    block = store.array("block")
    # valid time: the store's own time k samples on while in the same contiguous run.
    later = inits[:, None] + leads[None, :]
    inside = (later < store.n_samples)
    inside[inside] &= block[later[inside]] == block[np.broadcast_to(inits[:, None], later.shape)[inside]]
    valid = init_values[:, None] + lead_values[None, :]
    valid[inside] = times[later[inside]]

    def tcoord(dims, values, long_name, standard_name):
        attrs = {"long_name": long_name} | ({"standard_name": standard_name} if dated else {})
        if not is_datetime:
            attrs.update({k: tattrs[k] for k in ("units", "calendar") if k in tattrs})
        var = xr.Variable(dims, values, attrs)
        if is_datetime and "calendar" in src[sdim].encoding:
            var.encoding = {"calendar": src[sdim].encoding["calendar"]}
        return var

    step_text = str(pd.Timedelta(step)) if is_datetime else f"{step} {units.split(' since ')[0]}".strip()
    lead_attrs = {"standard_name": "forecast_period", "long_name": f"lead time: {step_text} per lead step"}
    if not is_datetime and units:
        lead_attrs["units"] = units.split(" since ")[0].strip()
    spatial_dims, spatial_shape, spatial_coords = _spatial(store, src)
    dims = ("realization", "init_time", "lead_time", *spatial_dims)
    shape = (members.size, inits.size, leads.size, *spatial_shape)
    coords = {
        "realization": _realization(members),
        "init_time": tcoord(("init_time",), init_values, "initialisation time of the forecast",
                            "forecast_reference_time"),
        "init_index": xr.Variable(("init_time",), inits.astype(np.int32),
                                  {"long_name": f"index of the initial condition in the store's {sdim}",
                                   "units": "1"}),
        "lead_time": xr.Variable(("lead_time",), lead_values, lead_attrs),
        "valid_time": tcoord(("init_time", "lead_time"), valid, "time the forecast is valid for", "time"),
        **spatial_coords,
    }
    ds = xr.Dataset(_variables(store, dims, shape, chunks, _UNIT_DIMS["forecast"]), coords=coords)
    ds.attrs["simdiff_mode"] = "forecast"
    return ds


def sample_template(
    store: TrainingStore, members: Sequence[int], *, chunks: Mapping[str, int] | None = None
) -> xr.Dataset:
    """The empty store of unconditional samples: ``VAR (realization, [D], Y, X)`` and ``written``.

    Args:
        store: the training store the model was trained on (names, units, grid).
        members: sample ids (realization values), unique.
        chunks: chunk sizes for the spatial dims (default whole).
    """
    src = store.dataset()
    members = _ids(members, "members")
    spatial_dims, spatial_shape, spatial_coords = _spatial(store, src)
    dims = ("realization", *spatial_dims)
    shape = (members.size, *spatial_shape)
    ds = xr.Dataset(_variables(store, dims, shape, chunks, _UNIT_DIMS["sample"]),
                    coords={"realization": _realization(members), **spatial_coords})
    ds.attrs["simdiff_mode"] = "sample"
    return ds


def conditional_template(
    store: TrainingStore,
    members: Sequence[int],
    indices: Sequence[int],
    *,
    chunks: Mapping[str, int] | None = None,
) -> xr.Dataset:
    """The empty store of members drawn for the conditions of given samples (molecules).

    ``VAR (realization, condition, [D], Y, X)`` and ``written (realization, condition)``;
    coordinates ``condition_index (condition)`` (the store samples whose conditions were used)
    and the per-sample conditions of those samples (label, electron count, atoms), so each
    column says which molecule and geometry its members were drawn for.
    """
    src = store.dataset()
    sdim = store.layout.sample_dim
    members, idx = _ids(members, "members"), _ids(indices, "indices")
    if idx.min() < 0 or idx.max() >= store.n_samples:
        raise ValueError(f"indices must lie in [0, {store.n_samples}), got {idx.tolist()}")
    spatial_dims, spatial_shape, spatial_coords = _spatial(store, src)
    dims = ("realization", "condition", *spatial_dims)
    shape = (members.size, idx.size, *spatial_shape)
    coords: dict[str, Any] = {
        "realization": _realization(members),
        "condition_index": xr.Variable(
            ("condition",), idx.astype(np.int32),
            {"long_name": f"index of the conditioning sample in the store's {sdim}", "units": "1"}),
        **spatial_coords,
    }
    for name in COPIED_CONDITIONS:
        if name in src:
            var = src[name].isel({sdim: idx}).variable.load()
            coords[name] = xr.Variable(("condition", *var.dims[1:]), var.values, dict(var.attrs))
            for d in var.dims[1:]:
                if d in src.coords and d not in coords:
                    coords[d] = src[d].variable.load()
    ds = xr.Dataset(_variables(store, dims, shape, chunks, _UNIT_DIMS["conditional"]), coords=coords)
    ds.attrs["simdiff_mode"] = "conditional"
    return ds


def _ids(values: Sequence[int], name: str) -> np.ndarray:
    a = np.asarray(values, dtype=np.int64)
    if a.ndim != 1 or a.size == 0 or np.unique(a).size != a.size:
        raise ValueError(f"{name} must be a non-empty list of unique integers, got {list(values)}")
    return a


def _realization(members: np.ndarray) -> xr.Variable:
    return xr.Variable(("realization",), members.astype(np.int32),
                       {"standard_name": "realization", "long_name": "ensemble member id", "units": "1"})


# -- the partial store ----------------------------------------------------------------------
