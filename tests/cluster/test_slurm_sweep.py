"""A Hydra sweep of the tiny main job submitted to a real SLURM cluster (``hydra/launcher=slurm``).

Two points (two autoencoder learning rates), each the whole ``simdiff run`` (prepare ...
evaluate) as one job of a SLURM array, each in its own run_dir derived from its overrides
(``sweep_dir/POINT``); then the same sweep submitted again skips every finished stage of both.

Needs a SLURM cluster whose ``sinfo`` answers (CI: ``scripts/slurm-up.sh``, a single node on the
CI machine; ``SLURM_CONF`` is taken from ``$SIMDIFF_SLURM_DIR/slurm.conf`` when unset); skips
otherwise (the ``slurm_env`` fixture of tests/cluster/conftest.py). The jobs run this interpreter
(submitit submits ``sys.executable``) with this environment (sbatch exports it), so
``PYTHONPATH`` points them at this checkout.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slurm

STAGES = ("prepare", "train-autoencoder", "encode", "train-diffusion", "generate", "evaluate")
#: The points' folders: their overrides as the sweeper writes them, sorted (Hydra's override_dirname).
POINTS = tuple(f"autoencoder.module.optimizer.lr={lr},debug=tiny" for lr in ("0.001", "0.003"))
OUTPUTS = ("data/train.zarr/zarr.json", "autoencoder/autoencoder.ckpt", "autoencoder/reconstruction.json",
           "latents.zarr/zarr.json", "diffusion/diffusion.ckpt", "forecast.zarr/zarr.json",
           "report/metrics.json")


def _sweep(sweep_dir: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``simdiff run -m hydra/launcher=slurm`` over two learning rates, each point one CPU."""
    cmd = [sys.executable, "-m", "simdiff.cli.main", "run", "-m", "hydra/launcher=slurm",
           f"sweep_dir={sweep_dir}", "autoencoder.module.optimizer.lr=1e-3,3e-3", "debug=tiny",
           # each point simulates its own QG data: the simulator's cache is not safe for two
           # processes generating the same trajectory at once (see the README, cluster section)
           "cache_dir='${run_dir}/cache'",
           "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=2", "hydra.launcher.timeout_min=10"]
    # cwd: a sweep must write nothing outside sweep_dir (no multirun/ folder where it is started)
    return subprocess.run(cmd, env=env, cwd=sweep_dir.parent, capture_output=True, text=True, timeout=900)


def _mtimes(sweep_dir: Path) -> dict[tuple[str, str], int]:
    return {(name, path): (sweep_dir / name / path).stat().st_mtime_ns for name in POINTS for path in OUTPUTS}


def _newest_log(point: Path) -> str:
    logs = sorted((point / "logs" / "run").glob("*/run.log"))
    assert logs, f"no Hydra job log in {point}/logs/run"
    return logs[-1].read_text()


@pytest.fixture(scope="module")
def sweep(slurm_env, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    sweep_dir = tmp_path_factory.mktemp("slurm") / "lr_sweep"
    out = _sweep(sweep_dir, slurm_env)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    return sweep_dir, out


def test_each_point_runs_the_main_job_as_a_slurm_job_in_its_own_run_dir(sweep):
    sweep_dir, _ = sweep
    assert sorted(p.name for p in sweep_dir.iterdir() if not p.name.startswith(".")) == \
        sorted([*POINTS, "multirun.yaml"])
    assert not (sweep_dir.parent / "multirun").exists()
    for name, lr in zip(POINTS, (0.001, 0.003), strict=True):
        point = sweep_dir / name
        for path in OUTPUTS:
            assert (point / path).is_file(), f"{name}: {path} missing"
        assert f"lr: {lr}" in (point / "autoencoder" / "config.yaml").read_text()
        log = _newest_log(point)
        for k, stage in enumerate(STAGES, 1):
            assert f"stage {k}/6: {stage}" in log, f"{name}: stage {stage} not run:\n{log[-3000:]}"
        # Hydra's record of the job: submitted to SLURM (submitit's job id "ARRAY_TASK")
        hydra_yaml = next((point / "logs" / "run").glob("*/.hydra/hydra.yaml")).read_text()
        assert re.search(r"\n    id: '?\d+_\d+'?\n", hydra_yaml), hydra_yaml[:2000]
    job_logs = sorted((sweep_dir / ".submitit").glob("*/*_log.out"))
    assert len(job_logs) == 2, job_logs


def test_submitting_the_same_sweep_again_skips_every_finished_stage(sweep, slurm_env):
    sweep_dir, _ = sweep
    before = _mtimes(sweep_dir)
    out = _sweep(sweep_dir, slurm_env)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    for name in POINTS:
        log = _newest_log(sweep_dir / name)
        for stage in STAGES:
            skipped = rf"(^|\s){stage}: [^\n]* complete with the same config and inputs; skipping\n"
            assert re.search(skipped, log), f"{name}: {stage} did not skip:\n{log[-3000:]}"
    assert _mtimes(sweep_dir) == before
    assert len(sorted((sweep_dir / ".submitit").glob("*/*_log.out"))) == 4
