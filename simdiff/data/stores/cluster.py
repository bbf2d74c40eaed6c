"""Where ``prepare``'s dask passes run: dask's threaded scheduler, or a ``dask.distributed`` cluster.

``prepare.cluster`` (``conf/prepare/cluster/``) builds one of three plain specs; none starts
anything when it is built (the config checks build them all):

* :class:`LocalCluster`: worker processes on this machine (``distributed.LocalCluster``), each
  with a memory limit derived from the size of prepare's dask blocks (``prepare.work_mb``)
  unless one is given;
* :class:`SlurmCluster`: workers as SLURM jobs (``dask_jobqueue.SLURMCluster``), the scheduler
  in the prepare process; the job script is checked with ``sbatch --test-only`` first;
* :class:`SchedulerAddress`: a scheduler somebody started (``tcp://host:port``): prepare only
  connects and disconnects, the cluster stays up.

Each spec has :meth:`~Cluster.check` (cheap; ``prepare`` calls it before it writes anything) and
:meth:`~Cluster.client`, a context manager that starts the cluster (or connects), waits for a
worker, refuses workers whose memory cannot hold a task, yields the ``distributed.Client``
(the default scheduler while it is open), and closes what it started. The client is open only
for prepare's two passes. The store is the same bytes whichever scheduler runs the passes: every
task is a pure function of its block, and the per-sample moments are combined in this process in
sample order (tests/cluster/test_prepare_cluster.py checks real files through two worker processes,
tests/cluster/test_slurm_prepare.py through SLURM jobs).

Workers read the source files and write the store at the paths this process sees: on a cluster
of several machines both must sit on a shared filesystem.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import math
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

import dask
from dask.utils import format_bytes, parse_bytes

from simdiff.base.errors import DataError

if TYPE_CHECKING:
    from distributed import Client

log = logging.getLogger(__name__)

#: What a dask worker process holds before its first task, MB: Python, numpy, xarray, zarr,
#: netCDF4, distributed and simdiff's data layer (measured 150-170 MB RSS on Linux; rounded up).
WORKER_BASE_MB = 256.0
#: A worker's memory limit is set so that its base plus its tasks stay below this fraction of
#: it: distributed pauses a worker at 80 % of its limit and starts spilling results to disk at 60 %.
MEMORY_FRACTION = 0.6
#: distributed's default fraction of a worker's memory limit at which it stops taking tasks.
PAUSE_FRACTION = 0.8
MB = 1_000_000
_WALLTIME = re.compile(r"^(\d+-)?\d+(:\d{1,2}){0,2}$")


@runtime_checkable
class Cluster(Protocol):
    """Where a dask computation runs: a spec that can check itself and open a client."""

    def check(self) -> None:
        """Refuse (DataError) what can be found out before any work: an unreachable scheduler,
        a job script the batch system rejects."""
        ...

    def client(self, *, task_mb: float) -> contextlib.AbstractContextManager[Client]:
        """The open ``distributed.Client`` (the default scheduler) while the block runs.

        ``task_mb`` is the memory one task of the computation holds at its peak, MB; a worker
        needs ``WORKER_BASE_MB + threads x task_mb``.
        """
        ...


def _size(value: str | int | float | None, key: str, example: str) -> int | None:
    """A memory size as bytes (``"2GB"``, ``"1.5GiB"``, a number of bytes), or None."""
    if value is None:
        return None
    try:
        size = parse_bytes(value) if isinstance(value, str) else int(value)
    except (ValueError, TypeError) as err:
        raise DataError(f"prepare.cluster.{key} = {value!r} is not a memory size; write e.g. "
                        f"{example!r}") from err
    if size <= 0:
        raise DataError(f"prepare.cluster.{key} = {value!r} must be > 0; write e.g. {example!r}")
    return size


def _positive(value: Any, key: str, kind: type = int) -> None:
    allowed = int if kind is int else int | float
    if isinstance(value, bool) or not isinstance(value, allowed) or not value > 0:
        raise DataError(f"prepare.cluster.{key} = {value!r} must be a positive "
                        f"{'whole number' if kind is int else 'number'}")


def worker_need_mb(threads: int, task_mb: float) -> float:
    """Memory a worker with ``threads`` threads needs for tasks of ``task_mb`` each, MB."""
    return WORKER_BASE_MB + threads * task_mb


def _dashboard(client: Client) -> str:
    if importlib.util.find_spec("bokeh") is None:
        return "no dashboard (install bokeh>=3.1 for one)"
    return f"dashboard {client.dashboard_link}"


def _refuse_small(limit: int, threads: int, task_mb: float, who: str, fix: str) -> None:
    """DataError when a worker's memory ``limit`` (bytes; 0: none) cannot hold its threads' tasks."""
    need = worker_need_mb(threads, task_mb) * MB
    if limit and need > limit:
        raise DataError(
            f"{who} has a memory limit of {format_bytes(limit)} but needs about {format_bytes(need)}: "
            f"{threads} thread(s) x {task_mb:.0f} MB per task of prepare (prepare.work_mb) + "
            f"{WORKER_BASE_MB:.0f} MB for the process. Fix: {fix}"
        )


def _log_workers(client: Client) -> dict[str, Any]:
    """Log where the passes run (scheduler, workers, dashboard); the workers' info by address."""
    workers = client.scheduler_info(n_workers=-1)["workers"]
    kinds = sorted({f"{i.get('nthreads')} thread(s) and {format_bytes(i.get('memory_limit') or 0)}"
                    for i in workers.values()})
    log.info("prepare: dask cluster at %s, %d worker(s) of %s; %s", client.scheduler.address, len(workers),
             ", ".join(kinds), _dashboard(client))
    return workers


