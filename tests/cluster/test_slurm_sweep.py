"""The slurm_sweep workflow on a real SLURM cluster: a Hydra sweep through ``hydra/launcher=slurm``,
the same points as a plain ``sbatch`` array, and the gathered table.

``workflows/slurm_sweep/sweep.sh`` submits the 2 x 2 learning-rate x compression sweep of
``experiment=slurm_sweep`` (debug=tiny): four points, each the whole ``simdiff run`` (prepare ...
evaluate) as one job of a SLURM array, each in its own run_dir derived from its overrides
(``sweep_dir/POINT``), then ``gather.py`` writes one table and one plot of the four reports. Then
``workflows/slurm_sweep/job.sbatch`` runs the same four points as a plain sbatch array, without
Hydra's launcher: each lands in the same run_dir and skips every finished stage.

Needs a SLURM cluster (the ``slurm_env`` fixture of tests/cluster/conftest.py); the jobs run this
interpreter with this environment (sbatch exports it), so ``PYTHONPATH`` points them at this
checkout.
"""

from __future__ import annotations

import csv
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, sbatch, wait_for_job

pytestmark = pytest.mark.slurm

STAGES = ("prepare", "train-autoencoder", "encode", "train-diffusion", "generate", "evaluate")
GRID = [(lr, width) for lr in ("0.001", "0.003") for width in (2, 4)]
#: The points' folders: their overrides as the sweeper writes them, sorted (Hydra's override_dirname).
POINTS = tuple(f"autoencoder.module.optimizer.lr={lr},autoencoder.net.latent_channels={w},debug=tiny,"
               "experiment=slurm_sweep" for lr, w in GRID)
OUTPUTS = ("data/train.zarr/zarr.json", "autoencoder/autoencoder.ckpt", "autoencoder/reconstruction.json",
           "latents.zarr/zarr.json", "diffusion/diffusion.ckpt", "forecast.zarr/zarr.json",
           "report/metrics.json")
WORKFLOW = REPO / "workflows" / "slurm_sweep"
#: each point simulates its own QG data: the simulator's cache is not safe for two processes
#: generating the same trajectory at once (see the README, cluster section)
TINY = ("debug=tiny", "cache_dir='${run_dir}/cache'")


def _workflow_env(env: dict[str, str], **extra: str) -> dict[str, str]:
    return {**env, "SIMDIFF": f"{sys.executable} -m simdiff.cli.main", **extra}


def _sweep(sweep_dir: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """workflows/slurm_sweep/sweep.sh with debug=tiny, each point one CPU and 2 GB."""
    cmd = [str(WORKFLOW / "sweep.sh"), str(sweep_dir), *TINY, "hydra.launcher.mem_gb=2",
           "hydra.launcher.timeout_min=10"]
    # cwd: a sweep must write nothing outside sweep_dir (no multirun/ folder where it is started)
    return subprocess.run(cmd, env=_workflow_env(env), cwd=sweep_dir.parent, capture_output=True, text=True,
                          timeout=900)


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
        sorted([*POINTS, "multirun.yaml", "summary.csv", "summary.md", "summary.png"])
    assert not (sweep_dir.parent / "multirun").exists()
    for name, (lr, width) in zip(POINTS, GRID, strict=True):
        point = sweep_dir / name
        for path in OUTPUTS:
            assert (point / path).is_file(), f"{name}: {path} missing"
        config = (point / "autoencoder" / "config.yaml").read_text()
        assert f"lr: {float(lr)}" in config and f"latent_channels: {width}" in config
        log = _newest_log(point)
        for k, stage in enumerate(STAGES, 1):
            assert f"stage {k}/6: {stage}" in log, f"{name}: stage {stage} not run:\n{log[-3000:]}"
        # Hydra's record of the job: submitted to SLURM (submitit's job id "ARRAY_TASK")
        hydra_yaml = next((point / "logs" / "run").glob("*/.hydra/hydra.yaml")).read_text()
        assert re.search(r"\n    id: '?\d+_\d+'?\n", hydra_yaml), hydra_yaml[:2000]
    job_logs = sorted((sweep_dir / ".submitit").glob("*/*_log.out"))
    assert len(job_logs) == 4, job_logs


def test_the_sweep_is_gathered_into_one_table_and_one_plot(sweep):
    sweep_dir, _ = sweep
    with (sweep_dir / "summary.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["point"] for r in rows] == sorted(POINTS)
    for r in rows:
        # 2 latent channels: 16x compression of the tiny QG field; 4: 8x
        assert float(r["compression"]) == {"2": 4.0, "4": 2.0}[r["override autoencoder.net.latent_channels"]]
        assert 0 < float(r["ae rmse/std"]) < 5 and 0 < float(r["crps/climatology (mean)"]) < 10
        assert float(r["spread-skill (mean)"]) > 0 and not r["note"]
    md = (sweep_dir / "summary.md").read_text()
    assert md.startswith("4 points; shared: debug=tiny, experiment=slurm_sweep")
    assert md.count("\n| 0.00") == 4  # one row per point, by its learning rate
    assert (sweep_dir / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_plain_sbatch_array_finds_each_points_run_dir_and_skips_it(sweep, slurm_env):
    sweep_dir, _ = sweep
    before = _mtimes(sweep_dir)
    log = sweep_dir.parent / "array-%a.log"
    env = _workflow_env(slurm_env, SWEEP_DIR=str(sweep_dir))
    job = sbatch(WORKFLOW / "job.sbatch", env, f"--output={log}", "--mem=2G", args=TINY)
    logs = sweep_dir.parent.glob("array-*")
    assert wait_for_job(job, env) == "COMPLETED", [p.read_text()[-2000:] for p in logs]
    for name in POINTS:
        log_text = _newest_log(sweep_dir / name)
        for stage in STAGES:
            skipped = rf"(^|\s){stage}: [^\n]* complete with the same config and inputs; skipping\n"
            assert re.search(skipped, log_text), f"{name}: {stage} did not skip:\n{log_text[-3000:]}"
    assert _mtimes(sweep_dir) == before
    assert sorted(p.name for p in sweep_dir.iterdir() if not p.name.startswith(".") and "=" in p.name) == \
        sorted(POINTS)
