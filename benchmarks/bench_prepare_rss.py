"""Peak RSS and wall time of ``prepare`` on a ~4 GB synthetic dataset (goal: peak RSS <= 1.5 GB).

Writes 2 variables x (time, 721, 1440) float32 on a 0.25 deg global grid (a temperature-like
field and a zero-inflated precipitation-like field under log1p) to an uncompressed zarr v3
store chunk by chunk, opens it lazily as a Field, runs ``prepare`` in a child process while
polling the child's RSS with psutil, prints a table and writes ``bench_results/prepare_rss.json``.
The synthetic data is removed afterwards unless ``--keep``.

With ``--workers N`` the passes run on a ``prepare.cluster`` LocalCluster of N worker processes
of one thread each (:class:`simdiff.data.stores.cluster.LocalCluster`), and the peak RSS of each
worker process is reported beside the child's and the estimate its memory limit is derived from
(:func:`simdiff.data.stores.chunking.task_mb`).

    .venv/bin/python benchmarks/bench_prepare_rss.py            # ~4 GB
    .venv/bin/python benchmarks/bench_prepare_rss.py --gb 0.2   # quick check
    .venv/bin/python benchmarks/bench_prepare_rss.py --gb 0.3 --workers 2 \
        --out bench_results/prepare_rss_cluster.json
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dask.array as da
import numpy as np
import psutil
import xarray as xr

NLAT, NLON = 721, 1440
GOAL_MB = 1500.0


def _smooth_step(block: np.ndarray, kind: str, block_info: dict | None = None) -> np.ndarray:
    """One chunk (k, lat, lon) of a smooth, travelling, weather-like pattern plus small noise."""
    assert block_info is not None
    t0 = block_info[None]["array-location"][0][0]
    k = block.shape[0]
    lat = np.deg2rad(np.linspace(90, -90, NLAT, dtype=np.float32))[:, None]
    lon = np.deg2rad(np.arange(NLON, dtype=np.float32) * 0.25)[None, :]
    out = np.empty((k, NLAT, NLON), dtype=np.float32)
    rng = np.random.default_rng([t0, 0 if kind == "t2m" else 1])
    for i in range(k):
        phase = 0.05 * (t0 + i)
        wave = sum(np.cos(m * lat) * np.sin(m * lon + phase * (m + 1)) / m for m in (2, 3, 5, 8)).astype(
            np.float32
        )
        noise = 0.05 * rng.standard_normal((NLAT, NLON), dtype=np.float32)
        if kind == "t2m":
            out[i] = 250.0 + 40.0 * np.cos(lat) + 5.0 * (wave + noise)
        else:  # kg m-2 s-1: rain where the pattern is high, zero elsewhere
            out[i] = np.maximum(wave + noise - 0.3, 0.0) * 2e-4
    return out


def make_dataset(path: Path, gb: float) -> int:
    """Write the synthetic zarr store at ``path``; returns the number of time steps."""
    n = max(10, round(gb * 1e9 / (2 * NLAT * NLON * 4)))
    template = da.zeros((n, NLAT, NLON), dtype=np.float32, chunks=(1, NLAT, NLON))
    ds = xr.Dataset(
        {
            "t2m": (
                ("time", "lat", "lon"),
                da.map_blocks(_smooth_step, template, "t2m", dtype=np.float32),
                {"units": "K", "standard_name": "air_temperature"},
            ),
            "tp": (
                ("time", "lat", "lon"),
                da.map_blocks(_smooth_step, template, "tp", dtype=np.float32),
                {"units": "kg m-2 s-1", "standard_name": "precipitation_flux"},
            ),
        },
        coords={
            "time": np.arange(n) * np.timedelta64(6, "h") + np.datetime64("2000-01-01", "ns"),
            "lat": ("lat", np.linspace(90, -90, NLAT), {"units": "degrees_north"}),
            "lon": ("lon", np.arange(NLON) * 0.25, {"units": "degrees_east"}),
        },
    )
    enc = {v: {"compressors": None, "chunks": (1, NLAT, NLON)} for v in ("t2m", "tp")}
    ds.to_zarr(path, mode="w", zarr_format=3, consolidated=False, encoding=enc)
    return n


class SyntheticZarrSource:
    """FieldSource over the synthetic store: lazy (dask, one chunk per time step), cos-lat weights."""

    def __init__(self, path: str) -> None:
        from simdiff.data.transforms import Log1p

        self.path = path
        self.transforms = {"tp": Log1p(scale=1e-4)}

    def open(self):  # -> Field
        from simdiff.data.field import Field
        from simdiff.data.geometry import Geometry

        ds = xr.open_zarr(self.path, consolidated=False)
        coslat = np.cos(np.deg2rad(ds["lat"].values))[:, None] * np.ones(NLON)
        geometry = Geometry(
            dims=("lat", "lon"),
            periodic=frozenset({"lon"}),
            weights=xr.DataArray(coslat, dims=("lat", "lon")),
            mask=xr.DataArray(np.ones((NLAT, NLON), bool), dims=("lat", "lon")),
        )
        return Field(ds, geometry, sources=(self.path,))


def child(source: str, run_dir: str, chunk_mb: float, work_mb: float, workers: int,
          memory_limit: str) -> None:
    """Run prepare (what `simdiff prepare` calls) in this process, on a LocalCluster of ``workers``
    processes when ``workers`` > 0."""
    from simdiff.data.stores.cluster import LocalCluster
    from simdiff.data.stores.prepare import PrepareOptions, prepare

    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, dashboard_address=":0",
                           memory_limit=memory_limit or None) if workers else None
    options = PrepareOptions(chunk_mb=chunk_mb, work_mb=work_mb, progress=False, cluster=cluster)
    config = {"data": {"source": source}, "prepare": {"chunk_mb": chunk_mb, "work_mb": work_mb}}
    prepare(SyntheticZarrSource(source), run_dir, options=options, config=config)


def measure(source: Path, run_dir: Path, chunk_mb: float, work_mb: float, workers: int = 0,
            memory_limit: str = "") -> dict[str, float]:
    cmd = [sys.executable, __file__, "--child", str(source), str(run_dir), str(chunk_mb), str(work_mb),
           str(workers), memory_limit]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd)
    ps = psutil.Process(proc.pid)
    peak = 0
    worker_peaks: dict[int, int] = {}  # the dask worker processes (spawned by their nannies) by PID
    while proc.poll() is None:
        try:
            peak = max(peak, ps.memory_info().rss)
            for sub in ps.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    if sub.pid in worker_peaks or "spawn_main" in " ".join(sub.cmdline()):
                        worker_peaks[sub.pid] = max(worker_peaks.get(sub.pid, 0), sub.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.05)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"prepare failed with exit code {proc.returncode}")
    ru = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # Linux: kB
    out = {"peak_rss_mb_psutil": peak / 1e6, "peak_rss_mb_ru_maxrss": ru / 1e6, "wall_s": wall}
    if workers:
        out["worker_peak_rss_mb_psutil"] = sorted(v / 1e6 for v in worker_peaks.values())
    return out


def _worker_estimate(chunk_mb: float, work_mb: float, memory_limit: str) -> dict[str, float]:
    """What prepare estimates for one task and one single-threaded worker, and the limit it sets."""
    from simdiff.data.stores.chunking import samples_per_chunk, task_mb, work_samples
    from simdiff.data.stores.cluster import LocalCluster, worker_need_mb

    var_bytes = NLAT * NLON * 4
    block = work_samples(samples_per_chunk(2 * var_bytes, chunk_mb), var_bytes, work_mb)
    task = task_mb(block, var_bytes, 2)
    limit = LocalCluster(threads_per_worker=1, memory_limit=memory_limit or None).memory_bytes(task)
    return {"block_samples": block, "task_mb": task, "worker_need_mb": worker_need_mb(1, task),
            "memory_limit_mb": limit / 1e6}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gb", type=float, default=4.0, help="logical size of the synthetic dataset")
    p.add_argument("--chunk-mb", type=float, default=1.0)
    p.add_argument("--work-mb", type=float, default=32.0)
    p.add_argument("--workdir", default=None, help="where the synthetic data goes (default: a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the synthetic data and the store")
    p.add_argument("--out", default="bench_results/prepare_rss.json")
    p.add_argument("--workers", type=int, default=0, help="run the passes on a LocalCluster of N processes")
    p.add_argument("--memory-limit", default="", help="each worker's memory limit (default: derived)")
    p.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.child[0], args.child[1], float(args.child[2]), float(args.child[3]), int(args.child[4]),
              args.child[5])
        return

    work = Path(tempfile.mkdtemp(prefix="simdiff-bench-prepare-", dir=args.workdir))
    try:
        source, run_dir = work / "synthetic.zarr", work / "run"
        t0 = time.perf_counter()
        n = make_dataset(source, args.gb)
        gen_s = time.perf_counter() - t0
        data_gb = 2 * n * NLAT * NLON * 4 / 1e9
        result = measure(source, run_dir, args.chunk_mb, args.work_mb, args.workers, args.memory_limit)
        store = run_dir / "data" / "train.zarr"
        store_gb = sum(f.stat().st_size for f in store.rglob("*") if f.is_file()) / 1e9
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    record = {
        "benchmark": "prepare_rss",
        "dataset": {"variables": ["t2m", "tp"], "shape": [n, NLAT, NLON], "dtype": "float32", "gb": data_gb},
        "options": {"chunk_mb": args.chunk_mb, "work_mb": args.work_mb, "workers": args.workers,
                    "memory_limit": args.memory_limit or None},
        **result,
        "store_gb": store_gb,
        "throughput_mb_s": data_gb * 1e3 / result["wall_s"],
        "generate_s": gen_s,
        "goal_peak_rss_mb": GOAL_MB,
        "pass": max(result["peak_rss_mb_psutil"], result["peak_rss_mb_ru_maxrss"]) <= GOAL_MB,
        "machine": {
            "cpus": os.cpu_count(),
            "memory_gb": psutil.virtual_memory().total / 1e9,
            "python": platform.python_version(),
        },
        "kept": str(work) if args.keep else None,
    }
    rows = [
        ("dataset", f"2 x ({n}, {NLAT}, {NLON}) float32 = {data_gb:.2f} GB"),
        ("peak RSS (psutil poll)", f"{result['peak_rss_mb_psutil']:.0f} MB"),
        ("peak RSS (ru_maxrss)", f"{result['peak_rss_mb_ru_maxrss']:.0f} MB"),
        ("goal", f"<= {GOAL_MB:.0f} MB -> {'PASS' if record['pass'] else 'FAIL'}"),
        ("wall time prepare", f"{result['wall_s']:.1f} s ({record['throughput_mb_s']:.0f} MB/s)"),
        ("store on disk", f"{store_gb:.2f} GB (blosc-lz4)"),
    ]
    if args.workers:
        record.update(_worker_estimate(args.chunk_mb, args.work_mb, args.memory_limit))
        peaks = result["worker_peak_rss_mb_psutil"]
        rows += [
            ("workers (1 thread each)", f"{args.workers}: peak RSS {', '.join(f'{v:.0f}' for v in peaks)}"
                                        " MB"),
            ("estimate: one task", f"{record['task_mb']:.0f} MB (simdiff.data.stores.chunking.task_mb)"),
            ("estimate: worker needs", f"{record['worker_need_mb']:.0f} MB; memory limit "
                                       f"{record['memory_limit_mb']:.0f} MB"),
        ]
    width = max(len(r[0]) for r in rows)
    print(f"\n{'prepare peak RSS':<{width}}  value\n{'-' * width}  {'-' * 40}")
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    out = Path(args.out)
    from simdiff.base.atomic import write_json

    write_json(record, out, allow_nan=True)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
