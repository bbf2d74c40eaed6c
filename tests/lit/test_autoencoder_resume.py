"""A killed autoencoder fit, resumed from its last checkpoint, ends with the uninterrupted fit's weights.

The fast, in-process version of the SIGKILL trials of ``benchmarks/kill_resume.py``: the stage's callbacks
(:func:`simdiff.lit.resume.resume_checkpoints`, early stopping, :class:`KeepStopped`) on a tiny
QG store, a KL bottleneck (so training draws noise), and a "kill" that raises before a chosen
step, leaving on disk only what the checkpoints had written.
"""

from __future__ import annotations

import os
import signal
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping

from simdiff.data.loading.datamodule import SimdiffDataModule
from simdiff.data.sources.simulators.qg_source import QGSource
from simdiff.data.stores.prepare import PrepareOptions, prepare
from simdiff.data.stores.training import TrainingStore
from simdiff.lit.autoencoder import AutoencoderModule, data_signature
from simdiff.lit.optim import adamw
from simdiff.lit.preempt import Preempted, PreemptionSignal
from simdiff.lit.resume import KeepStopped, resume_checkpoints
from simdiff.nets.autoencoder import Autoencoder
from simdiff.nets.bottleneck import KLBottleneck
from simdiff.nets.losses import ReconstructionLoss

EPOCHS = 3


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: ~10x faster for these tiny nets on a busy machine (and still exact)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def qg_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("ae_resume")
    src = QGSource(nx=16, spinup_days=200, n_snapshots=48, cache_dir=tmp / "cache", progress=False)
    prepare(src, tmp / "run", options=PrepareOptions(progress=False), config={"test": "qg16"})
    return tmp / "run"


class Interrupt(Exception):
    """Stands for the job being killed."""


class KillAt(L.Callback):
    """Die before optimizer step ``step + 1`` runs: every checkpoint up to step ``step`` (and the
    epoch end before it) is on disk, nothing after it."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise Interrupt


class SignalAt(L.Callback):
    """The scheduler's warning: SIGUSR1 to this process as optimizer step ``step + 1`` starts."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGUSR1)


class KillInValidation(L.Callback):
    """Die while epoch ``epoch`` is being validated."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_validation_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            raise Interrupt


class Validated(L.Callback):
    """Records the epochs whose validation ran."""

    def __init__(self) -> None:
        self.epochs: list[int] = []

    def on_validation_end(self, trainer, pl_module) -> None:
        self.epochs.append(trainer.current_epoch)


def fit(run: Path, ckpt_dir: Path, every: int, kill: int | L.Callback | None = None, resume: bool = False,
        stop_below: float | None = None, extra: tuple[L.Callback, ...] = (),
        preemption: PreemptionSignal | None = None,
        expect: type[BaseException] = Interrupt) -> tuple[L.Trainer, AutoencoderModule, Path]:
    """One fit as ``simdiff train-autoencoder`` wires it; returns the trainer, module and best.ckpt."""
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*smaller than the logging interval.*")
    warnings.filterwarnings("ignore", ".*exists and is not empty.*")
    L.seed_everything(0, verbose=False)
    dm = SimdiffDataModule(run, batch_size=4, reader_threads=0, seed=0)
    sig = data_signature(TrainingStore(dm.path))
    net = Autoencoder(2, sig["periodic"], latent_channels=2, channels=(8, 8), factors=[[2, 2]],
                      bottleneck=KLBottleneck(weight=1e-3), depth_kernel_size=1, groups=4)
    module = AutoencoderModule(net, ReconstructionLoss(), dm.weights, dm.mask, optimizer=adamw(lr=3e-3),
                               warmup_steps=2, ema_decay=0.9, seed=0, signature=sig)
    last, best = resume_checkpoints(ckpt_dir, every, preemption=preemption)
    stopping = EarlyStopping(monitor="val/loss", mode="min", patience=20, stopping_threshold=stop_below)
    killer = KillAt(kill) if isinstance(kill, int) else kill
    callbacks = [stopping, last, best, KeepStopped(), *extra, *([killer] if killer is not None else [])]
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=EPOCHS, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=2, gradient_clip_val=1.0, default_root_dir=str(ckpt_dir),
                        callbacks=callbacks)
    path = str(ckpt_dir / "last.ckpt") if resume else None
    if kill is None:
        trainer.fit(module, datamodule=dm, ckpt_path=path)
    else:
        with pytest.raises(expect):
            trainer.fit(module, datamodule=dm, ckpt_path=path)
    return trainer, module, Path(best.best_model_path)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], what: str) -> None:
    assert sorted(a) == sorted(b)
    assert any(k.startswith("ema.shadow_") for k in a)
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{what}: {len(differ)} tensors differ after resume, e.g. {differ[:3]}"


@pytest.fixture(scope="module")
def reference(qg_run: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[int, dict, dict]:
    """Steps per epoch, the final state and the best checkpoint's state of an uninterrupted fit."""
    trainer, module, best = fit(qg_run, tmp_path_factory.mktemp("ref"), every=3)
    per_epoch = trainer.num_training_batches
    assert per_epoch >= 6 and trainer.global_step == EPOCHS * per_epoch
    return per_epoch, {k: v.clone() for k, v in module.state_dict().items()}, weights(best)


