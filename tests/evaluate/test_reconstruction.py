"""reconstruction_report: closed-form metrics, masks, weights, level keys, atomic JSON and PNG."""

from __future__ import annotations

import json
import struct
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr

from simdiff.base.errors import DataError
from simdiff.evaluate.plots import DPI, PANEL_HEIGHT_IN, PANEL_WIDTH_IN
from simdiff.evaluate.reconstruction import reconstruction_report

RNG = np.random.default_rng(7)
LAT = np.linspace(-80.0, 80.0, 9)
LON = np.arange(16) * 22.5


def climate(
    levels: list[float] | None = None, n_time: int = 4, variables: tuple[str, ...] = ("z",)
) -> xr.Dataset:
    """Random lat/lon fields (time, [level], lat, lon) with units."""
    coords: dict[str, object] = {"time": np.arange(n_time), "lat": LAT, "lon": LON}
    dims: tuple[str, ...] = ("time", "lat", "lon")
    if levels is not None:
        coords["level"] = np.asarray(levels)
        dims = ("time", "level", "lat", "lon")
    shape = tuple(len(coords[d]) if d != "time" else n_time for d in dims)  # type: ignore[arg-type]
    return xr.Dataset(
        {v: (dims, 10.0 + RNG.normal(size=shape), {"units": "m"}) for v in variables}, coords=coords
    )


def cos_weights(ds: xr.Dataset) -> xr.DataArray:
    first = next(iter(ds.data_vars.values()))
    ones = xr.ones_like(first.isel(time=0, drop=True))
    return (ones * np.cos(np.deg2rad(ds["lat"]))).transpose(*ones.dims)


def report(
    truth: xr.Dataset, recon: xr.Dataset, out: Path, periodic: Collection[str] = frozenset({"lon"}), **kw: Any
) -> dict:
    weights = kw.pop("weights", None)
    return reconstruction_report(
        truth, recon, weights=cos_weights(truth) if weights is None else weights, periodic=periodic,
        compression_ratio=kw.pop("compression_ratio", 12.0), out_dir=out, **kw,
    )


def test_constant_offset_gives_rmse_c_and_full_spectrum(tmp_path: Path) -> None:
    truth = climate()
    rep = report(truth, truth - 0.75, tmp_path)
    m = rep["variables"]["z"]
    assert set(m) == {"rmse", "rmse_over_std", "spectrum_ratio_low"}
    assert m["rmse"] == pytest.approx(0.75, rel=1e-12)
    # a constant only changes the zonal mean (k = 0), which the ratio leaves out
    assert m["spectrum_ratio_low"] == pytest.approx(1.0, rel=1e-12)
    assert rep["compression_ratio"] == 12.0
    assert rep["n_samples"] == 4


def test_rmse_over_std_of_scaled_truth(tmp_path: Path) -> None:
    truth = climate()
    m = report(truth, 1.1 * truth - 0.1 * truth.mean(), tmp_path)["variables"]["z"]
    # recon - truth = 0.1 (truth - mean); with the weighted mean it is exactly 0.1 std, so check
    # against an independent weighted computation
    w = cos_weights(truth).values[None] * np.ones(truth["z"].shape)
    t = truth["z"].values
    err = 0.1 * (t - float(truth["z"].mean()))
    mu = (w * t).sum() / w.sum()
    std = np.sqrt((w * (t - mu) ** 2).sum() / w.sum())
    rmse = np.sqrt((w * err**2).sum() / w.sum())
    assert m["rmse"] == pytest.approx(rmse, rel=1e-12)
    assert m["rmse_over_std"] == pytest.approx(rmse / std, rel=1e-12)
    assert m["spectrum_ratio_low"] == pytest.approx(1.21, rel=1e-12)
    m2 = report(truth, truth + 0.2 * (truth - truth["z"].weighted(cos_weights(truth)).mean()), tmp_path)
    assert m2["variables"]["z"]["rmse_over_std"] == pytest.approx(0.2, rel=1e-12)


def test_weights_matter(tmp_path: Path) -> None:
    truth = climate()
    c = xr.DataArray(1.0 + np.abs(LAT) / 10.0, dims=("lat",), coords={"lat": LAT})  # error grows poleward
    m = report(truth, truth + c, tmp_path)["variables"]["z"]
    cos = np.cos(np.deg2rad(LAT))
    expected = np.sqrt((cos * c.values**2).sum() / cos.sum())
    unweighted = np.sqrt((c.values**2).mean())
    assert m["rmse"] == pytest.approx(expected, rel=1e-12)
    assert abs(m["rmse"] - unweighted) > 0.1


def test_masked_cells_never_count(tmp_path: Path) -> None:
    truth = climate()
    recon = truth + RNG.normal(scale=0.3, size=truth["z"].shape)
    mask = xr.DataArray(RNG.random((9, 16)) > 0.3, dims=("lat", "lon"), coords={"lat": LAT, "lon": LON})
    a = report(truth.where(mask), recon.where(mask), tmp_path / "a")
    changed_t, changed_r = truth.copy(deep=True), recon.copy(deep=True)
    hidden = ~mask.values
    changed_t["z"].values[:, hidden] = 1e6
    changed_r["z"].values[:, hidden] = -3e5
    b = report(changed_t.where(mask), changed_r.where(mask), tmp_path / "b")
    assert a == b
    assert np.isfinite(a["variables"]["z"]["spectrum_ratio_low"])
    # with a mask, a constant offset still leaves the spectra at k > 0 alone
    offset = report(truth.where(mask), truth.where(mask) + 4.0, tmp_path / "d")["variables"]["z"]
    assert offset["spectrum_ratio_low"] == pytest.approx(1.0, rel=1e-12)
    assert offset["rmse"] == pytest.approx(4.0, rel=1e-12)
    broken = recon.where(mask).copy(deep=True)
    cell = np.argwhere(mask.values)[0]
    broken["z"].values[1, cell[0], cell[1]] = np.nan
    with pytest.raises(DataError, match=r"'z' is NaN at 1 cells"):
        report(truth.where(mask), broken, tmp_path / "c")
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())


