"""How cost grows: training step, sampling, prepare and evaluate against grid size, levels and
ensemble size, with the fitted exponent of each.

For each point it measures, on synthetic unit-variance data (cost does not depend on values):

* ``train_step``: one training step (forward, loss, backward, AdamW) of the default autoencoder
  (``conf/autoencoder/default.yaml``, 4x4 down-sampling) on the field plus one of the default
  denoiser (``conf/diffusion/default.yaml``, levels folded into channels, one previous state as
  the condition) on its latents, per sample;
* ``sampling``: one forecast draw per member: DPM-Solver++(2M) over 10 noise levels in latent
  space, then the decoder, per member (a batch of members at once);
* ``prepare``: ``simdiff.data.stores.prepare.prepare`` of a netCDF file of 64 samples
  (``ClimateSource``: normalisation statistics, split, chunked zarr store), per sample;
* ``evaluate``: ``simdiff.evaluate.report.evaluate_forecast`` (CRPS, spread-skill, rank
  histograms, spectra) of an ensemble forecast of 4 cases against the truth, per case.

Axes: grid side 32 to 256 (2 levels, 10 members), levels 1 to 8 (64x64), ensemble size 10 to
200 (64x64, 2 levels; sampling and evaluate). The exponent is the slope of log(cost) against
log(size), size being grid cells, levels or members: 1 is linear.

    python benchmarks/bench_scaling.py            # the full axes, ~20 min on 2 CPU cores
    python benchmarks/bench_scaling.py --quick    # grid 32-64, levels 1-2, members 4-8 (a check)

Prints a table and writes ``bench_results/scaling.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import xarray as xr

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_latent_vs_pixel import build, default_configs  # noqa: E402

from simdiff.base.atomic import write_json  # noqa: E402
from simdiff.data.sources.climate import ClimateSource  # noqa: E402
from simdiff.data.stores.prepare import PrepareOptions, prepare  # noqa: E402
from simdiff.diffusion.edm import EDMLoss  # noqa: E402
from simdiff.diffusion.samplers.dpmpp_2m import sample_dpmpp_2m  # noqa: E402
from simdiff.diffusion.sampling import Sampling  # noqa: E402
from simdiff.evaluate.report import evaluate_forecast  # noqa: E402
from simdiff.nets.autoencoder import Autoencoder  # noqa: E402

VARIABLES = 2


def autoencoder(ae_cfg: dict) -> Autoencoder:
    return Autoencoder(
        VARIABLES,
        (False, False, True),
        latent_channels=int(ae_cfg["latent_channels"]),
        channels=ae_cfg["channels"],
        factors=ae_cfg["factors"],
        blocks=ae_cfg["blocks"],
        attention=False,
        depth_kernel_size=ae_cfg["depth_kernel_size"],
    )


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def train_step_s(side: int, levels: int, net_cfg: dict, ae_cfg: dict, batch: int, repeats: int) -> float:
    """Seconds per sample of one autoencoder and one denoiser training step."""
    torch.manual_seed(0)
    ae = autoencoder(ae_cfg).train()
    ae_opt = torch.optim.AdamW(ae.parameters(), lr=1e-4)
    x = torch.randn(batch, VARIABLES, levels, side, side)

    def ae_step() -> None:
        out = ae(x)
        loss = (out.recon - x).pow(2).mean() + out.reg
        ae_opt.zero_grad(set_to_none=True)
        loss.backward()
        ae_opt.step()

    latent = (int(ae_cfg["latent_channels"]), levels, side // 4, side // 4)
    dm = build(latent, net_cfg).train()
    dm_opt = torch.optim.AdamW(dm.parameters(), lr=1e-4)
    loss_fn = EDMLoss()
    z = torch.randn(batch, *latent)
    prev = torch.randn(batch, 1, *latent)

    def dm_step() -> None:
        loss, _ = loss_fn(dm, z, **dm.conditions({"target": z, "previous": prev}))
        dm_opt.zero_grad(set_to_none=True)
        loss.mean().backward()
        dm_opt.step()

    return (median_time(ae_step, repeats) + median_time(dm_step, repeats)) / batch


def sampling_s(side: int, levels: int, members: int, net_cfg: dict, ae_cfg: dict, repeats: int) -> float:
    """Seconds per member of a forecast draw (10 DPM-Solver++(2M) levels, then the decoder)."""
    torch.manual_seed(0)
    latent = (int(ae_cfg["latent_channels"]), levels, side // 4, side // 4)
    dm = build(latent, net_cfg).eval()
    ae = autoencoder(ae_cfg).eval()
    sampling = Sampling(sample_dpmpp_2m, steps=10)
    sigmas = sampling.sigmas()
    cond = dm.conditions({"previous": torch.randn(members, 1, *latent)}, n=members)

    @torch.no_grad()
    def draw() -> None:
        x = torch.randn(members, *latent) * sigmas[0]
        ae.decode(sampling.sampler(lambda y, s: dm(y, s, **cond), x, sigmas), (levels, side, side))

    return median_time(draw, repeats) / members


def prepare_s(side: int, levels: int, samples: int, tmp: Path) -> float:
    """Seconds per sample of ``prepare`` on a netCDF file of ``samples`` fields."""
    rng = np.random.default_rng(0)
    lat = np.linspace(-80, 80, side)
    lon = np.arange(side) * (360.0 / side)
    shape = (samples, levels, side, side)
    ds = xr.Dataset(
        {
            f"v{k}": (
                ("time", "level", "lat", "lon"),
                rng.standard_normal(shape, dtype=np.float32),
                {"units": "1"},
            )
            for k in range(VARIABLES)
        },
        coords={
            "time": pd.date_range("2000-01-01", periods=samples, freq="D"),
            "level": np.arange(1, levels + 1) * 100.0,
            "lat": lat,
            "lon": lon,
        },
    )
    path = tmp / f"s{side}_l{levels}.nc"
    ds.to_netcdf(path)
    run_dir = tmp / f"run_{side}_{levels}"
    t0 = time.perf_counter()
    prepare(
        ClimateSource(path),
        run_dir,
        options=PrepareOptions(progress=False),
        config={"data": {"source": str(path)}},
        force=True,
    )
    return (time.perf_counter() - t0) / samples


def evaluate_s(side: int, levels: int, members: int, cases: int) -> float:
    """Seconds per case of ``evaluate_forecast`` on an in-memory forecast of ``cases`` inits."""
    rng = np.random.default_rng(0)
    times = pd.date_range("2000-01-01", periods=cases + 1, freq="D").values
    coords = {
        "level": np.arange(levels) + 1.0,
        "lat": np.linspace(-80, 80, side),
        "lon": np.arange(side) * 1.0,
    }
    truth = xr.Dataset(
        {
            "v": (
                ("time", "level", "lat", "lon"),
                rng.standard_normal((cases + 1, levels, side, side), dtype=np.float32),
            )
        },
        coords={"time": times, **coords},
    )
    fc = xr.Dataset(
        {
            "v": (
                ("realization", "init_time", "lead_time", "level", "lat", "lon"),
                rng.standard_normal((members, cases, 1, levels, side, side), dtype=np.float32),
            )
        },
        coords={
            "realization": np.arange(members),
            "init_time": times[:cases],
            "lead_time": np.array([86400 * 10**9], dtype="timedelta64[ns]"),
            **coords,
        },
    )
    t0 = time.perf_counter()
    evaluate_forecast(fc, truth, periodic={"lon"}, spectra=True)
    return (time.perf_counter() - t0) / cases


def exponent(sizes: list[float], costs: list[float]) -> float:
    return round(float(np.polyfit(np.log(sizes), np.log(costs), 1)[0]), 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small axes (a check, not the figures)")
    ap.add_argument("--out", default=str(REPO / "bench_results" / "scaling.json"))
    args = ap.parse_args()
    logging.getLogger("simdiff").setLevel(logging.WARNING)
    net_cfg, ae_cfg = default_configs()
    sides = [32, 64] if args.quick else [32, 64, 128, 256]
    levels = [1, 2] if args.quick else [1, 2, 4, 8]
    members = [4, 8] if args.quick else [10, 25, 50, 100, 200]
    batch, repeats, samples = (2, 1, 8) if args.quick else (4, 3, 64)
    rows: list[dict] = []

    def record(cost: str, axis: str, size: float, seconds: float, **point: int) -> None:
        rows.append({"cost": cost, "axis": axis, "size": size, "seconds": seconds, **point})
        print(f"{cost:<11}{axis:<9}{point!s:<40}{seconds:>12.5f} s", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        for side in sides:
            p = {"side": side, "levels": 2, "members": members[0]}
            record(
                "train_step", "grid", side * side, train_step_s(side, 2, net_cfg, ae_cfg, batch, repeats), **p
            )
            record(
                "sampling",
                "grid",
                side * side,
                sampling_s(side, 2, members[0], net_cfg, ae_cfg, repeats),
                **p,
            )
            record("prepare", "grid", side * side, prepare_s(side, 2, samples, Path(tmp)), **p)
            record("evaluate", "grid", side * side, evaluate_s(side, 2, members[0], 4), **p)
        for lev in levels:
            p = {"side": 64, "levels": lev, "members": members[0]}
            record("train_step", "levels", lev, train_step_s(64, lev, net_cfg, ae_cfg, batch, repeats), **p)
            record("sampling", "levels", lev, sampling_s(64, lev, members[0], net_cfg, ae_cfg, repeats), **p)
            record("prepare", "levels", lev, prepare_s(64, lev, samples, Path(tmp)), **p)
            record("evaluate", "levels", lev, evaluate_s(64, lev, members[0], 4), **p)
        for m in members:
            p = {"side": 64, "levels": 2, "members": m}
            # per forecast (all members), so the exponent is that of the whole ensemble's cost
            record("sampling", "members", m, m * sampling_s(64, 2, m, net_cfg, ae_cfg, repeats), **p)
            record("evaluate", "members", m, evaluate_s(64, 2, m, 4), **p)

    exponents: dict[str, dict[str, float]] = {}
    for cost in dict.fromkeys(r["cost"] for r in rows):
        for axis in dict.fromkeys(r["axis"] for r in rows if r["cost"] == cost):
            pts = [r for r in rows if r["cost"] == cost and r["axis"] == axis]
            exponents.setdefault(cost, {})[axis] = exponent(
                [r["size"] for r in pts], [r["seconds"] for r in pts]
            )
    print("\nfitted exponents (cost ~ size^k; size = grid cells, levels, members)")
    print(f"{'cost':<12}" + "".join(f"{a:>10}" for a in ("grid", "levels", "members")))
    for cost, axes in exponents.items():
        print(
            f"{cost:<12}"
            + "".join(
                f"{axes[a]:>10.2f}" if a in axes else f"{'-':>10}" for a in ("grid", "levels", "members")
            )
        )
    write_json(
        {
            "quick": args.quick,
            "torch_threads": torch.get_num_threads(),
            "batch": batch,
            "prepare_samples": samples,
            "evaluate_cases": 4,
            "net": net_cfg,
            "autoencoder": ae_cfg,
            "rows": rows,
            "exponents": exponents,
        },
        args.out,
    )
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
