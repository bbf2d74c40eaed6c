"""Training on crops: geometry-aware origins, exact wrapping, reproducible and resumable crops."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_loader import write_test_store

from simdiff.base.errors import DataError
from simdiff.data.loading.datamodule import SimdiffDataModule
from simdiff.data.loading.loader import ChunkedSampleDataset
from simdiff.data.loading.patch import check_patch, crop, crop_shared, full_patch, patch_origins
from simdiff.data.stores.training import TrainingStore


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    """40 samples of two 8x8 variables (x periodic, y bounded, mask False at (0, 0))."""
    return write_test_store(tmp_path_factory.mktemp("patch") / "train.zarr")


def numpy_crop(field: np.ndarray, origin, patch, periodic) -> np.ndarray:
    """The reference: roll periodic axes so the crop starts at 0, slice bounded ones."""
    nd = len(patch)
    out = field
    origin = [int(v) for v in origin]
    for a, (o, p, wrap) in enumerate(zip(origin, patch, periodic, strict=True)):
        axis = field.ndim - nd + a
        if wrap:
            out = np.roll(out, -o, axis=axis)
            o = 0
        assert 0 <= o and o + p <= out.shape[axis], "a bounded crop must lie inside"
        out = np.take(out, np.arange(o, o + p), axis=axis)
    return out


def test_origins_wrap_periodic_axes_and_stay_inside_bounded_ones():
    rng = np.random.default_rng(0)
    o = patch_origins(rng, 4000, (3, 10, 12), (3, 4, 5), (False, False, True))
    assert o.shape == (4000, 3) and o.dtype == np.int64
    assert (o[:, 0] == 0).all()  # spanned whole
    assert set(o[:, 1].tolist()) == set(range(10 - 4 + 1))  # every inside origin, none past it
    assert set(o[:, 2].tolist()) == set(range(12))  # any cell: the crop may cross the seam


def test_crop_of_a_periodic_field_is_np_roll_exactly():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 2, 3, 9, 16)).astype(np.float32)  # (B, C, D, Y, X)
    patch, periodic = (3, 4, 8), (False, False, True)
    origin = patch_origins(rng, 5, x.shape[2:], patch, periodic)
    origin[0, 2] = 13  # crosses the seam: cells 13, 14, 15, 0, 1, 2, 3, 4
    got = crop(torch.from_numpy(x), torch.from_numpy(origin), patch).numpy()
    assert got.shape == (5, 2, 3, 4, 8)
    for b in range(5):
        np.testing.assert_array_equal(got[b], numpy_crop(x[b], origin[b], patch, periodic))
    np.testing.assert_array_equal(got[0, ..., :3], x[0][..., origin[0, 1]:origin[0, 1] + 4, 13:16])
    np.testing.assert_array_equal(got[0, ..., 3:], x[0][..., origin[0, 1]:origin[0, 1] + 4, 0:5])


def test_shared_fields_are_cropped_per_row():
    field = torch.arange(6 * 8, dtype=torch.float32).reshape(6, 8)
    origin = torch.tensor([[0, 6], [2, 1]])
    got = crop_shared(field, origin, (4, 4))
    assert got.shape == (2, 4, 4)
    np.testing.assert_array_equal(got[0].numpy(), np.roll(field.numpy(), -6, axis=1)[0:4, 0:4])
    np.testing.assert_array_equal(got[1].numpy(), field.numpy()[2:6, 1:5])
    assert crop_shared(field, None, (4, 4)) is field  # whole fields: untouched


def test_loader_crops_targets_previous_states_mask_and_weights_at_one_origin(store_path):
    store = TrainingStore(store_path)
    data = np.asarray(store.data[...])  # (S, C, Y, X); x periodic
    assert store.periodic == (False, True)
    ds = ChunkedSampleDataset(store_path, "train", batch_size=5, window=2, seed=3, patch=[4, 5],
                              shuffle_buffer_chunks=2)
    crossed = 0
    for batch in ds:
        assert batch["target"].shape[1:] == (2, 4, 5) and batch["previous"].shape[2:] == (2, 4, 5)
        for t, o, tgt, prev in zip(batch["index"], batch["origin"], batch["target"], batch["previous"],
                                   strict=True):
            oy, ox = o.tolist()
            assert 0 <= oy <= 4 and 0 <= ox < 8
            crossed += ox + 5 > 8
            np.testing.assert_array_equal(tgt.numpy(), numpy_crop(data[t], o, (4, 5), (False, True)))
            np.testing.assert_array_equal(prev[0].numpy(), numpy_crop(data[t - 1], o, (4, 5), (False, True)))
    assert crossed > 0  # some crops cross the seam of the periodic axis
    # the mask and weights a module crops from the batch's origins are the crops' own
    mask = torch.from_numpy(store.array("mask"))
    got = crop_shared(mask, batch["origin"], (4, 5))
    for row, o in zip(got, batch["origin"], strict=True):
        np.testing.assert_array_equal(row.numpy(), numpy_crop(mask.numpy(), o, (4, 5), (False, True)))


def _epoch(ds: ChunkedSampleDataset, epoch: int, skip: int = 0) -> list[dict[str, torch.Tensor]]:
    ds.set_epoch(epoch)
    ds.set_skip(skip)
    return [{k: v.clone() for k, v in b.items()} for b in ds]


def test_same_seed_same_crops_whatever_the_threads_and_the_resume_skip(store_path):
    kw = dict(batch_size=4, seed=11, patch=[4, 4], shuffle_buffer_chunks=2)
    a = _epoch(ChunkedSampleDataset(store_path, "train", reader_threads=0, **kw), 1)
    b = _epoch(ChunkedSampleDataset(store_path, "train", reader_threads=2, **kw), 1)
    resumed = _epoch(ChunkedSampleDataset(store_path, "train", reader_threads=2, **kw), 1, skip=3)
    assert len(a) == len(b) == len(resumed) + 3
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            torch.testing.assert_close(x[k], y[k], rtol=0, atol=0)
    for x, y in zip(a[3:], resumed, strict=True):  # a resumed epoch sees exactly the batches left
        for k in x:
            torch.testing.assert_close(x[k], y[k], rtol=0, atol=0)
    # the crops change with the epoch, the order of samples is the one without patches
    other = _epoch(ChunkedSampleDataset(store_path, "train", **kw), 2)
    assert not all(torch.equal(x["origin"], y["origin"]) for x, y in zip(a, other, strict=True))
    whole = _epoch(ChunkedSampleDataset(store_path, "train", **{**kw, "patch": None}), 1)
    assert [x["index"].tolist() for x in whole] == [x["index"].tolist() for x in a]
    assert "origin" not in whole[0]


def test_validation_crops_are_fixed_across_epochs(store_path):
    dm = SimdiffDataModule(store_path, batch_size=3, patch=[4, 4], seed=5)
    dm.setup()
    val = dm.datasets["val"]
    e0, e5 = _epoch(val, 0), _epoch(val, 5)
    assert torch.equal(torch.cat([b["origin"] for b in e0]), torch.cat([b["origin"] for b in e5]))
    assert torch.equal(torch.cat([b["target"] for b in e0]), torch.cat([b["target"] for b in e5]))
    assert dm.datasets["train"].patch == (4, 4) and not dm.datasets["train"].fixed_patches
    whole = SimdiffDataModule(store_path, batch_size=3, patch=[4, 4], val_patch=False)
    whole.setup()
    assert whole.datasets["val"].patch is None and whole.datasets["train"].patch == (4, 4)


def test_patch_config_errors_name_the_key_the_value_and_the_fix():
    assert check_patch(None, (64, 64), (4, 4), "autoencoder.patch") is None
    assert check_patch([32, 16], (2, 64, 64), (1, 4, 4), "autoencoder.patch") == (2, 32, 16)
    assert check_patch([89, 32], (89, 180), (8, 4), "autoencoder.patch") == (89, 32)  # whole axis: padded
    with pytest.raises(DataError, match=r"autoencoder.patch=\[30, 32\].*multiple of .* 4.*use 28 or 32"):
        check_patch([30, 32], (64, 64), (4, 4), "autoencoder.patch")
    with pytest.raises(DataError, match=r"diffusion.patch=\[128, 16\].*outside 1..64"):
        check_patch([128, 16], (64, 64), (4, 4), "diffusion.patch")
    with pytest.raises(DataError, match=r"autoencoder.patch=\[1, 2, 3, 4\].*1..3 integer sizes"):
        check_patch([1, 2, 3, 4], (2, 64, 64), (1, 4, 4), "autoencoder.patch")
    assert full_patch([8], (3, 16, 32)) == (3, 16, 8)
