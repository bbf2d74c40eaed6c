"""What a training stage needs so that a killed run, re-run, ends with an uninterrupted run's weights.

Lightning checkpoints already hold the weights, the optimizer, the LR scheduler, the loops'
progress, the train loader's position (:class:`simdiff.data.loading.datamodule.EpochDataLoader`) and the
callbacks' states (early stopping, best-checkpoint tracking). This module adds what they miss:

* :class:`SavedGenerator`: a module's own random stream, seeded by ``(seed, rank)`` and saved in
  every checkpoint. Torch's global RNG is neither saved nor consumed the same way by a resumed
  run (each ``iter(DataLoader)`` draws from it, and a resumed run creates its loaders at other
  points), so training must not draw from it directly.
* :func:`global_rng_from`: seeds torch's global RNG from such a generator for the length of one
  training step and restores it afterwards, so code that can only use the global RNG (dropout,
  ``torch.randn_like`` in a bottleneck) draws the same numbers in a resumed run.
* :func:`resume_checkpoints`: ``last.ckpt`` every ``n`` optimizer steps (mid-epoch) and at every
  epoch end, ``best.ckpt`` by the monitored metric. The step checkpoint skips an epoch's last
  batch: a checkpoint taken there precedes that epoch's validation, which Lightning does not run
  again on resume (early stopping and the best checkpoint would miss it); the epoch-end
  checkpoint follows a moment later instead.
* :class:`KeepStopped`: keeps ``trainer.should_stop`` (set by early stopping or ``max_time``) in
  checkpoints, so a run killed after it stopped but before it published its result stops again
  instead of training on.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from simdiff.lit.preempt import PreemptionSignal

GENERATOR_KEY = "simdiff_generator"


class SavedGenerator:
    """LightningModule mixin: ``self.training_generator()``, seeded by ``(hparams.seed, rank)``.

    Its state goes into every checkpoint (``checkpoint["simdiff_generator"]``) and comes back on
    resume, so the draws after a resume are those an uninterrupted run makes.
    """

    _gen: torch.Generator | None = None
    _gen_state: torch.Tensor | None = None

    def training_generator(self) -> torch.Generator:
        """The module's training stream, on the module's device."""
        device = self.device  # type: ignore[attr-defined]
        if self._gen is None or self._gen.device != device:
            g = torch.Generator(device=device)
            trainer = self._trainer  # type: ignore[attr-defined]
            rank = trainer.global_rank if trainer is not None else 0
            g.manual_seed(int(self.hparams.seed) * 1_000_003 + int(rank))  # type: ignore[attr-defined]
            if self._gen_state is not None:
                g.set_state(self._gen_state)
                self._gen_state = None
            self._gen = g
        return self._gen

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)  # type: ignore[misc]
        checkpoint[GENERATOR_KEY] = self.training_generator().get_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)  # type: ignore[misc]
        state = checkpoint.get(GENERATOR_KEY)
        if state is not None:
            self._gen, self._gen_state = None, state


@contextmanager
def global_rng_from(generator: torch.Generator, device: torch.device) -> Iterator[None]:
    """Inside the block, torch's global RNG (CPU, and ``device`` when it is a GPU) is seeded by
    one draw from ``generator``; afterwards it is what it was before."""
    seed = int(torch.randint(0, 2**62, (), generator=generator, device=generator.device))
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda, device_type="cuda"):
        torch.default_generator.manual_seed(seed)
        if cuda:
            torch.cuda.manual_seed(seed)
        yield


class StepCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose step cadence leaves out an epoch's last batch (see the module doc).

    With a :class:`simdiff.lit.preempt.PreemptionSignal`, it also writes ``last.ckpt`` at the end
    of the first step (not an epoch's last) after a pre-emption signal, then hands the signal over.
    """

    def __init__(self, *args: Any, preemption: PreemptionSignal | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.preemption = preemption

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if self.preemption is not None and stage == "fit":
            self.preemption.install()  # before Lightning's own SLURM handler, which then stays out

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.preemption is not None:
            self.preemption.uninstall()
        super().teardown(trainer, pl_module, stage)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            return
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self.preemption is not None and self.preemption.requested(trainer.strategy):
            if self._last_global_step_saved != trainer.global_step:  # what the cadence does
                candidates = self._monitor_candidates(trainer)
                self._save_topk_checkpoint(trainer, candidates)
                self._save_last_checkpoint(trainer, candidates)
            what = f"wrote {self._last_checkpoint_saved} at step {trainer.global_step}"
            self.preemption.hand_over(rank_zero=trainer.is_global_zero, what=what)


def resume_checkpoints(ckpt_dir: Path, every_n_steps: int, monitor: str = "val/loss", mode: str = "min",
                       preemption: PreemptionSignal | None = None) -> tuple[ModelCheckpoint, ModelCheckpoint]:
    """``(last, best)``: ``last.ckpt`` every ``every_n_steps`` steps (0: epoch ends only), at
    every epoch end and at a pre-emption signal; ``best.ckpt`` with the best ``monitor``."""
    last = StepCheckpoint(dirpath=ckpt_dir, filename="last", every_n_train_steps=int(every_n_steps) or None,
                          save_top_k=1, enable_version_counter=False, preemption=preemption)
    best = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor=monitor, mode=mode, save_top_k=1,
                           save_last=True, enable_version_counter=False)
    return last, best


class KeepStopped(L.Callback):
    """Saves ``trainer.should_stop`` in checkpoints and sets it again when a run resumes."""

    def __init__(self) -> None:
        self._trainer: L.Trainer | None = None
        self._stopped = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._trainer = trainer

    def state_dict(self) -> dict[str, bool]:
        return {"should_stop": bool(self._trainer is not None and self._trainer.should_stop)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._stopped = bool(state_dict.get("should_stop", False))

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._stopped:
            trainer.should_stop = True
