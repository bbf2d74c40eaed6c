"""The LightningDataModule over a training store: loaders plus what models need to know.

``SimdiffDataModule`` wraps :class:`simdiff.data.loading.loader.ChunkedSampleDataset` for the
train/val/test splits. The datasets yield whole batches, so the loaders use
``DataLoader(batch_size=None)``. Each time the train loader is iterated it first calls
``dataset.set_epoch(trainer.current_epoch)`` (or its own epoch count without a trainer):
Lightning only calls ``set_epoch`` on samplers, and an iterable dataset has none. The epoch
lives in shared memory, so persistent workers see it.

With DDP the datasets shard by the process group's rank (created in ``setup``, after
Lightning starts it); the train split drops the uneven tail when ``drop_last`` (default) and
the val/test splits pad by repeating at most ``world_size - 1`` samples, so every rank runs
the same number of steps.

Workers. By default batches are read by ``reader_threads`` background threads inside the
training process (``num_workers=0``): zarr's Blosc decode and numpy's gathers release the
GIL, so the threads decode in parallel with each other and with the training step, and a
batch reaches the model without any inter-process copy. DataLoader worker *processes*
(``num_workers > 0``) must place every batch in fresh shared memory (page faults cost about
as much as the read itself here); use them only when per-batch Python work is CPU-heavy
enough to be worth that copy. Both can be combined: each worker process then runs its own
reader threads. Batch contents and order never depend on the number of threads.

Patches. With ``patch`` the train split yields random crops of the fields (a new crop of each
sample every epoch), and, with ``val_patch`` (default), the val/test splits yield one fixed crop
of each sample (the same every epoch), so the validation loss is comparable across epochs, costs
what the training crops cost and sees the same crop size as training; the stages score whole
fields after training (the autoencoder's reconstruction report). ``val_patch=False`` validates on
whole fields. Batches then carry ``origin`` and the modules crop the mask, weights and static
fields there (``simdiff.data.loading.patch``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from functools import cached_property
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from simdiff.data.geometry import Geometry
from simdiff.data.loading.loader import ChunkedSampleDataset
from simdiff.data.stores.training import TrainingStore

log = logging.getLogger("simdiff")


class EpochDataLoader(DataLoader):
    """A DataLoader that sets its dataset's epoch each time it is iterated.

    Args:
        dataset: a dataset with ``set_epoch(int)``.
        epoch: returns the epoch to set (e.g. the trainer's), or None to count iterations
            from 0 instead; no callable counts iterations too.
        **kwargs: passed to ``DataLoader``.
    """

    def __init__(
        self,
        dataset: ChunkedSampleDataset,
        epoch: Callable[[], int | None] | None = None,
        consumed: Callable[[], int] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(dataset, **kwargs)
        self._epoch_fn = epoch
        self._consumed_fn = consumed
        self._iterations = 0
        self._epoch = 0
        self._resume: tuple[int, int] | None = None  # (epoch, batches already trained on)

    def __iter__(self) -> Iterator[Any]:
        epoch = self._epoch_fn() if self._epoch_fn is not None else None
        epoch = self._iterations if epoch is None else epoch
        self._iterations += 1
        skip = 0
        if self._resume is not None:
            # A resumed fit creates its iterator before the trainer's epoch count catches up
            # with a checkpoint taken on an epoch's last batch: the saved state knows better.
            epoch = max(epoch, self._resume[0])
            if self._resume[0] == epoch:
                skip = self._resume[1]
            self._resume = None
        self._epoch = epoch
        self.dataset.set_epoch(epoch)  # type: ignore[attr-defined]
        self.dataset.set_skip(skip)  # type: ignore[attr-defined]
        return super().__iter__()

    # Lightning saves and restores these with the fit loop (its ``_Stateful`` protocol), so a
    # run resumed from a mid-epoch checkpoint skips the batches it had already trained on.
    def state_dict(self) -> dict[str, int]:
        """``{"epoch", "consumed"}``: the epoch being iterated and batches trained on so far."""
        return {"epoch": int(self._epoch), "consumed": int(self._consumed_fn()) if self._consumed_fn else 0}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume: the next iteration of ``state["epoch"]`` starts after ``state["consumed"]`` batches
        (the next epoch from its start when all of that epoch's batches were used)."""
        epoch, consumed = int(state["epoch"]), int(state["consumed"])
        if consumed >= len(self.dataset):  # type: ignore[arg-type]
            epoch, consumed = epoch + 1, 0
        self._resume = (epoch, consumed)


def resolve_store(path: str | Path) -> Path:
    """``path`` itself when it is a store; ``path/data/train.zarr`` when ``path`` is a run_dir."""
    path = Path(path)
    candidate = path / "data" / "train.zarr"
    return candidate if not (path / "zarr.json").exists() and candidate.exists() else path


class SimdiffDataModule(L.LightningDataModule):
    """Train/val/test loaders over a training store, and the store's shapes and geometry.

    Args:
        store: the ``train.zarr`` directory, or a run_dir holding ``data/train.zarr``.
        batch_size: samples per batch (per rank).
        num_workers: DataLoader worker processes; 0 (default) reads in the training process,
            in ``reader_threads`` background threads. Processes pay a shared-memory copy per
            batch: worth it only for CPU-heavy per-batch Python work.
        window: consecutive states per sample (``window - 1`` previous + 1 target).
        stride, lookback: the window's states ``stride`` samples apart, and ``lookback`` earlier
            samples its oldest state needs in the same run (:class:`ChunkedSampleDataset`; a latent
            store of windows of states).
        pin_memory: pin batches for fast host-to-GPU copies; None: when CUDA is available.
        persistent_workers: keep workers alive across epochs (ignored with 0 workers).
        shuffle_buffer_chunks: chunk groups read and mixed at once per worker.
        seed: shuffle seed; epoch ``e`` shuffles with ``(seed, e)``.
        drop_last: drop the last partial train batch (and the uneven tail across ranks).
        prefetch_factor: batches each worker reads ahead (ignored with 0 workers).
        reader_threads: background reader threads per process (the training process with 0
            workers): no IPC copies, decode in parallel (Blosc releases the GIL); 0 reads in
            the iterating thread. Pinning (``pin_memory``) still happens in the DataLoader.
        patch: train on random crops of this many cells of the trailing spatial axes (None:
            whole fields); the stages pass their own (``autoencoder.patch``, ``diffusion.patch``).
        val_patch: with ``patch``, validate and test on fixed crops; False: on whole fields.
    """

    def __init__(
        self,
        store: str | Path,
        batch_size: int = 32,
        num_workers: int = 0,
        window: int = 1,
        stride: int = 1,
        lookback: int = 0,
        pin_memory: bool | None = None,
        persistent_workers: bool = True,
        shuffle_buffer_chunks: int = 4,
        seed: int = 0,
        drop_last: bool = True,
        prefetch_factor: int = 2,
        reader_threads: int = 2,
        patch: list[int] | tuple[int, ...] | None = None,
        val_patch: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.hparams["store"] = str(store)  # plain types only: checkpoints load with weights_only
        self.hparams["patch"] = None if patch is None else [int(p) for p in patch]
        self.path = resolve_store(store)
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.window = int(window)
        self.stride = int(stride)
        self.lookback = int(lookback)
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else bool(pin_memory)
        self.persistent_workers = bool(persistent_workers) and self.num_workers > 0
        self.shuffle_buffer_chunks = int(shuffle_buffer_chunks)
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.prefetch_factor = int(prefetch_factor)
        self.reader_threads = int(reader_threads)
        self.patch = None if patch is None else tuple(int(p) for p in patch)
        self.val_patch = bool(val_patch)
        self.datasets: dict[str, ChunkedSampleDataset] = {}

    # -- what models need to know ----------------------------------------------------------
    @cached_property
    def store(self) -> TrainingStore:
        """The opened training store."""
        return TrainingStore(self.path)

    @property
    def channels(self) -> list[str]:
        """Channel (variable) names in store order."""
        return [str(c) for c in self.store.group["channel"][...]]

    @property
    def n_channels(self) -> int:
        return int(self.store.data.shape[1])

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """``([D], Y, X)``."""
        return tuple(int(n) for n in self.store.data.shape[2:])

    @property
    def has_depth(self) -> bool:
        """True for 3D fields ``(channel, D, Y, X)``."""
        return self.store.layout.depth_dim is not None

    @cached_property
    def geometry(self) -> Geometry:
        return self.store.geometry()

    @property
    def mask(self) -> torch.Tensor:
        """bool ``([D], Y, X)``, True where valid."""
        return torch.from_numpy(self.store.array("mask").astype(bool))

    @property
    def weights(self) -> torch.Tensor:
        """float32 ``([D], Y, X)`` cell weights."""
        return torch.from_numpy(self.store.array("weights").astype("float32"))

    @property
    def condition_sizes(self) -> dict[str, int]:
        """Conditions in the batches and their sizes: features F, covariates K, label classes,
        atom channels."""
        sizes: dict[str, int] = {}
        for name in ("time_features", "covariates"):
            if self.store.has(name):
                sizes[name] = int(self.store.group[name].shape[1])  # type: ignore[union-attr]
        if self.store.has("atoms"):
            sizes["atoms"] = int(self.store.group["atoms"].shape[1])  # type: ignore[union-attr]
        if self.store.has("label"):
            sizes["label"] = self.store.label_classes()
        return sizes

    # -- loaders ---------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        """Build the split datasets (after DDP starts, so they shard by its rank).

        A train split smaller than one batch per rank would give no training batch at all
        (the last partial batch is dropped): it is trained on in batches of what it has, with a
        warning.
        """
        for split in ("train", "val", "test"):
            self.datasets[split] = self._dataset(split, self.batch_size)
        train = self.datasets["train"]
        have = train._rank_samples()
        if self.drop_last and 0 < have < self.batch_size:
            log.warning(
                "%s: the train split has %d sample(s) per rank, fewer than the batch size %d; training "
                "on batches of %d (set the stage's batch_size <= %d to silence this)",
                self.store.path, have, self.batch_size, have, have,
            )
            self.datasets["train"] = self._dataset("train", have)

    def _dataset(self, split: str, batch_size: int) -> ChunkedSampleDataset:
        return ChunkedSampleDataset(
            self.store,
            split=split,
            batch_size=batch_size,
            window=self.window,
            stride=self.stride,
            lookback=self.lookback,
            shuffle=split == "train",
            seed=self.seed,
            drop_last=self.drop_last and split == "train",
            shuffle_buffer_chunks=self.shuffle_buffer_chunks,
            reader_threads=self.reader_threads,
            patch=self.patch if split == "train" or self.val_patch else None,
            fixed_patches=split != "train",
        )

    def _current_epoch(self) -> int | None:
        """The epoch the fit loop runs: its processed-epoch count, as Lightning gives samplers.

        Not ``trainer.current_epoch`` (completed epochs): a run resumed from the checkpoint taken
        at the end of epoch ``e`` (after validation, before the epoch counts as completed)
        creates its train iterator while that still reads ``e``, and would shuffle epoch
        ``e + 1`` as epoch ``e``.
        """
        trainer = getattr(self, "trainer", None)
        return int(trainer.fit_loop.epoch_progress.current.processed) if trainer is not None else None

    def _consumed(self) -> int:
        """Train batches of the current epoch the trainer has run (0 without a trainer).

        Read when a checkpoint is saved: from ``on_train_batch_end`` (mid-epoch) the batch in
        hand is processed but not yet completed, so "processed" counts it.
        """
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0
        return int(trainer.fit_loop.epoch_loop.batch_progress.current.processed)

    def _loader(self, split: str) -> EpochDataLoader:
        if split not in self.datasets:
            self.setup()
        extra: dict[str, Any] = {}
        if self.num_workers > 0:
            extra = {"persistent_workers": self.persistent_workers, "prefetch_factor": self.prefetch_factor}
        return EpochDataLoader(
            self.datasets[split],
            epoch=self._current_epoch,
            consumed=self._consumed if split == "train" else None,
            batch_size=None,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            **extra,
        )

    def train_dataloader(self) -> EpochDataLoader:
        return self._loader("train")

    def val_dataloader(self) -> EpochDataLoader:
        return self._loader("val")

    def test_dataloader(self) -> EpochDataLoader:
        return self._loader("test")
