"""The weather-ensemble and augment-dataset recipes of workflows/ run end to end (debug=tiny).

``workflows/weather_ensemble/run.sh`` (the main job with ``experiment=weather_ensemble``: a
50-member ensemble, 3 under debug=tiny) and ``workflows/augment_dataset/run.sh`` (the main job,
``augment`` merged after the real train samples, ``certify``, the report again with its augment
section and the certificate).
The molecular recipe is tests/cli/test_molecules_end_to_end.py; the SLURM sweep recipe is
tests/cluster/test_slurm_sweep.py (on the CI SLURM).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import clirun
import pytest
import xarray as xr
from hydra import compose, initialize_config_dir

from simdiff.cli.app import _register_resolvers, config_dir
from simdiff.data.stores.training import TrainingStore

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = REPO / "workflows"


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
    assert augment.augment.samples == 1000 and augment.augment.merge is True
    assert augment.augment.draws_per_source == 2
    assert augment.diffusion.max_epochs == 30  # the generator trains three times the main job's epochs
    assert list(augment.certify.fractions) == [0.01, 0.05, 0.25, 1.0] and augment.certify.seeds == 3


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
    # two draws per source: ids 0-1, 2-3 and 4-5 share a training state -> three sources of 2
    successors = metrics["augment"]["memorisation"]["successors"]
    assert successors["train"]["sources"] == 3 and successors["train"]["members"] == 2
    assert successors["held_out"]["members"] == 3  # the forecast's first lead on test inits
    assert isinstance(successors["copying"], bool) and successors["verdict"]
    q = metrics["augment"]["variables"]["q@1"]["quantiles"]
    assert all(lo <= v <= hi for lo, v, hi in zip(q["test_lower"], q["test"], q["test_upper"], strict=True))
    # the certificate: every arm at both tiny fractions, 2 seeds each, finite errors, in the report
    cert = metrics["certificate"]
    assert json.loads((run_dir / "certificate.json").read_text()) == cert
    assert set(cert["by_fraction"]) == {"0.5", "1"} and cert["seeds"] == 2
    for arm in ("real", "real+synthetic"):
        assert all(len(v) == 2 and all(e > 0 for e in v) for v in cert["errors"][arm].values())
    assert cert["pairs"]["synthetic"] == 6
    assert cert["pairs"]["real_by_fraction"]["1"] == cert["pairs"]["real_train"]
    assert {"certificate.png", "augment_tails.png"} <= {p.name for p in (run_dir / "report").iterdir()}
    assert len(list(run_dir.glob("certificate.cells-*"))) == 1  # the cells stay, for more seeds later
    # the generator's own one-step skill beside the emulator's (benchmarks/generator_skill.py)
    bench = tmp_path / "generator_skill.json"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "generator_skill.py"), "--run-dir",
                           str(run_dir), "--out", str(bench)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    skill = json.loads(bench.read_text())
    gen = skill["generator"]
    assert gen["inits"] >= 1 and gen["members"] == 3 and gen["persistence"] > 0
    assert 0 < gen["ensemble_mean"] <= gen["member"]  # the mean's squared error never exceeds the members'
    arms = [row["what"] for row in skill["rows"]]
    assert sum("real only" in a for a in arms) == 2 and arms[-1] == "emulator, synthetic only"
