"""The cluster specs of ``prepare.cluster`` (simdiff.data.stores.cluster): bad values refused when
built, memory sized from ``prepare.work_mb``, and what cannot work refused before anything is
written. No cluster is started here; tests/cluster/ runs prepare on real ones."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from test_prepare import CONFIG, NetCDFSource, make_dataset, write_source

from simdiff.base.errors import DataError
from simdiff.data.stores.chunking import TASK_EXTRA_BLOCKS, task_mb
from simdiff.data.stores.cluster import (
    MB,
    MEMORY_FRACTION,
    WORKER_BASE_MB,
    Cluster,
    LocalCluster,
    SchedulerAddress,
    SlurmCluster,
    _killed_worker_is_bad_input,
)
from simdiff.data.stores.prepare import PrepareOptions, prepare


@pytest.mark.parametrize(("build", "needles"), [
    (lambda: LocalCluster(n_workers=0), ("prepare.cluster.n_workers", "0")),
    (lambda: LocalCluster(threads_per_worker=1.5), ("prepare.cluster.threads_per_worker", "1.5")),
    (lambda: LocalCluster(memory_limit="lots"), ("prepare.cluster.memory_limit", "'lots'", "4GB")),
    (lambda: SlurmCluster(walltime="soon"), ("prepare.cluster.walltime", "'soon'", "01:00:00")),
    (lambda: SlurmCluster(cores=1, processes=2), ("prepare.cluster.processes", "2", "cores")),
    (lambda: SlurmCluster(memory="-2GB"), ("prepare.cluster.memory", "'-2GB'")),
    (lambda: SlurmCluster(jobs=0), ("prepare.cluster.jobs", "0")),
    (lambda: SlurmCluster(job_extra_directives="--qos=short"), ("prepare.cluster.job_extra_directives",)),
    (lambda: SchedulerAddress("localhost:8786"), ("prepare.cluster.address", "'localhost:8786'", "tcp://")),
    (lambda: SchedulerAddress("tcp://host"), ("prepare.cluster.address", "'tcp://host'")),
    (lambda: SchedulerAddress("http://host:8786"), ("prepare.cluster.address", "'http://host:8786'")),
    (lambda: SchedulerAddress("tcp://host:8786", timeout_s=0), ("prepare.cluster.timeout_s", "0")),
    (lambda: PrepareOptions(cluster="local"), ("prepare.cluster", "'local'", "prepare/cluster=local")),
])
def test_bad_values_are_refused_with_the_key_the_value_and_the_fix(build, needles):
    with pytest.raises(DataError) as err:
        build()
    for needle in needles:
        assert needle in str(err.value), (needle, str(err.value))


def test_the_specs_are_clusters_and_build_without_starting_anything():
    specs = [LocalCluster(), SlurmCluster(queue="debug", job_extra_directives=["--qos=short"]),
             SchedulerAddress("tcp://127.0.0.1:8786")]
    assert all(isinstance(s, Cluster) for s in specs)
    assert specs[1].job_extra_directives == ("--qos=short",)
    assert PrepareOptions(cluster=specs[0]).cluster is specs[0]


def test_a_local_workers_memory_limit_is_derived_from_its_tasks_unless_given():
    block_mb = 32.0  # prepare.work_mb: one block of one variable
    task = task_mb(1000, 32_000, 2)
    assert task == pytest.approx((2 * 2 + TASK_EXTRA_BLOCKS) * block_mb)
    spec = LocalCluster(threads_per_worker=2)
    assert spec.memory_bytes(task) == math.ceil((WORKER_BASE_MB + 2 * task) / MEMORY_FRACTION) * MB
    assert LocalCluster(memory_limit="3GB").memory_bytes(task) == 3_000_000_000


def _source(tmp_path: Path) -> NetCDFSource:
    ds, mask = make_dataset()
    return NetCDFSource(write_source(tmp_path, ds), mask, {})


def test_an_address_where_no_scheduler_answers_is_refused_before_anything_is_written(tmp_path):
    options = PrepareOptions(progress=False, cluster=SchedulerAddress("tcp://127.0.0.1:9", timeout_s=1))
    with pytest.raises(DataError, match=r"prepare.cluster.address = 'tcp://127.0.0.1:9': no dask scheduler "
                                        r"answered within 1 s.*Fix: start one there"):
        prepare(_source(tmp_path), tmp_path / "run", options=options, config=CONFIG)
    assert not (tmp_path / "run").exists()


def test_workers_too_small_for_their_tasks_are_refused_before_anything_is_written(tmp_path):
    cluster = LocalCluster(n_workers=1, memory_limit="200MB")
    with pytest.raises(DataError, match=r"prepare.cluster.memory_limit = '200MB'\) has a memory limit "
                                        r"of 190.73 MiB but needs about .*Fix: raise "
                                        r"prepare.cluster.memory_limit"):
        prepare(_source(tmp_path), tmp_path / "run", options=PrepareOptions(progress=False, cluster=cluster),
                config=CONFIG)
    assert not (tmp_path / "run").exists()


def test_slurm_without_sbatch_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(DataError, match=r"sbatch is not on this machine's PATH.*prepare/cluster=local"):
        SlurmCluster().check()


def test_a_task_that_kills_its_workers_names_the_memory_options():
    from distributed.scheduler import KilledWorker

    with pytest.raises(DataError, match=r"dask workers died running 'normalise-1'.*about 40 MB.*"
                                        r"\(prepare.cluster.memory_limit = None\) or lower prepare.work_mb"):
        with _killed_worker_is_bad_input("prepare.cluster.memory_limit = None", 40.0):
            raise KilledWorker("normalise-1", None, 3)  # type: ignore[arg-type]