@pytest.mark.parametrize("where", ["after_step_checkpoint", "between_checkpoints", "after_epoch_checkpoint",
                                   "twice"])
def test_killed_fit_resumes_to_the_same_weights(qg_run: Path, tmp_path: Path, reference, where: str) -> None:
    per_epoch, final, best = reference
    every = 3
    kills = {
        "after_step_checkpoint": [every],                # resumes from the mid-epoch checkpoint at step 3
        "between_checkpoints": [per_epoch + every + 2],  # 2 steps past a mid-epoch checkpoint of epoch 1
        "after_epoch_checkpoint": [per_epoch],           # resumes from the end of epoch 0 (after validation)
        "twice": [every + 1, 2 * per_epoch + 1],         # a resumed run killed again, in another epoch
    }[where]
    for kill in kills:
        fit(qg_run, tmp_path, every, kill=kill, resume=(tmp_path / "last.ckpt").exists())
    trainer, module, best_path = fit(qg_run, tmp_path, every, resume=True)
    assert trainer.global_step == EPOCHS * per_epoch
    assert_same(final, module.state_dict(), "model and EMA")
    assert_same(best, weights(best_path), "best.ckpt")


def test_a_step_checkpoint_on_an_epochs_last_batch_does_not_skip_its_validation(qg_run: Path, tmp_path: Path,
                                                                                  reference) -> None:
    """Killed while validating an epoch whose last batch is on the step cadence: the re-run
    validates that epoch (Lightning would skip it when resuming from a checkpoint taken on the
    last batch, so early stopping and best.ckpt would miss it)."""
    per_epoch, final, best = reference
    assert per_epoch % 3 == 0
    fit(qg_run, tmp_path, 3, kill=KillInValidation(1))
    validated = Validated()
    _, module, best_path = fit(qg_run, tmp_path, 3, resume=True, extra=(validated,))
    assert validated.epochs == [1, 2]
    assert_same(final, module.state_dict(), "model and EMA")
    assert_same(best, weights(best_path), "best.ckpt")


def test_a_run_that_stopped_early_stays_stopped_when_resumed(qg_run: Path, tmp_path: Path, reference) -> None:
    """Killed after early stopping ended the fit (while publishing): the re-run trains no further."""
    per_epoch = reference[0]
    first, module, _ = fit(qg_run, tmp_path, 3, stop_below=1e9)  # stops after the first validation
    assert first.global_step == per_epoch
    stopped = {k: v.clone() for k, v in module.state_dict().items()}
    again, module, _ = fit(qg_run, tmp_path, 3, resume=True, stop_below=1e9)
    assert again.global_step == per_epoch
    assert_same(stopped, module.state_dict(), "model and EMA")


@pytest.mark.parametrize("where", ["mid_epoch", "last_batch"])
def test_a_preemption_signal_checkpoints_that_step_and_the_resumed_fit_ends_with_the_same_weights(
        qg_run: Path, tmp_path: Path, reference, where: str) -> None:
    """SIGUSR1 (SLURM's warning before pre-emption) between two step checkpoints: ``last.ckpt`` is
    written at the end of that step (of the next one when it is an epoch's last: that checkpoint
    would precede the epoch's validation), the fit ends with Preempted, and resuming from it ends
    with the uninterrupted weights."""
    per_epoch, final, best = reference
    step = {"mid_epoch": per_epoch + 1, "last_batch": per_epoch - 1}[where]
    saved_at = {"mid_epoch": step + 1, "last_batch": per_epoch + 1}[where]
    fit(qg_run, tmp_path, 0, kill=SignalAt(step), preemption=PreemptionSignal(["USR1"], requeue=False),
        expect=Preempted)
    saved = torch.load(tmp_path / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == saved_at
    trainer, module, best_path = fit(qg_run, tmp_path, 0, resume=True)
    assert trainer.global_step == EPOCHS * per_epoch
    assert_same(final, module.state_dict(), "model and EMA")
    assert_same(best, weights(best_path), "best.ckpt")


def test_a_launchers_own_handler_runs_after_the_checkpoint(qg_run: Path, tmp_path: Path, monkeypatch) -> None:
    """submitit installs a handler that requeues the job: it runs once, after last.ckpt is written."""
    calls = []

    def launcher(signum, frame):
        calls.append((signum, (tmp_path / "last.ckpt").is_file()))

    previous = signal.signal(signal.SIGUSR1, launcher)
    monkeypatch.setenv("SLURM_JOB_ID", "not-a-job")  # must not reach scontrol: the launcher requeues
    try:
        fit(qg_run, tmp_path, 0, kill=SignalAt(2), preemption=PreemptionSignal(["USR1"]), expect=Preempted)
        assert calls == [(signal.SIGUSR1, True)]
        signal.raise_signal(signal.SIGUSR1)  # after the fit: the launcher's handler, as before it
        assert len(calls) == 2
    finally:
        signal.signal(signal.SIGUSR1, previous)
