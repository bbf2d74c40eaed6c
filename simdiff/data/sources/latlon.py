"""Geometry of lat/lon and projected y/x grids: orientation, periodicity, weights, validity.

Conventions (every climate Field follows them):

* **Latitude ascends** (south to north). Projected ``y`` and ``x`` ascend too, so an index
  step always moves in the direction its coordinate grows.
* **Longitude is contiguous and ascending, on the source's own convention.** A grid that
  is already ascending keeps its values (0..360 stays 0..360, -180..180 stays -180..180).
  A grid whose values wrap inside the file (e.g. ``350, 355, 0, 5`` or
  ``170, 175, -180, -175``) is unwrapped into one ascending run that starts in
  [-180, 180): ``-10, -5, 0, 5`` and ``170, 175, 180, 185``. Files of one source that hold
  the same cells in different conventions are put on the first file's longitudes by
  :func:`align_longitude` (a lazy re-indexing; the cells are matched modulo 360).
* **Periodic longitude** when the grid is uniform and ``n * dlon`` equals 360 degrees
  (within half a cell): the cells then tile the whole circle. CF attributes such as
  ``topology = "circular"`` or ``modulo = 360`` are *not* trusted: the eofs example files
  carry them on 122.5- and 150-degree sectors.
* **Weights** are ``cos(lat)`` at the cell centres, the area of a regular lat/lon cell up
  to a constant factor (the cell area is ``R^2 dlon [sin(lat + dlat/2) - sin(lat - dlat/2)]
  = 2 R^2 dlon sin(dlat/2) cos(lat)``). Rows *at* a pole (lat = +-90, as in ERA-Interim and
  NCEP grids) get ``cos(90 deg) ~ 6e-17``, i.e. no weight: a pole point represents no area.
  They are not masked; consumers that normalise weights by their mean are unaffected.
  Projected grids weigh every cell 1, which is exact for equal-area projections (the
  BoM radar grid is Albers equal-area) and a first-order approximation otherwise.
* **Validity mask**: a cell is valid unless some variable is NaN there at *every* time
  (land in SST, sea in WFDE5). Cells NaN only sometimes stay valid, so ``prepare`` reports
  them, unless the source asks to mask cells NaN at *any* time (``mask_any_nan``: the BoM
  radar has 65 one-off no-data pixels in a day). The mask is built lazily with dask and is
  small (``([level], y, x)``); call ``.compute()`` once where it is needed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr

from simdiff.base.errors import DataError
from simdiff.data.geometry import Geometry

LAT, LON = "lat", "lon"


def orient_ascending(ds: xr.Dataset, dim: str, where: str) -> xr.Dataset:
    """Return ``ds`` with coordinate ``dim`` strictly ascending (reversed lazily if descending).

    Raises DataError naming ``where`` (the file) when the coordinate is neither strictly
    ascending nor strictly descending (duplicated or shuffled cells).
    """
    values = np.asarray(ds[dim].values, dtype=float)
    if values.size < 2:
        return ds
    step = np.diff(values)
    if np.all(step > 0):
        return ds
    if np.all(step < 0):
        return ds.isel({dim: slice(None, None, -1)})
    bad = int(np.argmax(step <= 0) if values[1] > values[0] else np.argmax(step >= 0)) + 1
    raise DataError(
        f"{where}: coordinate {dim!r} is not monotonic: value {values[bad]:g} at index {bad} follows "
        f"{values[bad - 1]:g}; fix the file's {dim} axis (sort it and drop duplicated cells) first"
    )


def contiguous_longitude(ds: xr.Dataset, where: str) -> xr.Dataset:
    """Make ``lon`` one ascending run on the source convention (see the module docstring).

    Dims: any dataset with a ``lon`` dim; only that coordinate's values and order change.
    """
    lon = np.asarray(ds[LON].values, dtype=float)
    if lon.size < 2 or np.all(np.diff(lon) > 0):
        return ds
    if np.all(np.diff(lon) < 0):
        return contiguous_longitude(ds.isel({LON: slice(None, None, -1)}), where)
    # Wrapped inside the file: unwrap into one run starting in [-180, 180).
    unwrapped = np.rad2deg(np.unwrap(np.deg2rad(lon)))
    if not np.all(np.diff(unwrapped) > 0):
        raise DataError(
            f"{where}: longitudes are neither ascending nor a wrapped ascending run "
            f"(first values {lon[:6].tolist()}); sort the file's longitude axis first"
        )
    unwrapped -= 360.0 * np.floor((unwrapped[0] + 180.0) / 360.0)
    out = ds.assign_coords({LON: (LON, unwrapped.astype(ds[LON].dtype), ds[LON].attrs)})
    return out


def align_longitude(ds: xr.Dataset, reference: np.ndarray, where: str, reference_file: str) -> xr.Dataset:
    """Put ``ds`` on the ``reference`` longitudes, matching cells modulo 360 degrees (lazy).

    Raises DataError naming both files when the two grids hold different cells.
    """
    lon = np.asarray(ds[LON].values, dtype=float)
    ref = np.asarray(reference, dtype=float)
    if lon.shape == ref.shape and np.allclose(lon, ref, rtol=0, atol=1e-6):
        return ds
    if lon.shape == ref.shape:
        key = np.round(np.mod(lon, 360.0), 6)
        ref_key = np.round(np.mod(ref, 360.0), 6)
        order = {float(k): i for i, k in enumerate(key)}
        if len(order) == lon.size and all(float(k) in order for k in ref_key):
            idx = np.array([order[float(k)] for k in ref_key])
            return ds.isel({LON: idx}).assign_coords({LON: (LON, reference, ds[LON].attrs)})
    raise DataError(
        f"files disagree on the grid: {reference_file} has {ref.size} longitudes "
        f"[{ref[0]:g} .. {ref[-1]:g}], {where} has {lon.size} [{lon[0]:g} .. {lon[-1]:g}]; "
        "pass files on one grid (regrid them first, e.g. with xesmf or cdo remapbil)"
    )


def is_periodic_longitude(lon: Sequence[float] | np.ndarray | xr.DataArray) -> bool:
    """True when an ascending, uniform longitude axis tiles the full circle (n * dlon = 360)."""
    values = np.asarray(lon, dtype=float)
    if values.size < 3:
        return False
    step = np.diff(values)
    dlon = float(np.mean(step))
    if dlon <= 0 or not np.allclose(step, dlon, rtol=1e-3, atol=1e-6):
        return False
    return abs(values.size * dlon - 360.0) < 0.5 * dlon


def cos_lat_weights(lat: xr.DataArray) -> xr.DataArray:
    """cos(lat) at cell centres: (lat,) in degrees -> (lat,) weights in [0, 1]."""
    w = np.cos(np.deg2rad(np.asarray(lat.values, dtype=float)))
    return xr.DataArray(np.clip(w, 0.0, None), dims=(LAT,), coords={LAT: lat.values},
                        attrs={"long_name": "cos(latitude) cell weight", "units": "1"})


def validity_mask(data: xr.Dataset, sample_dim: str = "time", any_nan: bool = False) -> xr.DataArray:
    """Valid cells: (sample, [level], y, x) variables -> bool ([level], y, x), lazy with dask.

    A cell is invalid when some variable is NaN there at every sample (with ``any_nan``: at
    any sample, which also drops cells with sporadic gaps such as radar no-data pixels).
    """
    always_nan = [(var.isnull().any(sample_dim) if any_nan else var.isnull().all(sample_dim))
                  for var in data.data_vars.values()]
    invalid = always_nan[0]
    for other in always_nan[1:]:
        invalid = invalid | other
    mask = ~invalid
    rule = "at any time" if any_nan else "at every time"
    mask.attrs = {"long_name": f"valid cell (no variable is NaN there {rule})"}
    return mask.rename("mask")


def derive_geometry(data: xr.Dataset, sample_dim: str = "time", mask_any_nan: bool = False) -> Geometry:
    """Geometry of a canonical climate dataset (sample, [level], lat, lon) or (sample, [level], y, x).

    Periodic: ``lon`` when it tiles the circle; weights: cos(lat) broadcast over
    ``([level], lat, lon)``, or 1 on projected grids; mask: :func:`validity_mask` (``any_nan``
    from ``mask_any_nan``).
    """
    first = next(iter(data.data_vars.values()))
    dims = tuple(str(d) for d in first.dims[1:])
    shape = tuple(data.sizes[d] for d in dims)
    coords = {d: data[d].values for d in dims if d in data.coords}
    ones = xr.DataArray(np.ones(shape), dims=dims, coords=coords)
    periodic: set[str] = set()
    attrs: dict[str, object] = {}
    if dims[-2:] == (LAT, LON):
        weights = ones * cos_lat_weights(data[LAT])
        weights.attrs = {"long_name": "cos(latitude) cell weight", "units": "1"}
        if is_periodic_longitude(data[LON]):
            periodic.add(LON)
        attrs["grid"] = "latlon"
    else:
        weights = ones
        weights.attrs = {"long_name": "cell weight (equal-area cells)", "units": "1"}
        attrs["grid"] = "projected"
    return Geometry(
        dims=dims,
        periodic=frozenset(periodic),
        weights=weights.transpose(*dims),
        mask=validity_mask(data, sample_dim, any_nan=mask_any_nan).transpose(*dims),
        attrs=attrs,
    )
