"""Training jobs on a real SLURM cluster: DDP over two tasks of one job, and pre-emption.

* A job of two tasks (``srun simdiff run`` in a plain ``sbatch`` script) runs the main job:
  both ranks train with Lightning DDP on gloo and generate their share of the members, one
  run_dir, rank 0 runs the single-process stages and writes the shared files.
* A ``--requeue`` job sent SLURM's pre-emption warning (``scancel --signal=USR1``) mid-training
  writes ``last.ckpt`` at the end of that step, requeues itself, resumes in its next run and ends
  with the weights of an uninterrupted run of the same command (max abs difference 0).

The pre-emption test prepares its run_dir here first (outside SLURM).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, job_fields, sbatch, wait_for_job

pytestmark = pytest.mark.slurm

PY = f"{sys.executable} -m simdiff.cli.main"
TINY = ("debug=tiny", "bottleneck=kl")


def _local(env: dict[str, str], *args: str) -> None:
    out = subprocess.run([sys.executable, "-m", "simdiff.cli.main", *args], env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]


def _script(path: Path, directives: list[str], lines: list[str]) -> Path:
    path.write_text("#!/bin/bash\n" + "".join(f"#SBATCH {d}\n" for d in directives) + "set -e\n"
                    + f"cd {REPO}\n" + "\n".join(lines) + "\n")
    return path


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def test_a_two_task_job_runs_the_main_job_with_ddp_in_one_run_dir(slurm_env, tmp_path):
    """``srun simdiff run`` on two tasks: both ranks train (DDP) and generate (each its share of
    the members); prepare, encode and evaluate run once, on rank 0, the other rank waiting for
    each stage to be finished before it moves on."""
    run_dir = tmp_path / "run"
    log = tmp_path / "ddp.log"
    script = _script(tmp_path / "ddp.sbatch",
                     ["--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1", "--mem=4G", "--time=10",
                      f"--output={log}", "--job-name=simdiff-ddp"],
                     [f"srun {PY} run run_dir={run_dir} cache_dir={tmp_path / 'cache'} {' '.join(TINY)} "
                      "trainer=ddp trainer.accelerator=cpu trainer.devices=2 trainer.precision=32-true "
                      "generate.devices=2 generate.strategy=ddp"])
    job = sbatch(script, slurm_env)
    assert wait_for_job(job, slurm_env) == "COMPLETED", log.read_text()[-4000:]
    text = log.read_text()
    assert "MEMBER: 2/2" in text, text[-3000:]  # Lightning saw both SLURM tasks as ranks
    # one rank did the single-process stages' work
    assert text.count("prepare: wrote ") == 1 and text.count("encode: wrote ") == 1
    assert text.count("evaluate: report in ") == 1
    summary = json.loads((run_dir / "diffusion" / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["ranks_identical"], summary
    assert "on rank 1 of 2" in text and (run_dir / "report" / "metrics.json").is_file()
    # the ranks' Hydra logs: one folder for the job (not one timestamped folder per rank)
    (folder,) = (run_dir / "logs" / "run").iterdir()
    assert folder.name == f"slurm-{job}.0-run0", folder
    assert (folder / "run.log").is_file() and (folder / "rank1" / "run.log").is_file()
    # rank 0 claimed each training folder for this launch; rank 1 waited for that claim
    for stage in ("autoencoder", "diffusion"):
        assert (run_dir / stage / ".launch").read_text() == f"slurm:{job}.0.0", stage


def _requeued(job: str, env: dict[str, str]) -> bool:
    fields = job_fields(job, env)
    return fields.get("Restarts") == "1" and fields.get("JobState") == "PENDING"


def _step(path: Path) -> int:
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])
    except (FileNotFoundError, RuntimeError, EOFError, KeyError):
        return -1


def test_a_preempted_training_job_requeues_resumes_and_matches_the_uninterrupted_weights(slurm_env, tmp_path):
    base = tmp_path / "base"
    train = ["debug.ae_max_epochs=12", "autoencoder.checkpoint_every_n_steps=4", *TINY]
    _local(slurm_env, "prepare", f"run_dir={base}", f"cache_dir={tmp_path / 'cache'}", *TINY)
    ref, run_dir = tmp_path / "ref", tmp_path / "run"
    subprocess.run(["cp", "-r", str(base), str(ref)], check=True)
    subprocess.run(["cp", "-r", str(base), str(run_dir)], check=True)
    _local(slurm_env, "train-autoencoder", f"run_dir={ref}", *train)
    total = _step(ref / "autoencoder" / "checkpoints" / "last.ckpt")

    log = tmp_path / "job.log"
    script = _script(tmp_path / "train.sbatch",
                     ["--requeue", "--ntasks=1", "--cpus-per-task=1", "--mem=2G", "--time=10",
                      f"--output={log}", "--open-mode=append", "--job-name=simdiff-preempt"],
                     ["echo \"run ${SLURM_RESTART_COUNT:-0} of job $SLURM_JOB_ID\"",
                      f"srun {PY} train-autoencoder run_dir={run_dir} {' '.join(train)}"])
    job = sbatch(script, slurm_env)
    last = run_dir / "autoencoder" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    while _step(last) < 4 and time.monotonic() < deadline:  # training is under way
        time.sleep(0.2)
    assert 4 <= _step(last) < total, f"no mid-run checkpoint to signal at: {log.read_text()[-3000:]}"
    subprocess.run(["scancel", "--signal=USR1", job], env=slurm_env, check=True, timeout=30)
    # SLURM holds a requeued job back for a while (its begin time is set ~2 min ahead): once it
    # is pending again, make it eligible now, as a free cluster would start it
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not _requeued(job, slurm_env):
        time.sleep(0.5)
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], env=slurm_env, timeout=30)
    assert wait_for_job(job, slurm_env) == "COMPLETED", log.read_text()[-4000:]

    text = log.read_text()
    assert "run 0 of job" in text and "run 1 of job" in text, text[-4000:]
    assert "pre-empted (SIGUSR1)" in text and f"SLURM job {job} requeued" in text, text[-4000:]
    assert "train-autoencoder: resuming from" in text, text[-4000:]
    a = _weights(ref / "autoencoder" / "autoencoder.ckpt")
    b = _weights(run_dir / "autoencoder" / "autoencoder.ckpt")
    assert sorted(a) == sorted(b)
    worst = max(float((a[k].double() - b[k].double()).abs().max()) for k in a)
    assert worst == 0.0, f"max abs weight difference {worst:.3e} after pre-emption and requeue"