def _refuse_no_room(workers: dict[str, Any], task_mb: float, option: str, fix: str) -> None:
    """DataError when a started worker's memory, plus its threads' tasks, would pass the fraction
    of its limit where distributed pauses it: a cluster of paused workers waits forever."""
    pause = dask.config.get("distributed.worker.memory.pause", PAUSE_FRACTION)  # False: never pauses
    for address, info in workers.items():
        limit, threads = int(info.get("memory_limit") or 0), int(info.get("nthreads") or 1)
        held = int((info.get("metrics") or {}).get("memory") or 0)
        if limit and pause and held + threads * task_mb * MB > pause * limit:
            raise DataError(
                f"dask worker {address} holds {format_bytes(held)} before its first task, of a memory "
                f"limit of {format_bytes(limit)} ({option}); with {threads} thread(s) x {task_mb:.0f} MB "
                f"per task of prepare (prepare.work_mb) it would pass {pause:.0%} of it, where distributed "
                f"pauses a worker, and prepare would wait for it forever. Fix: {fix}"
            )


def _wait(client: Client, wait_s: float | None, key: str, what: str) -> None:
    try:
        client.wait_for_workers(1, timeout=wait_s)
    except TimeoutError as err:
        raise DataError(
            f"no dask worker joined {client.scheduler.address} within {wait_s} s ({key} = {wait_s}); "
            f"{what}"
        ) from err


@contextlib.contextmanager
def _serve(client: Client, task_mb: float, option: str, fix: str) -> Iterator[None]:
    """Every cluster's last step before prepare's passes: log its workers, refuse them when they
    have no room for their tasks, and translate killed workers while the block runs."""
    _refuse_no_room(_log_workers(client), task_mb, option, fix)
    with _killed_worker_is_bad_input(option, task_mb):
        yield


@contextlib.contextmanager
def _killed_worker_is_bad_input(option: str, task_mb: float) -> Iterator[None]:
    """A task that killed its workers (almost always memory) as a DataError naming the knobs."""
    from distributed.scheduler import KilledWorker

    try:
        yield
    except KilledWorker as err:
        raise DataError(
            f"dask workers died running {err.task!r} of prepare (each task holds about {task_mb:.0f} MB); "
            f"a worker that outgrows its memory limit is restarted, and this task killed several. "
            f"Fix: give the workers more memory ({option}) or lower prepare.work_mb"
        ) from err


