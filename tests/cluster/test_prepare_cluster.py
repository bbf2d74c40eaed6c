"""``prepare`` on a ``dask.distributed`` cluster (``prepare.cluster``) writes the same store as on
dask's threaded scheduler: every file the same bytes (tests/cluster/samestore.py), on real shared
files. No SLURM needed: a LocalCluster of two worker processes (in Python, and the README's
command), and a running scheduler reached by its address (tests/cluster/test_slurm_prepare.py
submits the workers to SLURM)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from prepare_cli import MANY_BLOCKS, job_log, prepare_command, simdiff_prepare
from samestore import store_differences

from simdiff.data.sources.climate import ClimateSource
from simdiff.data.stores.cluster import LocalCluster, SchedulerAddress
from simdiff.data.stores.prepare import PrepareOptions, prepare
from simdiff.data.transforms import Log1p

#: shared file, variable, transforms, store chunk and dask block sizes (several blocks per pass)
CASES = {
    "ersst": ("climate/xrtutorial_sst.mnmean.nc", "sst", {}, 0.25, 0.5),  # 128 x 89 x 180, land NaN
    "wfde5_pr": ("climate/unifhy_wfde5_precipitation_flux.nc", "pr",  # 744 x 20 x 28, log1p
                 {"pr": Log1p(scale=1e-4, zero_below=4e-6)}, 0.05, 0.5),
}


def _prepare(shared: Path, case: str, run_dir: Path, cluster=None) -> Path:
    path, variable, transforms, chunk_mb, work_mb = CASES[case]
    source = ClimateSource(source=str(shared / path), variables=[variable], transforms=transforms)
    options = PrepareOptions(chunk_mb=chunk_mb, work_mb=work_mb, progress=False, cluster=cluster)
    config = {"data": {"source": path, "variables": [variable]}, "prepare": {"chunk_mb": chunk_mb}}
    return prepare(source, run_dir, options=options, config=config)


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_local_cluster_of_two_processes_writes_the_same_bytes(shared_data, tmp_path, case, caplog):
    threaded = _prepare(shared_data, case, tmp_path / "threaded")
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0")
    with caplog.at_level(logging.INFO, logger="simdiff.data.stores.cluster"):
        distributed = _prepare(shared_data, case, tmp_path / "cluster", cluster)
    assert "2 worker(s) of 1 thread(s)" in caplog.text, caplog.text
    diffs, compared = store_differences(threaded.parent, distributed.parent)
    assert not diffs, diffs
    assert compared > 20  # metadata, config.yaml and the chunks of every array


def test_a_running_scheduler_is_used_and_left_running(shared_data, tmp_path):
    """prepare.cluster = an address: prepare connects for its passes and only disconnects."""
    from distributed import Client
    from distributed import LocalCluster as DaskLocalCluster

    threaded = _prepare(shared_data, "ersst", tmp_path / "threaded")
    with DaskLocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp",
                          dashboard_address=":0") as running:
        spec = SchedulerAddress(running.scheduler_address, timeout_s=5, wait_s=5)
        distributed = _prepare(shared_data, "ersst", tmp_path / "cluster", spec)
        assert running.status.name == "running" and len(running.workers) == 1
        with Client(running) as client:
            assert client.submit(sum, [1, 2]).result() == 3
    diffs, _ = store_differences(threaded.parent, distributed.parent)
    assert not diffs, diffs


@pytest.mark.slow
def test_the_readme_command_on_a_local_cluster_writes_the_threaded_store_and_finds_it_up_to_date(
        shared_data, tmp_path):
    shared = f"shared_data={shared_data}"
    threaded, local = tmp_path / "threaded", tmp_path / "local"
    out = simdiff_prepare(["prepare", f"run_dir={threaded}", "data=ersst", shared, *MANY_BLOCKS])
    assert out.returncode == 0, out.stderr[-3000:]
    args = prepare_command("local", local, shared, "prepare.cluster.dashboard_address=:0", *MANY_BLOCKS)
    out = simdiff_prepare(args)
    assert out.returncode == 0, out.stderr[-3000:]
    log = job_log(local)
    assert "dask cluster at tcp://127.0.0.1:" in log and "2 worker(s) of 1 thread(s)" in log, log[-3000:]
    diffs, _ = store_differences(threaded / "data", local / "data")
    assert not diffs, diffs
    # where the passes ran is not part of the stage's config: the threaded store is up to date
    stamp = (threaded / "data" / "train.zarr" / "zarr.json").stat().st_mtime_ns
    out = simdiff_prepare(prepare_command("local", threaded, shared, *MANY_BLOCKS))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "complete with the same config and inputs; skipping" in job_log(threaded)
    assert (threaded / "data" / "train.zarr" / "zarr.json").stat().st_mtime_ns == stamp
