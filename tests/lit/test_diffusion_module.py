"""DiffusionModule on a real (tiny) QG training store: validation metrics, resume equivalence."""

from __future__ import annotations

import warnings
from pathlib import Path

import lightning as L
import pytest
import torch

from simdiff.data.loading.datamodule import SimdiffDataModule
from simdiff.data.sources.simulators.qg_source import QGSource
from simdiff.data.stores.prepare import PrepareOptions, prepare
from simdiff.diffusion.denoiser import ConditionalDenoiser
from simdiff.diffusion.samplers import sample_euler
from simdiff.diffusion.sampling import Sampling
from simdiff.lit.diffusion import DiffusionModule, load_ema_model, parameter_checksum
from simdiff.nets.conditioning import Conditioner
from simdiff.nets.unet import UNet


@pytest.fixture(scope="module")
def qg_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("dm")
    src = QGSource(nx=16, spinup_days=200, n_snapshots=48, cache_dir=tmp / "cache", progress=False)
    prepare(src, tmp / "run", options=PrepareOptions(progress=False), config={"test": "qg16"})
    return tmp / "run"


def build(run: Path, residual: bool = False,
          condition_noise: float = 0.0) -> tuple[DiffusionModule, SimdiffDataModule]:
    torch.manual_seed(0)
    dm = SimdiffDataModule(run, batch_size=4, window=2, reader_threads=0, seed=0)
    cond = Conditioner(16, 2, previous=1, dropout={"previous": 0.1})
    net = UNet(2, 2, (False, True, True), cond_channels=cond.spatial_channels, channels=(8, 16),
               factors=((2, 2),), blocks=1, attention=(False, True), emb_dim=16)
    scale = torch.tensor([0.5, 0.25]) if residual else None
    model = ConditionalDenoiser(net, cond, residual=residual, residual_scale=scale)
    module = DiffusionModule(model, dm.weights, Sampling(sample_euler, steps=3),
                             warmup_steps=3, cosine=True, ema_decay=0.9,
                             crps_every=1, crps_members=3, crps_states=2, seed=0,
                             condition_noise=condition_noise)
    return module, dm


def trainer(tmp: Path, callbacks: list[L.Callback] | None = None) -> L.Trainer:
    return L.Trainer(accelerator="cpu", devices=1, max_epochs=3, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                     limit_val_batches=2, deterministic=True, default_root_dir=str(tmp),
                     callbacks=callbacks or [])


class Interrupt(Exception):
    """Stands for the job being killed."""


class KillAt(L.Callback):
    """Save a checkpoint as ModelCheckpoint would (on_train_batch_end), then die."""

    def __init__(self, step: int, path: Path) -> None:
        self.step, self.path = step, path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            trainer.save_checkpoint(self.path)
            raise Interrupt


def test_resumed_mid_epoch_run_ends_with_the_same_weights(qg_run: Path, tmp_path: Path) -> None:
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    module, dm = build(qg_run)
    full = trainer(tmp_path / "a")
    full.fit(module, datamodule=dm)
    per_epoch = full.num_training_batches
    assert per_epoch >= 4
    reference = {k: v.clone() for k, v in module.state_dict().items()}

    kill_step = per_epoch + 2  # in the middle of the second epoch
    module, dm = build(qg_run)
    ckpt = tmp_path / "killed.ckpt"
    with pytest.raises(Interrupt):
        trainer(tmp_path / "b", [KillAt(kill_step, ckpt)]).fit(module, datamodule=dm)
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert state["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": 1, "consumed": 2}]

    module, dm = build(qg_run)
    resumed = trainer(tmp_path / "c")
    resumed.fit(module, datamodule=dm, ckpt_path=ckpt)
    assert resumed.global_step == full.global_step
    for k, v in module.state_dict().items():
        torch.testing.assert_close(v, reference[k], rtol=0, atol=0, msg=f"{k} differs after resume")


