"""Out-of-core forecast evaluation: wall time and peak RSS of ``evaluate_forecast`` on a big ensemble.

A synthetic forecast ``(realization=50, init_time=N, lead_time=1, lat=721, lon=1440)`` float32
(ERA5's 0.25 degree grid) and its truth ``(time=N + 1, lat, lon)`` are generated with dask's
random arrays: a smooth zonal pattern plus unit noise, members and truth drawn alike (so the
scores have known values: spread-skill near 1, a flat rank histogram). By default the forecast
is first written to a zarr store on disk and evaluated from it (``xr.open_zarr``, chunks of one
case x ``--lat-chunk`` latitudes x all members); ``--lazy`` evaluates the dask arrays directly
without writing anything. Either way ``evaluate_forecast`` (CRPS, fair CRPS, spread-skill, rank
histogram, persistence, zonal spectra; cos-lat weights) streams the data chunk by chunk; peak
RSS is sampled every 20 ms by a thread (psutil) during the evaluation only, and compared with
the forecast's size.

The default is 8 cases (1.7 GB of forecast, a few minutes on 2 cores); ``--cases 100`` is the
full 50 x 100 case (20.8 GB; needs that much free disk unless ``--lazy``). Time scales
linearly with the case count; peak RSS does not (it is set by the chunk size and the threads).

Run::

    .venv/bin/python benchmarks/bench_evaluate_oc.py              # 8 cases, writes ~1.7 GB to a temp dir
    .venv/bin/python benchmarks/bench_evaluate_oc.py --lazy --cases 100

Prints a table and writes ``bench_results/evaluate_oc.json``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import threading
import time
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pandas as pd
import psutil
import xarray as xr

from simdiff.base.atomic import write_json
from simdiff.evaluate.report import evaluate_forecast

ROOT = Path(__file__).resolve().parents[1]


def synthetic(
    members: int, cases: int, ny: int, nx: int, lat_chunk: int, seed: int = 0
) -> tuple[xr.Dataset, xr.Dataset]:
    """Lazy forecast (realization, init_time, lead_time, lat, lon) and truth (time, lat, lon), float32."""
    lat = np.linspace(90.0, -90.0, ny)
    lon = np.arange(nx) * (360.0 / nx)
    pattern = da.from_array(
        (280.0 + 20.0 * np.cos(np.deg2rad(lat))[:, None] ** 2 * np.ones(nx)).astype(np.float32),
        chunks=(lat_chunk, nx),
    )
    rs = da.random.RandomState(seed)
    noise = rs.standard_normal((members, cases, 1, ny, nx), chunks=(members, 1, 1, lat_chunk, nx)).astype(
        np.float32
    )
    fc = pattern + noise
    t_noise = rs.standard_normal((cases + 1, ny, nx), chunks=(1, lat_chunk, nx)).astype(np.float32)
    time_ = pd.date_range("2000-01-01", periods=cases + 1, freq="6h").values
    coords = {"lat": lat, "lon": lon}
    forecast = xr.Dataset(
        {"t2m": (("realization", "init_time", "lead_time", "lat", "lon"), fc, {"units": "K"})},
        coords={
            "realization": np.arange(members),
            "init_time": time_[:cases],
            "lead_time": np.array([6 * 3600 * 10**9], dtype="timedelta64[ns]"),
            **coords,
        },
    )
    truth = xr.Dataset(
        {"t2m": (("time", "lat", "lon"), pattern + t_noise, {"units": "K"})},
        coords={"time": time_, **coords},
    )
    return forecast, truth


class PeakRSS:
    """Samples this process's RSS every ``interval`` s in a thread; ``peak`` in bytes."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self._proc = psutil.Process(os.getpid())
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            time.sleep(self.interval)

    def __enter__(self) -> PeakRSS:
        self.peak = self._proc.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--members", type=int, default=50)
    p.add_argument("--cases", type=int, default=8, help="init times (100 = the full size)")
    p.add_argument("--ny", type=int, default=721)
    p.add_argument("--nx", type=int, default=1440)
    p.add_argument("--lat-chunk", type=int, default=91, help="latitudes per chunk")
    p.add_argument("--lazy", action="store_true", help="evaluate the dask arrays without writing a store")
    p.add_argument("--no-spectra", action="store_true")
    p.add_argument("--workdir", default=None, help="where the zarr store goes (default: a temp dir)")
    p.add_argument("--out", default="bench_results/evaluate_oc.json")
    args = p.parse_args()

    forecast, truth = synthetic(args.members, args.cases, args.ny, args.nx, args.lat_chunk)
    weights = xr.DataArray(
        np.cos(np.deg2rad(forecast["lat"].values))[:, None] * np.ones(args.nx),
        dims=("lat", "lon"),
        coords={"lat": forecast["lat"], "lon": forecast["lon"]},
    )
    array_gb = forecast["t2m"].nbytes / 1e9
    work = None if args.lazy else Path(tempfile.mkdtemp(prefix="simdiff-bench-eval-", dir=args.workdir))
    write_s = 0.0
    try:
        if work is not None:
            t0 = time.perf_counter()
            forecast.to_zarr(work / "forecast.zarr", mode="w", consolidated=False)
            truth.to_zarr(work / "truth.zarr", mode="w", consolidated=False)
            write_s = time.perf_counter() - t0
            forecast = xr.open_zarr(work / "forecast.zarr", consolidated=False)
            truth = xr.open_zarr(work / "truth.zarr", consolidated=False)
        rss0 = psutil.Process().memory_info().rss
        with PeakRSS() as rss:
            t0 = time.perf_counter()
            metrics = evaluate_forecast(
                forecast, truth, weights=weights, periodic={"lon"}, spectra=not args.no_spectra
            )
            eval_s = time.perf_counter() - t0
    finally:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
    e = metrics["variables"]["t2m"]
    record = {
        "benchmark": "evaluate_oc",
        "forecast": {
            "shape": [args.members, args.cases, 1, args.ny, args.nx],
            "dtype": "float32",
            "gb": array_gb,
            "source": "dask random (not written)" if args.lazy else "zarr on disk",
            "chunk": [args.members, 1, 1, args.lat_chunk, args.nx],
        },
        "write_s": write_s,
        "evaluate_s": eval_s,
        "gb_per_s": array_gb / eval_s,
        "rss_before_gb": rss0 / 1e9,
        "peak_rss_gb": rss.peak / 1e9,
        "peak_rss_over_array": rss.peak / (array_gb * 1e9),
        "scores": {
            k: e[k]
            for k in (
                "crps",
                "crps_fair",
                "rmse",
                "spread",
                "spread_skill",
                "crps_persistence",
                "spectrum_ratio",
            )
        },
        "rank_histogram_max_dev": float(
            np.max(np.abs(np.asarray(e["rank_histogram"]) - 1 / (args.members + 1)))
        ),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "dask": dask.__version__},
    }
    rows = [
        (
            "forecast",
            f"{args.members} x {args.cases} x 1 x {args.ny} x {args.nx} float32 ({array_gb:.2f} GB, "
            f"{record['forecast']['source']})",
        ),
        ("write store (s)", f"{write_s:.1f}"),
        ("evaluate (s)", f"{eval_s:.1f}"),
        ("throughput (GB/s)", f"{array_gb / eval_s:.3f}"),
        ("peak RSS (GB)", f"{rss.peak / 1e9:.2f} (before: {rss0 / 1e9:.2f})"),
        ("peak RSS / forecast size", f"{rss.peak / (array_gb * 1e9):.3f}"),
        ("spread-skill (expect ~1)", f"{e['spread_skill']:.4f}"),
        ("rank histogram max |f - 1/(M+1)|", f"{record['rank_histogram_max_dev']:.2e}"),
    ]
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    out = write_json(record, ROOT / args.out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
