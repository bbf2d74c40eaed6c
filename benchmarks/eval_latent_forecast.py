"""One-step ensemble forecasts in latent space: calibration and skill of the diffusion model alone.

The report of ``simdiff evaluate`` scores decoded forecasts in physical units, where the error
includes the autoencoder's reconstruction error (its "AE ceiling"), which no latent ensemble can
spread over. This script isolates the diffusion model: on the test split of ``run_dir/latents.zarr``
it samples ``--members``-member one-step forecasts x_{t+1} | x_t with the trained model (EMA
weights, the default sampler of ``conf/generate/default.yaml``) and scores them against the true
latents x_{t+1} (unit-variance channels, all cells weighted equally):

* CRPS (ensemble, Gneiting & Raftery 2007) and the fair CRPS,
* spread-skill ratio with the finite-ensemble factor sqrt((M+1)/M),
* the same CRPS for a climatological ensemble (``--members`` random training latents per case)
  and for persistence (x_t).

Run::

    .venv/bin/python benchmarks/eval_latent_forecast.py [--run-dir runs/qg] [--members 10] [--every 5]

Prints a table and writes ``bench_results/latent_forecast.json``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from hydra.utils import instantiate
from omegaconf import OmegaConf

from simdiff.base.atomic import write_json
from simdiff.data.loading.loader import window_targets
from simdiff.data.stores.latents import LatentStore
from simdiff.diffusion.schedules import karras_sigmas
from simdiff.metrics.calibration import spread_skill
from simdiff.metrics.crps import crps
from simdiff.runs.layout import RunDir
from simdiff.runs.models import load_models

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", default="runs/qg")
    ap.add_argument("--members", type=int, default=10)
    ap.add_argument("--every", type=int, default=5, help="every Nth valid test init")
    ap.add_argument("--batch", type=int, default=60, help="rows (init x member) per sampling call")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="bench_results/latent_forecast.json")
    args = ap.parse_args()
    run_dir = Path(args.run_dir)
    latents = LatentStore(run_dir / "latents.zarr")
    models = load_models(RunDir(run_dir), latents, torch.device("cpu"))
    model, dm_cfg = models.model, models.diffusion
    gen_cfg = OmegaConf.load(REPO / "conf" / "generate" / "default.yaml")
    sampler = instantiate(OmegaConf.create(dict(dm_cfg["sampler"])))
    sigmas = karras_sigmas(int(OmegaConf.select(gen_cfg, "steps", default=18)), 0.002, 80.0, 7.0)
    prev = int(dm_cfg["conditioning"]["previous"])
    data = np.asarray(latents.data[...], dtype=np.float32)
    split, block = latents.array("split"), latents.array("block")
    # cases: t+1 in the test split with its previous states in one block
    targets = window_targets(split, block, 2, prev + 1)[:: args.every]
    m = args.members
    g = torch.Generator().manual_seed(args.seed)
    ens = np.empty((len(targets), m, *data.shape[1:]), dtype=np.float32)
    per = max(args.batch // m, 1)
    t0 = time.perf_counter()
    for lo in range(0, len(targets), per):
        tt = targets[lo : lo + per]
        window = np.stack([data[t - prev : t] for t in tt])  # (n, prev, c, ...)
        batch = {"previous": torch.from_numpy(window).repeat_interleave(m, dim=0)}
        x = model.sample(batch, (len(tt) * m, *data.shape[1:]), sampler=sampler, sigmas=sigmas, generator=g)
        ens[lo : lo + len(tt)] = x.numpy().reshape(len(tt), m, *data.shape[1:])
    wall = time.perf_counter() - t0
    dims = ["case", "realization", *[f"d{i}" for i in range(data.ndim - 1)]]
    fc = xr.DataArray(ens, dims=dims)
    truth = xr.DataArray(data[targets], dims=[dims[0], *dims[2:]])
    train = np.flatnonzero(split == 0)
    rng = np.random.default_rng(args.seed)
    clim = xr.DataArray(data[rng.choice(train, size=(len(targets), m))], dims=dims)
    persistence = xr.DataArray(data[targets - 1], dims=truth.dims)
    ss = spread_skill(fc, truth)
    result = {
        "run_dir": str(run_dir), "members": m, "cases": len(targets), "sampling_s": round(wall, 1),
        "crps": float(crps(fc, truth).mean()), "crps_fair": float(crps(fc, truth, fair=True).mean()),
        "spread_skill": float(ss["ratio_corrected"]), "spread": float(ss["spread"]),
        "rmse": float(ss["skill"]),
        "crps_climatology": float(crps(clim, truth).mean()),
        "crps_persistence": float(abs(persistence - truth).mean()),
        "spread_skill_climatology": float(spread_skill(clim, truth)["ratio_corrected"]),
    }
    print(f"one-step latent forecasts, {run_dir}: {m} members x {len(targets)} test cases "
          f"({wall:.0f} s sampling)")
    for k in ("crps", "crps_fair", "crps_climatology", "crps_persistence", "rmse", "spread", "spread_skill",
              "spread_skill_climatology"):
        print(f"  {k:<26}{result[k]:.4f}")
    write_json(result, args.out)


if __name__ == "__main__":
    main()
