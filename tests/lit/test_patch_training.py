"""Training on crops with the real modules: the crops' mask, weights and static fields; whole fields after."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "data" / "loading"))  # the loader tests' store writer
from test_loader import write_test_store

from simdiff.data.loading.datamodule import SimdiffDataModule
from simdiff.data.loading.patch import crop_shared
from simdiff.data.stores.training import TrainingStore
from simdiff.diffusion.denoiser import ConditionalDenoiser
from simdiff.diffusion.samplers import sample_euler
from simdiff.diffusion.sampling import Sampling
from simdiff.lit.autoencoder import AutoencoderModule
from simdiff.lit.diffusion import DiffusionModule
from simdiff.nets.autoencoder import Autoencoder
from simdiff.nets.bottleneck import BoundedBottleneck
from simdiff.nets.conditioning import Conditioner
from simdiff.nets.losses import ReconstructionLoss, masked_mse
from simdiff.nets.unet import UNet


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    """40 samples of two 8x8 variables (x periodic, y bounded, mask False at (0, 0))."""
    return write_test_store(tmp_path_factory.mktemp("patchfit") / "train.zarr")


def fit(module: L.LightningModule, dm: SimdiffDataModule, tmp: Path, **kw) -> L.Trainer:
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        default_root_dir=str(tmp), **{"max_epochs": 2, **kw})
    trainer.fit(module, datamodule=dm)
    return trainer


def normalised(store: TrainingStore) -> torch.Tensor:
    data = np.asarray(store.data[...], dtype=np.float32)
    return torch.from_numpy((data - data.mean((0, 2, 3), keepdims=True)) / data.std((0, 2, 3), keepdims=True))


def test_autoencoder_trained_on_crops_scores_them_with_their_mask_and_runs_whole(store_path, tmp_path):
    store = TrainingStore(store_path)
    torch.manual_seed(0)
    net = Autoencoder(2, store.periodic, latent_channels=2, channels=(8, 8), factors=[[2, 2]],
                      bottleneck=BoundedBottleneck(), groups=4)
    dm = SimdiffDataModule(store_path, batch_size=4, patch=[4, 4], reader_threads=0)
    weights = torch.rand(8, 8) + 0.5
    module = AutoencoderModule(net, ReconstructionLoss(), weights, dm.mask, warmup_steps=2)
    seen: list[tuple[torch.Size, torch.Size, list[bool]]] = []
    loss = module.loss

    def spy(recon, target, w, m, periodic, amounts=None):
        seen.append((w.shape, m.shape, list(periodic)))
        return loss(recon, target, w, m, periodic, amounts)

    module.loss = spy
    trainer = fit(module, dm, tmp_path)
    assert trainer.global_step == 2 * (28 // 4)
    assert seen and all(w[1:] == (4, 4) and m == w for w, m, _ in seen)  # a crop per sample (val: 4 + 2)
    assert all(p == [False, False] for *_, p in seen)  # a crop of the periodic x axis does not wrap

    # the loss of a crop batch uses the crop's own weights and mask (the masked corner only where it lies)
    batch = next(iter(dm.train_dataloader()))
    origin = batch["origin"]
    module.log = lambda *a, **k: None
    module.loss = loss
    with torch.no_grad():
        got = module._step(batch, "val")
        recon = net(batch["target"]).recon
    w = crop_shared(module.weights, origin, (4, 4))
    m = crop_shared(module.mask, origin, (4, 4))
    assert torch.equal(m, torch.stack([~((o[0] == 0) & (torch.arange(4)[:, None] == 0)
                                         & (((o[1] + torch.arange(4)) % 8) == 0)[None, :]) for o in origin]))
    torch.testing.assert_close(got, masked_mse(recon, batch["target"], w, m))

    # fully convolutional: the net trained on 4x4 crops reconstructs whole 8x8 fields
    whole = normalised(store)[:5]
    with torch.no_grad():
        out = net.eval()(whole)
    assert out.recon.shape == whole.shape and out.z.shape == (5, 2, 4, 4)


def test_per_sample_weights_give_the_shared_formula_for_equal_rows():
    x, y = torch.randn(3, 2, 4, 5), torch.randn(3, 2, 4, 5)
    w, m = torch.rand(4, 5), torch.rand(4, 5) > 0.3
    shared = masked_mse(x, y, w, m)
    rows = masked_mse(x, y, w.expand(3, 4, 5), m.expand(3, 4, 5))
    torch.testing.assert_close(rows, shared)
    assert masked_mse(x, y, w.expand(3, 4, 5), torch.zeros(3, 4, 5, dtype=torch.bool)) == 0


def test_diffusion_on_latent_crops_crops_previous_states_and_static_fields_together(store_path, tmp_path):
    store = TrainingStore(store_path)
    static = torch.arange(64, dtype=torch.float32).reshape(1, 8, 8)  # names its cell
    cond = Conditioner(16, 2, previous=1, static=static, time_features=2)
    origin = torch.tensor([[0, 6], [3, 1]])
    prev = torch.randn(2, 1, 2, 4, 4)
    out = cond(2, previous=prev, time_features=torch.zeros(2, 2), origin=origin, size=(4, 4))["spatial"]
    assert out.shape == (2, 3, 4, 4)
    torch.testing.assert_close(out[:, :2], prev[:, 0])
    for b, (oy, ox) in enumerate(origin.tolist()):
        want = np.roll(static[0].numpy(), -ox, axis=1)[oy : oy + 4, :4]
        np.testing.assert_array_equal(out[b, 2].numpy(), want)

    torch.manual_seed(0)
    dm = SimdiffDataModule(store_path, batch_size=4, window=2, patch=[4, 4], reader_threads=0)
    cond = Conditioner(16, 2, previous=1, static=static, time_features=2)
    net = UNet(2, 2, store.periodic, cond_channels=cond.spatial_channels, channels=(8, 16),
               factors=((2, 2),), blocks=1, attention=(False, True), emb_dim=16)
    model = ConditionalDenoiser(net, cond)
    module = DiffusionModule(model, dm.weights, Sampling(sample_euler, steps=3),
                             warmup_steps=2, crps_every=1, crps_members=2,
                             crps_states=2)
    trainer = fit(module, dm, tmp_path, max_epochs=1, limit_train_batches=3, limit_val_batches=1)
    assert trainer.global_step > 0 and torch.isfinite(trainer.callback_metrics["val/crps"])
    # generate runs on whole fields: no origin, the whole static field
    whole = normalised(store)
    batch = {"previous": whole[4:6, None], "time_features": torch.zeros(2, 2)}
    sample = model.sample(batch, (2, 2, 8, 8), sampler=sample_euler, sigmas=torch.tensor([1.0, 0.5, 0.0]),
                          generator=torch.Generator().manual_seed(0))
    assert sample.shape == (2, 2, 8, 8) and torch.isfinite(sample).all()
