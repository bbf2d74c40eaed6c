"""A non-finite loss stops training at its step; no checkpoint is written with non-finite weights."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, Dataset

from simdiff.base.errors import DataError
from simdiff.lit.autoencoder import AutoencoderModule
from simdiff.nets.autoencoder import Autoencoder
from simdiff.nets.losses import ReconstructionLoss


class Smooth(Dataset):
    """A fresh smooth (4, 2, 8, 16) batch per index."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        x = torch.linspace(0, 2 * torch.pi, 17)[:-1]
        return {"target": torch.sin(x + i)[None, None, None].expand(4, 2, 8, 16).clone()}


class PoisonAt(L.Callback):
    """Puts a NaN into the batch of global step ``step`` (bad data reaching the loss)."""

    def __init__(self, step: int, value: float = float("nan")) -> None:
        self.step, self.value = step, value

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            batch["target"][0, 0, 0, 0] = self.value


def module() -> AutoencoderModule:
    torch.manual_seed(0)
    net = Autoencoder(2, (False, True), latent_channels=2, channels=(8, 16), factors=[[2, 2]], groups=4)
    mask = torch.ones(8, 16, dtype=torch.bool)
    return AutoencoderModule(net, ReconstructionLoss(), torch.ones(8, 16), mask, warmup_steps=1,
                             ema_decay=0.9)  # the default optimiser: AdamW, lr 1e-3


def fit(tmp_path, callbacks) -> AutoencoderModule:
    m = module()
    last = ModelCheckpoint(dirpath=tmp_path, filename="last", every_n_train_steps=1, save_top_k=1,
                           enable_version_counter=False)
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                        default_root_dir=tmp_path, callbacks=[*callbacks, last])
    trainer.fit(m, train_dataloaders=DataLoader(Smooth(), batch_size=None))
    return m


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_loss_stops_at_its_step_and_keeps_the_last_good_checkpoint(tmp_path, value):
    with pytest.raises(DataError, match=r"train-autoencoder: the training loss is (nan|inf) at step 5 "
                                        r"\(epoch 0, batch 5\).*last.ckpt keeps the last good weights"):
        fit(tmp_path, [PoisonAt(5, value)])
    ckpt = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 5  # written after step 5, before the poisoned batch
    assert all(torch.isfinite(t).all() for t in ckpt["state_dict"].values() if t.is_floating_point())


def test_a_clean_run_is_untouched(tmp_path):
    m = fit(tmp_path, [])
    assert m.global_step == 16


def test_no_checkpoint_with_non_finite_weights(tmp_path):
    m = module()
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path,
                        limit_train_batches=1, limit_val_batches=0)
    trainer.fit(m, train_dataloaders=DataLoader(Smooth(), batch_size=None))
    trainer.save_checkpoint(tmp_path / "ok.ckpt")
    with torch.no_grad():
        m.net.encoder.stem.conv.weight[0] = float("nan")
    with pytest.raises(DataError, match=r"weight net.encoder.stem.conv.weight is not finite at step 1"):
        trainer.save_checkpoint(tmp_path / "bad.ckpt")
    assert not (tmp_path / "bad.ckpt").exists()
