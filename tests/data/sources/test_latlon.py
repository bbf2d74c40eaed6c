"""Grid geometry: orientation, longitude conventions, periodicity, cos-lat weights, validity mask."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from simdiff.base.errors import DataError
from simdiff.data.sources.latlon import (
    align_longitude,
    contiguous_longitude,
    cos_lat_weights,
    derive_geometry,
    is_periodic_longitude,
    orient_ascending,
    validity_mask,
)


def _grid(lat: np.ndarray, lon: np.ndarray, nt: int = 3) -> xr.Dataset:
    """A (time, lat, lon) field whose value encodes its cell: 1000 * lat + lon."""
    values = 1000.0 * lat[:, None] + lon[None, :]
    data = np.broadcast_to(values, (nt, lat.size, lon.size)).copy()
    return xr.Dataset({"f": (("time", "lat", "lon"), data)},
                      coords={"time": np.arange(nt), "lat": lat, "lon": lon})


@pytest.mark.parametrize(("lon", "periodic"), [
    (np.arange(0.0, 360.0, 2.5), True),
    (np.arange(-180.0, 180.0, 0.75), True),
    (np.arange(0.5, 360.0, 1.0), True),
    (np.arange(-80.0, 40.1, 2.5), False),     # a sector
    (np.arange(0.0, 357.5, 2.5), False),      # one cell short of the circle
    (np.r_[np.arange(0.0, 180.0, 2.0), np.arange(181.0, 360.0, 2.0)], False),  # not uniform
])
def test_periodic_longitude_needs_a_uniform_grid_tiling_the_circle(lon: np.ndarray, periodic: bool) -> None:
    assert is_periodic_longitude(lon) is periodic


def test_descending_latitude_is_flipped_with_its_data() -> None:
    ds = _grid(np.array([30.0, 20.0, 10.0]), np.array([0.0, 1.0]))
    out = orient_ascending(ds, "lat", "f.nc")
    np.testing.assert_array_equal(out["lat"].values, [10.0, 20.0, 30.0])
    np.testing.assert_array_equal(out["f"].values[0, :, 0], [10000.0, 20000.0, 30000.0])


def test_duplicated_latitude_is_an_error_naming_the_file() -> None:
    ds = _grid(np.array([10.0, 20.0, 20.0, 30.0]), np.array([0.0]))
    with pytest.raises(DataError, match=r"f\.nc: coordinate 'lat' is not monotonic: value 20 at index 2 "
                                        r"follows 20"):
        orient_ascending(ds, "lat", "f.nc")


@pytest.mark.parametrize(("lon", "expected"), [
    ([350.0, 355.0, 0.0, 5.0], [-10.0, -5.0, 0.0, 5.0]),
    ([170.0, 175.0, -180.0, -175.0], [170.0, 175.0, 180.0, 185.0]),
    ([0.0, 90.0, 180.0, 270.0], [0.0, 90.0, 180.0, 270.0]),       # already ascending: kept
    ([5.0, 0.0, -5.0], [-5.0, 0.0, 5.0]),                          # descending: reversed
])
def test_longitude_is_made_one_ascending_run(lon: list[float], expected: list[float]) -> None:
    ds = _grid(np.array([0.0]), np.array(lon))
    out = contiguous_longitude(ds, "f.nc")
    np.testing.assert_array_equal(out["lon"].values, expected)
    # the data follow their cells: value - 1000*lat is the source longitude, equal modulo 360
    np.testing.assert_allclose(np.mod(out["f"].values[0, 0], 360.0), np.mod(expected, 360.0))


def test_align_longitude_matches_cells_modulo_360_or_names_both_files() -> None:
    ref = np.arange(0.0, 360.0, 90.0)
    other = _grid(np.array([0.0]), np.array([-180.0, -90.0, 0.0, 90.0]))
    out = align_longitude(other, ref, "b.nc", "a.nc")
    np.testing.assert_array_equal(out["lon"].values, ref)
    np.testing.assert_array_equal(np.mod(out["f"].values[0, 0], 360.0), ref)
    with pytest.raises(DataError, match=r"a\.nc has 4 longitudes .* b\.nc has 3"):
        align_longitude(_grid(np.array([0.0]), np.array([0.0, 90.0, 180.0])), ref, "b.nc", "a.nc")


def test_cos_lat_weights_vanish_at_the_poles() -> None:
    lat = xr.DataArray(np.array([-90.0, -60.0, 0.0, 60.0, 90.0]), dims="lat")
    w = cos_lat_weights(lat).values
    np.testing.assert_allclose(w, [0.0, 0.5, 1.0, 0.5, 0.0], atol=1e-15)
    assert np.all(w >= 0)


def test_validity_mask_flags_cells_nan_at_every_time_in_any_variable() -> None:
    ds = _grid(np.array([0.0, 10.0]), np.array([0.0, 1.0, 2.0]))
    f = ds["f"].values
    f[:, 0, 0] = np.nan          # land: NaN at every time
    f[1, 0, 1] = np.nan          # a missing value once: still valid
    g = np.ones_like(f)
    g[:, 1, 2] = np.nan          # invalid in the second variable only
    ds = ds.assign(f=(ds["f"].dims, f), g=(ds["f"].dims, g)).chunk({"time": 1})
    mask = validity_mask(ds)
    assert mask.chunks is not None  # lazy
    np.testing.assert_array_equal(mask.values, [[False, True, True], [True, True, False]])
    strict = validity_mask(ds, any_nan=True)
    np.testing.assert_array_equal(strict.values, [[False, False, True], [True, True, False]])


def test_derive_geometry_latlon_and_projected() -> None:
    lat, lon = np.array([-45.0, 0.0, 45.0]), np.arange(0.0, 360.0, 90.0)
    geo = derive_geometry(_grid(lat, lon))
    assert geo.dims == ("lat", "lon") and geo.periodic == frozenset({"lon"})
    np.testing.assert_allclose(geo.weights.values[:, 0], np.cos(np.deg2rad(lat)))
    proj = xr.Dataset({"p": (("time", "y", "x"), np.zeros((2, 3, 4)))},
                      coords={"y": np.arange(3.0), "x": np.arange(4.0)})
    geo = derive_geometry(proj)
    assert geo.dims == ("y", "x") and geo.periodic == frozenset()
    assert np.all(geo.weights.values == 1.0) and bool(geo.mask.all())
