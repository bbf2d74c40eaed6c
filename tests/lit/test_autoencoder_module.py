"""The LightningModule in a real Trainer: it learns, keeps an EMA, and checkpoints load weights-only."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from simdiff.lit.autoencoder import AutoencoderModule, load_ema_weights
from simdiff.lit.optim import adamw
from simdiff.nets.autoencoder import Autoencoder
from simdiff.nets.bottleneck import BoundedBottleneck, KLBottleneck
from simdiff.nets.losses import ReconstructionLoss


class Fixed(Dataset):
    """The same smooth batch over and over: (B, C, Y, X) fields with a masked corner."""

    def __init__(self, n: int) -> None:
        lon = torch.linspace(0, 2 * torch.pi, 17)[:-1]
        y, x = torch.meshgrid(torch.linspace(0, 3, 8), lon, indexing="ij")
        self.batch = {"target": torch.stack([torch.sin(x + p) * torch.cos(y) for p in (0.0, 1.0)])[None]
                      .expand(4, 2, 8, 16).clone()}
        self.batch["target"][..., :2, :2] = 0.0
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.batch


@pytest.mark.parametrize("bottleneck", [BoundedBottleneck(), KLBottleneck(weight=1e-4)])
def test_module_learns_and_checkpoints_weights_only(tmp_path, bottleneck):
    torch.manual_seed(0)
    net = Autoencoder(2, (False, True), latent_channels=2, channels=(8, 16), factors=[[2, 2]],
                      bottleneck=bottleneck, groups=4)
    mask = torch.ones(8, 16, dtype=torch.bool)
    mask[:2, :2] = False
    module = AutoencoderModule(net, ReconstructionLoss(spectral_weight=0.1), torch.rand(8, 16) + 0.5, mask,
                               optimizer=adamw(lr=3e-3), warmup_steps=2, ema_decay=0.9,
                               signature={"variables": ["a", "b"], "spatial_shape": [8, 16]})
    loader = DataLoader(Fixed(25), batch_size=None)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_checkpointing=False, enable_model_summary=False, default_root_dir=tmp_path)
    batch = Fixed(1).batch["target"]
    with torch.no_grad():
        before = module.loss(net.eval()(batch).recon, batch, module.weights, mask, net.periodic)["mse"]
    net.train()
    trainer.fit(module, train_dataloaders=loader, val_dataloaders=DataLoader(Fixed(2), batch_size=None))
    assert int(module.ema.num_updates) == 25
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=True)  # tensors and primitives only
    assert ckpt["hyper_parameters"]["signature"]["variables"] == ["a", "b"]
    assert ckpt["hyper_parameters"]["optimizer"] == {"class": "torch.optim.adamw.AdamW", "lr": 3e-3,
                                                     "weight_decay": 0.0}
    fresh = Autoencoder(2, (False, True), latent_channels=2, channels=(8, 16), factors=[[2, 2]],
                        bottleneck=bottleneck, groups=4)
    ema_net = load_ema_weights(fresh, path, 0.9)
    with torch.no_grad():
        after = module.loss(ema_net(batch).recon, batch, module.weights, mask, net.periodic)["mse"]
    assert after < 0.5 * before
    # The module's weights stay the trained ones (validation swapped the EMA in and back out).
    assert not torch.equal(module.net.encoder.stem.conv.weight, ema_net.encoder.stem.conv.weight)
