"""Reading checkpoints back (simdiff.lit.checkpoint): tensors and plain values, or a DataError."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn

from simdiff.base.errors import DataError
from simdiff.lit.checkpoint import load_checkpoint
from simdiff.lit.ema import ExponentialMovingAverage, load_ema_checkpoint


class Payload:
    """Unpickling this runs ``touch MARKER`` (see the control test in tests/base/test_registry.py)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _checkpoint(net: nn.Module, path: Path, **extra) -> Path:
    ema = ExponentialMovingAverage(net, 0.9)
    state = {**{f"net.{k}": v for k, v in net.state_dict().items()},
             **{f"ema.{k}": v for k, v in ema.state_dict().items()}}
    torch.save({"state_dict": state, **extra}, path)
    return path


def test_a_pickled_object_is_refused_unrun(tmp_path):
    marker = tmp_path / "MARKER"
    path = _checkpoint(nn.Linear(2, 2), tmp_path / "evil.ckpt", evil=Payload(marker))
    with pytest.raises(DataError) as err:
        load_checkpoint(path, stage="train-autoencoder")
    assert not marker.exists()
    msg = str(err.value)
    assert msg.startswith(f"{path}: not a checkpoint simdiff can read safely")
    assert "system" in msg and "train-autoencoder` with force=true" in msg
    assert "weights_only" not in msg  # not torch's advice to turn the protection off


def test_foreign_truncated_and_missing_files(tmp_path):
    junk = tmp_path / "junk.ckpt"
    junk.write_text("not a checkpoint")
    with pytest.raises(DataError, match=f"{junk}: not a checkpoint"):
        load_checkpoint(junk)
    good = _checkpoint(nn.Linear(2, 2), tmp_path / "good.ckpt")
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(good.read_bytes()[:200])
    with pytest.raises(DataError, match=f"{cut}: not a checkpoint"):
        load_checkpoint(cut)
    with pytest.raises(DataError, match="no checkpoint here"):
        load_checkpoint(tmp_path / "absent.ckpt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "plain.ckpt")
    with pytest.raises(DataError, match="no state_dict"):
        load_checkpoint(tmp_path / "plain.ckpt")


def test_ema_weights_load_and_a_mismatched_net_is_a_data_error(tmp_path):
    path = _checkpoint(nn.Linear(2, 2), tmp_path / "ok.ckpt")
    net = load_ema_checkpoint(nn.Linear(2, 2), path, "net", 0.9)
    assert not net.training
    with pytest.raises(DataError, match=rf"{path}: its weights do not fit .*simdiff train-diffusion"):
        load_ema_checkpoint(nn.Linear(3, 2), path, "net", 0.9, stage="train-diffusion")
