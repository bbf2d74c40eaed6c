"""The prepare stage: Field -> run_dir/data/train.zarr (simdiff.data.stores.prepare)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import yaml
from zarr.codecs import BloscCodec

from simdiff.base.errors import DataError
from simdiff.base.provenance import sha256_path
from simdiff.data.field import Field, FieldSource
from simdiff.data.geometry import Geometry
from simdiff.data.stores.prepare import PrepareOptions, prepare, write_training_store
from simdiff.data.stores.stats import denormalise
from simdiff.data.stores.training import TrainingStore
from simdiff.data.transforms import Log1p, Transform

N, NY, NX = 40, 6, 8
OPTS = PrepareOptions(progress=False)
CONFIG = {"data": {"name": "synthetic", "variables": ["t2m", "tp"]}, "prepare": {"train": 0.8}}


def make_dataset(n: int = N, levels: int | None = None, seed: int = 0) -> tuple[xr.Dataset, np.ndarray]:
    """t2m (K, NaN over 'land') and tp (precipitation, >= 0, many zeros) on a lat/lon grid."""
    rng = np.random.default_rng(seed)
    lat = np.linspace(-60, 60, NY)
    lon = np.arange(NX) * 360.0 / NX
    shape = (n, *((levels,) if levels else ()), NY, NX)
    coslat = np.cos(np.deg2rad(lat))[:, None] * np.ones(NX)
    t2m = 250 + 40 * coslat + 3 * rng.standard_normal(shape)
    tp = rng.gamma(0.5, 1e-4, shape) * (rng.random(shape) > 0.5)
    mask = np.ones(shape[1:], bool)
    mask[..., 0, :3] = False
    t2m[:, ~mask] = np.nan
    dims = ("time", *(("level",) if levels else ()), "lat", "lon")
    coords = {"time": pd.date_range("2000-01-01", periods=n, freq="6h"), "lat": lat, "lon": lon}
    if levels:
        coords["level"] = np.linspace(1000, 200, levels)
    ds = xr.Dataset(
        {
            "t2m": (dims, t2m.astype(np.float32), {"units": "K", "standard_name": "air_temperature"}),
            "tp": (
                dims,
                tp.astype(np.float32),
                {"units": "kg m-2 s-1", "standard_name": "precipitation_flux"},
            ),
        },
        coords=coords,
    )
    ds["lat"].attrs["units"] = "degrees_north"
    return ds, mask


def make_field(ds: xr.Dataset, mask: np.ndarray, sources: tuple[str, ...] = ()) -> Field:
    spatial = ds["t2m"].dims[1:]
    coslat = np.cos(np.deg2rad(ds["lat"].values))[:, None] * np.ones(ds.sizes["lon"])
    geometry = Geometry(
        dims=spatial,
        periodic=frozenset({"lon"}),
        weights=xr.DataArray(np.broadcast_to(coslat, mask.shape), dims=spatial),
        mask=xr.DataArray(mask, dims=spatial),
    )
    hours = ds["time"].dt.hour.values * 2 * np.pi / 24
    conditions = xr.Dataset(
        {
            "time_features": (("time", "time_feature"), np.stack([np.sin(hours), np.cos(hours)], axis=1)),
            "label": ("time", np.arange(ds.sizes["time"]) % 3, {"label_names": ["a", "b", "c"]}),
        },
        coords={"time_feature": ["sin_hour", "cos_hour"]},
    )
    return Field(ds, geometry, conditions, sources)


class NetCDFSource:
    """A real (small) adapter: a netCDF file opened lazily with dask, with a fixed mask."""

    def __init__(self, path: Path, mask: np.ndarray, transforms: Mapping[str, Transform]) -> None:
        self.path, self.mask, self.transforms = path, mask, dict(transforms)

    def open(self) -> Field:
        ds = xr.open_dataset(self.path, chunks={})
        return make_field(ds, self.mask, sources=(str(self.path),))


def write_source(tmp_path: Path, ds: xr.Dataset, name: str = "in.nc") -> Path:
    path = tmp_path / name
    ds.to_netcdf(path)
    return path


@pytest.mark.parametrize("levels", [None, 3])
def test_round_trip_and_schema(tmp_path: Path, levels: int | None) -> None:
    ds, mask = make_dataset(levels=levels)
    field = make_field(ds, mask)
    tr = {"tp": Log1p(scale=1e-4)}
    path = write_training_store(
        field, tmp_path / "train.zarr", transforms=tr, options=OPTS, provenance={"note": "test"}
    )
    store = TrainingStore(path)
    sd = store.dataset()
    depth = ("level",) if levels else ()
    assert sd["data"].dims == ("time", "channel", *depth, "lat", "lon") and sd["data"].dtype == np.float32
    assert list(sd["channel"].values) == ["t2m", "tp"]
    assert sd["mean"].dims == ("channel", *depth) and sd["mean"].dtype == np.float32
    assert store.layout.depth_dim == (levels and "level")
    assert isinstance(store.transforms["tp"], Log1p) and store.transforms["tp"].scale == 1e-4
    assert store.attrs["variables"]["tp"]["units"] == "kg m-2 s-1"
    assert sd["lat"].attrs["units"] == "degrees_north"
    np.testing.assert_array_equal(store.array("mask"), mask)
    # de-normalised store == source, to float32 rounding; masked cells NaN
    back = denormalise(sd)
    for name in ("t2m", "tp"):
        orig = ds[name].values
        got = back[name].values
        np.testing.assert_allclose(got[:, mask], orig[:, mask], rtol=3e-6, atol=1e-10)
        assert np.isnan(got[:, ~mask]).all()
    data = store.data[...]
    assert np.all(data[:, :, ~mask] == 0) and np.all(np.isfinite(data))
    # the train split is standardised per channel and level
    train = data[store.indices("train")]
    for d in range(levels or 1):
        lvl = train[:, :, d] if levels else train
        m = mask[d] if levels else mask
        valid = lvl[:, :, m]  # (S_train, channel, valid cells)
        np.testing.assert_allclose(valid.mean(axis=(0, 2)), 0, atol=1e-5)
        np.testing.assert_allclose(valid.std(axis=(0, 2)), 1, rtol=1e-5)
    # conditions
    np.testing.assert_allclose(
        store.array("time_features"), field.conditions["time_features"].values, rtol=1e-6
    )
    assert store.array("label").dtype == np.int64 and sd["label"].attrs["label_names"] == ["a", "b", "c"]
    assert list(sd["time_feature"].values) == ["sin_hour", "cos_hour"]
    np.testing.assert_array_equal(store.split, [0] * 32 + [1] * 4 + [2] * 4)
    np.testing.assert_array_equal(store.array("block"), [0] * 32 + [1] * 4 + [2] * 4)


def test_voxel_grid_shares_one_normalisation_along_z(tmp_path: Path) -> None:
    """z is a spatial axis of one volume: its slices share one mean/std (levels do not)."""
    rng = np.random.default_rng(3)
    dims = ("sample", "z", "y", "x")
    rho = rng.gamma(2.0, 1.0, (12, 4, 5, 6)) * np.arange(1, 5)[None, :, None, None]  # z-dependent
    ds = xr.Dataset({"density": (dims, rho.astype(np.float32), {"units": "bohr-3"})})
    spatial = dims[1:]
    geometry = Geometry(
        dims=spatial, periodic=frozenset(), weights=xr.DataArray(np.ones((4, 5, 6)), dims=spatial),
        mask=xr.DataArray(np.ones((4, 5, 6), bool), dims=spatial),
    )
    path = write_training_store(
        Field(ds, geometry), tmp_path / "train.zarr", transforms={}, options=OPTS, provenance={}
    )
    store = TrainingStore(path)
    mean, std = store.array("mean")[0], store.array("std")[0]
    train = rho[store.indices("train")].astype(np.float64)
    np.testing.assert_allclose(mean, train.mean(), rtol=1e-6)
    np.testing.assert_allclose(std, train.std(), rtol=1e-6)


def test_a_reference_field_is_stored_and_the_store_denormalises_through_it(tmp_path: Path) -> None:
    """A Field with per-sample references (a density and its promolecule) gives a store whose
    ``reference`` array holds them, whose data are relative to them, and which denormalises
    back to the field; a reference outside the transform's domain is refused before writing."""
    rng = np.random.default_rng(4)
    dims = ("sample", "z", "y", "x")
    ref = rng.gamma(2.0, 1.0, (12, 4, 5, 6)) * 10.0 ** rng.integers(-4, 2, (12, 4, 5, 6))
    rho = ref * np.exp(0.1 * rng.standard_normal((12, 4, 5, 6)))
    ds = xr.Dataset({"density": (dims, rho.astype(np.float32), {"units": "bohr-3"})})
    reference = xr.Dataset({"density": (dims, ref.astype(np.float32))})
    spatial = dims[1:]
    geometry = Geometry(
        dims=spatial, periodic=frozenset(), weights=xr.DataArray(np.ones((4, 5, 6)), dims=spatial),
        mask=xr.DataArray(np.ones((4, 5, 6), bool), dims=spatial),
    )
    tr = {"density": Log1p(scale=1e-3)}
    path = write_training_store(Field(ds, geometry, reference=reference), tmp_path / "train.zarr",
                                transforms=tr, options=OPTS, provenance={})
    store = TrainingStore(path)
    stored = store.dataset()
    assert stored["reference"].dims == ("sample", "reference_channel", "z", "y", "x")
    assert list(stored["reference_channel"].values) == ["density"]
    np.testing.assert_array_equal(stored["reference"].values[:, 0], ref.astype(np.float32))
    rel = np.log1p(rho.astype(np.float32) / 1e-3) - np.log1p(ref.astype(np.float32) / 1e-3)
    np.testing.assert_allclose(store.array("std")[0], rel[store.indices("train")].std(), rtol=1e-5)
    np.testing.assert_allclose(denormalise(stored)["density"].values, rho, rtol=3e-5)
    bad = xr.Dataset({"density": (dims, -ref.astype(np.float32))})
    with pytest.raises(DataError, match=r"reference field of 'density' has 1440 values outside the domain"):
        write_training_store(Field(ds, geometry, reference=bad), tmp_path / "bad.zarr", transforms=tr,
                             options=OPTS, provenance={})
    assert not (tmp_path / "bad.zarr").exists()
    with pytest.raises(ValueError, match=r"Field.reference\['density'\] must be a reference"):
        Field(ds, geometry, reference=reference.isel(z=0))


