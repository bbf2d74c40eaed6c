"""The stage time budget: training stops so that validation, checkpoints and the reserve still fit."""

from __future__ import annotations

import time

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from simdiff.lit.budget import TimeBudget


class Slow(Dataset):
    """Batches whose step takes ``step`` seconds (the module sleeps)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.ones(2, 3)


class Sleeper(L.LightningModule):
    def __init__(self, step: float, val: float) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(3, 1)
        self.step_s, self.val_s = step, val

    def training_step(self, batch, batch_idx):
        time.sleep(self.step_s)
        return self.lin(batch).square().mean()

    def validation_step(self, batch, batch_idx):
        time.sleep(self.val_s)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


@pytest.mark.parametrize("reserve", [0.0, 0.6])
def test_budget_ends_fit_with_room_for_validation_and_the_reserve(tmp_path, reserve):
    """Steps of 0.05 s, 8 per epoch, validation 0.3 s: the budget must hold them all."""
    budget_s = 2.0
    started = time.monotonic()
    budget = TimeBudget({"seconds": budget_s}, started=started, reserve=reserve)
    trainer = L.Trainer(accelerator="cpu", max_epochs=1000, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        callbacks=[budget], default_root_dir=str(tmp_path))
    trainer.fit(Sleeper(0.05, 0.1), DataLoader(Slow(8), batch_size=None),
                DataLoader(Slow(3), batch_size=None))
    wall = time.monotonic() - started
    assert budget.stopped_by_budget
    # Lightning's own timer would stop at 2 s and then validate (0.3 s) and ignore the reserve
    assert budget_s - reserve - 0.6 < wall <= budget_s - reserve + 0.2
    assert trainer.global_step >= 8
    assert budget.pauses[None] >= 0.3  # 3 val batches of 0.1 s
