"""What the SLURM tests share: a cluster that answers (or a skip), and the jobs' environment.

Needs a SLURM cluster whose ``sinfo`` answers (CI: ``scripts/slurm-up.sh``, a single node on the
CI machine; ``SLURM_CONF`` is taken from ``$SIMDIFF_SLURM_DIR/slurm.conf`` when unset); the tests
skip otherwise, or fail where ``SIMDIFF_REQUIRE_SLURM`` is set. Jobs run this interpreter with
this environment (sbatch exports it), so ``PYTHONPATH`` points them at this checkout.
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


def slurm_job_env() -> dict[str, str]:
    env = dict(os.environ)
    conf = SLURM_DIR / "slurm.conf"
    if "SLURM_CONF" not in env and conf.is_file():
        env["SLURM_CONF"] = str(conf)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env["OMP_NUM_THREADS"] = "1"
    return env


def no_cluster(reason: str) -> None:
    """Skip, or fail where a cluster must be up (CI sets SIMDIFF_REQUIRE_SLURM after slurm-up)."""
    reason = f"{reason} (scripts/slurm-up.sh starts a single-node cluster)"
    if os.environ.get("SIMDIFF_REQUIRE_SLURM"):
        pytest.fail(f"SIMDIFF_REQUIRE_SLURM is set, but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def slurm_env() -> dict[str, str]:
    """The environment of a command that submits to the cluster; skips when none answers."""
    env = slurm_job_env()
    if shutil.which("sinfo") is None:
        no_cluster("no SLURM here: sinfo not found")
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True, timeout=10)
    except subprocess.TimeoutExpired:
        no_cluster("no SLURM here: sinfo did not answer in 10 s")
    states = out.stdout.split()
    if out.returncode != 0 or not {"idle", "mixed"} & set(states):
        no_cluster(f"no SLURM node to run on: sinfo exit {out.returncode}, node states {states}, "
                    f"{out.stderr.strip()[-300:]}")
    return env




def job_state(job: str, env: dict[str, str]) -> str:
    """The job's state (``PENDING``, ``RUNNING``, ``COMPLETED``, ...) from ``scontrol``."""
    out = subprocess.run(["scontrol", "show", "job", job], env=env, capture_output=True, text=True,
                         timeout=30)
    for word in out.stdout.split():
        if word.startswith("JobState="):
            return word.split("=", 1)[1]
    return "GONE"  # no longer known to the controller (MinJobAge passed)


def wait_for_job(job: str, env: dict[str, str], timeout: float = 600) -> str:
    """Poll until the job has ended; its final state."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = job_state(job, env)
        if state not in ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD",
                         "REQUEUE_FED", "SUSPENDED", "RESIZING", "SIGNALING"):
            return state
        time.sleep(1.0)
    subprocess.run(["scancel", job], env=env, timeout=30)
    pytest.fail(f"SLURM job {job} still {job_state(job, env)} after {timeout:.0f} s")


def sbatch(script: Path, env: dict[str, str]) -> str:
    """Submit ``script``; its job id."""
    out = subprocess.run(["sbatch", "--parsable", str(script)], env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().split(";")[0]
