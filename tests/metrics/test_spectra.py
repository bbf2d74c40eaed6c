"""Spectra: Parseval, single-mode placement, masks, geometry dispatch, dask laziness."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from simdiff.metrics.spectra import (
    field_spectrum,
    isotropic_spectrum,
    spectrum_ratio_low,
    windowed_spectrum,
    zonal_spectrum,
)

RNG = np.random.default_rng(20240611)


def latlon_field(n_time: int = 3, n_lat: int = 7, n_lon: int = 24) -> xr.DataArray:
    lat = np.linspace(-75.0, 75.0, n_lat)
    lon = np.arange(n_lon) * 360.0 / n_lon
    return xr.DataArray(
        RNG.normal(size=(n_time, n_lat, n_lon)),
        dims=("time", "lat", "lon"),
        coords={"lat": lat, "lon": lon},
        name="t2m",
        attrs={"units": "K"},
    )


def test_zonal_parseval_with_mask_and_empty_row() -> None:
    da = latlon_field()
    mask = RNG.random(da.shape[1:]) > 0.3
    mask[2, :] = False  # a latitude circle that is all land
    masked = da.where(xr.DataArray(mask, dims=("lat", "lon")))
    e = zonal_spectrum(masked)
    assert e.dims == ("time", "lat", "wavenumber")
    assert e.sizes["wavenumber"] == 13
    mean_square = (masked**2).mean("lon", skipna=True)
    total = e.sum("wavenumber", skipna=False)
    np.testing.assert_allclose(total.isel(lat=[0, 1, 3, 4, 5, 6]), mean_square.isel(lat=[0, 1, 3, 4, 5, 6]))
    assert bool(total.isel(lat=2).isnull().all())
    assert e.attrs["units"] == "(K)2"


def test_masked_mean_does_not_leak() -> None:
    """A constant offset on a masked field changes only k = 0 (the mean is removed before zero-fill)."""
    da = latlon_field()
    masked = da.where(xr.DataArray(RNG.random(da.shape[1:]) > 0.3, dims=("lat", "lon")))
    base, shifted = zonal_spectrum(masked), zonal_spectrum(masked + 290.0)
    np.testing.assert_allclose(shifted.isel(wavenumber=slice(1, None)), base.isel(wavenumber=slice(1, None)))
    box = masked.rename(lat="y", lon="x").drop_vars(["y", "x"])
    iso, iso_shifted = isotropic_spectrum(box), isotropic_spectrum(box + 290.0)
    above0 = {"wavenumber": slice(1, None)}
    np.testing.assert_allclose(iso_shifted.isel(above0), iso.isel(above0))
    np.testing.assert_allclose(iso_shifted.sum("wavenumber"), ((box + 290.0) ** 2).mean(("y", "x")))


@pytest.mark.parametrize("n_lon", [24, 25])
def test_zonal_sinusoid_in_its_bin(n_lon: int) -> None:
    m0, amp = 5, 3.0
    j = np.arange(n_lon)
    x = xr.DataArray(amp * np.cos(2 * np.pi * m0 * j / n_lon + 0.7) + 1.5, dims=("lon",))
    e = zonal_spectrum(x).values
    np.testing.assert_allclose(e[m0], amp**2 / 2)
    np.testing.assert_allclose(e[0], 1.5**2)
    others = np.delete(e, [0, m0])
    assert np.abs(others).max() < 1e-20


def test_zonal_nyquist_mode_counts_once() -> None:
    x = xr.DataArray(np.cos(np.pi * np.arange(8)), dims=("lon",))  # +1, -1, ...: m = n/2
    e = zonal_spectrum(x).values
    np.testing.assert_allclose(e[4], 1.0)
    np.testing.assert_allclose(e.sum(), 1.0)


@pytest.mark.parametrize("shape", [(16, 16), (12, 20), (6, 8, 10)])
def test_isotropic_parseval(shape: tuple[int, ...]) -> None:
    dims = ("z", "y", "x")[-len(shape):]
    x = RNG.normal(size=(2, *shape))
    mask = RNG.random(shape) > 0.2
    da = xr.DataArray(x, dims=("sample", *dims)).where(xr.DataArray(mask, dims=dims))
    e = isotropic_spectrum(da, dims)
    assert e.dims == ("sample", "wavenumber")
    np.testing.assert_allclose(e.sum("wavenumber"), (da**2).mean(dims, skipna=True))
    # every resolved shell holds energy: no empty bins below Nyquist, even on a non-square box
    assert bool((e.where(e["resolved"], drop=True) > 0).all())


def test_isotropic_sinusoid_2d_and_3d() -> None:
    n = 32
    g = np.arange(n) / n
    y, x = np.meshgrid(g, g, indexing="ij")
    da = xr.DataArray(2.0 * np.sin(2 * np.pi * (3 * x + 4 * y)), dims=("y", "x"))
    e = isotropic_spectrum(da)
    k = e["wavenumber"].values
    # unit spacing: k in cycles per cell, shells of width 1/n; |k| = 5/n
    np.testing.assert_allclose(k[1], 1.0 / n)
    np.testing.assert_allclose(e.values[5], 2.0)
    assert np.abs(np.delete(e.values, 5)).max() < 1e-20
    assert int(e["resolved"].sum()) == n // 2

    m = 12
    h = np.arange(m) / m
    z3, y3, x3 = np.meshgrid(h, h, h, indexing="ij")
    vol = xr.DataArray(np.cos(2 * np.pi * (x3 + 2 * y3 + 2 * z3)), dims=("z", "y", "x"))
    e3 = isotropic_spectrum(vol, ("z", "y", "x"))
    np.testing.assert_allclose(e3.values[3], 0.5)
    np.testing.assert_allclose(e3.values.sum(), 0.5)


def test_isotropic_uses_coordinate_spacing() -> None:
    n = 16
    coord = np.arange(n) * 250.0  # metres
    da = xr.DataArray(np.cos(2 * np.pi * 2 * np.arange(n) / n)[None, :] * np.ones((n, 1)),
                      dims=("y", "x"), coords={"y": coord, "x": coord})
    e = isotropic_spectrum(da)
    peak = int(e.argmax("wavenumber"))
    np.testing.assert_allclose(e["wavenumber"].values[peak], 2 / (n * 250.0))


def test_windowed_parseval_and_detrend() -> None:
    n = 30
    x = RNG.normal(size=(4, n))
    mask = RNG.random((4, n)) > 0.25
    da = xr.DataArray(np.where(mask, x, np.nan), dims=("y", "x"))
    e = windowed_spectrum(da, "x")
    w = np.sin(np.pi * (np.arange(n) + 0.5) / n) ** 2
    for row in range(4):
        t = np.flatnonzero(mask[row])
        slope, intercept = np.polyfit(t, x[row, t], 1)
        d = x[row, t] - intercept - slope * t
        expected = (w[t] ** 2 * d**2).sum() / (w[t] ** 2).sum()
        np.testing.assert_allclose(float(e.isel(y=row).sum()), expected)
    ramp = xr.DataArray(3.0 + 0.4 * np.arange(n), dims=("x",))
    assert float(windowed_spectrum(ramp, "x").sum()) < 1e-20
    short = xr.DataArray([np.nan, 1.0, np.nan, np.nan], dims=("x",))
    assert bool(windowed_spectrum(short, "x").isnull().all())


def test_field_spectrum_latlon_is_weighted_parseval() -> None:
    da = latlon_field(n_time=4)
    mask = xr.DataArray(RNG.random(da.shape[1:]) > 0.2, dims=("lat", "lon"))
    masked = da.where(mask)
    cos = np.cos(np.deg2rad(da["lat"]))
    weights = (cos * xr.ones_like(da.isel(time=0, drop=True))).transpose("lat", "lon")
    e = field_spectrum(masked, weights=weights, periodic={"lon"})
    assert e.dims == ("wavenumber",)
    assert "zonal" in e.attrs["method"]
    w = weights.where(mask, 0.0)
    expected = float((masked.fillna(0) ** 2 * w).sum() / (w.sum() * da.sizes["time"]))
    np.testing.assert_allclose(float(e.sum()), expected)


def test_field_spectrum_picks_method_from_geometry() -> None:
    x = xr.DataArray(RNG.normal(size=(2, 3, 8, 8)), dims=("time", "level", "y", "x"),
                     coords={"level": [1, 2, 3]})
    ones = xr.ones_like(x.isel(time=0, drop=True))
    box = field_spectrum(x, weights=ones, periodic={"x", "y"}, keep=("level",))
    assert box.dims == ("level", "wavenumber") and "isotropic over ('y', 'x')" in box.attrs["method"]
    vol = x.rename(level="z")
    cube = field_spectrum(vol, weights=ones.rename(level="z"), periodic={"z", "y", "x"})
    assert cube.dims == ("wavenumber",) and "('z', 'y', 'x')" in cube.attrs["method"]
    regional = field_spectrum(x, weights=ones, periodic=set(), keep=("level",))
    assert "Hann" in regional.attrs["method"]
    channel = field_spectrum(x, weights=ones, periodic={"x"}, keep=("level",))
    np.testing.assert_allclose(channel.sum("wavenumber"), (x**2).mean(("time", "y", "x")))


def test_spectra_are_lazy_on_dask_and_match_numpy() -> None:
    da = latlon_field(n_time=6)
    lazy = da.chunk({"time": 2, "lon": 8})
    for func, kwargs in ((zonal_spectrum, {}), (windowed_spectrum, {"dim": "lon"})):
        out = func(lazy, **kwargs)
        assert out.chunks is not None
        np.testing.assert_allclose(out.compute(), func(da, **kwargs))
    box = da.rename(lat="y", lon="x")
    iso = isotropic_spectrum(box.chunk({"time": 3}))
    assert iso.chunks is not None
    np.testing.assert_allclose(iso.compute(), isotropic_spectrum(box))


def test_spectrum_ratio_low_closed_forms() -> None:
    da = latlon_field(n_time=2, n_lon=32)
    t = zonal_spectrum(da)
    np.testing.assert_allclose(spectrum_ratio_low(t, zonal_spectrum(0.5 * da)), 0.25)
    # keep only wavenumbers 0..8 (the lower half of 1..16): the ratio is exactly 1
    spec = np.fft.rfft(da.values, axis=-1)
    spec[..., 9:] = 0
    smooth = da.copy(data=np.fft.irfft(spec, n=32, axis=-1))
    np.testing.assert_allclose(spectrum_ratio_low(t, zonal_spectrum(smooth)), 1.0)
    assert float(spectrum_ratio_low(zonal_spectrum(smooth), t).min()) > 1.0 - 1e-12
    # which bins: resolved = 1..16, lower half = 1..8
    k = np.arange(17)
    coords = {"wavenumber": k, "resolved": ("wavenumber", k > 0)}
    truth = xr.DataArray(np.ones(17), dims=("wavenumber",), coords=coords)
    recon = truth.copy(data=k.astype(float))
    assert float(spectrum_ratio_low(truth, recon)) == pytest.approx(np.mean(np.arange(1, 9)))
    with pytest.raises(ValueError, match="different wavenumbers"):
        spectrum_ratio_low(truth, recon.isel(wavenumber=slice(0, 10)))
