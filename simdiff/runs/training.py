"""What a run keeps when a training stage's fit ends: the summary, the final checkpoint."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from simdiff.base.atomic import write_json
from simdiff.runs.autoencoder import publish_checkpoint
from simdiff.runs.layout import RunDir

log = logging.getLogger("simdiff")


def finish_diffusion(run: RunDir, trainer: Any, module: Any, best: Any, last: Any, *, dm_cfg: dict[str, Any],
                     wall: float, started: float, budget: Any, patch: list[int] | None) -> dict[str, Any]:
    """Rank 0 after ``trainer.fit``: write ``train_summary.json`` and publish ``diffusion.ckpt``.

    The summary holds steps, epochs, wall time, samples/s, the world size and each rank's weight
    checksum; ranks that ended with different weights stop the stage (a DDP bug, never published).
    The final checkpoint is the best one (lowest EMA validation loss), else the last.
    """
    steps = int(trainer.global_step) - module.start_step
    samples = steps * int(dm_cfg["batch_size"]) * int(dm_cfg["accumulate_grad_batches"]) * trainer.world_size
    checksums = list(module.rank_checksums)
    summary = {
        "epochs": int(trainer.current_epoch),
        "global_step": int(trainer.global_step),
        "steps_this_run": steps,
        "wall_s": round(wall, 2),
        "stage_wall_s": round(time.monotonic() - started, 2),
        "budget": dm_cfg["max_time"],
        "stopped_by_budget": budget.stopped_by_budget,
        "patch": None if patch is None else list(patch),
        "samples_per_s": round(samples / wall, 2) if wall > 0 else None,
        "parameters": sum(p.numel() for p in module.model.parameters()),
        "world_size": int(trainer.world_size),
        "rank_checksums": checksums,
        "ranks_identical": len(set(checksums)) == 1,
        "best_val_loss": None if best.best_model_score is None else float(best.best_model_score),
    }
    if not summary["ranks_identical"]:
        raise RuntimeError(f"train-diffusion: DDP ranks ended with different weights: {checksums}")
    write_json(summary, run.train_summary)
    ckpt_dir = run.checkpoints("diffusion")
    chosen = Path(best.best_model_path or last.last_model_path or ckpt_dir / "last.ckpt")
    if not chosen.is_file():
        chosen = ckpt_dir / "last.ckpt"
        trainer.save_checkpoint(chosen)
    publish_checkpoint(chosen, run.final("diffusion"))
    log.info("train-diffusion: wrote %s (from %s); %.1f samples/s", run.final("diffusion"), chosen.name,
             summary["samples_per_s"] or 0.0)
    return summary
