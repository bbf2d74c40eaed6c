"""What the cluster tests share: the environment of a command that submits to SLURM, and the
fixture that skips (or fails, under ``SIMDIFF_REQUIRE_SLURM``) where no SLURM cluster answers.

CI starts a single-node cluster with ``scripts/slurm-up.sh``; ``SLURM_CONF`` is taken from
``$SIMDIFF_SLURM_DIR/slurm.conf`` when unset.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SLURM_DIR = Path(os.environ.get("SIMDIFF_SLURM_DIR", "/tmp/simdiff-slurm"))


def slurm_environ() -> dict[str, str]:
    """This environment with ``SLURM_CONF`` (when unset and the CI cluster's file exists), this
    checkout on ``PYTHONPATH`` and one BLAS thread: what jobs inherit from sbatch."""
    env = dict(os.environ)
    conf = SLURM_DIR / "slurm.conf"
    if "SLURM_CONF" not in env and conf.is_file():
        env["SLURM_CONF"] = str(conf)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env["OMP_NUM_THREADS"] = "1"
    return env


def _no_cluster(reason: str) -> None:
    """Skip, or fail where a cluster must be up (CI sets SIMDIFF_REQUIRE_SLURM after slurm-up)."""
    reason = f"{reason} (scripts/slurm-up.sh starts a single-node cluster)"
    if os.environ.get("SIMDIFF_REQUIRE_SLURM"):
        pytest.fail(f"SIMDIFF_REQUIRE_SLURM is set, but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def slurm_env() -> dict[str, str]:
    """The environment of a command that submits to the cluster; skips when none answers."""
    env = slurm_environ()
    if shutil.which("sinfo") is None:
        _no_cluster("no SLURM here: sinfo not found")
    # A node busy with someone else's jobs may free up: wait for it a while, not forever.
    deadline = time.monotonic() + float(os.environ.get("SIMDIFF_SLURM_WAIT", "120"))
    while True:
        try:
            out = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True,
                                 timeout=10)
        except subprocess.TimeoutExpired:
            _no_cluster("no SLURM here: sinfo did not answer in 10 s")
        states = out.stdout.split()
        if out.returncode == 0 and {"idle", "mixed"} & set(states):
            return env
        busy = {"allocated", "completing"} & set(states)
        if out.returncode != 0 or not busy or time.monotonic() > deadline:
            break
        time.sleep(2)
    queue = subprocess.run(["squeue", "-h", "-o", "%i %j %T %M"], env=env, capture_output=True, text=True,
                           timeout=10).stdout.strip().replace("\n", "; ")
    _no_cluster(f"no SLURM node to run on: sinfo exit {out.returncode}, node states {states}, "
                f"jobs in the queue: [{queue[-300:]}], {out.stderr.strip()[-300:]}")


def job_fields(job: str, env: dict[str, str]) -> dict[str, str]:
    """``scontrol show job``'s ``Key=value`` fields of the job (an array's first task); empty
    once the controller no longer knows it (MinJobAge passed)."""
    out = subprocess.run(["scontrol", "show", "job", job], env=env, capture_output=True, text=True,
                         timeout=30)
    fields: dict[str, str] = {}
    for word in out.stdout.split():
        key, sep, value = word.partition("=")
        if sep:
            fields.setdefault(key, value)
    return fields


def job_state(job: str, env: dict[str, str]) -> str:
    """The job's state (``PENDING``, ``RUNNING``, ``COMPLETED``, ...; ``GONE`` when unknown)."""
    return job_fields(job, env).get("JobState", "GONE")


#: states of a job that has not ended yet
LIVE = ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
        "SUSPENDED", "RESIZING", "SIGNALING")


def wait_for_job(job: str, env: dict[str, str], timeout: float = 600) -> str:
    """Poll until the job (every task of an array) has ended; its final state (an array's first task's)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], env=env, capture_output=True,
                             text=True, timeout=30)
        if not any(s in LIVE for s in out.stdout.split()):
            return job_state(job, env)
        time.sleep(1.0)
    subprocess.run(["scancel", job], env=env, timeout=30)
    pytest.fail(f"SLURM job {job} still {job_state(job, env)} after {timeout:.0f} s")


def sbatch(script: Path, env: dict[str, str], *options: str, args: tuple[str, ...] = ()) -> str:
    """Submit ``script`` with sbatch ``options`` and the script's own ``args``, from this checkout
    (the job's SLURM_SUBMIT_DIR); its job id."""
    out = subprocess.run(["sbatch", "--parsable", *options, str(script), *args], env=env, capture_output=True,
                         text=True, timeout=60, cwd=REPO)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().split(";")[0]