@dataclass(frozen=True)
class LocalCluster:
    """Worker processes on this machine (``distributed.LocalCluster(processes=True)``).

    Attributes:
        n_workers: worker processes.
        threads_per_worker: threads in each.
        memory_limit: per worker (``"4GB"``); null: enough for its threads' tasks at
            ``prepare.work_mb``, ``(WORKER_BASE_MB + threads x task) / MEMORY_FRACTION``.
        dashboard_address: where the dashboard listens (``":8787"``; ``":0"`` any free port).
        local_directory: the workers' scratch folder (spilled results); null: the temp folder.
    """

    n_workers: int = 2
    threads_per_worker: int = 1
    memory_limit: str | None = None
    dashboard_address: str = ":8787"
    local_directory: str | None = None

    def __post_init__(self) -> None:
        _positive(self.n_workers, "n_workers")
        _positive(self.threads_per_worker, "threads_per_worker")
        _size(self.memory_limit, "memory_limit", "4GB")

    def check(self) -> None:
        """Nothing to reach: the values were checked when the spec was built."""

    def memory_bytes(self, task_mb: float) -> int:
        """The memory limit of each worker: as given, or derived from ``task_mb``."""
        given = _size(self.memory_limit, "memory_limit", "4GB")
        if given is not None:
            return given
        return math.ceil(worker_need_mb(self.threads_per_worker, task_mb) / MEMORY_FRACTION) * MB

    @contextlib.contextmanager
    def client(self, *, task_mb: float) -> Iterator[Client]:
        """Start the workers, yield their client, close both (see :class:`Cluster`)."""
        from distributed import Client
        from distributed import LocalCluster as DaskLocalCluster

        option = f"prepare.cluster.memory_limit = {self.memory_limit!r}"
        limit = self.memory_bytes(task_mb)
        _refuse_small(limit, self.threads_per_worker, task_mb, f"each dask worker ({option})",
                      "raise prepare.cluster.memory_limit (null derives it) or lower prepare.work_mb")
        with (
            DaskLocalCluster(n_workers=self.n_workers, threads_per_worker=self.threads_per_worker,
                             processes=True, memory_limit=limit, dashboard_address=self.dashboard_address,
                             local_directory=self.local_directory) as cluster,
            Client(cluster) as client,
        ):
            with _serve(client, task_mb, option,
                        "raise prepare.cluster.memory_limit or lower prepare.work_mb"):
                yield client


