"""The fast loader: exactly-once coverage, windows, alignment, determinism, sharding, 3D."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from torch.utils.data import DataLoader

from simdiff.base.errors import DataError
from simdiff.data.field import Field
from simdiff.data.geometry import Geometry
from simdiff.data.loading.loader import (
    ChunkDecoder,
    ChunkedSampleDataset,
    epoch_order,
    rank_positions,
    window_targets,
)
from simdiff.data.stores.prepare import PrepareOptions, write_training_store
from simdiff.data.stores.training import TrainingStore

N_SAMPLES = 40
CHUNK_MB = 6 * 2 * 8 * 8 * 4 / 1e6  # 6 samples of 2x8x8 float32 per chunk (3D: 2 samples of 2x3x8x8)
# prepare's contiguous split of 40 samples at 0.7/0.15/0.15: 0..27 train, 28..33 val, 34..39 test;
# a time gap after sample 11 starts a new block.
SPLIT = np.array([0] * 28 + [1] * 6 + [2] * 6, dtype=np.int8)
BLOCK = np.array([0] * 12 + [1] * 16 + [2] * 6 + [3] * 6, dtype=np.int32)


def sample_values(shape: tuple[int, ...]) -> np.ndarray:
    """(S, [D], Y, X) float32 whose every value names its sample: s * 1000 + position."""
    s = np.arange(shape[0], dtype=np.float32).reshape(-1, *([1] * (len(shape) - 1)))
    within = np.arange(int(np.prod(shape[1:])), dtype=np.float32).reshape(shape[1:]) % 1000
    return s * 1000 + within[None]


def write_test_store(path: Path, depth: int | None = None, chunk_mb: float = CHUNK_MB) -> Path:
    """A 40-sample training store of two 8x8 variables (``depth`` levels), written by ``prepare``."""
    ny = nx = 8
    spatial = ("level", "y", "x") if depth else ("y", "x")
    shape = (N_SAMPLES, depth, ny, nx) if depth else (N_SAMPLES, ny, nx)
    time = np.r_[np.arange(12), np.arange(13, 41)].astype(float)  # a gap between 11 and 13
    s = np.arange(N_SAMPLES)
    values = sample_values(shape)
    data = xr.Dataset(
        {"a": (("time", *spatial), values), "b": (("time", *spatial), -values)},
        coords={"time": time, "y": np.arange(ny), "x": np.arange(nx)},
    )
    mask = np.ones(shape[1:], dtype=bool)
    mask[..., 0, 0] = False
    geometry = Geometry(
        dims=spatial,
        periodic=frozenset({"x"}),
        weights=xr.DataArray(np.ones(shape[1:], np.float32), dims=spatial),
        mask=xr.DataArray(mask, dims=spatial),
    )
    conditions = xr.Dataset(
        {
            "time_features": (("time", "time_feature"), np.stack([s, -s], 1).astype(np.float32)),
            "label": (("time",), s % 3, {"label_names": ["p", "q", "r"]}),
            "covariates": (("time", "covariate"), s[:, None] * 0.5),
        },
        coords={"time": time},
    )
    field = Field(data=data, geometry=geometry, conditions=conditions, sources=("synthetic",))
    options = PrepareOptions(
        split={"train": 0.7, "val": 0.15, "test": 0.15}, chunk_mb=chunk_mb, progress=False
    )
    write_training_store(field, path, transforms={}, options=options, provenance={})
    store = TrainingStore(path)
    assert np.array_equal(store.split, SPLIT) and np.array_equal(store.array("block"), BLOCK)
    return path


@pytest.fixture(scope="module")
def store2d(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_test_store(tmp_path_factory.mktemp("loader") / "train.zarr")


@pytest.fixture(scope="module")
def store_k1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One sample per chunk (as for 721x1440 fields): the loader decodes into batch slots."""
    path = write_test_store(tmp_path_factory.mktemp("loader_k1") / "train.zarr", chunk_mb=1e-6)
    assert TrainingStore(path).chunk_samples == 1
    return path


