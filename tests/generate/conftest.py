"""Tiny real training stores for the generation tests, written by simdiff.data.stores.prepare."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from simdiff.base.provenance import provenance
from simdiff.data.field import Field
from simdiff.data.geometry import Geometry
from simdiff.data.stores.prepare import PrepareOptions, write_training_store
from simdiff.data.stores.training import TrainingStore

N = 24


def _field(ds: xr.Dataset, mask: np.ndarray, periodic: frozenset[str], weights: np.ndarray) -> Field:
    spatial = next(iter(ds.data_vars.values())).dims[1:]
    geometry = Geometry(
        dims=spatial,
        periodic=periodic,
        weights=xr.DataArray(np.broadcast_to(weights, mask.shape), dims=spatial),
        mask=xr.DataArray(mask, dims=spatial),
    )
    return Field(ds, geometry)


def _write(field: Field, path: Path) -> TrainingStore:
    write_training_store(field, path, transforms={}, options=PrepareOptions(progress=False),
                         provenance=provenance([], {"data": {"name": path.parent.name}}))
    return TrainingStore(path)


@pytest.fixture(scope="session")
def latlon_store(tmp_path_factory: pytest.TempPathFactory) -> TrainingStore:
    """6-hourly t2m (NaN over 'land') and tp on a 5 x 8 lat/lon grid, datetime time."""
    rng = np.random.default_rng(0)
    lat, lon = np.linspace(-60, 60, 5), np.arange(8) * 45.0
    mask = np.ones((5, 8), bool)
    mask[0, :3] = False
    t2m = 280 + 5 * rng.standard_normal((N, 5, 8))
    t2m[:, ~mask] = np.nan
    tp = rng.gamma(0.5, 1e-4, (N, 5, 8))
    ds = xr.Dataset(
        {
            "t2m": (("time", "lat", "lon"), t2m.astype(np.float32),
                    {"units": "K", "standard_name": "air_temperature", "long_name": "2 m temperature",
                     "actual_range": [270.0, 290.0]}),
            "tp": (("time", "lat", "lon"), tp.astype(np.float32),
                   {"units": "kg m-2 s-1", "standard_name": "precipitation_flux"}),
        },
        coords={
            "time": pd.date_range("2000-01-01", periods=N, freq="6h"),
            "lat": ("lat", lat, {"units": "degrees_north", "standard_name": "latitude", "axis": "Y",
                                 "actual_range": [-60.0, 60.0]}),
            "lon": ("lon", lon, {"units": "degrees_east", "standard_name": "longitude", "axis": "X"}),
        },
    )
    coslat = np.cos(np.deg2rad(lat))[:, None] * np.ones(8)
    path = tmp_path_factory.mktemp("latlon") / "train.zarr"
    return _write(_field(ds, mask, frozenset({"lon"}), coslat), path)


@pytest.fixture(scope="session")
def model_time_store(tmp_path_factory: pytest.TempPathFactory) -> TrainingStore:
    """Two-layer q on a 4 x 6 periodic y/x grid; time in model days (no reference date)."""
    rng = np.random.default_rng(1)
    q = rng.standard_normal((N, 2, 4, 6)) * 1e-5
    ds = xr.Dataset(
        {"q": (("time", "level", "y", "x"), q.astype(np.float32),
               {"units": "s-1", "long_name": "potential vorticity"})},
        coords={
            "time": ("time", 5.0 * np.arange(N), {"units": "days", "long_name": "model time"}),
            "level": ("level", np.array([1, 2], np.int32), {"long_name": "layer"}),
            "y": ("y", 1e4 * np.arange(4), {"units": "m", "axis": "Y"}),
            "x": ("x", 1e4 * np.arange(6), {"units": "m", "axis": "X"}),
        },
    )
    path = tmp_path_factory.mktemp("model_time") / "train.zarr"
    return _write(_field(ds, np.ones((2, 4, 6), bool), frozenset({"x", "y"}), np.ones((4, 6))), path)
