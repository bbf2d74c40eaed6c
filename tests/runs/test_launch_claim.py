"""The other ranks of a launch that starts every rank at once (srun tasks) wait for the primary's
claim of a training folder, not just for a config that matches: on a forced redo the folder
still holds the old model with the same config until the primary discards it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from simdiff.base.errors import DataError
from simdiff.runs.completion import Identity, stage
from simdiff.runs.layout import RunDir
from simdiff.runs.stage_dir import LAUNCH, _follow, claim, launch_token

REPO = Path(__file__).resolve().parents[2]
SRUN = {"SLURM_JOB_ID": "4242", "SLURM_STEP_ID": "0", "SLURM_NTASKS": "2"}
FOLLOW = """
import sys
from pathlib import Path
from simdiff.runs.stage_dir import claim
print("ready", flush=True)
print(repr(claim(Path(sys.argv[1]), {"a": 1}, final="final.ckpt", stage="train-diffusion", force=True)))
"""


def _clear_launchers(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("SLURM_JOB_ID", "SLURM_STEP_ID", "SLURM_NTASKS", "SLURM_STEP_NUM_TASKS", "SLURM_PROCID",
                "SLURM_RESTART_COUNT",
                "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT", "WORLD_SIZE", "LOCAL_RANK", "NODE_RANK"):
        monkeypatch.delenv(key, raising=False)


def test_the_launch_token_names_the_launch_and_only_a_multi_process_one(monkeypatch):
    _clear_launchers(monkeypatch)
    assert launch_token() is None
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("SLURM_STEP_ID", "3")
    monkeypatch.setenv("SLURM_NTASKS", "1")
    assert launch_token() is None  # one task: no other rank to tell
    monkeypatch.setenv("SLURM_NTASKS", "2")
    assert launch_token() == "slurm:7.3.0"
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")  # a requeued job keeps its id, not its count
    assert launch_token() == "slurm:7.3.1"
    _clear_launchers(monkeypatch)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "abc")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert launch_token() == "torchrun:abc.0"


def test_a_follower_waits_for_the_primary_to_discard_the_old_model_on_a_forced_redo(monkeypatch, tmp_path):
    """Rank 1 starts while the folder still holds a finished model of the same config (its inputs
    changed: a forced redo). It must wait for rank 0's claim and start afresh with it, not read the
    old folder as complete (before the fix it returned None at once: 'skip')."""
    _clear_launchers(monkeypatch)
    for key, value in SRUN.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("SLURM_PROCID", "0")
    run = RunDir(tmp_path / "run")
    folder = tmp_path / "diffusion"
    ident = Identity({"a": 1}, {"latents": tmp_path / "in.txt"}, [folder / "final.ckpt"])
    (tmp_path / "in.txt").write_text("input v1")
    with stage(run, "train-diffusion", ident) as todo:
        assert todo
        assert claim(folder, {"a": 1}, final="final.ckpt", stage="train-diffusion", force=False) == ""
        (folder / "final.ckpt").write_text("v1")
    assert (folder / LAUNCH).read_text() == "slurm:4242.0.0"
    (folder / LAUNCH).unlink()  # as a folder from an earlier launch would be
    (tmp_path / "in.txt").write_text("input v2")

    env = {**os.environ, "SLURM_PROCID": "1", "PYTHONPATH": str(REPO)}
    follower = subprocess.Popen([sys.executable, "-c", FOLLOW, str(folder)], env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert follower.stdout.readline().strip() == "ready", follower.communicate()
    time.sleep(1.0)  # the follower is polling the old folder by now (it answered at once before)
    assert follower.poll() is None, follower.communicate()
    with stage(run, "train-diffusion", ident, force=True) as todo:
        assert todo
        assert claim(folder, {"a": 1}, final="final.ckpt", stage="train-diffusion", force=True) == ""
    out, err = follower.communicate(timeout=60)
    assert follower.returncode == 0, err
    assert out.strip() == "''"  # a fresh start, as the primary's
    assert not (folder / "final.ckpt").exists()


def test_a_single_process_run_writes_no_launch_file(monkeypatch, tmp_path):
    _clear_launchers(monkeypatch)
    folder = tmp_path / "autoencoder"
    assert claim(folder, {"a": 1}, final="final.ckpt", stage="train-autoencoder", force=False) == ""
    assert sorted(p.name for p in folder.iterdir()) == ["config.yaml"]


def test_a_follower_whose_primary_never_claims_says_what_it_waited_for(monkeypatch, tmp_path):
    """The folder holds this config from an earlier launch, but no claim of this one."""
    _clear_launchers(monkeypatch)
    folder = tmp_path / "diffusion"
    assert claim(folder, {"a": 1}, final="final.ckpt", stage="train-diffusion", force=False) == ""
    for key, value in SRUN.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("SLURM_PROCID", "1")
    with pytest.raises(DataError, match=r"config and its claim \(\.launch: slurm:4242\.0\.0\) within 1 s"):
        _follow(folder, {"a": 1}, "final.ckpt", timeout=1.0)
