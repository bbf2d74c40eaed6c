"""Loader throughput (samples/s) from a training store: ours vs xbatcher vs a raw zarr read.

Two synthetic stores are written with ``simdiff.data.stores.prepare.write_training_store`` (so they
have exactly the chunking and compression ``prepare`` uses: whole-sample chunks of about
``PrepareOptions.chunk_mb``, Blosc-LZ4 + byte shuffle), holding smooth fields:

* small: (time, channel=2, lat=64, lon=64) float32, per-sample overhead dominates;
* large: (time, channel=2, lat=721, lon=1440) float32 (ERA5 0.25 degree), decompression
  dominates.

Measured: samples/s of an epoch over every sample, the median over several rounds in which
every runner times one epoch in turn (interleaved, so drifting machine load favours none),
after one warm-up epoch each (files in the page cache, worker start-up excluded: persistent
workers):

(a) raw: ``zarr`` read of every chunk in order, one thread (the goals' reference); and, as a
    floor, every chunk file read and Blosc-decompressed directly in one thread, which is
    what the loader's fast path (``ChunkDecoder``) does without zarr's per-call overhead;
(b) simdiff ``ChunkedSampleDataset`` + ``DataLoader(batch_size=None)``, shuffled: in the
    main process with ``reader_threads`` 0 (reads in the iterating thread), 1 and 2
    (background reader threads, the default mechanism), and, for comparison, with 1 and 2
    DataLoader worker processes (``reader_threads=0`` in each: one read at a time per process);
(c) xbatcher ``BatchGenerator`` over ``xr.open_zarr(store)["data"]`` (input_dims = one whole
    sample, batch_dims = the same batch size) + ``xbatcher.loaders.torch.MapDataset`` +
    ``DataLoader(batch_size=None, shuffle=True)`` with 0 and 2 workers (workers use dask's
    synchronous scheduler: the threaded one deadlocks after fork).

Run::

    .venv/bin/python benchmarks/bench_loader.py            # ~1 min, ~0.6 GB of temp disk
    .venv/bin/python benchmarks/bench_loader.py --quick    # smaller stores, fewer rounds

Prints a table, the ratios against the goals, and writes ``bench_results/loader.json``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import xarray as xr
import zarr
from torch.utils.data import DataLoader

from simdiff.base.atomic import write_json
from simdiff.data.field import Field
from simdiff.data.geometry import Geometry
from simdiff.data.loading.loader import ChunkedSampleDataset
from simdiff.data.stores.prepare import PrepareOptions, write_training_store
from simdiff.data.stores.training import TrainingStore
from simdiff.data.time_features import time_features

ROOT = Path(__file__).resolve().parents[1]


def smooth_field(n_time: int, ny: int, nx: int, seed: int) -> xr.Dataset:
    """Two smooth variables (time, lat, lon): a few drifting large-scale waves plus weak noise.

    Built one time step at a time so the large case never holds more than the result.
    """
    rng = np.random.default_rng(seed)
    lat = np.linspace(90, -90, ny)
    lon = np.arange(nx) * (360.0 / nx)
    phi, lam = np.deg2rad(lat)[:, None], np.deg2rad(lon)[None, :]
    out = {}
    for v, (name, base, amp) in enumerate((("t2m", 280.0, 20.0), ("msl", 101325.0, 1500.0))):
        arr = np.empty((n_time, ny, nx), dtype=np.float32)
        k = rng.integers(1, 6, size=(4, 2))
        speed = rng.uniform(0.05, 0.2, size=4)
        for t in range(n_time):
            f = base + amp * np.cos(phi) ** 2
            for (kx, ky), c in zip(k, speed, strict=True):
                f = f + 0.2 * amp * np.sin(kx * lam - c * t + v) * np.cos(ky * phi)
            arr[t] = f + 0.01 * amp * rng.standard_normal((ny, nx))
        out[name] = (("time", "lat", "lon"), arr, {"units": "K" if v == 0 else "Pa"})
    time_ = pd.date_range("2000-01-01", periods=n_time, freq="6h")
    return xr.Dataset(out, coords={"time": time_, "lat": lat, "lon": lon})


def write_store(path: Path, n_time: int, ny: int, nx: int) -> Path:
    """A training store of the synthetic field, written the way ``prepare`` writes it."""
    data = smooth_field(n_time, ny, nx, seed=ny)
    weights = xr.DataArray(np.cos(np.deg2rad(data["lat"].values))[:, None].repeat(nx, 1), dims=("lat", "lon"))
    mask = xr.DataArray(np.ones((ny, nx), dtype=bool), dims=("lat", "lon"))
    geometry = Geometry(dims=("lat", "lon"), periodic=frozenset({"lon"}), weights=weights, mask=mask)
    conditions = xr.Dataset({"time_features": time_features(data["time"])})
    field = Field(data=data, geometry=geometry, conditions=conditions, sources=("synthetic",))
    options = PrepareOptions(split={"train": 1.0, "val": 0.0, "test": 0.0}, progress=False)
    return write_training_store(field, path, transforms={}, options=options, provenance={})


def epoch_rate(run_epoch: Callable[[int], int], epoch: int) -> float:
    """Samples/s of one epoch."""
    start = time.perf_counter()
    n = run_epoch(epoch)
    return n / (time.perf_counter() - start)


def interleaved_rates(runners: dict[str, Callable[[int], int]], rounds: int) -> dict[str, float]:
    """Median samples/s per runner over ``rounds`` rounds, each timing one epoch of every runner.

    One warm-up epoch each first (page cache, worker start-up). Interleaving the runners
    keeps a change in machine load from favouring whichever ran first.
    """
    for run in runners.values():
        run(0)
    rates: dict[str, list[float]] = {name: [] for name in runners}
    for r in range(rounds):
        for name, run in runners.items():
            rates[name].append(epoch_rate(run, r + 1))
    return {name: float(np.median(v)) for name, v in rates.items()}


def raw_read(path: Path) -> Callable[[int], int]:
    data = zarr.open_array(str(path / "data"), mode="r")
    k = data.chunks[0]

    def epoch(_: int) -> int:
        for lo in range(0, data.shape[0], k):
            np.asarray(data[lo : lo + k])
        return int(data.shape[0])

    return epoch


def raw_blosc(path: Path) -> Callable[[int], int]:
    """Every chunk file read and Blosc-decompressed into a fresh array, in order, in one
    non-main thread (numcodecs then decodes single-threaded): the floor of any reader."""
    from numcodecs import blosc

    data = zarr.open_array(str(path / "data"), mode="r")
    k, rest = data.chunks[0], (0,) * (data.ndim - 1)
    files = [
        path / "data" / data.metadata.encode_chunk_key((c, *rest)) for c in range(-(-data.shape[0] // k))
    ]
    pool = ThreadPoolExecutor(1)

    def read_all() -> None:
        for f in files:
            blosc.decompress(f.read_bytes(), np.empty(data.chunks, np.float32))

    def epoch(_: int) -> int:
        pool.submit(read_all).result()
        return int(data.shape[0])

    return epoch


def count(batches: Iterable[object]) -> int:
    n = 0
    for batch in batches:
        x = batch["target"] if isinstance(batch, dict) else batch
        n += int(x.shape[0])  # type: ignore[attr-defined]
    return n


def ours(path: Path, batch_size: int, num_workers: int, reader_threads: int) -> Callable[[int], int]:
    ds = ChunkedSampleDataset(
        TrainingStore(path),
        "train",
        batch_size=batch_size,
        shuffle=True,
        seed=0,
        reader_threads=reader_threads,
    )
    loader = DataLoader(ds, batch_size=None, num_workers=num_workers, persistent_workers=num_workers > 0)

    def epoch(e: int) -> int:
        ds.set_epoch(e)
        return count(loader)

    return epoch


def _synchronous_dask(_: int) -> None:
    """Workers compute their batches with dask's synchronous scheduler: the threaded pool
    inherited through fork deadlocks (the usual setting for dask-backed DataLoader workers)."""
    import dask

    dask.config.set(scheduler="synchronous")


def xbatcher_loader(path: Path, batch_size: int, num_workers: int) -> Callable[[int], int]:
    import xbatcher
    from xbatcher.loaders.torch import MapDataset

    da = xr.open_zarr(path, consolidated=False)["data"]
    sizes = {d: n for d, n in da.sizes.items() if d != "time"}
    gen = xbatcher.BatchGenerator(da, input_dims=sizes, batch_dims={"time": batch_size})
    loader = DataLoader(
        MapDataset(gen),
        batch_size=None,
        shuffle=True,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        worker_init_fn=_synchronous_dask if num_workers else None,
        generator=torch.Generator().manual_seed(0),
    )
    return lambda _: count(loader)


def run_case(name: str, path: Path, batch_size: int, rounds: int) -> dict[str, object]:
    store = TrainingStore(path)
    case: dict[str, object] = {
        "case": name,
        "sample_shape": list(store.data.shape[1:]),
        "samples": store.n_samples,
        "chunk_samples": store.chunk_samples,
        "batch_size": batch_size,
        "store_mb": round(sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6, 1),
        "codec": str(store.data.compressors),
    }
    runners: dict[str, Callable[[int], int]] = {
        "raw zarr, 1 thread": raw_read(path),
        "raw blosc decode, 1 thread": raw_blosc(path),
    }
    for t in (0, 1, 2):
        runners[f"simdiff, {t} reader threads"] = ours(path, batch_size, 0, reader_threads=t)
    for w in (1, 2):
        runners[f"simdiff, {w} worker procs"] = ours(path, batch_size, w, reader_threads=0)
    for w in (0, 2):
        runners[f"xbatcher+DataLoader, {w} workers"] = xbatcher_loader(path, batch_size, w)
    rates = interleaved_rates(runners, rounds)
    case["samples_per_s"] = {k: round(v, 1) for k, v in rates.items()}
    raw = rates["raw zarr, 1 thread"]
    thr = {t: rates[f"simdiff, {t} reader threads"] for t in (0, 1, 2)}
    procs = {w: rates[f"simdiff, {w} worker procs"] for w in (1, 2)}
    xb = {w: rates[f"xbatcher+DataLoader, {w} workers"] for w in (0, 2)}
    case["ratios"] = {
        "ours_1thr / raw": round(thr[1] / raw, 3),
        "ours_2thr / raw": round(thr[2] / raw, 3),
        "ours_0thr / raw": round(thr[0] / raw, 3),
        "ours_1proc / raw": round(procs[1] / raw, 3),
        "ours_2proc / raw": round(procs[2] / raw, 3),
        "ours_best / xbatcher_best": round(max(*thr.values(), *procs.values()) / max(xb.values()), 3),
        "ours_0thr / xbatcher_0w": round(thr[0] / xb[0], 3),
        "ours_2thr / xbatcher_2w": round(thr[2] / xb[2], 3),
        "xbatcher_best / raw": round(max(xb.values()) / raw, 3),
        "ours_1thr / raw_blosc": round(thr[1] / rates["raw blosc decode, 1 thread"], 3),
        "ours_2thr / raw_blosc": round(thr[2] / rates["raw blosc decode, 1 thread"], 3),
    }
    return case


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller stores and fewer rounds")
    parser.add_argument("--small-batch", type=int, default=32, help="batch size on 2x64x64")
    parser.add_argument("--large-batch", type=int, default=4, help="batch size on 2x721x1440")
    parser.add_argument("--workdir", type=Path, default=None, help="where the temporary stores go")
    parser.add_argument("--out", type=Path, default=ROOT / "bench_results" / "loader.json")
    args = parser.parse_args()
    small_n, large_n, rounds = (2048, 12, 3) if args.quick else (8192, 40, 5)
    tmp = Path(tempfile.mkdtemp(prefix="bench_loader-", dir=args.workdir))
    try:
        small = write_store(tmp / "small.zarr", small_n, 64, 64)
        large = write_store(tmp / "large.zarr", large_n, 721, 1440)
        cases = [
            run_case("2x64x64", small, args.small_batch, rounds),
            run_case("2x721x1440", large, args.large_batch, rounds),
        ]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    cores = os.cpu_count()
    print(f"\nLoader throughput, samples/s (warm page cache; {cores} cores, torch {torch.__version__})")
    names = list(cases[0]["samples_per_s"])  # type: ignore[arg-type]
    header = f"{'':36s}" + "".join(f"{c['case']:>14s}" for c in cases)
    print(header)
    for name in names:
        print(f"{name:36s}" + "".join(f"{c['samples_per_s'][name]:14.1f}" for c in cases))  # type: ignore[index]
    print()
    goals = {
        "ours_1thr / raw": "goal >= 0.70 (one worker = one reader thread)",
        "ours_2thr / raw": "goal > 1.00 (several workers)",
        "ours_best / xbatcher_best": "goal >= 5 on 2x64x64",
    }
    for ratio in cases[0]["ratios"]:  # type: ignore[union-attr]
        cells = "".join(f"{c['ratios'][ratio]:14.3f}" for c in cases)  # type: ignore[index]
        print(f"{ratio:36s}{cells}   {goals.get(ratio, '')}")
    out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "benchmark": "loader",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__},
        "rounds": rounds,
        "statistic": "median over rounds of one epoch per runner, after one warm-up epoch",
        "cases": cases,
    }
    write_json(result, out, allow_nan=True)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
