"""The tendency cycle (simdiff.diffusion.cycle): the basis, the fit on a store, the denoiser's round trip."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr
from torch import nn

from simdiff.base.errors import DataError
from simdiff.base.provenance import provenance
from simdiff.data.field import Field
from simdiff.data.geometry import Geometry
from simdiff.data.loading.patch import crop_shared
from simdiff.data.stores.prepare import PrepareOptions, write_training_store
from simdiff.data.stores.training import TrainingStore
from simdiff.data.time_features import time_features
from simdiff.diffusion.cycle import TendencyCycle, basis, coverage, n_terms
from simdiff.diffusion.denoiser import ConditionalDenoiser
from simdiff.nets.conditioning import Conditioner
from simdiff.runs.models import tendency_cycle

H, W = 4, 6


def features(times: pd.DatetimeIndex) -> torch.Tensor:
    return torch.from_numpy(time_features(xr.DataArray(times, dims="time")).values)


def test_basis_is_the_truncated_fourier_series_of_the_hour():
    tf = features(pd.DatetimeIndex(["2000-01-01T00", "2000-01-01T06", "2000-01-01T15"]))
    b = basis(tf, 2, 0)
    assert b.shape == (3, n_terms(2, 0)) == (3, 5)
    for row, hour in zip(b, (0, 6, 15), strict=True):
        phi = 2 * math.pi * hour / 24
        expect = [1, math.sin(phi), math.cos(phi), math.sin(2 * phi), math.cos(2 * phi)]
        torch.testing.assert_close(row, torch.tensor(expect, dtype=row.dtype), atol=1e-6, rtol=0)
    assert basis(tf, 0, 1).shape == (3, 3)  # the mean and one annual pair


def test_coverage_counts_phases_and_the_widest_gap():
    six_hourly = features(pd.date_range("2000-01-01", periods=40, freq="6h")).numpy()
    assert coverage(six_hourly, "daily") == (4, pytest.approx(math.pi / 2))
    daily = features(pd.date_range("2000-01-01", periods=40, freq="D")).numpy()
    assert coverage(daily, "daily") == (1, pytest.approx(2 * math.pi))
    month = features(pd.date_range("2000-01-01", periods=31 * 24, freq="h")).numpy()
    distinct, gap = coverage(month, "annual")
    assert distinct == 31 * 24 and gap > 1.5 * math.pi  # a month leaves 11 of the year unsampled


def hourly_store(tmp_path, n: int, freq: str = "h", seed: int = 0) -> tuple[TrainingStore, np.ndarray]:
    """x_t = x_0 + cumulative sum of d(t) + noise, d = a + b sin(phi) + c cos(2 phi) per cell.

    Returns the store and the planted (5, H, W) coefficients in physical units."""
    rng = np.random.default_rng(seed)
    times = pd.date_range("2001-03-01", periods=n, freq=freq)
    phi = 2 * np.pi * (times.hour.values + times.minute.values / 60) / 24
    planted = np.zeros((5, H, W))
    planted[0] = 0.05 * rng.standard_normal((H, W))
    planted[1] = 1.0 + 0.3 * rng.standard_normal((H, W))
    planted[4] = -0.5 + 0.2 * rng.standard_normal((H, W))
    b = np.stack([np.ones(n), np.sin(phi), np.cos(phi), np.sin(2 * phi), np.cos(2 * phi)], 1)
    d = np.einsum("nk,khw->nhw", b, planted) + 0.05 * rng.standard_normal((n, H, W))
    x = 280 + np.cumsum(d, axis=0)
    ds = xr.Dataset({"t": (("time", "y", "x"), x.astype(np.float32), {"units": "K"})},
                    coords={"time": times, "y": np.arange(H) * 1e4, "x": np.arange(W) * 1e4})
    spatial = ("y", "x")
    geometry = Geometry(dims=spatial, periodic=frozenset(),
                        weights=xr.DataArray(np.ones((H, W)), dims=spatial),
                        mask=xr.DataArray(np.ones((H, W), bool), dims=spatial))
    conditions = xr.Dataset({"time_features": time_features(ds["time"])})
    path = tmp_path / "train.zarr"
    write_training_store(Field(ds, geometry, conditions), path, transforms={},
                         options=PrepareOptions(progress=False), provenance=provenance([], {"data": {}}))
    return TrainingStore(path), planted


def test_the_fit_recovers_a_planted_daily_cycle(tmp_path):
    store, planted = hourly_store(tmp_path, 24 * 30)
    coef = tendency_cycle(store, 2, 0).numpy()
    assert coef.shape == (5, 1, H, W)
    std = float(np.asarray(store.array("std")).reshape(-1)[0])
    # normalised units: the tendency of (x - mean) / std is d / std
    np.testing.assert_allclose(coef[:, 0] * std, planted, atol=0.02)


def test_records_that_do_not_sample_the_cycle_are_refused(tmp_path):
    daily, _ = hourly_store(tmp_path / "d", 200, freq="D")
    with pytest.raises(DataError, match=r"daily cycle at 1 distinct phases.*tendency_cycle.daily"):
        tendency_cycle(daily, 1, 0)
    six, _ = hourly_store(tmp_path / "s", 400, freq="6h")
    assert tendency_cycle(six, 1, 0).shape == (3, 1, H, W)  # 4 phases: one harmonic
    with pytest.raises(DataError, match="4 distinct phases"):
        tendency_cycle(six, 2, 0)  # 5 phases needed
    with pytest.raises(DataError, match="annual cycle"):
        tendency_cycle(six, 0, 1)  # 100 days of one year
    with pytest.raises(DataError, match="residual mode"):
        tendency_cycle(six, 1, 0, residual=False)


class Zero(nn.Module):
    def forward(self, x, c_noise, spatial=None, vector=None):
        return torch.zeros_like(x)


def test_the_denoiser_takes_the_cycle_out_and_puts_it_back_whole_fields_and_crops():
    gen = torch.Generator().manual_seed(0)
    coef = torch.randn(5, 2, H, W, generator=gen)
    cycle = TendencyCycle(coef, 2, 0)
    scale = torch.tensor([0.5, 2.0])
    model = ConditionalDenoiser(Zero(), Conditioner(8, 2, previous=1), residual=True, residual_scale=scale,
                                cycle=cycle)
    tf = features(pd.DatetimeIndex(["2000-01-01T03", "2000-01-01T13", "2000-01-01T21"]))
    x, prev = torch.randn(3, 2, H, W, generator=gen), torch.randn(3, 1, 2, H, W, generator=gen)
    batch = {"previous": prev, "time_features": tf}
    m = torch.einsum("bk,kchw->bchw", basis(tf, 2, 0), coef)
    y = model.target(x, batch)
    torch.testing.assert_close(y, (x - prev[:, -1] - m) / scale.reshape(1, 2, 1, 1))
    torch.testing.assert_close(model.state(y, batch), x)
    # crops: each row's cycle is the whole field's, cut at its origin
    origin = torch.tensor([[0, 1], [2, 3], [1, 0]])
    xc, pc = crop_shared(torch.zeros(2, H, W), origin, (2, 3)) + 1.0, torch.zeros(3, 1, 2, 2, 3)
    crops = {"previous": pc, "time_features": tf, "origin": origin}
    yc = model.target(xc, crops)
    want = (xc - crop_shared(coef, origin, (2, 3)).mul(basis(tf, 2, 0)[:, :, None, None, None]).sum(1))
    torch.testing.assert_close(yc, want / scale.reshape(1, 2, 1, 1))
    torch.testing.assert_close(model.state(yc, crops), xc)
    with pytest.raises(ValueError, match="time_features"):
        model.target(x, {"previous": prev})
    with pytest.raises(ValueError, match="residual mode"):
        ConditionalDenoiser(Zero(), Conditioner(8, 2, previous=1), cycle=cycle)
