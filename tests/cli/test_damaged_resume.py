"""A training stage killed while it wrote last.ckpt resumes from the previous good checkpoint.

Lightning writes ``last.ckpt`` in place, so a kill mid-write leaves it cut short; before, every
later resume stopped on it until someone deleted it by hand. Now the stage moves it aside, says
so, resumes from ``best.ckpt`` and ends with the weights of the uninterrupted run.
"""

from __future__ import annotations

import shutil

import torch
from clirun import simdiff


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def test_a_cut_last_ckpt_is_moved_aside_and_training_ends_as_uninterrupted(tiny_run, tmp_path):
    src, common = tiny_run
    run_dir = tmp_path / "run"
    shutil.copytree(src, run_dir, ignore=shutil.ignore_patterns("logs"))
    final = run_dir / "autoencoder" / "autoencoder.ckpt"
    reference = _weights(final)
    final.unlink()  # an unfinished run: the stage must train (or resume) to write it
    last = run_dir / "autoencoder" / "checkpoints" / "last.ckpt"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 3])

    out = simdiff("train-autoencoder", f"run_dir={run_dir}", *common)
    assert out.returncode == 0, out.stderr[-3000:]
    logs = "".join(p.read_text() for p in (run_dir / "logs").rglob("*.log"))
    assert "last.ckpt is damaged" in logs and "resuming from" in logs and "best.ckpt" in logs
    assert len(list(last.parent.glob("last.ckpt.damaged-*"))) == 1
    got = _weights(final)
    assert got.keys() == reference.keys()
    assert all(torch.equal(got[k], reference[k]) for k in reference)
