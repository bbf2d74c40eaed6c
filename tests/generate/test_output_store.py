"""The generated-ensemble store (simdiff.generate.output): schema, sharded writes, resume, publish."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr

from simdiff.base.errors import DataError
from simdiff.data.stores.training import TrainingStore
from simdiff.generate.output import (
    create_partial,
    finalize,
    is_complete,
    missing,
    output_attrs,
    partial_path,
    write_block,
)
from simdiff.generate.template import forecast_template, sample_template

MEMBERS, INITS, LEADS = [0, 1, 2], [2, 5], [0, 1, 3]
REPO = Path(__file__).resolve().parents[2]


def attrs(config: str = "generate:\n  members: 3\n") -> dict:
    return output_attrs(config=config, checksums={"train.zarr": "ab" * 32, "diffusion.ckpt": "cd" * 32},
                        seed=7, title="test ensemble", command="simdiff generate run_dir=x")


def block_values(template: xr.Dataset, members: list[int], init: int | None) -> xr.Dataset:
    """Distinct physical values per (member, init, lead, cell), NaN where the source is masked."""
    first = template.drop_vars("written")
    if "init_time" in first.dims:
        first = first.isel(init_time=0, drop=True)
    first = first.sel(realization=members)
    out = {}
    for k, name in enumerate(first.data_vars):
        shape = first[name].shape
        v = np.arange(np.prod(shape), dtype=np.float64).reshape(shape) * 0.25 + 1000 * (init or 0) + k
        v = v + 1e4 * np.asarray(members).reshape((-1,) + (1,) * (len(shape) - 1))
        out[name] = first[name].copy(data=v.astype(np.float32))
    return xr.Dataset(out)


def masked(store: TrainingStore, ds: xr.Dataset) -> xr.Dataset:
    """NaN where the store's mask is False, as denormalise gives."""
    mask = xr.DataArray(store.array("mask"), dims=store.layout.spatial_dims)
    return ds.where(mask)


def test_template_coordinates_and_attrs(latlon_store: TrainingStore) -> None:
    t = forecast_template(latlon_store, MEMBERS, INITS, LEADS)
    assert t["t2m"].dims == ("realization", "init_time", "lead_time", "lat", "lon")
    assert t["t2m"].dtype == np.float32 and t["t2m"].data.chunksize == (1, 1, 3, 5, 8)
    assert t["realization"].attrs["standard_name"] == "realization"
    times = latlon_store.dataset()["time"].values
    np.testing.assert_array_equal(t["init_time"].values, times[INITS])
    assert t["init_time"].attrs["standard_name"] == "forecast_reference_time"
    np.testing.assert_array_equal(t["lead_time"].values, np.array(LEADS) * np.timedelta64(6, "h"))
    assert t["lead_time"].attrs["standard_name"] == "forecast_period"
    # uniform 6-hourly store: valid time is init + lead, and the store's own time where it exists
    init_plus_lead = t["init_time"].values[:, None] + t["lead_time"].values
    np.testing.assert_array_equal(t["valid_time"].values, init_plus_lead)
    np.testing.assert_array_equal(t["valid_time"].values[1], times[[5, 6, 8]])
    assert t["t2m"].attrs == {"units": "K", "standard_name": "air_temperature",
                              "long_name": "2 m temperature"}
    assert "actual_range" not in t["lat"].attrs and t["lat"].attrs["units"] == "degrees_north"
    assert t["written"].dims == ("realization", "init_time")


def test_valid_time_uses_store_times_and_extrapolates_past_the_end(latlon_store: TrainingStore) -> None:
    n = latlon_store.n_samples
    t = forecast_template(latlon_store, [0], [n - 2], [0, 1, 2, 4])
    times = latlon_store.dataset()["time"].values
    six = np.timedelta64(6, "h")
    np.testing.assert_array_equal(t["valid_time"].values[0],
                                  [times[n - 2], times[n - 1], times[n - 1] + six, times[n - 1] + 3 * six])


def test_model_time_has_no_invented_reference_date(model_time_store: TrainingStore) -> None:
    t = forecast_template(model_time_store, [0], [1], [0, 2])
    assert "standard_name" not in t["init_time"].attrs and t["init_time"].attrs["units"] == "days"
    assert t["lead_time"].attrs["units"] == "days"
    assert t["lead_time"].attrs["standard_name"] == "forecast_period"
    np.testing.assert_array_equal(t["lead_time"].values, [0.0, 10.0])
    assert t["q"].dims == ("realization", "init_time", "lead_time", "level", "y", "x")