def test_level_keys_and_multiple_variables(tmp_path: Path) -> None:
    truth = climate(levels=[500.0, 850.0, 62.5], variables=("z", "u"))
    rep = report(truth, truth + 1.0, tmp_path)
    assert list(rep["variables"]) == ["z@500", "z@850", "z@62.5", "u@500", "u@850", "u@62.5"]
    for m in rep["variables"].values():
        assert m["rmse"] == pytest.approx(1.0, rel=1e-12)
    assert set(rep["mean"]) == {"rmse_over_std", "spectrum_ratio_low"}
    ints = climate(levels=[1, 2]).rename(z="q")
    assert list(report(ints, ints, tmp_path)["variables"]) == ["q@1", "q@2"]


def test_periodic_box_and_volume_and_regional(tmp_path: Path) -> None:
    # grid-index coords: isotropic spectra need one length unit on every axis
    qg = climate(levels=[1, 2]).rename(z="q", lat="y", lon="x").drop_vars(["y", "x"])
    ones = xr.ones_like(qg["q"].isel(time=0, drop=True))
    box = report(qg, 2.0 * qg, tmp_path / "box", periodic={"x", "y"}, weights=ones)
    assert "isotropic over ('y', 'x')" in box["spectrum_method"]
    assert box["variables"]["q@1"]["spectrum_ratio_low"] == pytest.approx(4.0, rel=1e-12)
    cube = qg.rename(level="z").drop_vars("z")
    vol = report(cube, 2.0 * cube, tmp_path / "vol", periodic={"z", "y", "x"}, weights=ones.rename(level="z"))
    assert list(vol["variables"]) == ["q"]  # z is a spatial axis, not levels
    assert "('z', 'y', 'x')" in vol["spectrum_method"]
    regional = report(cube, 2.0 * cube, tmp_path / "reg", periodic=set(), weights=ones.rename(level="z"))
    assert "Hann" in regional["spectrum_method"]
    assert regional["variables"]["q"]["spectrum_ratio_low"] == pytest.approx(4.0, rel=1e-12)


def test_json_atomic_and_well_formed(tmp_path: Path) -> None:
    truth = climate()
    rep = report(truth, truth + 0.5, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reconstruction.json", "reconstruction.png"]
    text = (tmp_path / "reconstruction.json").read_text()
    assert json.loads(text) == rep
    assert "NaN" not in text and "Infinity" not in text
    # a failing report leaves the previous one in place and no temporary files behind
    with pytest.raises(DataError, match=r"rmse_over_std of 'z'"):
        report(xr.full_like(truth, 3.0), truth, tmp_path)
    assert json.loads((tmp_path / "reconstruction.json").read_text()) == rep
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reconstruction.json", "reconstruction.png"]


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


def test_png_exists_with_expected_size(tmp_path: Path) -> None:
    one = climate()
    report(one, one + 0.1, tmp_path / "one")
    width, height = png_size(tmp_path / "one" / "reconstruction.png")
    assert (width, height) == (round(3 * PANEL_WIDTH_IN * DPI), round(PANEL_HEIGHT_IN * DPI))
    many = climate(levels=[100, 200, 300, 400], variables=("z", "t"))  # 8 rows, capped at 6
    report(many, many + 0.1, tmp_path / "many", sample=3)
    assert png_size(tmp_path / "many" / "reconstruction.png")[1] == round(6 * PANEL_HEIGHT_IN * DPI)


def test_nan_metrics_and_bad_input_raise(tmp_path: Path) -> None:
    truth = climate()
    nothing_valid = truth.where(truth < -1e9)
    with pytest.raises(DataError, match="no valid cell"):
        report(nothing_valid, nothing_valid, tmp_path)
    flat_rows = truth.copy(deep=True)
    flat_rows["z"].values[:] = flat_rows["z"].values.mean(-1, keepdims=True)  # no zonal variance
    with pytest.raises(DataError, match=r"spectrum_ratio_low of 'z'"):
        report(flat_rows, flat_rows, tmp_path)
    bad = truth.copy(deep=True)
    bad["z"].values[0, 0, 0] = np.inf
    with pytest.raises(DataError, match=r"rmse of 'z'"):
        report(truth, bad, tmp_path)
    with pytest.raises(DataError, match="variables"):
        report(truth, truth.rename(z="u"), tmp_path)
    with pytest.raises(DataError, match="weights"):
        report(truth, truth, tmp_path, weights=cos_weights(truth).isel(lat=slice(1, None)))
    with pytest.raises(DataError, match="'lat' coordinates"):
        report(truth, truth.assign_coords(lat=LAT + 1.0), tmp_path)
    with pytest.raises(DataError, match="compression_ratio"):
        report(truth, truth, tmp_path, compression_ratio=float("nan"))
    assert not any(tmp_path.iterdir())


def test_dask_backed_inputs_match(tmp_path: Path) -> None:
    truth = climate(levels=[500.0, 850.0])
    recon = truth + RNG.normal(scale=0.2, size=truth["z"].shape)
    eager = report(truth, recon, tmp_path / "eager")
    lazy = report(truth.chunk({"time": 1}), recon.chunk({"time": 2}), tmp_path / "lazy")
    assert lazy["variables"].keys() == eager["variables"].keys()
    for key, m in eager["variables"].items():
        for name, value in m.items():
            assert lazy["variables"][key][name] == pytest.approx(value, rel=1e-12)