def test_chunks_hold_whole_samples_near_target(tmp_path: Path) -> None:
    ds, mask = make_dataset()
    sample_bytes = 2 * NY * NX * 4  # 384 B
    opts = PrepareOptions(progress=False, chunk_mb=0.002, cname="zstd", clevel=3)
    store = TrainingStore(
        write_training_store(
            make_field(ds, mask), tmp_path / "t.zarr", transforms={}, options=opts, provenance={}
        )
    )
    assert store.data.chunks == (2000 // sample_bytes, 2, NY, NX)
    (codec,) = store.data.compressors
    assert isinstance(codec, BloscCodec) and codec.cname.value == "zstd" and codec.clevel == 3
    big = PrepareOptions(progress=False, chunk_mb=1e-5)  # smaller than one sample: 1 per chunk
    store1 = TrainingStore(
        write_training_store(
            make_field(ds, mask), tmp_path / "t1.zarr", transforms={}, options=big, provenance={}
        )
    )
    assert store1.chunk_samples == 1
    np.testing.assert_array_equal(store1.data[...], store.data[...])


def test_prepare_writes_provenance_and_skips_when_up_to_date(tmp_path: Path) -> None:
    ds, mask = make_dataset()
    src = NetCDFSource(write_source(tmp_path, ds), mask, {"tp": Log1p(1e-4)})
    assert isinstance(src, FieldSource)
    run = tmp_path / "run"
    path = prepare(src, run, options=OPTS, config=CONFIG)
    assert path == run / "data" / "train.zarr"
    store = TrainingStore(path)
    prov = store.attrs["provenance"]
    (rec,) = prov["sources"]
    assert rec["sha256"] == hashlib.sha256(src.path.read_bytes()).hexdigest()
    assert rec["bytes"] == src.path.stat().st_size and rec["path"] == str(src.path)
    assert yaml.safe_load(prov["config"]) == CONFIG
    assert yaml.safe_load((run / "data" / "config.yaml").read_text()) == CONFIG
    assert prov["created"].endswith("+00:00") and "simdiff_version" in prov
    assert sorted(p.name for p in run.iterdir()) == ["data"]
    # same config: up to date, nothing rewritten
    created = prov["created"]
    stamp = (path / "zarr.json").stat().st_mtime_ns
    assert prepare(src, run, options=OPTS, config=CONFIG) == path
    assert (path / "zarr.json").stat().st_mtime_ns == stamp
    assert TrainingStore(path).attrs["provenance"]["created"] == created


def test_different_config_refuses_unless_forced(tmp_path: Path) -> None:
    ds, mask = make_dataset()
    src = NetCDFSource(write_source(tmp_path, ds), mask, {})
    run = tmp_path / "run"
    prepare(src, run, options=OPTS, config=CONFIG)
    new = {**CONFIG, "prepare": {"train": 0.7}}
    with pytest.raises(DataError, match=r"different config:\n  prepare.train: 0.8 -> 0.7\n.*force=true"):
        prepare(src, run, options=OPTS, config=new)
    assert TrainingStore(run / "data" / "train.zarr").split.tolist().count(0) == 32
    opts = PrepareOptions(split={"train": 0.7, "val": 0.15, "test": 0.15}, progress=False)
    prepare(src, run, options=opts, config=new, force=True)
    assert TrainingStore(run / "data" / "train.zarr").split.tolist().count(0) == 28
    assert yaml.safe_load((run / "data" / "config.yaml").read_text()) == new
    assert sorted(p.name for p in run.iterdir()) == ["data"]


def _assert_nothing_left(run: Path) -> None:
    assert not run.exists() or not any(run.iterdir()), sorted(run.iterdir())


def test_nan_at_valid_cell_fails_and_leaves_nothing(tmp_path: Path) -> None:
    ds, mask = make_dataset()
    ds["t2m"][7, 3, 4] = np.nan
    src = NetCDFSource(write_source(tmp_path, ds), mask, {})
    run = tmp_path / "run"
    with pytest.raises(
        DataError,
        match=r"in.nc: variable 't2m' has 1 NaN/inf.*time=2000-01-02T18:00.*"
        r"\(index 7\).*cell index \(3, 4\)",
    ):
        prepare(src, run, options=OPTS, config=CONFIG)
    _assert_nothing_left(run)


def test_failed_forced_rerun_keeps_the_old_store(tmp_path: Path) -> None:
    ds, mask = make_dataset()
    run = tmp_path / "run"
    prepare(NetCDFSource(write_source(tmp_path, ds), mask, {}), run, options=OPTS, config=CONFIG)
    bad = ds.copy(deep=True)
    bad["tp"][30, 2, 2] = -1.0
    src = NetCDFSource(write_source(tmp_path, bad, "bad.nc"), mask, {"tp": Log1p(1e-4)})
    with pytest.raises(DataError, match=r"variable 'tp' has 1 values outside the domain"):
        prepare(src, run, options=OPTS, config={"other": 1}, force=True)
    assert sorted(p.name for p in run.iterdir()) == ["data"]
    assert yaml.safe_load((run / "data" / "config.yaml").read_text()) == CONFIG
    TrainingStore(run / "data" / "train.zarr").dataset()


def test_constant_variable_fails_and_leaves_nothing(tmp_path: Path) -> None:
    ds, mask = make_dataset()
    ds["sst"] = xr.full_like(ds["t2m"], 271.35)
    src = NetCDFSource(write_source(tmp_path, ds), mask, {})
    run = tmp_path / "run"
    with pytest.raises(DataError, match=r"variable 'sst' is constant.*drop it from data.variables"):
        prepare(src, run, options=OPTS, config=CONFIG)
    _assert_nothing_left(run)


def test_too_few_samples(tmp_path: Path) -> None:
    ds, mask = make_dataset(n=6)
    src = NetCDFSource(write_source(tmp_path, ds), mask, {})
    with pytest.raises(DataError, match=r"in.nc: 6 samples are too few"):
        prepare(src, tmp_path / "run", options=OPTS, config=CONFIG)
    _assert_nothing_left(tmp_path / "run")


def test_bad_options_are_refused() -> None:
    with pytest.raises(ValueError, match="sum to 1"):
        PrepareOptions(split={"train": 0.5, "val": 0.1, "test": 0.1})
    with pytest.raises(ValueError, match="must name exactly"):
        PrepareOptions(split={"train": 0.9, "test": 0.1})
    with pytest.raises(ValueError):
        PrepareOptions(cname="nope")


def test_directory_checksum_covers_names_and_bytes(tmp_path: Path) -> None:
    d = tmp_path / "src.zarr"
    (d / "a").mkdir(parents=True)
    (d / "a" / "0").write_bytes(b"xyz")
    (d / "zarr.json").write_text("{}")
    digest, size = sha256_path(d)
    assert size == 5
    (d / "a" / "0").rename(d / "a" / "1")
    assert sha256_path(d)[0] != digest
    with pytest.raises(DataError, match="does not exist"):
        sha256_path(tmp_path / "missing.nc")


def test_a_chunk_of_zeros_is_on_disk_and_the_store_opens(tmp_path: Path) -> None:
    """A sample NaN at every masked cell and at the channel means elsewhere normalises to all 0s.
    zarr leaves out a chunk equal to the fill value unless told to write empty chunks; the reader
    refuses a store with a chunk of data absent, so the writer must have put that chunk on disk."""
    ds, mask = make_dataset()
    train = int(N * 0.8)  # OPTS: the first 32 samples are train
    pm = np.where(np.arange(N) % 2, 1.0, -1.0)  # +-1 around 0 in pairs: the train means are exactly 0
    pm[0] = pm[train - 1] = 0.0  # sample 0: the means (its pair partner too, to keep the balance)
    for name in ("t2m", "tp"):
        values = np.broadcast_to(pm[:, None, None], ds[name].shape).astype(np.float32).copy()
        values[:, ~mask] = np.nan
        ds[name] = (ds[name].dims, values, ds[name].attrs)
    opts = PrepareOptions(progress=False, chunk_mb=1e-5)  # one sample per chunk
    path = write_training_store(make_field(ds, mask), tmp_path / "t.zarr", transforms={}, options=opts,
                                provenance={})
    store = TrainingStore(path)
    assert store.chunk_samples == 1
    np.testing.assert_array_equal(store.array("mean"), 0.0)
    assert not store.data[0].any() and store.data[1][:, mask].all()  # chunk 0 holds nothing but 0s
    assert store.data.nchunks_initialized == store.data.nchunks == N


def test_a_lost_chunk_of_data_is_refused(tmp_path: Path) -> None:
    ds, mask = make_dataset()
    opts = PrepareOptions(progress=False, chunk_mb=1e-5)
    path = write_training_store(make_field(ds, mask), tmp_path / "t.zarr", transforms={}, options=opts,
                                provenance={})
    chunk = path / "data" / "c" / "5" / "0" / "0" / "0"
    assert chunk.is_file()
    chunk.unlink()
    with pytest.raises(DataError, match=r"t.zarr: array data has 1 of its 40 chunks missing"):
        TrainingStore(path)
