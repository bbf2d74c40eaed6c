"""The fast loader: ready batches from a training store, read chunk by chunk.

``ChunkedSampleDataset`` is a torch ``IterableDataset`` over one split of a training store
(``simdiff.data.stores.training``). It reads whole zarr chunks, never sample by sample, shuffles at
two levels (the order of chunks, then samples within a buffer of several chunks), shards
across DDP ranks and DataLoader workers, and yields batches already collated inside the
worker, so there is no per-sample Python work and no ``collate_fn``. Use it with
``DataLoader(dataset, batch_size=None)``.

An epoch, for ``(seed, epoch)``, is planned the same way on every rank and worker:

1. Valid targets: samples ``t`` of the split whose window ``t-window+1 .. t`` lies in one
   ``block`` and in the split (a forecasting window never crosses a gap or a split).
2. Targets are grouped by the chunk their window starts in; the groups are shuffled
   (``numpy.random.default_rng((seed, epoch))``), cut into buffers of
   ``shuffle_buffer_chunks`` groups, and the samples of each buffer are permuted.
3. Ranks: rank ``r`` takes the ``r``-th contiguous slice of that order. With
   ``drop_last=False`` the order is padded by repeating its first samples (at most
   ``world_size - 1`` of them) so every rank gets ``ceil(N / world_size)`` samples, as
   ``torch.utils.data.DistributedSampler`` does; with ``drop_last=True`` the tail is dropped
   so every rank gets ``floor(N / world_size)``. Either way every rank yields the same
   number of batches, so DDP never hangs.
4. Batches: the rank's slice is cut into batches of ``batch_size`` (the last one partial
   unless ``drop_last``); worker ``w`` of ``num_workers`` takes a contiguous run of those
   batches and reads only the chunks they touch. The batches of a rank do not depend on
   ``num_workers``; only the order in which the DataLoader interleaves them does.

Each batch is a dict of tensors (``B`` = batch, ``W`` = window)::

  target         float32 (B, channel, [D], Y, X)      the state at sample ``index``
  previous       float32 (B, W-1, channel, [D], Y, X)  states index-W+1 .. index-1 (W > 1)
  index          int64   (B,)                          sample index of the target
  time_features  float32 (B, time_feature)             when the store has them
  label          int64   (B,)                          when the store has them
  covariates     float32 (B, covariate)                when the store has them
  atoms          float32 (B, atom_channel, D, Y, X)    when the store has them (molecular latents)
  origin         int64   (B, ndim)                     with ``patch``: each crop's start per axis

With ``patch`` (``simdiff.data.loading.patch``) every sample is a crop of ``patch`` cells of the trailing
axes instead of the whole field; ``target`` and ``previous`` then have the patch's spatial shape,
and the previous states are cropped where their target is. Crop origins are drawn per position of
the epoch order from ``default_rng((seed, epoch, PATCH_STREAM))`` (a stream of its own: the
sample order is the one without patches), so the crops of a batch depend on ``(seed, epoch)`` and
its position only, never on threads, workers or a resume skip; with ``fixed_patches`` each target
has one crop for every epoch (``default_rng((seed, PATCH_STREAM, 0))``, keyed by sample index),
for validation. A periodic axis (from the store's geometry) may wrap across its seam.

Conditions are those of the target sample. All tensors of a batch are views of one storage
(in a worker: one shared-memory segment, filled in place, so the DataLoader sends it without
a copy).

Reading. With several samples per chunk, one read task decodes the chunks of one shuffle
buffer into a reused scratch array and gathers its samples into their batch rows with
``numpy.take``. With one sample per chunk (large fields, e.g. 721x1440), one task per batch
decodes each chunk straight into its batch slot. ``ChunkDecoder`` does the decoding: for the
stores ``prepare`` writes it Blosc-decompresses the chunk files directly (no zarr per-call
overhead), else it calls zarr.

Reader threads (``reader_threads``, default 2) run those tasks in the background of the
iterating process: tasks are submitted in epoch order and awaited in that order (a bounded
read-ahead of ``2 * reader_threads`` tasks), so the batches and their order are the same for
any number of threads, 0 included. Blosc and numpy release the GIL, so this overlaps reading
with training and decodes in parallel without the shared-memory copy a DataLoader worker
process needs per batch. Worker processes (``DataLoader(num_workers=...)``) still work, each
with its own reader threads; they pay off only for CPU-heavy Python work per batch.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import zarr
from torch.utils.data import IterableDataset, get_worker_info

from simdiff.base.errors import DataError
from simdiff.data.loading.chunk_decoder import ChunkDecoder
from simdiff.data.loading.patch import crop, full_patch, patch_origins
from simdiff.data.stores.training import SPLITS, TrainingStore

CONDITIONS = ("time_features", "label", "covariates", "atoms")
#: Seeds the crop origins' streams, apart from the shuffle's ``(seed, epoch)``.
PATCH_STREAM = 0x9A7C4


def contiguous_runs(split: np.ndarray, block: np.ndarray) -> np.ndarray:
    """(S,) run id per sample: constant over consecutive samples of one block and one split."""
    split, block = np.asarray(split), np.asarray(block)
    change = (np.diff(block) != 0) | (np.diff(split) != 0)
    return np.concatenate([[0], np.cumsum(change)])


def window_targets(split: np.ndarray, block: np.ndarray, split_code: int, window: int) -> np.ndarray:
    """Sample indices ``t`` with ``split[t] == split_code`` whose window lies in one block and split.

    Args:
        split: (S,) split code per sample.
        block: (S,) contiguous-run id per sample.
        split_code: the split wanted (0 train, 1 val, 2 test).
        window: number of consecutive samples ``t-window+1 .. t`` that must lie in the run (the
            span of a strided window, :func:`window_span`).

    Returns:
        (N,) sorted int64 target indices.
    """
    split = np.asarray(split)
    whole = valid_windows(contiguous_runs(split, block), window)
    return np.flatnonzero((split == split_code) & whole).astype(np.int64)


def valid_windows(run: np.ndarray, window: int) -> np.ndarray:
    """(S,) bool: sample ``t``'s window ``t-window+1 .. t`` lies in its run (``run``: contiguous-run ids)."""
    run = np.asarray(run)
    ok = np.zeros(len(run), dtype=bool)
    if window <= len(run):
        ok[window - 1:] = run[window - 1:] == run[: len(run) - window + 1]
    return ok


