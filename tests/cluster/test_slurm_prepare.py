"""``simdiff prepare`` with its dask passes on SLURM workers (``prepare/cluster=slurm``, the
README's command) writes the same store as on dask's threaded scheduler, and a job SLURM refuses
stops it before anything is written.

Needs a SLURM cluster whose ``sinfo`` answers (CI: ``scripts/slurm-up.sh``: one node ``localhost``,
partition ``debug``; the ``slurm_env`` fixture of tests/cluster/conftest.py skips otherwise). The
workers run this interpreter with this environment (sbatch exports it), and talk to the scheduler
in the prepare process over TCP.
"""

from __future__ import annotations

import re
import subprocess
import time

import pytest
from prepare_cli import MANY_BLOCKS, job_log, prepare_command, simdiff_prepare
from samestore import store_differences

pytestmark = pytest.mark.slurm


def _queued(job_ids: set[str], env: dict[str, str]) -> set[str]:
    out = subprocess.run(["squeue", "-h", "-o", "%i"], env=env, capture_output=True, text=True, timeout=30)
    return job_ids & set(out.stdout.split())


def test_the_readme_slurm_command_writes_the_threaded_store_and_cancels_its_jobs(slurm_env, shared_data,
                                                                                  tmp_path):
    shared = f"shared_data={shared_data}"
    threaded, slurm = tmp_path / "threaded", tmp_path / "slurm"
    out = simdiff_prepare(["prepare", f"run_dir={threaded}", "data=ersst", shared, *MANY_BLOCKS], slurm_env)
    assert out.returncode == 0, out.stderr[-3000:]
    args = prepare_command("slurm", slurm, shared, "prepare.cluster.dashboard_address=:0",
                           "prepare.cluster.wait_s=300", *MANY_BLOCKS)
    assert "prepare.cluster.queue=debug" in args and "prepare.cluster.memory=2GB" in args
    out = simdiff_prepare(args, slurm_env)
    assert out.returncode == 0, out.stderr[-3000:]
    log = job_log(slurm)
    assert "submitted 2 SLURM job(s) of 1 worker(s) each" in log, log[-3000:]
    assert re.search(r"dask cluster at tcp://\S+, [12] worker\(s\) of 1 thread\(s\) and 1.86 GiB",
                     log), log[-3000:]
    diffs, compared = store_differences(threaded / "data", slurm / "data")
    assert not diffs, diffs
    assert compared > 20
    # the jobs wrote their logs where the preset says (run_dir/logs/dask-workers) and were cancelled
    jobs = {m.group(1) for p in (slurm / "logs" / "dask-workers").iterdir()
            if (m := re.fullmatch(r"dask-worker-(\d+)\.err", p.name))}
    assert len(jobs) == 2, sorted((slurm / "logs" / "dask-workers").iterdir())
    deadline = time.monotonic() + 60
    while _queued(jobs, slurm_env) and time.monotonic() < deadline:
        time.sleep(1)
    assert not _queued(jobs, slurm_env)


def test_a_job_slurm_refuses_stops_prepare_before_anything_is_written(slurm_env, shared_data, tmp_path):
    run_dir = tmp_path / "run"
    args = prepare_command("slurm", run_dir, f"shared_data={shared_data}", "prepare.cluster.memory=100000GB")
    out = simdiff_prepare(args, slurm_env)
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    (line,) = [x for x in out.stderr.splitlines() if x.startswith("simdiff prepare: ")]
    assert "SLURM refuses the dask worker job" in line and "memory='100000GB'" in line, line
    assert sorted(p.name for p in run_dir.iterdir()) == ["logs"]