def test_validation_logs_loss_per_sigma_bin_and_ensemble_scores(qg_run: Path, tmp_path: Path) -> None:
    module, dm = build(qg_run)
    t = trainer(tmp_path)
    t.fit(module, datamodule=dm)
    m = t.callback_metrics
    bins = [k for k in m if k.startswith("val/loss_sigma_")]
    assert len(bins) == 6
    assert torch.isfinite(m["val/crps"]) and m["val/crps"] > 0
    assert torch.isfinite(m["val/spread_skill"]) and m["val/spread_skill"] > 0
    # The loss weighting makes the target unit-variance: a fresh net (D = c_skip x) scores ~1
    # at every level; after training, the mid-range levels must have improved below that.
    assert float(m["val/loss_sigma_0.5_2"]) < 1.0
    assert module.rank_checksums == [parameter_checksum(module.model)]


def test_checkpoint_loads_ema_weights_for_sampling(qg_run: Path, tmp_path: Path) -> None:
    module, dm = build(qg_run, residual=True)
    t = trainer(tmp_path)
    t.fit(module, datamodule=dm)
    path = tmp_path / "m.ckpt"
    t.save_checkpoint(path)
    fresh, _ = build(qg_run, residual=True)
    model = load_ema_model(fresh.model, path, ema_decay=0.9)
    expected = module.ema.backup(module.model)
    module.ema.copy_to(module.model)
    for a, b in zip(model.state_dict().values(), module.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)
    module.ema.restore(module.model, expected)
    # Residual mode: target() and state() invert each other.
    batch = next(iter(dm.val_dataloader()))
    y = model.target(batch["target"], batch)
    torch.testing.assert_close(model.state(y, batch), batch["target"])


def test_non_finite_loss_stops_training_at_its_step(qg_run: Path, tmp_path: Path) -> None:
    from simdiff.base.errors import DataError

    class PoisonAt(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if trainer.global_step == 3:
                batch["target"][0] = float("nan")

    class SaveEachStep(L.Callback):  # as ModelCheckpoint(every_n_train_steps=1) would
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            trainer.save_checkpoint(tmp_path / "last.ckpt")

    module, dm = build(qg_run)
    with pytest.raises(DataError, match=r"train-diffusion: the training loss is nan at step 3 "
                                        r"\(epoch 0, batch 3\)"):
        trainer(tmp_path, [PoisonAt(), SaveEachStep()]).fit(module, datamodule=dm)
    ckpt = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 3
    assert all(torch.isfinite(t).all() for t in ckpt["state_dict"].values() if t.is_floating_point())


def test_condition_noise_perturbs_previous_states_in_training_only(qg_run: Path) -> None:
    noisy, dm = build(qg_run, residual=True, condition_noise=0.3)
    clean, _ = build(qg_run, residual=True)
    clean.load_state_dict(noisy.state_dict())
    prev = torch.zeros(4000, 1, 2, 2, 3)
    g = torch.Generator().manual_seed(1)
    out = noisy._perturb_previous({"previous": prev}, g)["previous"]
    # per channel, noise of std 0.3 x the tendency's std (0.5, 0.25)
    std = out.transpose(0, 2).reshape(2, -1).std(dim=1)
    torch.testing.assert_close(std, torch.tensor([0.15, 0.075]), rtol=0.02, atol=0)
    assert clean._perturb_previous({"previous": prev}, g)["previous"] is prev

    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    # the training loss is the clean module's loss on the perturbed batch, drawn from the same stream
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    loss_noisy, _ = noisy._loss(batch, g1)
    loss_clean, _ = clean._loss(noisy._perturb_previous(batch, g2), g2)
    torch.testing.assert_close(loss_noisy, loss_clean, rtol=0, atol=0)
    loss_unperturbed, _ = clean._loss(batch, torch.Generator().manual_seed(5))
    assert not torch.equal(loss_noisy, loss_unperturbed)
    # validation (drop=False) sees the states unchanged
    v1, _ = noisy._loss(batch, torch.Generator().manual_seed(3), drop=False)
    v2, _ = clean._loss(batch, torch.Generator().manual_seed(3), drop=False)
    torch.testing.assert_close(v1, v2, rtol=0, atol=0)


def test_condition_noise_must_be_non_negative(qg_run: Path) -> None:
    with pytest.raises(ValueError, match="condition_noise"):
        build(qg_run, condition_noise=-0.1)
