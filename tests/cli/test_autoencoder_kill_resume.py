"""`simdiff train-autoencoder` killed with SIGKILL and re-run ends with the uninterrupted run's weights.

The fast in-process version (every kill point, early stopping, best.ckpt) is
``tests/lit/test_autoencoder_resume.py``; this one runs the real command (debug=tiny: 2 epochs
of 9 steps, ``last.ckpt`` every 4 steps) and kills the process three times: right after a
mid-epoch checkpoint, right after the epoch-end checkpoint, and mid-epoch between checkpoints.
"""

from __future__ import annotations

import os
import shutil
from functools import partial
from pathlib import Path

import clirun
import pytest
import torch

simdiff = partial(clirun.simdiff, timeout=600)


def saved_step(path: Path) -> int:
    """``global_step`` of the checkpoint at ``path`` (-1 while there is none)."""
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])
    except (FileNotFoundError, RuntimeError, EOFError):
        return -1


def step_reached(path: Path, step: int):
    """A ``ready()`` for :func:`clirun.kill_when`: the checkpoint holds ``step`` steps or more."""
    seen = {"mtime": None}

    def ready() -> bool:
        try:
            mtime = path.stat().st_mtime_ns
        except FileNotFoundError:
            return False
        if mtime == seen["mtime"]:
            return False
        seen["mtime"] = mtime
        return saved_step(path) >= step

    return ready


@pytest.mark.slow
def test_killed_train_autoencoder_ends_with_the_uninterrupted_weights(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny nets on a busy CPU: one thread is ~10x faster
    common = ("debug=tiny", f"cache_dir={tmp_path / 'cache'}", "bottleneck=kl",
              "autoencoder.checkpoint_every_n_steps=4")
    base, ref, run = tmp_path / "base", tmp_path / "ref", tmp_path / "run"
    out = simdiff("prepare", f"run_dir={base}", *common, env=env)
    assert out.returncode == 0, out.stderr
    shutil.copytree(base, ref)
    shutil.copytree(base, run)
    out = simdiff("train-autoencoder", f"run_dir={ref}", *common, env=env)
    assert out.returncode == 0, out.stderr

    args = ["train-autoencoder", f"run_dir={run}", *common]
    last = run / "autoencoder" / "checkpoints" / "last.ckpt"
    # right after the mid-epoch checkpoint at step 4 of 9
    assert clirun.kill_when(args, step_reached(last, 4), env=env) is None
    assert 4 <= saved_step(last) < 9
    # right after the checkpoint at the end of epoch 0 (after its validation)
    assert clirun.kill_when(args, step_reached(last, 9), env=env) is None
    assert saved_step(last) >= 9
    # mid-epoch 1, a moment after its first checkpoint: the steps since are trained again
    clirun.kill_when(args, step_reached(last, 12), env=env, after=0.3)
    out = simdiff(*args, env=env)
    assert out.returncode == 0, out.stderr
    assert "resuming from" in out.stderr + out.stdout

    final = "autoencoder/autoencoder.ckpt"
    a = torch.load(ref / final, map_location="cpu", weights_only=True)["state_dict"]
    b = torch.load(run / final, map_location="cpu", weights_only=True)["state_dict"]
    assert sorted(a) == sorted(b) and any(k.startswith("ema.shadow_") for k in a)
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{len(differ)} of {len(a)} tensors differ after kill and resume, e.g. {differ[:3]}"
