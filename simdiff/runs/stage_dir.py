"""A training stage's output folder: claim it for a config, resume it, or skip it when done.

Each training stage writes ``run_dir/<stage>/config.yaml`` first and its final checkpoint last
(atomically). Re-running with the same config resumes from ``checkpoints/last.ckpt``, or does
nothing once the final checkpoint exists; a different config is refused unless ``force``, which
discards the folder (or unless the folder holds no checkpoint yet). Later stages read the
saved config back with :func:`simdiff.runs.models.read_config`, which refuses a network spec
whose ``_target_`` is not in :mod:`simdiff.base.registry`'s allowlist before anything is built.

Under a launcher that starts every rank at once (``srun`` tasks, ``torchrun`` workers) the other
ranks wait for the primary's claim. A folder that already holds this config is not enough: on a
forced redo the primary is about to discard it, and a rank that read it first would skip or
resume the old model. So the primary also writes ``.launch``, the launch's own id
(:func:`launch_token`), once the folder is settled, and the other ranks wait for that id.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import yaml

from simdiff.base.atomic import atomic_file
from simdiff.base.errors import DataError
from simdiff.base.provenance import config_differences, config_yaml
from simdiff.lit.checkpoint import resume_point
from simdiff.runs.completion import is_primary_process, redoing, slurm_step

log = logging.getLogger("simdiff")

CONFIG = "config.yaml"
#: The primary's claim for a launch that starts every rank at once: the launch's id.
LAUNCH = ".launch"


def launch_token() -> str | None:
    """An id every process of a multi-process launch shares and no other launch has, or None.

    ``srun`` of several tasks: the job, the step and the requeue count (a requeued job keeps its
    id); ``torchrun`` of several workers: its rendezvous run id and restart count. Lightning's
    own launcher starts the other ranks after the primary's claim, so it needs none.
    """
    step = slurm_step()
    if step is not None:
        return "slurm:{}.{}.{}".format(*step)
    env = os.environ
    if "TORCHELASTIC_RUN_ID" in env and int(env.get("WORLD_SIZE", "1") or 1) > 1:
        return f"torchrun:{env['TORCHELASTIC_RUN_ID']}.{env.get('TORCHELASTIC_RESTART_COUNT', '0')}"
    return None


def _announce(out: Path) -> None:
    """Tell the other ranks of this launch that ``out`` is settled (nothing to do alone)."""
    token = launch_token()
    if token is not None:
        with atomic_file(out / LAUNCH) as f:
            f.write(token)


def whole_field_identity(plain: dict[str, Any], stage: str) -> dict[str, Any]:
    """Leave the patch keys out of a stage's identity when it trains on whole fields.

    ``plain`` holds the stage's resolved nodes (``stage``, e.g. "autoencoder", and "loader").
    With ``patch: null`` the keys change nothing, so without them a run made before patches
    existed keeps its identity (it is resumed or skipped, not refused).
    """
    if plain[stage].get("patch") is None:
        plain[stage].pop("patch", None)
        plain["loader"].pop("patch", None)
        plain["loader"].pop("val_patch", None)
    return plain


#: Trainer callbacks that only display progress: they change no output.
DISPLAY_CALLBACKS = frozenset({
    "lightning.pytorch.callbacks.RichProgressBar",
    "lightning.pytorch.callbacks.TQDMProgressBar",
    "simdiff.lit.progress.StageProgressBar",
})


def display_free_identity(plain: dict[str, Any]) -> dict[str, Any]:
    """Leave the progress display out of a training stage's identity (``plain["trainer"]``):
    a run trained with one bar is resumed or skipped, not refused, under another."""
    trainer = plain.get("trainer") or {}
    callbacks = trainer.get("callbacks")
    if callbacks:
        trainer["callbacks"] = [c for c in callbacks
                                if not (isinstance(c, dict) and c.get("_target_") in DISPLAY_CALLBACKS)]
    trainer.pop("enable_progress_bar", None)
    return plain


def claim(out: Path, config: dict[str, Any], *, final: str, stage: str, force: bool) -> str | None:
    """Make ``out`` the folder of a run with ``config``.

    Only the primary process (:func:`is_primary_process`) writes or discards anything; the
    others wait (up to a minute) for its ``config.yaml`` and return the same answer.

    Returns:
        None when the stage is already complete with this config (skip it); else the path of
        the checkpoint to resume from, or "" to start afresh.

    Raises:
        DataError: ``out`` holds a run with another config and ``force`` is false.
    """
    saved = out / CONFIG
    if not is_primary_process():
        return _follow(out, config, final)
    if saved.is_file():
        old = yaml.safe_load(saved.read_text())
        started = (out / final).is_file() or any((out / "checkpoints").glob("*.ckpt"))
        # a forced redo of the same config from other inputs (re-encoded latents): nothing to keep
        changed = old != config or (redoing() and started)
        if changed and not started:
            log.info("%s: %s holds no checkpoint yet; starting it with the new config", stage, out)
        elif changed and not force:
            raise DataError(
                f"{out} was trained with a different config or data:\n  "
                + "\n  ".join(config_differences(old or {}, config))
                + "\nPass force=true to retrain from scratch, or use another run_dir"
            )
        elif changed:
            log.info("%s: force=true, discarding %s", stage, out)
            shutil.rmtree(out)
        elif (out / final).is_file():
            log.info("%s: %s is complete with the same config; skipping", stage, out / final)
            _announce(out)
            return None
    out.mkdir(parents=True, exist_ok=True)
    with atomic_file(saved) as f:
        f.write(config_yaml(config))
    _announce(out)
    resume = resume_point(out / "checkpoints", stage=stage)
    if resume is not None:
        log.info("%s: resuming from %s", stage, resume)
        return str(resume)
    if any((out / "checkpoints").glob("*.ckpt.damaged-*")):
        log.warning("%s: no readable checkpoint left in %s; starting over", stage, out / "checkpoints")
    return ""


def _follow(out: Path, config: dict[str, Any], final: str, timeout: float = 60.0) -> str | None:
    """The answer of :func:`claim` for a non-primary process, once the primary has claimed ``out``
    (and, under a launcher that starts every rank at once, announced it for this launch)."""
    saved = out / CONFIG
    token = launch_token()
    deadline = time.monotonic() + timeout
    # read, not tested then read: on a forced redo the primary may delete the folder in between
    while not ((text := _read(saved)) is not None and yaml.safe_load(text) == config
               and (token is None or _read(out / LAUNCH) == token)):
        if time.monotonic() > deadline:
            what = "this run's config" + ("" if token is None else f" and its claim ({LAUNCH}: {token})")
            raise DataError(f"{saved}: the primary process did not write {what} within {timeout:.0f} s; "
                            "check its log")
        time.sleep(0.5)
    if (out / final).is_file():
        return None
    resume = resume_point(out / "checkpoints", stage="", primary=False)
    return "" if resume is None else str(resume)


def _read(path: Path) -> str | None:
    """A small text file's content, or None while it does not exist."""
    try:
        return path.read_text()
    except FileNotFoundError:
        return None