def window_span(window: int, stride: int = 1, lookback: int = 0) -> int:
    """Consecutive samples a window of ``window`` states ``stride`` apart reads, plus ``lookback``
    earlier samples its oldest state needs in the same run (a latent of a window of states)."""
    return (int(window) - 1) * int(stride) + 1 + int(lookback)


@dataclass(frozen=True)
class EpochOrder:
    """The order of one epoch's targets and the read buffer each belongs to.

    Attributes:
        targets: (N,) target sample indices in epoch order.
        buffer: (N,) buffer id per position; a buffer is ``shuffle_buffer_chunks`` chunk groups.
    """

    targets: np.ndarray
    buffer: np.ndarray


def epoch_order(
    targets: np.ndarray,
    chunk_samples: int,
    window: int,
    shuffle: bool,
    seed: int,
    epoch: int,
    buffer_chunks: int,
) -> EpochOrder:
    """Shuffle chunk groups, then samples within buffers of ``buffer_chunks`` groups.

    Args:
        targets: (N,) sorted valid target indices.
        chunk_samples: samples per zarr chunk along the sample dim.
        window: states per window; targets are grouped by the chunk their window starts in.
        shuffle: False keeps the stored order (buffers still bound the reads).
        seed, epoch: the random stream is ``default_rng((seed, epoch))``.
        buffer_chunks: chunk groups mixed at once.
    """
    if len(targets) == 0:
        return EpochOrder(targets, np.zeros(0, dtype=np.int64))
    group = (targets - (window - 1)) // chunk_samples
    starts = np.flatnonzero(np.diff(group)) + 1
    groups = np.split(targets, starts)
    rng = np.random.default_rng((seed, epoch)) if shuffle else None
    chosen = rng.permutation(len(groups)) if rng is not None else np.arange(len(groups))
    parts, ids = [], []
    for b, lo in enumerate(range(0, len(chosen), buffer_chunks)):
        members = np.concatenate([groups[i] for i in chosen[lo : lo + buffer_chunks]])
        parts.append(rng.permutation(members) if rng is not None else members)
        ids.append(np.full(len(members), b, dtype=np.int64))
    return EpochOrder(np.concatenate(parts), np.concatenate(ids))


