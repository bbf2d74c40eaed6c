"""Per-label standardisation of the diffused state (diffusion.standardise_by_label): the statistics
of a labelled store, the denoiser's round trip, and the refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr
from torch import nn

from simdiff.base.errors import DataError
from simdiff.base.provenance import provenance
from simdiff.data.field import Field
from simdiff.data.geometry import Geometry
from simdiff.data.stores.prepare import PrepareOptions, write_training_store
from simdiff.data.stores.training import TrainingStore
from simdiff.diffusion.denoiser import ConditionalDenoiser
from simdiff.nets.conditioning import Conditioner
from simdiff.runs.models import check_label_standardisation, label_standardisation

H, W = 4, 5


def labelled_store(tmp_path, n: int = 60, labels: int = 3, absent: int | None = None) -> TrainingStore:
    """Two variables; class ``l`` has its own mean field and an amplitude ``1 + 3 l`` (class 2 is
    seven times class 0); ``absent``: a class given to the last sample only (test split)."""
    rng = np.random.default_rng(0)
    label = np.arange(n) % labels
    if absent is not None:
        label[label == absent] = 0
        label[-1] = absent
    means = rng.standard_normal((labels, 2, H, W))
    amp = 1.0 + 3.0 * np.arange(labels)
    x = means[label] + amp[label, None, None, None] * rng.standard_normal((n, 2, H, W))
    ds = xr.Dataset({v: (("time", "y", "x"), x[:, k].astype(np.float32), {"units": "1"})
                     for k, v in enumerate(("a", "b"))},
                    coords={"time": np.arange(n), "y": np.arange(H) * 1.0, "x": np.arange(W) * 1.0})
    geometry = Geometry(dims=("y", "x"), periodic=frozenset(),
                        weights=xr.DataArray(np.ones((H, W)), dims=("y", "x")),
                        mask=xr.DataArray(np.ones((H, W), bool), dims=("y", "x")))
    conditions = xr.Dataset({"label": ("time", label, {"label_names": [f"c{k}" for k in range(labels)]})})
    path = tmp_path / "train.zarr"
    write_training_store(Field(ds, geometry, conditions), path, transforms={},
                         options=PrepareOptions(progress=False), provenance=provenance([], {"data": {}}))
    return TrainingStore(path)


def test_the_statistics_are_each_labels_train_mean_and_std(tmp_path):
    store = labelled_store(tmp_path)
    shift, scale = label_standardisation(store)
    assert shift.shape == (3, 2, H, W) and scale.shape == (3, 2)
    x = np.asarray(store.data[:], dtype=np.float64)
    label, train = store.array("label"), store.split == 0
    for lab in range(3):
        xl = x[train & (label == lab)]
        m = xl.mean(axis=0)
        np.testing.assert_allclose(shift[lab].numpy(), m, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(scale[lab].numpy(), (xl - m).std(axis=(0, 2, 3)), rtol=1e-5)
    # the planted amplitudes 1 : 4 : 7 come back, in the store's normalised units
    ratio = (scale[:, 0] / scale[0, 0]).numpy()
    np.testing.assert_allclose(ratio, [1.0, 4.0, 7.0], rtol=0.2)


def test_a_label_without_train_samples_keeps_the_store_standardisation(tmp_path, caplog):
    store = labelled_store(tmp_path, absent=2)
    assert store.split[-1] != 0 and not np.any(store.array("label")[store.split == 0] == 2)
    with caplog.at_level("WARNING", logger="simdiff"):
        shift, scale = label_standardisation(store)
    assert "labels [2]" in caplog.text
    assert torch.all(shift[2] == 0) and torch.all(scale[2] == 1)
    assert torch.all(scale[0] != 1)


class Zero(nn.Module):
    def forward(self, x, c_noise, spatial=None, vector=None):
        return torch.zeros_like(x)


def test_the_denoiser_diffuses_each_row_in_its_labels_units_and_maps_back():
    gen = torch.Generator().manual_seed(0)
    shift, scale = torch.randn(3, 2, H, W, generator=gen), torch.tensor([[1.0, 2.0], [4.0, 0.5], [7.0, 3.0]])
    model = ConditionalDenoiser(Zero(), Conditioner(8, 2, labels=3), label_stats=(shift, scale))
    x, label = torch.randn(4, 2, H, W, generator=gen), torch.tensor([2, 0, 1, 2])
    batch = {"label": label}
    y = model.target(x, batch)
    torch.testing.assert_close(y, (x - shift[label]) / scale[label][:, :, None, None])
    torch.testing.assert_close(model.state(y, batch), x)
    # a draw of the diffused variable comes back in each row's own units
    def ones(denoise, y, sigmas, generator=None):
        return torch.ones_like(y)

    out = model.sample(batch, (4, 2, H, W), sampler=ones, sigmas=torch.tensor([2.0, 0.0]), generator=gen)
    torch.testing.assert_close(out, shift[label] + scale[label][:, :, None, None])
    with pytest.raises(ValueError, match="needs the batch's label"):
        model.target(x, {})
    with pytest.raises(ValueError, match="whole fields"):
        model.target(x[..., :3], batch)
    with pytest.raises(ValueError, match="one or the other"):
        ConditionalDenoiser(Zero(), Conditioner(8, 2, previous=1, labels=3), residual=True,
                            residual_scale=torch.ones(2), label_stats=(shift, scale))
    with pytest.raises(ValueError, match="label_stats shapes"):
        ConditionalDenoiser(Zero(), Conditioner(8, 3, labels=3), label_stats=(shift, scale))


def test_the_stage_refuses_what_it_cannot_standardise(tmp_path):
    store = labelled_store(tmp_path)
    ok = {"conditioning": {"label": True}, "residual": False, "patch": None}
    check_label_standardisation(store, ok)
    with pytest.raises(DataError, match=r"conditioning.label is false.*residual is true.*patch=\[2, 2\]"):
        check_label_standardisation(store, {"conditioning": {"label": False}, "residual": True,
                                            "patch": [2, 2]})
