"""`autoencoder.window=2` end to end on the built-in QG data (debug=tiny): latents of windows of two
consecutive states, a forecaster of the next window, forecasts decoded two leads per step, scored.

The stored latents are checked against the autoencoder run on the windows by hand, the latents'
standardisation against the valid train windows only, and the refusals (lead steps that are not
whole windows, augmenting single states) against the CLI's exit code and message.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
import yaml
from clirun import simdiff

from simdiff.data.loading.loader import valid_windows
from simdiff.data.stores.latents import LatentStore
from simdiff.data.stores.training import TrainingStore
from simdiff.lit.encode import reconstruct_store, store_runs
from simdiff.nets.window import stack_window, unstack_window
from simdiff.runs.layout import RunDir
from simdiff.runs.models import load_autoencoder, train_pairs

WINDOW = 2
LEADS = 4  # two steps of two states


@pytest.fixture(scope="module")
def window_run(tmp_path_factory) -> tuple[Path, tuple[str, ...]]:
    tmp = tmp_path_factory.mktemp("window")
    run_dir = tmp / "run"
    # 96 snapshots: the tiny QG's 48 leave a val split too short for two previous windows
    common = (f"run_dir={run_dir}", "debug=tiny", f"cache_dir={tmp / 'cache'}",
              f"autoencoder.window={WINDOW}", "debug.max_samples=null", "debug.qg.n_snapshots=96",
              f"generate.mode.lead_steps={LEADS}")
    out = simdiff("run", *common)
    assert out.returncode == 0, out.stderr[-4000:]
    return run_dir, common


def test_latents_are_the_windows_ending_at_each_sample(window_run) -> None:
    run_dir, _ = window_run
    run = RunDir(run_dir)
    store, latents = TrainingStore(run.store), LatentStore(run.latents)
    assert latents.window == WINDOW
    assert yaml.safe_load(run.config("autoencoder").read_text())["autoencoder"]["window"] == WINDOW
    depth = store.data.shape[2]
    assert latents.data.shape[2] == WINDOW * depth  # time-major along the depth axis
    net, _ = load_autoencoder(run)
    valid = valid_windows(store_runs(store), WINDOW)
    t = np.flatnonzero(valid)[[0, 7, -1]]
    states = np.stack([np.asarray(store.data[i - WINDOW + 1 : i + 1]) for i in t])
    with torch.no_grad():
        z = net.encode(stack_window(torch.from_numpy(states), has_depth=True)).numpy()
    np.testing.assert_allclose(latents.latent_means().values[t], z, rtol=1e-4, atol=1e-5)
    # the standardisation: the valid train windows only
    mu = latents.latent_means().values.astype(np.float64)
    use = valid & (store.split == 0)
    mean = np.moveaxis(mu[use], 1, 0).reshape(mu.shape[1], -1).mean(axis=1)
    np.testing.assert_allclose(latents.shift, mean, rtol=1e-5, atol=1e-6)


def test_a_reconstructed_state_comes_from_the_window_that_holds_it(window_run) -> None:
    run_dir, _ = window_run
    run = RunDir(run_dir)
    store = TrainingStore(run.store)
    net, _ = load_autoencoder(run)
    test = store.indices("test")
    recon = reconstruct_store(net, store, indices=test, window=WINDOW).values
    # the test run encoded window by window from its start: states 0, 1 of the run share a latent
    first = test[:WINDOW]
    with torch.no_grad():
        x = stack_window(torch.from_numpy(np.asarray(store.data[first[0] : first[-1] + 1]))[None], True)
        out = net.decode(net.encode(x), tuple(x.shape[2:]))
    np.testing.assert_allclose(recon[:WINDOW], unstack_window(out, WINDOW, True)[0].numpy(), rtol=1e-4,
                               atol=1e-5)


def test_the_forecaster_pairs_windows_a_window_apart(window_run) -> None:
    run_dir, _ = window_run
    latents = LatentStore(RunDir(run_dir).latents)
    ok = train_pairs(latents)
    targets = np.flatnonzero(ok)
    run = store_runs(latents)
    # target t and its previous window t - k, whose own states start at t - 2k + 1, in one train run
    assert len(targets) and np.all(run[targets - 2 * WINDOW + 1] == run[targets])
    assert np.all(latents.split[targets - 2 * WINDOW + 1] == 0)


def test_forecasts_have_every_lead_and_are_scored(window_run) -> None:
    run_dir, _ = window_run
    ds = xr.open_zarr(run_dir / "forecast.zarr")
    assert ds.sizes["lead_time"] == LEADS
    values = ds["q"].values
    assert np.isfinite(values).all()
    # each step decodes one window: leads 1 and 2 differ (two states, not one repeated)
    assert not np.allclose(values[:, :, 0], values[:, :, 1])
    metrics = json.loads((run_dir / "report" / "metrics.json").read_text())
    assert len(metrics["lead_times"]) == LEADS and metrics["baselines"]["ae_ceiling"]
    for entry in metrics["variables"].values():
        for key in ("crps", "crps_climatology", "crps_persistence", "crps_ae_ceiling", "spread_skill"):
            assert math.isfinite(entry[key]), key


def test_leads_that_are_not_whole_windows_and_single_state_draws_are_refused(window_run) -> None:
    run_dir, common = window_run
    out = simdiff("generate", *common, "generate.mode.lead_steps=3", f"generate.out={run_dir / 'three.zarr'}")
    assert out.returncode == 2 and "multiple of 2" in out.stderr
    assert not (run_dir / "three.zarr").exists()
    out = simdiff("augment", *common, f"augment.out={run_dir / 'aug.zarr'}")
    assert out.returncode == 2 and "windows of 2 consecutive states" in out.stderr
    assert not (run_dir / "aug.zarr").exists()


@pytest.mark.slow
def test_windows_of_a_real_surface_field_run_end_to_end(tmp_path, shared_data) -> None:
    """WFDE5 hourly 2 m temperature (real netCDF, datetimes, sea masked, the tendency's daily cycle):
    a 2D field whose window of two hours becomes a 3D latent, through evaluate."""
    run_dir = tmp_path / "run"
    out = simdiff("run", f"run_dir={run_dir}", "data=wfde5_temperature", "debug=tiny",
                  "debug.max_samples=null", f"shared_data={shared_data}", f"autoencoder.window={WINDOW}",
                  f"generate.mode.lead_steps={LEADS}")
    assert out.returncode == 0, out.stderr[-4000:]
    latents = LatentStore(RunDir(run_dir).latents)
    assert latents.window == WINDOW and latents.data.shape[2] == WINDOW  # (c, k, y, x)
    ds = xr.open_zarr(run_dir / "forecast.zarr")
    assert ds.sizes["lead_time"] == LEADS and np.issubdtype(ds["init_time"].dtype, np.datetime64)
    metrics = json.loads((run_dir / "report" / "metrics.json").read_text())
    entry = metrics["variables"]["Tair"]
    for key in ("crps", "crps_persistence", "crps_ae_ceiling", "spread_skill"):
        assert math.isfinite(entry[key]), key