@pytest.fixture(scope="module")
def store3d(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_test_store(tmp_path_factory.mktemp("loader3d") / "train.zarr", depth=3)


def collect(ds: ChunkedSampleDataset, num_workers: int = 0, **kw: object) -> list[dict[str, torch.Tensor]]:
    loader = DataLoader(ds, batch_size=None, num_workers=num_workers, **kw)  # type: ignore[arg-type]
    return list(loader)


def indices(batches: list[dict[str, torch.Tensor]]) -> np.ndarray:
    return np.concatenate([b["index"].numpy() for b in batches])


# -- planning ------------------------------------------------------------------------------
def test_window_targets_respect_blocks_and_splits() -> None:
    assert np.array_equal(window_targets(SPLIT, BLOCK, 0, 1), np.arange(28))
    # window 3: the first two samples of each train block (0, 12) have no full window
    expected = np.r_[np.arange(2, 12), np.arange(14, 28)]
    assert np.array_equal(window_targets(SPLIT, BLOCK, 0, 3), expected)
    # a block id that spans a split change still cuts the window at the split border
    block = np.zeros(10, dtype=np.int32)
    split = np.array([0] * 5 + [1] * 5)
    assert np.array_equal(window_targets(split, block, 1, 2), np.arange(6, 10))


def test_epoch_order_is_a_permutation_that_changes_with_epoch_and_seed() -> None:
    targets = np.arange(100)
    a = epoch_order(targets, 7, 1, True, seed=0, epoch=0, buffer_chunks=3)
    b = epoch_order(targets, 7, 1, True, seed=0, epoch=0, buffer_chunks=3)
    c = epoch_order(targets, 7, 1, True, seed=0, epoch=1, buffer_chunks=3)
    d = epoch_order(targets, 7, 1, True, seed=1, epoch=0, buffer_chunks=3)
    assert np.array_equal(np.sort(a.targets), targets)
    assert np.array_equal(a.targets, b.targets)
    assert not np.array_equal(a.targets, c.targets)
    assert not np.array_equal(a.targets, d.targets)
    # each buffer holds whole chunks and at most 3 of them
    for buf in np.unique(a.buffer):
        chunks = np.unique(a.targets[a.buffer == buf] // 7)
        assert len(chunks) <= 3
        members = a.targets[a.buffer == buf]
        for c_ in chunks:
            assert np.count_nonzero(members // 7 == c_) == np.count_nonzero(targets // 7 == c_)
    unshuffled = epoch_order(targets, 7, 1, False, seed=0, epoch=0, buffer_chunks=3)
    assert np.array_equal(unshuffled.targets, targets)


def test_rank_positions_pad_or_drop_evenly() -> None:
    padded = [rank_positions(10, r, 3, drop_last=False) for r in range(3)]
    assert [len(p) for p in padded] == [4, 4, 4]
    assert set(np.concatenate(padded)) == set(range(10))  # all covered, 2 repeats
    dropped = [rank_positions(10, r, 3, drop_last=True) for r in range(3)]
    assert [len(p) for p in dropped] == [3, 3, 3]
    assert len(set(np.concatenate(dropped))) == 9


# -- coverage ------------------------------------------------------------------------------
@pytest.mark.parametrize("num_workers", [0, 1, 2])
@pytest.mark.parametrize("window", [1, 3])
@pytest.mark.parametrize("store_name", ["store2d", "store_k1"])
def test_every_valid_sample_exactly_once_per_epoch(
    store_name: str, num_workers: int, window: int, request: pytest.FixtureRequest
) -> None:
    ds = ChunkedSampleDataset(
        request.getfixturevalue(store_name),
        "train",
        batch_size=5,
        window=window,
        seed=3,
        shuffle_buffer_chunks=2,
    )
    batches = collect(ds, num_workers)
    got = indices(batches)
    assert np.array_equal(np.sort(got), window_targets(SPLIT, BLOCK, 0, window))
    assert len(batches) == len(ds)
    assert all(len(b["index"]) == 5 for b in batches[:-1])


def test_two_ranks_cover_the_split_with_equal_batch_counts(store2d: Path) -> None:
    per_rank = []
    for rank in range(2):
        ds = ChunkedSampleDataset(store2d, "train", batch_size=4, window=3, seed=1, rank=rank, world_size=2)
        batches = collect(ds, num_workers=2)
        assert len(batches) == len(ds)
        per_rank.append(indices(batches))
    targets = window_targets(SPLIT, BLOCK, 0, 3)  # 24 targets: divides evenly, no padding
    assert len(per_rank[0]) == len(per_rank[1]) == 12
    assert np.array_equal(np.sort(np.concatenate(per_rank)), targets)


def test_uneven_ranks_pad_or_drop(store2d: Path) -> None:
    targets = window_targets(SPLIT, BLOCK, 0, 1)  # 28 targets over 3 ranks
    for drop_last, per in ((False, 10), (True, 9)):
        got = []
        lens = []
        for rank in range(3):
            ds = ChunkedSampleDataset(
                store2d, "train", batch_size=4, rank=rank, world_size=3, drop_last=drop_last
            )
            batches = collect(ds)
            lens.append(len(batches))
            assert sum(len(b["index"]) for b in batches) == (per // 4) * 4 if drop_last else per
            got.append(indices(batches))
        assert len(set(lens)) == 1
        every = np.concatenate(got)
        if drop_last:
            assert len(np.unique(every)) == len(every)  # nothing repeated
        else:
            assert set(every) == set(targets)
            assert len(every) - len(targets) == 2  # padded by 2 repeats


# -- content -------------------------------------------------------------------------------
@pytest.mark.parametrize("threads", [0, 1, 3])
@pytest.mark.parametrize("store_name", ["store2d", "store3d", "store_k1"])
def test_previous_and_target_match_the_stored_array(
    store_name: str, threads: int, request: pytest.FixtureRequest
) -> None:
    path = request.getfixturevalue(store_name)
    stored = TrainingStore(path).data[...]
    window = 3
    ds = ChunkedSampleDataset(
        path,
        "train",
        batch_size=7,
        window=window,
        seed=0,
        shuffle_buffer_chunks=2,
        reader_threads=threads,
    )
    for batch in collect(ds, num_workers=1):
        idx = batch["index"].numpy()
        assert batch["target"].dtype == torch.float32
        assert batch["target"].shape == (len(idx), *stored.shape[1:])
        assert batch["previous"].shape == (len(idx), window - 1, *stored.shape[1:])
        np.testing.assert_array_equal(batch["target"].numpy(), stored[idx])
        for j in range(window - 1):
            np.testing.assert_array_equal(batch["previous"][:, j].numpy(), stored[idx - (window - 1) + j])
        # consecutive states of one block and one split
        starts = idx - (window - 1)
        assert np.all(BLOCK[starts] == BLOCK[idx]) and np.all(SPLIT[starts] == 0)


@pytest.mark.parametrize("store_name", ["store2d", "store_k1"])
def test_strided_windows_read_states_stride_apart_with_their_lookback(
    store_name: str, request: pytest.FixtureRequest
) -> None:
    """A latent store of windows of 3 states: previous windows are 3 samples back, and the oldest
    one's own states (lookback 2) lie in the target's block and split too."""
    path = request.getfixturevalue(store_name)
    stored = TrainingStore(path).data[...]
    window, stride, lookback = 3, 3, 2
    ds = ChunkedSampleDataset(path, "train", batch_size=5, window=window, stride=stride, lookback=lookback,
                              seed=1, shuffle_buffer_chunks=2)
    span = (window - 1) * stride + 1 + lookback
    expected = np.r_[np.arange(span - 1, 12), np.arange(12 + span - 1, 28)]  # train blocks 0..11, 12..27
    batches = collect(ds)
    got = indices(batches)
    assert np.array_equal(np.sort(got), expected) and len(np.unique(got)) == len(got)
    for batch in batches:
        idx = batch["index"].numpy()
        np.testing.assert_array_equal(batch["target"].numpy(), stored[idx])
        for j in range(window - 1):
            np.testing.assert_array_equal(batch["previous"][:, j].numpy(),
                                          stored[idx - (window - 1 - j) * stride])
        oldest = idx - span + 1
        assert np.all(BLOCK[oldest] == BLOCK[idx]) and np.all(SPLIT[oldest] == 0)


def test_conditions_follow_the_target(store2d: Path) -> None:
    ds = ChunkedSampleDataset(store2d, "val", batch_size=4, window=2, seed=5)
    for batch in collect(ds):
        idx = batch["index"].numpy()
        np.testing.assert_array_equal(batch["time_features"].numpy(), np.stack([idx, -idx], 1))
        np.testing.assert_array_equal(batch["label"].numpy(), idx % 3)
        assert batch["label"].dtype == torch.int64
        np.testing.assert_array_equal(batch["covariates"].numpy()[:, 0], idx * 0.5)
        assert set(batch) == {"target", "previous", "index", "time_features", "label", "covariates"}


def test_plain_samples_have_no_previous(store2d: Path) -> None:
    batch = next(iter(collect(ChunkedSampleDataset(store2d, "test", batch_size=6, shuffle=False))))
    assert "previous" not in batch
    assert np.array_equal(batch["index"].numpy(), np.arange(34, 40))


# -- shuffling -----------------------------------------------------------------------------
def test_order_is_deterministic_per_seed_and_epoch(store2d: Path) -> None:
    def order(seed: int, epoch: int, num_workers: int = 0) -> np.ndarray:
        ds = ChunkedSampleDataset(store2d, "train", batch_size=4, seed=seed, shuffle_buffer_chunks=2)
        ds.set_epoch(epoch)
        return indices(collect(ds, num_workers))

    assert np.array_equal(order(0, 0), order(0, 0))
    assert np.array_equal(order(0, 0, 2), order(0, 0, 2))
    assert not np.array_equal(order(0, 0), order(0, 1))
    assert not np.array_equal(order(0, 0), order(1, 0))
    # the batches themselves do not depend on num_workers, only their interleaving
    one = collect(ChunkedSampleDataset(store2d, "train", batch_size=4, seed=0), 0)
    two = collect(ChunkedSampleDataset(store2d, "train", batch_size=4, seed=0), 2)
    as_sets = lambda bs: sorted(tuple(sorted(b["index"].tolist())) for b in bs)  # noqa: E731
    assert as_sets(one) == as_sets(two)


def test_buffers_mix_samples_of_several_chunks(store2d: Path) -> None:
    ds = ChunkedSampleDataset(store2d, "train", batch_size=8, seed=0, shuffle_buffer_chunks=3)
    first = collect(ds)[0]["index"].numpy()
    assert TrainingStore(store2d).chunk_samples == 6
    assert len(np.unique(first // 6)) > 1
    assert not np.array_equal(first, np.sort(first))


def test_persistent_workers_see_set_epoch(store2d: Path) -> None:
    ds = ChunkedSampleDataset(store2d, "train", batch_size=4, seed=2)
    loader = DataLoader(ds, batch_size=None, num_workers=1, persistent_workers=True)
    epochs = []
    for epoch in range(2):
        ds.set_epoch(epoch)
        epochs.append(np.concatenate([b["index"].numpy() for b in loader]))
        expected = np.concatenate(ds.plan())
        assert np.array_equal(epochs[-1], expected)
    assert not np.array_equal(epochs[0], epochs[1])
    del loader  # stop the persistent worker now, not while the test process is torn down


# -- bad input -----------------------------------------------------------------------------
def test_window_longer_than_every_block_is_a_data_error(store2d: Path) -> None:
    with pytest.raises(DataError, match="window=7"):
        ChunkedSampleDataset(store2d, "val", window=7)


def test_bad_arguments_are_rejected(store2d: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        ChunkedSampleDataset(store2d, batch_size=0)
    with pytest.raises(ValueError, match="split"):
        ChunkedSampleDataset(store2d, split="training")
    with pytest.raises(DataError, match="no training store"):
        ChunkedSampleDataset(tmp_path / "missing.zarr")


@pytest.mark.parametrize("store_name", ["store2d", "store3d", "store_k1"])
def test_direct_chunk_decode_matches_zarr(store_name: str, request: pytest.FixtureRequest) -> None:
    data = TrainingStore(request.getfixturevalue(store_name)).data
    fast, slow = ChunkDecoder(data), ChunkDecoder(data)
    assert fast.root is not None  # prepare's stores take the direct path
    slow.root = None
    rng = np.random.default_rng(0)
    ranges = [(0, N_SAMPLES), (N_SAMPLES - 1, N_SAMPLES), (0, 1)]
    ranges += [tuple(sorted(rng.choice(N_SAMPLES + 1, 2, replace=False))) for _ in range(20)]
    for a, b in ranges:  # whole and partial chunks, the last (short) chunk included
        got, want = (
            np.full((b - a, *data.shape[1:]), np.nan, np.float32),
            np.empty((b - a, *data.shape[1:]), np.float32),
        )
        fast.read(a, b, got)
        slow.read(a, b, want)
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(got, data[a:b])


# -- reader threads ------------------------------------------------------------------------
def reader_threads_alive() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("simdiff_reader")]


@pytest.mark.parametrize("store_name", ["store2d", "store_k1"])
def test_batches_do_not_depend_on_reader_threads(store_name: str, request: pytest.FixtureRequest) -> None:
    path = request.getfixturevalue(store_name)

    def batches(threads: int, num_workers: int = 0) -> list[dict[str, torch.Tensor]]:
        ds = ChunkedSampleDataset(
            path, "train", batch_size=5, window=3, seed=4, shuffle_buffer_chunks=2, reader_threads=threads
        )
        ds.set_epoch(1)
        return collect(ds, num_workers)

    reference = batches(0)
    assert len(reference) > 3
    for threads, num_workers in ((1, 0), (2, 0), (4, 0), (2, 2)):
        got = batches(threads, num_workers)
        if num_workers:  # processes interleave their contiguous runs of batches: compare as sets
            got = sorted(
                got, key=lambda b: [i for i, r in enumerate(reference) if r["index"].equal(b["index"])]
            )
        assert len(got) == len(reference), threads
        for a, b in zip(reference, got, strict=True):
            assert set(a) == set(b)
            for name in a:
                assert torch.equal(a[name], b[name]), (threads, num_workers, name)
    assert not reader_threads_alive()


def test_early_stop_leaves_no_reader_threads(store_k1: Path, store2d: Path) -> None:
    for path in (store_k1, store2d):
        ds = ChunkedSampleDataset(path, "train", batch_size=2, reader_threads=3)
        for _ in DataLoader(ds, batch_size=None):  # break out of a DataLoader loop
            assert reader_threads_alive()
            break
        assert not reader_threads_alive()
        it = iter(ds)  # a generator closed by hand
        next(it)
        it.close()  # type: ignore[attr-defined]
        assert not reader_threads_alive()
        it = iter(ds)  # a generator dropped unfinished
        next(it)
        del it
        assert not reader_threads_alive()


def test_a_failed_read_raises_and_stops_the_reader_threads(store_k1: Path, tmp_path: Path) -> None:
    broken = tmp_path / "train.zarr"
    shutil.copytree(store_k1, broken)
    chunks = sorted((broken / "data" / "c").rglob("*"), key=lambda p: p.parts)
    chunk = next(p for p in chunks if p.is_file() and p.relative_to(broken / "data" / "c").parts[0] == "5")
    chunk.write_bytes(b"not a blosc frame" * 4)
    ds = ChunkedSampleDataset(broken, "train", batch_size=2, shuffle=False, reader_threads=2)
    with pytest.raises(DataError, match=r"chunk 5 of variable 'data'.*prepare it again"):
        for _ in DataLoader(ds, batch_size=None):
            pass
    assert not reader_threads_alive()


def test_interpreter_exits_with_a_suspended_reader(store_k1: Path) -> None:
    code = (
        "import sys\n"
        "from simdiff.data.loading.loader import ChunkedSampleDataset\n"
        f"it = iter(ChunkedSampleDataset({str(store_k1)!r}, batch_size=2, reader_threads=3))\n"
        "next(it)\n"
        "print('read one batch')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "read one batch" in done.stdout