def test_two_ranks_write_then_publish_zarr(latlon_store: TrainingStore, tmp_path: Path) -> None:
    target = tmp_path / "forecast.zarr"
    t = forecast_template(latlon_store, MEMBERS, INITS, LEADS)
    partial = create_partial(target, t, attrs())
    assert partial == partial_path(target) and not target.exists()
    assert len(missing(target)) == 6
    expected = {}
    # "rank 0" writes members 0 and 2, "rank 1" member 1, for both inits
    for init in INITS:
        for members in ([0, 2], [1]):
            blk = masked(latlon_store, block_values(t, members, init))
            write_block(target, blk, init=init)
            expected[(tuple(members), init)] = blk
    assert missing(target) == []
    assert not is_complete(partial)
    assert finalize(target) == target
    assert is_complete(target) and not partial.exists()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # consolidated metadata: open_zarr needs no fallback
        ds = xr.open_zarr(target)
    assert "written" not in ds and ds.attrs["simdiff_complete"] == 1
    for (members, init), blk in expected.items():
        got = ds[["t2m", "tp"]].sel(realization=list(members)).isel(init_time=INITS.index(init), drop=True)
        xr.testing.assert_equal(got.drop_vars("valid_time").load().reset_coords(drop=True),
                                blk.reset_coords(drop=True).transpose(*got["t2m"].dims))
    mask = latlon_store.array("mask")
    for name in ("t2m", "tp"):  # NaN exactly at the masked cells
        np.testing.assert_array_equal(np.isnan(ds[name].values), np.broadcast_to(~mask, ds[name].shape))
    assert json.loads(ds.attrs["simdiff_sha256"])["train.zarr"] == "ab" * 32
    assert ds.attrs["simdiff_seed"] == 7 and ds.attrs["Conventions"] == "CF-1.10"


def test_partial_is_never_complete_and_finalize_refuses_gaps(
    latlon_store: TrainingStore, tmp_path: Path
) -> None:
    target = tmp_path / "forecast.zarr"
    t = forecast_template(latlon_store, MEMBERS, INITS, LEADS)
    create_partial(target, t, attrs())
    write_block(target, block_values(t, [1], 5), init=5)
    assert not is_complete(partial_path(target)) and not is_complete(target)
    with pytest.raises(DataError, match=r"5 \(member, init\) blocks are not written"):
        finalize(target)
    assert not target.exists()


def test_resume_lists_exactly_the_missing_pairs(latlon_store: TrainingStore, tmp_path: Path) -> None:
    target = tmp_path / "forecast.zarr"
    t = forecast_template(latlon_store, MEMBERS, INITS, LEADS)
    create_partial(target, t, attrs())
    first = block_values(t, [0, 1], 5)
    write_block(target, first, init=5)
    write_block(target, block_values(t, [2], 2), init=2)
    # the run is killed here; a re-run with the same config reuses the partial store
    again = create_partial(target, forecast_template(latlon_store, MEMBERS, INITS, LEADS), attrs())
    assert missing(target) == [(0, 2), (1, 2), (2, 5)]
    kept = xr.open_zarr(again, consolidated=False)["tp"].sel(realization=[0, 1]).isel(init_time=1).load()
    np.testing.assert_array_equal(kept.values, first["tp"].values)


def test_config_mismatch_is_refused_unless_forced(latlon_store: TrainingStore, tmp_path: Path) -> None:
    target = tmp_path / "forecast.zarr"
    t = forecast_template(latlon_store, MEMBERS, INITS, LEADS)
    create_partial(target, t, attrs())
    write_block(target, block_values(t, [0], 2), init=2)
    with pytest.raises(DataError, match=r"different config.*force"):
        create_partial(target, t, attrs("generate:\n  members: 4\n"))
    other = forecast_template(latlon_store, [0, 1], INITS, LEADS)
    with pytest.raises(DataError, match="members, inits or sizes differ"):
        create_partial(target, other, attrs())
    create_partial(target, t, attrs("generate:\n  members: 4\n"), force=True)
    assert len(missing(target)) == 6  # started over


def test_write_block_rejects_wrong_blocks(latlon_store: TrainingStore, tmp_path: Path) -> None:
    target = tmp_path / "forecast.zarr"
    t = forecast_template(latlon_store, MEMBERS, INITS, LEADS)
    create_partial(target, t, attrs())
    good = block_values(t, [0], 2)
    with pytest.raises(ValueError, match="init 3 is not one"):
        write_block(target, good, init=3)
    with pytest.raises(ValueError, match="shape"):
        write_block(target, good.isel(lead_time=slice(0, 2)), init=2)
    with pytest.raises(ValueError, match="variables"):
        write_block(target, good[["t2m"]], init=2)
    assert len(missing(target)) == 6


