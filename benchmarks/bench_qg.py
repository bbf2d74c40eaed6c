"""Benchmark of the built-in two-layer QG simulator (datasets/qg/README.md).

Measures, on the default parameters:

* wall time per 1000 model steps at 64x64 and 128x128 (one torch thread, which is fastest);
* the statistical steadiness of energy after spin-up (mean KE over the two halves of a record);
* the slope of the time-mean upper-layer kinetic-energy spectrum from 1/r_d to 0.8 of the
  2/3-rule cutoff, and of the barotropic (thickness-weighted) flow;
* the decorrelation (e-folding) time of the PV anomalies and their correlation at the
  default snapshot spacing;
* with ``--full``: wall time to generate the whole default dataset through QGSource.

Prints a table and writes ``bench_results/qg.json``.

Usage: .venv/bin/python benchmarks/bench_qg.py [--record-days 2400] [--full]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import torch
import xarray as xr
from rich.console import Console
from rich.table import Table

from simdiff.base.atomic import write_json
from simdiff.data.sources.simulators.qg import (
    QGModel,
    QGParams,
    kinetic_energy_spectrum,
    spectral_slope,
    torch_threads,
)
from simdiff.data.sources.simulators.qg_source import INITIAL_AMPLITUDE, QGSource

OUT = Path(__file__).resolve().parents[1] / "bench_results" / "qg.json"


def time_per_1000_steps(nx: int, repeats: int = 3) -> float:
    """Best-of-``repeats`` wall time (s) of 1000 steps of a turbulent-ish state."""
    model = QGModel(QGParams(nx=nx))
    state = model.random_state(0, 1e-5)
    for _ in range(20):
        state = model.step(state)
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(1000):
            state = model.step(state)
        best = min(best, time.perf_counter() - t0)
    return best


def lag_correlation(q: np.ndarray, lag: int) -> np.ndarray:
    """Correlation of PV anomalies ``(time, layer, y, x)`` with themselves ``lag`` samples later."""
    a = q - q.mean(0)
    x, y = a[:-lag], a[lag:]
    return (x * y).mean((0, 2, 3)) / np.sqrt((x * x).mean((0, 2, 3)) * (y * y).mean((0, 2, 3)))


def physics(spinup_days: int, record_days: int) -> dict[str, float | list[float]]:
    """Spin the default model up, record daily, and measure steadiness, slopes and memory."""
    src = QGSource()
    model = QGModel(src.params)
    p = model.params
    state = model.random_state(0, INITIAL_AMPLITUDE)
    steps_per_day = round(86400 / p.dt)
    for _ in range(spinup_days * steps_per_day):
        state = model.step(state)
    ke, q, psi = [], [], []
    for _ in range(record_days):
        for _ in range(steps_per_day):
            state = model.step(state)
        ke.append(model.kinetic_energy(state.qh).numpy())
        q.append(model.to_physical(state.qh).numpy().astype(np.float32))
        psi.append(model.to_physical(model.invert(state.qh)).numpy().astype(np.float32))
    ke_a, q_a = np.asarray(ke), np.asarray(q)
    half = len(ke_a) // 2
    ratio = ke_a[half:].mean(0) / ke_a[:half].mean(0)
    x = (np.arange(p.nx) + 0.5) * p.dx
    da = xr.DataArray(np.asarray(psi), dims=("time", "level", "y", "x"), coords={"x": x, "y": x})
    h1, h2 = p.layer_fractions
    dk = 2 * math.pi / p.length
    k_lo, k_hi = 1 / p.deformation_radius, 0.8 * model.cutoff * dk
    e = kinetic_energy_spectrum(da).mean("time")
    e_bt = kinetic_energy_spectrum(h1 * da.isel(level=0) + h2 * da.isel(level=1)).mean("time")
    lags = np.arange(1, 61)
    corr = np.stack([lag_correlation(q_a, int(lag)) for lag in lags])  # (lag, layer)
    efold = [float(lags[np.argmax(corr[:, i] < 1 / math.e)]) for i in range(2)]
    spacing_days = src.snapshot_every * p.dt / 86400
    return {
        "ke_second_over_first_half": ratio.tolist(),
        "ke_mean_m2_s2": ke_a.mean(0).tolist(),
        "slope_upper": spectral_slope(e.isel(level=0), k_lo, k_hi),
        "slope_lower": spectral_slope(e.isel(level=1), k_lo, k_hi),
        "slope_barotropic": spectral_slope(e_bt, k_lo, k_hi),
        "slope_fit_range_index": [k_lo / dk, k_hi / dk],
        "decorrelation_days": efold,
        "snapshot_spacing_days": spacing_days,
        "corr_at_spacing": [float(np.interp(spacing_days, lags, corr[:, i])) for i in range(2)],
        "any_nan": bool(not np.isfinite(q_a).all()),
    }


def full_dataset() -> dict[str, float]:
    """Generate the whole default dataset into a temporary cache through QGSource."""
    with tempfile.TemporaryDirectory() as tmp:
        src = QGSource(cache_dir=tmp, progress=False)
        t0 = time.perf_counter()
        field = src.open()
        wall = time.perf_counter() - t0
        nbytes = sum(f.stat().st_size for f in src.path.rglob("*") if f.is_file())
        return {
            "full_dataset_wall_s": wall,
            "full_dataset_snapshots": field.n_samples,
            "store_mib": nbytes / 2**20,
        }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spinup-days", type=int, default=1460)
    ap.add_argument("--record-days", type=int, default=2400)
    ap.add_argument("--full", action="store_true", help="also time generating the default dataset")
    args = ap.parse_args()
    with torch_threads(1):
        res: dict[str, object] = {
            "s_per_1000_steps_64": time_per_1000_steps(64),
            "s_per_1000_steps_128": time_per_1000_steps(128),
        }
        res.update(physics(args.spinup_days, args.record_days))
        if args.full:
            res.update(full_dataset())
    res["machine"] = {
        "cpus": os.cpu_count(),
        "load_avg_1min": psutil.getloadavg()[0],
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    res["args"] = vars(args)
    table = Table(title="QG simulator (default parameters, 1 torch thread)")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for k, v in res.items():
        if k not in ("machine", "args"):
            table.add_row(k, json.dumps(v) if not isinstance(v, float) else f"{v:.4g}")
    table.add_row("load average (1 min)", f"{res['machine']['load_avg_1min']:.2f}")  # type: ignore[index]
    Console().print(table)
    write_json(res, OUT, allow_nan=True)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
