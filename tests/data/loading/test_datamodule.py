"""SimdiffDataModule: shapes and geometry for models, loaders, epoch wiring under a real Trainer."""

from __future__ import annotations

import warnings
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from test_loader import BLOCK, SPLIT, write_test_store

from simdiff.data.loading.datamodule import SimdiffDataModule
from simdiff.data.loading.loader import window_targets

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("run")
    (run / "data").mkdir()
    write_test_store(run / "data" / "train.zarr")
    return run


@pytest.fixture(scope="module")
def store3d(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_test_store(tmp_path_factory.mktemp("dm3d") / "train.zarr", depth=3)


def test_properties_describe_the_store(run_dir: Path, store3d: Path) -> None:
    dm = SimdiffDataModule(run_dir, batch_size=4, num_workers=0)  # a run_dir resolves to its store
    assert dm.path == run_dir / "data" / "train.zarr"
    assert dm.n_channels == 2 and dm.channels == ["a", "b"]
    assert dm.spatial_shape == (8, 8) and not dm.has_depth
    assert dm.geometry.dims == ("y", "x") and dm.geometry.is_periodic("x")
    assert dm.mask.dtype == torch.bool and dm.mask.shape == (8, 8) and not dm.mask[0, 0]
    assert int(dm.mask.sum()) == 63
    assert dm.weights.dtype == torch.float32 and dm.weights.shape == (8, 8)
    assert dm.condition_sizes == {"time_features": 2, "covariates": 1, "label": 3}
    assert dm.pin_memory == torch.cuda.is_available()
    dm3 = SimdiffDataModule(store3d, num_workers=0)
    assert dm3.has_depth and dm3.spatial_shape == (3, 8, 8) and dm3.geometry.dims == ("level", "y", "x")


def test_loaders_serve_their_splits(run_dir: Path) -> None:
    dm = SimdiffDataModule(run_dir, batch_size=4, num_workers=0, window=2)
    dm.setup("fit")
    for split, code, loader in ((("val", 1, dm.val_dataloader())), ("test", 2, dm.test_dataloader())):
        got = np.concatenate([b["index"].numpy() for b in loader])
        assert np.array_equal(got, window_targets(SPLIT, BLOCK, code, 2)), split  # unshuffled
    batch = next(iter(dm.train_dataloader()))
    assert batch["target"].shape == (4, 2, 8, 8) and batch["previous"].shape == (4, 1, 2, 8, 8)


def test_each_iteration_is_a_new_epoch_without_a_trainer(run_dir: Path) -> None:
    dm = SimdiffDataModule(run_dir, batch_size=4, num_workers=1, persistent_workers=True, seed=7)
    loader = dm.train_dataloader()
    first = np.concatenate([b["index"].numpy() for b in loader])
    second = np.concatenate([b["index"].numpy() for b in loader])
    assert dm.datasets["train"].epoch == 1
    assert not np.array_equal(first, second)
    assert np.array_equal(np.sort(first), np.sort(second))
    del loader, dm  # stop the persistent worker now, not while the test process is torn down


class Recorder(L.LightningModule):
    """A real (tiny) model that records which samples each training epoch saw."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Conv2d(2, 2, 1)
        self.seen: dict[int, list[int]] = {}

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        self.seen.setdefault(self.current_epoch, []).extend(batch["index"].tolist())
        return torch.nn.functional.mse_loss(self.net(batch["previous"][:, -1]), batch["target"])

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        loss = torch.nn.functional.mse_loss(self.net(batch["previous"][:, -1]), batch["target"])
        self.log("val_loss", loss)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=1e-3)


def test_trainer_epochs_see_every_window_once_in_a_new_order(run_dir: Path, tmp_path: Path) -> None:
    dm = SimdiffDataModule(run_dir, batch_size=4, num_workers=0, window=2, seed=3)
    model = Recorder()
    trainer = L.Trainer(
        max_epochs=3,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        # our __len__ is exact for any num_workers: batches are cut per rank, then split
        warnings.filterwarnings("ignore", message=".*`__len__` could be inaccurate.*")
        # raised inside Lightning's own pytree helper, not by this code
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
        trainer.fit(model, datamodule=dm)
    targets = window_targets(SPLIT, BLOCK, 0, 2)  # 26 targets: 6 full batches, 2 dropped
    orders = [np.array(model.seen[e]) for e in range(3)]
    for epoch, order in enumerate(orders):
        assert len(order) == 24 and len(np.unique(order)) == 24
        assert set(order) <= set(targets)
        dm.datasets["train"].set_epoch(epoch)
        assert np.array_equal(order, np.concatenate(dm.datasets["train"].plan()))
    assert not np.array_equal(orders[0], orders[1]) and not np.array_equal(orders[1], orders[2])


def test_config_node_instantiates_the_datamodule(run_dir: Path) -> None:
    cfg = OmegaConf.create(
        {
            "run_dir": str(run_dir),
            "seed": 5,
            "loader": OmegaConf.load(REPO / "conf" / "loader" / "default.yaml"),
            "debug": OmegaConf.load(REPO / "conf" / "debug" / "tiny.yaml")["debug"],
        }
    )
    dm = instantiate(cfg.loader)
    assert isinstance(dm, SimdiffDataModule)
    assert dm.path == run_dir / "data" / "train.zarr"
    assert dm.batch_size == 4 and dm.num_workers == 0 and dm.seed == 5
    assert dm.reader_threads == 2 and SimdiffDataModule(run_dir).num_workers == 0  # threads by default


def test_a_batch_larger_than_the_train_split_trains_on_what_it_has(run_dir: Path, caplog) -> None:
    n_train = len(window_targets(SPLIT, BLOCK, 0, 1))
    dm = SimdiffDataModule(run_dir, batch_size=n_train + 5, num_workers=0)
    with caplog.at_level("WARNING", logger="simdiff"):
        dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert len(batches) == 1 and batches[0]["target"].shape[0] == n_train  # never zero batches
    assert f"fewer than the batch size {n_train + 5}" in caplog.text