WRITER = textwrap.dedent(
    """
    import sys
    import numpy as np, xarray as xr
    from simdiff.generate.output import write_block
    target, members = sys.argv[1], [int(m) for m in sys.argv[2].split(",")]
    skel = xr.open_zarr(target.rsplit("/", 1)[0] + "/.forecast.zarr.partial", consolidated=False)
    for init in [int(i) for i in skel["init_index"].values]:
        v = skel["q"].sel(realization=members).isel(init_time=0, drop=True)
        vals = np.arange(v[0].size, dtype=np.float32).reshape(v.shape[1:]) + 100 * init
        vals = vals + 1000 * np.asarray(members, np.float32).reshape(-1, 1, 1, 1, 1)
        write_block(target, xr.Dataset({"q": v.copy(data=vals)}), init=init)
    """
)


@pytest.mark.slow
def test_two_processes_write_disjoint_members(model_time_store: TrainingStore, tmp_path: Path) -> None:
    target = tmp_path / "forecast.zarr"
    members = [0, 1, 2, 3]
    t = forecast_template(model_time_store, members, INITS, LEADS)
    create_partial(target, t, attrs())
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(target), part], cwd=REPO)
             for part in ("0,2", "3,1")]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    assert missing(target) == []
    finalize(target)
    q = xr.open_zarr(target)["q"].load()
    n = int(np.prod(q.shape[2:]))
    for m in members:
        for c, init in enumerate(INITS):
            want = np.arange(n, dtype=np.float32).reshape(q.shape[2:]) + 100 * init + 1000 * m
            np.testing.assert_array_equal(q.sel(realization=m).isel(init_time=c).values, want)


def test_netcdf_round_trip(model_time_store: TrainingStore, tmp_path: Path) -> None:
    target = tmp_path / "forecast.nc"
    t = forecast_template(model_time_store, MEMBERS, INITS, LEADS)
    create_partial(target, t, attrs())
    blocks = {init: block_values(t, MEMBERS, init) for init in INITS}
    for init, blk in blocks.items():
        write_block(target, blk, init=init)
    finalize(target)
    assert is_complete(target) and not partial_path(target).exists()
    ds = xr.open_dataset(target)
    assert ds["q"].dtype == np.float32 and ds.attrs["simdiff_config"] == "generate:\n  members: 3\n"
    for c, init in enumerate(INITS):
        np.testing.assert_array_equal(ds["q"].isel(init_time=c).values, blocks[init]["q"].values)
    raw = xr.open_dataset(target, decode_timedelta=False)  # "days" without "since": a duration
    np.testing.assert_array_equal(raw["init_time"].values, [10.0, 25.0])
    np.testing.assert_array_equal(raw["valid_time"].values, [[10.0, 15.0, 25.0], [25.0, 30.0, 40.0]])
    assert ds["lead_time"].attrs["units"] == "days"
    assert "written" not in ds


def test_sample_mode_round_trip(latlon_store: TrainingStore, tmp_path: Path) -> None:
    target = tmp_path / "augmented.zarr"
    t = sample_template(latlon_store, [10, 11, 12])
    assert t["t2m"].dims == ("realization", "lat", "lon") and t["written"].dims == ("realization",)
    create_partial(target, t, attrs())
    with pytest.raises(ValueError, match="init must be None"):
        write_block(target, block_values(t, [10], None), init=0)
    write_block(target, block_values(t, [12, 10], None))
    assert missing(target) == [(11, -1)]
    write_block(target, block_values(t, [11], None))
    finalize(target)
    ds = xr.open_zarr(target)
    np.testing.assert_array_equal(ds["tp"].sel(realization=11).values,
                                  block_values(t, [11], None)["tp"].values[0])


def test_chunks_are_configurable_but_not_across_ranks(latlon_store: TrainingStore) -> None:
    t = forecast_template(latlon_store, MEMBERS, INITS, LEADS, chunks={"lead_time": 1, "lat": 3})
    assert t["t2m"].data.chunksize == (1, 1, 1, 3, 8)
    with pytest.raises(ValueError, match="must be 1"):
        forecast_template(latlon_store, MEMBERS, INITS, LEADS, chunks={"realization": 2})


def test_zarr_written_cells_are_their_own_chunks(latlon_store: TrainingStore, tmp_path: Path) -> None:
    target = tmp_path / "forecast.zarr"
    create_partial(target, forecast_template(latlon_store, MEMBERS, INITS, LEADS), attrs())
    g = zarr.open_group(str(partial_path(target)), mode="r")
    assert g["written"].chunks == (1, 1) and g["t2m"].chunks == (1, 1, 3, 5, 8)