@dataclass(frozen=True)
class SlurmCluster:
    """Workers as SLURM jobs (``dask_jobqueue.SLURMCluster``); the scheduler runs in this process.

    Each job runs ``processes`` worker processes sharing ``cores`` threads and ``memory``.

    Attributes:
        queue: the partition (``sbatch -p``); null: the cluster's default.
        account: ``sbatch -A``; null: none.
        cores: CPUs per job (``--cpus-per-task``), the threads of its workers.
        processes: worker processes per job.
        memory: memory per job (``--mem``; SLURM takes whole units, e.g. ``"4GB"``).
        walltime: ``sbatch -t`` (``"01:00:00"``, ``"1-00:00:00"``).
        jobs: jobs to submit (workers: ``jobs x processes``).
        job_extra_directives: more ``#SBATCH`` lines, e.g. ``["--qos=short"]``.
        job_script_prologue: shell lines before the worker starts (``module load ...``).
        interface: network interface the scheduler and workers talk over (``"ib0"``); null: default.
        python: the workers' interpreter; null: this one.
        log_directory: the jobs' stdout and stderr; null: sbatch's default (the current folder).
        local_directory: the workers' scratch folder; null: the node's temp folder.
        dashboard_address: where the scheduler's dashboard listens.
        wait_s: how long to wait for the first worker (queueing included); null: no limit.
    """

    queue: str | None = None
    account: str | None = None
    cores: int = 1
    processes: int = 1
    memory: str = "4GB"
    walltime: str = "01:00:00"
    jobs: int = 1
    job_extra_directives: Sequence[str] = field(default_factory=tuple)
    job_script_prologue: Sequence[str] = field(default_factory=tuple)
    interface: str | None = None
    python: str | None = None
    log_directory: str | None = None
    local_directory: str | None = None
    dashboard_address: str = ":8787"
    wait_s: float | None = 600.0

    def __post_init__(self) -> None:
        for key in ("cores", "processes", "jobs"):
            _positive(getattr(self, key), key)
        if self.processes > self.cores:
            raise DataError(f"prepare.cluster.processes = {self.processes} > cores = {self.cores}: each "
                            "worker process needs a core. Fix: raise cores or lower processes")
        _size(self.memory, "memory", "4GB")
        if not _WALLTIME.match(str(self.walltime)):
            raise DataError(f"prepare.cluster.walltime = {self.walltime!r} is not a SLURM time; write "
                            "e.g. '01:00:00' or '1-00:00:00'")
        if self.wait_s is not None:
            _positive(self.wait_s, "wait_s", float)
        for key in ("job_extra_directives", "job_script_prologue"):
            value = getattr(self, key)
            if isinstance(value, str) or not all(isinstance(v, str) for v in value):
                raise DataError(f"prepare.cluster.{key} = {value!r} must be a list of strings")
            object.__setattr__(self, key, tuple(value))

    def _job_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of ``dask_jobqueue``'s SLURM job (explicit, so a user's dask
        ``jobqueue.slurm`` config cannot add to them unseen)."""
        return {
            "queue": self.queue, "account": self.account, "cores": self.cores, "processes": self.processes,
            "memory": self.memory, "walltime": self.walltime,
            "job_extra_directives": list(self.job_extra_directives),
            "job_script_prologue": list(self.job_script_prologue), "interface": self.interface,
            "python": self.python, "log_directory": self.log_directory,
            "local_directory": self.local_directory,
        }

    def check(self) -> None:
        """``sbatch --test-only`` on the job script: SLURM's answer to these resources, nothing queued."""
        if shutil.which("sbatch") is None:
            raise DataError("prepare.cluster is a SLURM cluster (prepare/cluster=slurm), but sbatch is not "
                            "on this machine's PATH. Fix: run prepare on a SLURM login node, or choose "
                            "prepare/cluster=local")
        from dask_jobqueue.slurm import SLURMJob

        # the script a job gets, for a scheduler that is not started yet (no port is opened here)
        job = SLURMJob(scheduler="tcp://127.0.0.1:8786", name="check", **self._job_kwargs())
        with tempfile.TemporaryDirectory() as tmp:
            script = Path(tmp) / "dask-worker.sh"
            script.write_text(job.job_script())
            out = subprocess.run(["sbatch", "--test-only", str(script)], capture_output=True, text=True,
                                 timeout=60)
        if out.returncode != 0:
            said = " ".join((out.stderr or out.stdout).split())[-600:]
            raise DataError(
                f"SLURM refuses the dask worker job of prepare.cluster (queue={self.queue!r}, "
                f"cores={self.cores}, memory={self.memory!r}, walltime={self.walltime!r}, "
                f"job_extra_directives={list(self.job_extra_directives)}): {said}. Fix those options "
                "(sinfo lists the partitions and their nodes' CPUs and memory)"
            )

    @contextlib.contextmanager
    def client(self, *, task_mb: float) -> Iterator[Client]:
        """Start a scheduler here, submit ``jobs`` jobs, yield the client once a worker is up;
        close the client and the cluster (its jobs cancelled) after (see :class:`Cluster`)."""
        from dask_jobqueue import SLURMCluster as DaskSlurmCluster
        from distributed import Client

        option = f"prepare.cluster.memory = {self.memory!r} per job of {self.processes} worker(s)"
        limit = int(parse_bytes(self.memory) / self.processes)
        _refuse_small(limit, self.cores // self.processes, task_mb, f"each dask worker ({option})",
                      "raise prepare.cluster.memory (or lower processes) or lower prepare.work_mb")
        scheduler = {"dashboard_address": self.dashboard_address}
        with (
            DaskSlurmCluster(**self._job_kwargs(), scheduler_options=scheduler) as cluster,
            Client(cluster) as client,
        ):
            cluster.scale(jobs=self.jobs)
            log.info("prepare: submitted %d SLURM job(s) of %d worker(s) each; waiting for the first",
                     self.jobs, self.processes)
            _wait(client, self.wait_s, "prepare.cluster.wait_s",
                  "the jobs are queued or failed to start: see squeue and the job logs "
                  f"(prepare.cluster.log_directory = {self.log_directory!r}). Fix: a partition with free "
                  "nodes (prepare.cluster.queue), fewer resources, or a longer wait_s")
            with _serve(client, task_mb, option,
                        "raise prepare.cluster.memory (or lower processes) or lower prepare.work_mb"):
                yield client


