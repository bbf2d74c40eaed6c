"""The weather-ensemble and augment-dataset recipes of workflows/ run end to end (debug=tiny).

``workflows/weather_ensemble/run.sh`` (the main job with ``experiment=weather_ensemble``: a
50-member ensemble, 3 under debug=tiny) and ``workflows/augment_dataset/run.sh`` (the main job,
``augment`` merged after the real train samples, the report again with its augment section).
The molecular recipe is tests/cli/test_molecules_end_to_end.py; the SLURM sweep recipe is
tests/cluster/test_slurm_sweep.py (on the CI SLURM).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import clirun
import pytest
import xarray as xr
from hydra import compose, initialize_config_dir

from simdiff.cli.app import _register_resolvers, config_dir
from simdiff.data.stores.training import TrainingStore

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"


def _recipe(name: str, run_dir: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SIMDIFF": " ".join(clirun.ENTRY), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([str(WORKFLOWS / name / "run.sh"), str(run_dir), "debug=tiny", *overrides],
                         capture_output=True, text=True, env=env, timeout=900)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    return out


def test_the_experiments_of_the_recipes_ask_for_what_their_readmes_say():
    _register_resolvers()
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        weather = compose("config", overrides=["experiment=weather_ensemble", "run_dir=/r"])
        augment = compose("config", overrides=["experiment=augment_dataset", "run_dir=/r"])
    assert weather.generate.members == 50 and weather.data._target_.endswith("QGSource")
    assert augment.augment.samples == 200 and augment.augment.merge is True


@pytest.mark.slow
def test_weather_ensemble_recipe_forecasts_and_reports(tmp_path):
    run_dir = tmp_path / "run"
    out = _recipe("weather_ensemble", run_dir, f"cache_dir={tmp_path / 'cache'}")
    assert f"report:   {run_dir}/report/index.html" in out.stdout
    metrics = json.loads((run_dir / "report" / "metrics.json").read_text())
    assert metrics["members"] == 3
    assert set(metrics["baselines"]) == {"climatology", "persistence", "ae_ceiling"}
    for v in metrics["variables"].values():
        assert v["crps"] > 0 and v["spread_skill"] > 0
    with xr.open_zarr(run_dir / "forecast.zarr") as fc:
        assert fc.sizes["realization"] == 3


@pytest.mark.slow
def test_augment_dataset_recipe_merges_synthetic_samples_and_reports_them(tmp_path):
    run_dir = tmp_path / "run"
    out = _recipe("augment_dataset", run_dir, f"cache_dir={tmp_path / 'cache'}")
    assert "augmented:" in out.stdout
    real = TrainingStore(run_dir / "data" / "train.zarr")
    n_train = len(real.indices("train"))
    with xr.open_zarr(run_dir / "augmented.zarr") as aug:
        sample_dim = next(d for d in aug.dims if aug.sizes[d] == n_train + 6)
        assert aug.sizes[sample_dim] == n_train + 6  # the real train samples, then 6 synthetic
    metrics = json.loads((run_dir / "report" / "metrics.json").read_text())
    assert metrics["augment"]["samples"] == 6
    assert metrics["augment"]["memorisation"]["median_ratio"] > 0
