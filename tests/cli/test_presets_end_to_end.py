"""Every real-data preset through the whole main job (`simdiff run data=PRESET debug=tiny`).

QG alone hid a bug that broke every real dataset (evaluate matched no valid time on stores
with datetimes), so each preset over the shared reference files runs prepare through evaluate
here and its report is checked: finite scores for every variable and lead, the baselines
present, every (init, lead) pair verified against the truth, a CF-labelled forecast with the
store's real times, and the physical domain of bounded variables kept. A preset that cannot
support a stage says so in its config (``main_job.why``) and the test checks that message.
"""

from __future__ import annotations

import json
import math
from functools import partial

import clirun
import numpy as np
import pytest
import xarray as xr

from simdiff.data.stores.training import TrainingStore
from simdiff.generate.output import open_output

simdiff = partial(clirun.simdiff, timeout=1200)

FORECAST_PRESETS = ["ersst", "wfde5_temperature", "wfde5_precipitation", "era5_t2m", "hgt_djf",
                    "sst_anom", "wind200", "bom_radar"]
#: presets run through their study (conf/experiment/), which also chooses the model presets
STUDY = {"ersst": "experiment=ersst"}
#: presets whose variable has a lower bound (log1p): never negative, dry cells exactly 0.
BOUNDED = {"wfde5_precipitation": "pr", "bom_radar": "precipitation"}


def _finite(v) -> bool:
    return v is not None and math.isfinite(v)


@pytest.mark.slow
@pytest.mark.parametrize("preset", FORECAST_PRESETS)
def test_preset_runs_the_main_job_end_to_end(preset, tmp_path, shared_data):
    run_dir = tmp_path / preset
    choice = STUDY.get(preset, f"data={preset}")
    out = simdiff("run", f"run_dir={run_dir}", choice, "debug=tiny", f"shared_data={shared_data}")
    assert out.returncode == 0, out.stderr[-4000:]
    metrics = json.loads((run_dir / "report" / "metrics.json").read_text())
    store = TrainingStore(run_dir / "data" / "train.zarr")
    assert {k.split("@")[0] for k in metrics["variables"]} == set(store.variables)
    for key, entry in metrics["variables"].items():
        for score in ("crps", "rmse", "spread_skill", "crps_climatology", "crps_persistence",
                      "crps_ae_ceiling"):
            assert _finite(entry[score]), (preset, key, score, entry[score])
        for lead, e in entry["by_lead"].items():
            assert _finite(e["crps"]) and _finite(e["crps_persistence"]), (preset, key, lead)
    clim = metrics["baselines"]["climatology"]
    assert clim is not None and sum(clim["pools"].values()) == metrics["cases"] * len(metrics["lead_times"])

    forecast = open_output(run_dir / "forecast.zarr")
    sdim = store.layout.sample_dim
    times = store.dataset()[sdim].values
    init = forecast["init_time"].values
    assert init.dtype == times.dtype  # real datetimes (or the store's own time type), not numbers
    assert np.isin(init, times).all()
    valid = forecast["valid_time"].values
    assert np.isin(valid, times).all()  # every (init, lead) pair has its truth: inits respect the leads
    if np.issubdtype(times.dtype, np.datetime64):
        assert np.issubdtype(forecast["lead_time"].dtype, np.timedelta64)
        if np.unique(np.diff(times)).size == 1:  # a regular record: lead = valid - init exactly
            np.testing.assert_array_equal(valid[:, 0] - init, forecast["lead_time"].values[0])
    assert forecast["init_time"].attrs["standard_name"] == "forecast_reference_time"
    assert forecast["lead_time"].attrs["standard_name"] == "forecast_period"
    assert forecast["realization"].attrs["standard_name"] == "realization"

    if preset in BOUNDED:
        name = BOUNDED[preset]
        values = forecast[name].values
        values = values[np.isfinite(values)]
        assert (values >= 0).all() and (values == 0).any()  # in the domain, with exact zeros
        domain = metrics["domain"][name]
        assert domain["below_fraction"] == 0.0
        assert 0 < domain["dry_fraction"]["truth"] < 1
        assert len(domain["wet_quantiles"]["members"]) == 3


@pytest.mark.slow
def test_era_interim_runs_what_two_climatologies_allow_and_says_why(tmp_path, shared_data):
    run_dir = tmp_path / "era_interim"
    out = simdiff("run", f"run_dir={run_dir}", "data=era_interim", "debug=tiny", f"shared_data={shared_data}")
    assert out.returncode == 0, out.stderr[-4000:]
    said = out.stdout + out.stderr
    assert "the main job ends after encode" in said and "not a time series" in said
    assert (run_dir / "latents.zarr").is_dir() and not (run_dir / "forecast.zarr").exists()
    with xr.open_zarr(run_dir / "latents.zarr", consolidated=False) as lat:
        assert np.isfinite(lat["data"].values).all()