@dataclass(frozen=True)
class SchedulerAddress:
    """A running ``dask.distributed`` scheduler (``dask scheduler``, a cluster someone else started).

    Prepare connects a client for its passes and disconnects it after; the cluster stays up.

    Attributes:
        address: ``tcp://host:port`` (or ``tls://``).
        timeout_s: how long to try to connect.
        wait_s: how long to wait for the scheduler to have a worker.
    """

    address: str
    timeout_s: float = 10.0
    wait_s: float = 60.0

    def __post_init__(self) -> None:
        fix = "write the scheduler's address as tcp://HOST:PORT (dask scheduler prints it)"
        try:
            parts = urlsplit(str(self.address))
            port = parts.port
        except ValueError as err:
            raise DataError(f"prepare.cluster.address = {self.address!r} is not an address; {fix}") from err
        if parts.scheme not in ("tcp", "tls") or not parts.hostname or port is None or parts.path.strip("/"):
            raise DataError(f"prepare.cluster.address = {self.address!r} is not an address; {fix}")
        _positive(self.timeout_s, "timeout_s", float)
        _positive(self.wait_s, "wait_s", float)

    @contextlib.contextmanager
    def _connect(self) -> Iterator[Client]:
        from distributed import Client

        try:
            client = Client(self.address, timeout=f"{self.timeout_s}s")
        except (OSError, TimeoutError) as err:
            raise DataError(
                f"prepare.cluster.address = {self.address!r}: no dask scheduler answered within "
                f"{self.timeout_s} s ({type(err).__name__}: {err}). Fix: start one there (dask scheduler; "
                "dask worker ADDRESS), correct the address, or choose prepare/cluster=local"
            ) from err
        with client:
            yield client

    def check(self) -> None:
        """Connect once and disconnect: the scheduler answers."""
        with self._connect():
            pass

    @contextlib.contextmanager
    def client(self, *, task_mb: float) -> Iterator[Client]:
        """Connect, yield the client once the scheduler has a worker, disconnect (the cluster stays)."""
        with self._connect() as client:
            _wait(client, self.wait_s, "prepare.cluster.wait_s",
                  "Fix: start workers for it (dask worker ADDRESS) or choose prepare/cluster=local")
            option = f"a worker of prepare.cluster.address = {self.address!r}"
            with _serve(client, task_mb, option, "start workers with more memory "
                        "(dask worker ADDRESS --memory-limit 4GB) or lower prepare.work_mb"):
                yield client


@contextlib.contextmanager
def dask_client(cluster: Cluster | None, *, task_mb: float) -> Iterator[Client | None]:
    """``cluster.client(task_mb=...)`` while the block runs, or dask's threaded scheduler for None."""
    if cluster is None:
        yield None
        return
    with cluster.client(task_mb=task_mb) as client:
        yield client