def rank_positions(n: int, rank: int, world_size: int, drop_last: bool) -> np.ndarray:
    """Positions in the epoch order that rank ``rank`` takes: a contiguous slice, padded or cut.

    With ``drop_last`` every rank gets ``n // world_size`` positions; without, every rank
    gets ``ceil(n / world_size)`` and positions past ``n`` wrap around to the start.

    Returns:
        (n_rank,) int64 positions in ``[0, n)``.
    """
    per_rank = n // world_size if drop_last else -(-n // world_size)
    pos = np.arange(rank * per_rank, (rank + 1) * per_rank, dtype=np.int64)
    return pos % n if n else pos


def worker_batches(n_batches: int, worker: int, num_workers: int) -> range:
    """The contiguous run of batch numbers that ``worker`` of ``num_workers`` produces."""
    return range(worker * n_batches // num_workers, (worker + 1) * n_batches // num_workers)


def empty_batch(specs: dict[str, tuple[tuple[int, ...], torch.dtype]]) -> dict[str, torch.Tensor]:
    """Uninitialised tensors that all live in one storage; in a DataLoader worker, shared memory.

    One storage per batch means one shared-memory segment to create, send and map instead of
    one per tensor, and filling shared memory directly saves the copy the DataLoader would
    make to send the batch to the main process (torch's ``default_collate`` does the same).

    Args:
        specs: name -> (shape, dtype).
    """
    offsets, nbytes = {}, 0
    for name, (shape, dtype) in specs.items():
        nbytes = -(-nbytes // 64) * 64  # 64-byte aligned views
        offsets[name] = nbytes
        nbytes += math.prod(shape) * dtype.itemsize
    if get_worker_info() is None:
        storage = torch.UntypedStorage(nbytes)
    else:
        storage = torch.UntypedStorage._new_shared(nbytes)
    return {
        name: torch.empty(0, dtype=dtype).set_(storage, offsets[name] // dtype.itemsize, shape)
        for name, (shape, dtype) in specs.items()
    }


class ChunkedSampleDataset(IterableDataset):
    """Batches of samples (or windows of consecutive samples) from one split of a training store.

    Args:
        store: a ``TrainingStore`` or the path of a ``train.zarr``.
        split: "train", "val" or "test".
        batch_size: samples per batch.
        window: consecutive states per sample: ``window - 1`` previous states + 1 target;
            1 gives plain samples.
        stride: samples between the window's states (``previous`` holds ``t - (window-1)*stride
            .. t - stride``); > 1 on a latent store of windows of states, whose next window is
            ``stride`` samples on.
        lookback: earlier samples the window's oldest state needs in the same block and split
            (a latent of ``lookback + 1`` states ending at its sample); they are not read.
        shuffle: shuffle chunks and samples within buffers, anew each epoch.
        seed: base seed; epoch ``e`` uses ``(seed, e)``.
        drop_last: drop the last partial batch (and, with several ranks, the samples that
            do not divide evenly) instead of padding ranks by repeating samples.
        shuffle_buffer_chunks: chunk groups read and mixed at once (memory: this many chunks
            per worker, plus window overlap).
        rank, world_size: DDP shard; None takes them from ``torch.distributed`` when it is
            initialised, else rank 0 of 1.
        reader_threads: background threads that read and assemble the next batches in the
            iterating process (bounded read-ahead: ``2 * reader_threads`` read tasks); 0 reads
            in the iterating thread, one batch at a time. zarr's Blosc decode and the numpy
            gathers release the GIL, so threads overlap reading with the consumer and, with 2
            or more, decode in parallel, with no inter-process copy. The batches and their
            order do not depend on this number.
        patch: crop every sample to this many cells of the trailing spatial axes (leading
            axes whole), at a random origin per sample (see the module docstring); None
            yields whole fields. Periodic axes come from the store's geometry.
        fixed_patches: the same crop of each target every epoch (validation and test).
    """

    def __init__(
        self,
        store: TrainingStore | str | Path,
        split: str = "train",
        batch_size: int = 32,
        window: int = 1,
        stride: int = 1,
        lookback: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        shuffle_buffer_chunks: int = 4,
        rank: int | None = None,
        world_size: int | None = None,
        reader_threads: int = 2,
        patch: tuple[int, ...] | list[int] | None = None,
        fixed_patches: bool = False,
    ) -> None:
        super().__init__()
        for name, value in (
            ("batch_size", batch_size),
            ("window", window),
            ("stride", stride),
            ("shuffle_buffer_chunks", shuffle_buffer_chunks),
        ):
            if int(value) < 1:
                raise ValueError(f"ChunkedSampleDataset: {name} must be >= 1, got {value}")
        if int(lookback) < 0:
            raise ValueError(f"ChunkedSampleDataset: lookback must be >= 0, got {lookback}")
        if int(reader_threads) < 0:
            raise ValueError(f"ChunkedSampleDataset: reader_threads must be >= 0, got {reader_threads}")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
        opened = store if isinstance(store, TrainingStore) else TrainingStore(store)
        self.path = opened.path
        self.split = split
        self.batch_size = int(batch_size)
        self.window = int(window)
        self.stride = int(stride)
        self.lookback = int(lookback)
        self.span = window_span(self.window, self.stride, self.lookback)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.shuffle_buffer_chunks = int(shuffle_buffer_chunks)
        self.reader_threads = int(reader_threads)
        self._rank_arg, self._world_arg = rank, world_size
        self.chunk_samples = opened.chunk_samples
        self.sample_shape = tuple(int(n) for n in opened.data.shape[1:])
        spatial = self.sample_shape[1:]
        self.patch = full_patch(patch, spatial)
        if self.patch is not None and any(not 1 <= p <= n for p, n in zip(self.patch, spatial, strict=True)):
            raise ValueError(f"ChunkedSampleDataset: patch {list(patch or [])} does not fit the field "
                             f"{list(spatial)}")
        self.fixed_patches = bool(fixed_patches)
        self.periodic = opened.periodic
        self.out_shape = self.sample_shape if self.patch is None else (self.sample_shape[0], *self.patch)
        self.n_samples = int(opened.data.shape[0])
        self.conditions = tuple(name for name in CONDITIONS if opened.has(name))
        split_arr, block = opened.array("split"), opened.array("block")
        self.targets = window_targets(split_arr, block, SPLITS[split], self.span)
        n_split = int(np.count_nonzero(split_arr == SPLITS[split]))
        if n_split and not len(self.targets):
            raise DataError(
                f"{self.path}: split {split!r} has {n_split} samples but no window of "
                f"{self.span} consecutive samples (window={self.window}, stride={self.stride}, "
                f"lookback={self.lookback}) fits inside one block (variable "
                f"'block'); condition on fewer previous states (diffusion.conditioning.previous), "
                f"encode shorter windows (autoencoder.window) or prepare the store with longer blocks"
            )
        # The epoch and the resume skip live in shared memory so persistent workers see them.
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()
        self._skip = torch.zeros(1, dtype=torch.int64).share_memory_()
        self._store: TrainingStore | None = None
        self._cond: dict[str, np.ndarray] | None = None
        self._scratch: list[list[np.ndarray]] = []  # free read buffers, reused across tasks
        self._data: zarr.Array | None = None
        self._decoder: ChunkDecoder | None = None
        self.rank, self.world_size = self._resolve_shard()

    # -- planning ------------------------------------------------------------------------
    def _resolve_shard(self) -> tuple[int, int]:
        if self._rank_arg is not None or self._world_arg is not None:
            rank, world = int(self._rank_arg or 0), int(self._world_arg or 1)
        elif dist.is_available() and dist.is_initialized():
            rank, world = dist.get_rank(), dist.get_world_size()
        else:
            rank, world = 0, 1
        if not 0 <= rank < world:
            raise ValueError(f"ChunkedSampleDataset: rank {rank} not in [0, world_size={world})")
        return rank, world

    @property
    def epoch(self) -> int:
        return int(self._epoch.item())

    def set_epoch(self, epoch: int) -> None:
        """Select the shuffle of ``epoch``; call before iterating (the DataModule does)."""
        self._epoch.fill_(int(epoch))
        self.rank, self.world_size = self._resolve_shard()

    def set_skip(self, batches: int) -> None:
        """Leave out the first ``batches`` batches of this rank's epoch in the next iterations.

        Used to resume mid-epoch: the batches an interrupted run already trained on are not
        read again, so the resumed run sees exactly the batches the uninterrupted one would.
        With ``W`` DataLoader workers, whose batches the DataLoader yields round-robin, worker
        ``w`` skips ``batches // W + (w < batches % W)`` of its own. Set it back to 0 for the
        following epochs (the DataModule's loader does).
        """
        if int(batches) < 0:
            raise ValueError(f"ChunkedSampleDataset.set_skip: batches must be >= 0, got {batches}")
        self._skip.fill_(int(batches))

    @property
    def n_targets(self) -> int:
        """Valid targets in the split, over all ranks."""
        return len(self.targets)

    def _rank_samples(self) -> int:
        """Targets this rank draws its batches from per epoch."""
        n, w = len(self.targets), self.world_size
        if w == 1:
            return n
        return n // w if self.drop_last else -(-n // w)

    def __len__(self) -> int:
        """Batches this rank yields per epoch (the same on every rank, for any num_workers)."""
        n = self._rank_samples()
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def plan(self, worker: int = 0, num_workers: int = 1) -> list[np.ndarray]:
        """The target indices of each batch ``worker`` yields this epoch, in order.

        Returns:
            a list of (B,) int64 arrays.
        """
        order = self._epoch_order()
        pos = self._positions(len(order.targets))
        runs = worker_batches(len(self), worker, num_workers)
        return [order.targets[pos[b * self.batch_size : (b + 1) * self.batch_size]] for b in runs]

    def _epoch_order(self) -> EpochOrder:
        """This epoch's shuffled targets (the same for every worker and rank)."""
        return epoch_order(
            self.targets,
            self.chunk_samples,
            self.span,
            self.shuffle,
            self.seed,
            self.epoch,
            self.shuffle_buffer_chunks,
        )

    def _positions(self, n: int) -> np.ndarray:
        if self.world_size == 1:
            return np.arange(n, dtype=np.int64)
        return rank_positions(n, self.rank, self.world_size, self.drop_last)

    # -- reading -------------------------------------------------------------------------
    def __getstate__(self) -> dict[str, object]:
        state = dict(self.__dict__)
        state["_store"] = None  # each worker opens its own handle
        state["_cond"] = None
        state["_data"] = None
        state["_decoder"] = None
        state["_scratch"] = []
        return state

    def _open(self) -> TrainingStore:
        if self._store is None:
            self._store = TrainingStore(self.path)
            self._data = self._store.data  # opened once: each ``store.data`` re-reads metadata
            self._decoder = ChunkDecoder(self._data)
            self._cond = {name: self._store.array(name) for name in self.conditions}
        return self._store

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        self._open()
        order = self._epoch_order()
        pos = self._positions(len(order.targets))
        runs = worker_batches(len(self), worker, num_workers)
        skip = int(self._skip.item())
        if skip:
            runs = range(min(runs.start + skip // num_workers + (worker < skip % num_workers), runs.stop),
                         runs.stop)
        if not len(runs):
            return iter(())
        mine = pos[runs.start * self.batch_size : runs.stop * self.batch_size]
        origins = None if self.patch is None else self.origins(order.targets)[mine]
        return self._batches(order.targets[mine], order.buffer[mine], origins)

    def origins(self, targets: np.ndarray) -> np.ndarray:
        """(N, ndim) crop origins of this epoch's ``targets`` (in epoch order), with ``patch``.

        Random crops: one draw per position of the epoch order from
        ``default_rng((seed, epoch, PATCH_STREAM))``. Fixed crops: one draw per sample of the
        store from ``default_rng((seed, PATCH_STREAM, 0))``, looked up by target.
        """
        assert self.patch is not None
        spatial = self.sample_shape[1:]
        if self.fixed_patches:
            rng = np.random.default_rng((self.seed, PATCH_STREAM, 0))
            every = patch_origins(rng, self.n_samples, spatial, self.patch, self.periodic)
            return every[targets]
        rng = np.random.default_rng((self.seed, self.epoch, PATCH_STREAM))
        return patch_origins(rng, len(targets), spatial, self.patch, self.periodic)

    def _segments(self, buffers: np.ndarray) -> np.ndarray:
        """(K + 1,) bounds of the runs of positions one read task fills, ascending from 0.

        Several samples per chunk: one run per shuffle buffer span (read once, then
        gathered). One sample per chunk: one run per batch.
        """
        n = len(buffers)
        if self.chunk_samples == 1:
            return np.r_[np.arange(0, n, self.batch_size), n]
        return np.r_[0, np.flatnonzero(np.diff(buffers)) + 1, n]

    def _empty(self, n: int) -> dict[str, torch.Tensor]:
        """An unfilled batch of ``n`` samples (one storage; shared memory in a worker)."""
        assert self._cond is not None
        specs: dict[str, tuple[tuple[int, ...], torch.dtype]] = {
            "target": ((n, *self.out_shape), torch.float32)
        }
        if self.window > 1:
            specs["previous"] = ((n, self.window - 1, *self.out_shape), torch.float32)
        specs["index"] = ((n,), torch.int64)
        if self.patch is not None:
            specs["origin"] = ((n, len(self.patch)), torch.int64)
        for name, values in self._cond.items():
            specs[name] = ((n, *values.shape[1:]), torch.from_numpy(values[:0]).dtype)
        return empty_batch(specs)

    def _batches(
        self, targets: np.ndarray, buffers: np.ndarray, origins: np.ndarray | None = None
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Yield the batches of this worker's ``targets`` (whose read buffers are ``buffers``), in order.

        ``origins`` (N, ndim): the crop of each target, with ``patch``.

        Read tasks (one per segment, see ``_segments``) are submitted in order and waited
        for in order, so the batches never depend on thread timing. At most
        ``2 * reader_threads`` tasks (plus those the current batch needs) are in flight.
        The reader threads stop when the generator finishes, is closed (a ``break``, the
        DataLoader iterator dropped) or raises: queued tasks are cancelled and running
        ones, each a single segment, are waited for.
        """
        n, bs = len(targets), self.batch_size
        bounds = self._segments(buffers)
        n_batches = -(-n // bs)
        # the last segment each batch needs: the one holding its last position
        last = np.searchsorted(bounds, np.minimum(np.arange(1, n_batches + 1) * bs, n), "left") - 1
        batches: dict[int, dict[str, torch.Tensor]] = {}

        def task(k: int) -> Callable[[], None]:
            lo, hi = int(bounds[k]), int(bounds[k + 1])
            parts = []
            for b in range(lo // bs, (hi - 1) // bs + 1):
                if b not in batches:
                    batches[b] = self._empty(min(bs, n - b * bs))
                parts.append((batches[b], b * bs))
            return lambda: self._fill(targets, lo, hi, parts, origins)

        if self.reader_threads == 0:
            k = 0
            for b in range(n_batches):
                while k <= last[b]:
                    task(k)()
                    k += 1
                yield batches.pop(b)
            return
        pool = ThreadPoolExecutor(self.reader_threads, thread_name_prefix="simdiff_reader")
        pending: deque[Future[None]] = deque()
        depth = 2 * self.reader_threads
        try:
            submitted = 0
            for b in range(n_batches):
                while submitted < len(bounds) - 1 and (submitted <= last[b] or len(pending) < depth):
                    pending.append(pool.submit(task(submitted)))
                    submitted += 1
                while submitted - len(pending) <= last[b]:
                    pending.popleft().result()
                yield batches.pop(b)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _fill(
        self,
        targets: np.ndarray,
        lo: int,
        hi: int,
        parts: list[tuple[dict[str, torch.Tensor], int]],
        origins: np.ndarray | None = None,
    ) -> None:
        """Read positions ``[lo, hi)`` of ``targets`` into their rows of the batches ``parts``.

        Args:
            targets: (N,) this worker's targets in order.
            lo, hi: the segment; every position lies in one of ``parts``.
            parts: (batch, position of its first row) for each batch the segment overlaps.
            origins: (N, ndim) crop origins per position, with ``patch``: whole states are read
                into a temporary array, then cropped into the batch rows.
        """
        assert self._cond is not None
        w = self.window
        scratch = None
        if self.chunk_samples > 1:
            scratch = self._take_scratch()
            rows, states = self._read_buffer(targets[lo:hi], scratch)
        for batch, first in parts:
            a, e = max(lo, first), min(hi, first + len(batch["index"]))
            r = slice(a - first, e - first)
            mine = targets[a:e]
            if self.patch is None:
                t_np = batch["target"].numpy()[r]
                p_np = batch["previous"].numpy()[r] if w > 1 else None
            else:
                t_np = np.empty((len(mine), *self.sample_shape), dtype=np.float32)
                p_np = np.empty((len(mine), w - 1, *self.sample_shape), dtype=np.float32) if w > 1 else None
            if scratch is None:
                self._read_direct(mine, t_np, p_np)
            else:
                where = np.searchsorted(rows, mine)
                np.take(states, where, axis=0, out=t_np)
                if p_np is not None:
                    np.take(states, np.searchsorted(rows, mine[:, None] + self._offsets()[None, :-1]),
                            axis=0, out=p_np)
            if self.patch is not None:
                assert origins is not None
                at = torch.from_numpy(origins[a:e])
                batch["target"][r] = crop(torch.from_numpy(t_np), at, self.patch)
                if p_np is not None:
                    batch["previous"][r] = crop(torch.from_numpy(p_np), at, self.patch)
                batch["origin"][r] = at
            batch["index"].numpy()[r] = mine
            for name, values in self._cond.items():
                np.take(values, mine, axis=0, out=batch[name].numpy()[r])
        if scratch is not None:
            self._scratch.append(scratch)

    def _offsets(self) -> np.ndarray:
        """(window,) the window's states relative to its target, oldest first (the target's 0 last)."""
        return np.arange(-(self.window - 1), 1) * self.stride

    def _take_scratch(self) -> list[np.ndarray]:
        """A reusable scratch holder, one per task in flight (``list.pop`` is atomic)."""
        try:
            return self._scratch.pop()
        except IndexError:
            return [np.empty((0, *self.sample_shape), dtype=np.float32)]

    def _read_buffer(self, targets: np.ndarray, scratch: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Read every state the windows of ``targets`` need, whole chunks at a time.

        Needed rows are merged into contiguous ranges (ranges closer than a chunk are joined,
        so no chunk is decoded twice) and each range is decoded by zarr straight into a
        reused scratch array (``scratch[0]``, grown when too small): no per-sample reads, no
        fresh allocation per buffer.

        Returns:
            rows: (M,) sorted sample indices read; states: (M, channel, [D], Y, X) float32,
            a view of the scratch array valid until the scratch is reused.
        """
        need = np.unique(targets[:, None] + self._offsets()[None, :])
        gap = np.flatnonzero(np.diff(need) >= self.chunk_samples) + 1
        lo = need[np.concatenate([[0], gap])]
        hi = need[np.concatenate([gap - 1, [len(need) - 1]])] + 1
        rows = np.concatenate([np.arange(a, b) for a, b in zip(lo, hi, strict=True)])
        if len(scratch[0]) < len(rows):
            scratch[0] = np.empty((len(rows), *self.sample_shape), dtype=np.float32)
        states = scratch[0][: len(rows)]
        at = 0
        for a, b in zip(lo.tolist(), hi.tolist(), strict=True):
            self._read(a, b, states[at : at + b - a])
            at += b - a
        return rows, states

    def _read_direct(self, targets: np.ndarray, t_np: np.ndarray, p_np: np.ndarray | None) -> None:
        """One sample per chunk: zarr decodes each chunk straight into its batch slot."""
        for i, t in enumerate(targets.tolist()):
            self._read(t, t + 1, t_np[i : i + 1])
            if p_np is not None and self.stride == 1:
                self._read(t - (self.window - 1), t, p_np[i])
            elif p_np is not None:
                for j, o in enumerate(self._offsets()[:-1].tolist()):
                    self._read(t + o, t + o + 1, p_np[i, j : j + 1])

    def _read(self, a: int, b: int, out: np.ndarray) -> None:
        """Decode samples ``[a, b)`` into ``out`` ((b - a, channel, [D], Y, X) float32)."""
        assert self._decoder is not None
        self._decoder.read(a, b, out)
