"""Which checkpoint a training stage resumes from when the newest one was cut short."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import torch

from simdiff.base.errors import DataError
from simdiff.lit.checkpoint import damaged, load_checkpoint, resume_point


def _save(path: Path, value: float) -> Path:
    torch.save({"state_dict": {"w": torch.full((64,), value)}, "epoch": int(value)}, path)
    return path


def _cut(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def test_a_cut_last_ckpt_is_moved_aside_and_best_is_resumed(tmp_path, caplog):
    best = _save(tmp_path / "best.ckpt", 1.0)
    last = _cut(_save(tmp_path / "last.ckpt", 2.0))
    assert damaged(last) and damaged(best) is None
    assert resume_point(tmp_path, stage="x", primary=False) == best  # a follower moves nothing
    assert last.is_file()
    with caplog.at_level(logging.WARNING, logger="simdiff"):
        assert resume_point(tmp_path, stage="train-x") == best
    assert not last.exists()
    (aside,) = tmp_path.glob("last.ckpt.damaged-*")
    assert aside.stat().st_size > 0 and "last.ckpt is damaged" in caplog.text


def test_a_readable_last_ckpt_is_resumed_and_with_nothing_readable_the_stage_starts_over(tmp_path):
    _save(tmp_path / "best.ckpt", 1.0)
    last = _save(tmp_path / "last.ckpt", 2.0)
    assert resume_point(tmp_path, stage="x") == last
    _cut(last)
    _cut(tmp_path / "best.ckpt")
    assert resume_point(tmp_path, stage="x") is None
    assert len(list(tmp_path.glob("*.damaged-*"))) == 2


def test_a_checkpoint_holding_objects_is_refused_not_moved(tmp_path):
    """Unsafe content is not damage: it stays, and loading it is refused unrun."""
    last = tmp_path / "last.ckpt"
    torch.save({"state_dict": {}, "extra": os.system}, last)  # a callable: weights_only refuses it
    assert damaged(last) is None
    assert resume_point(tmp_path, stage="x") == last
    with pytest.raises(DataError, match="nothing in it was run"):
        load_checkpoint(last)
