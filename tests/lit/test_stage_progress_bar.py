"""The training stages' progress bar keeps one short metrics field."""

from __future__ import annotations

from simdiff.lit.progress import StageProgressBar, bar_metrics


def test_the_bar_shows_each_loss_once_without_the_logger_version():
    items = {"v_num": 0, "train/loss_step": 0.224, "train/loss_epoch": 0.259, "val/loss": 0.446,
             "lr": 1e-3}
    assert bar_metrics(items) == {"train/loss": 0.224, "val/loss": 0.446}
    assert bar_metrics({"v_num": 3}) == {}


def test_the_cpu_trainer_preset_uses_it():
    from pathlib import Path

    from omegaconf import OmegaConf

    conf = Path(__file__).resolve().parents[2] / "conf" / "trainer" / "cpu.yaml"
    targets = [c["_target_"] for c in OmegaConf.load(conf).callbacks]
    assert targets == [f"{StageProgressBar.__module__}.{StageProgressBar.__qualname__}"]
