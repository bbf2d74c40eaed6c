"""Reading a checkpoint back: tensors and plain values only, or one clear DataError naming the file.

Every checkpoint simdiff reads goes through :func:`load_checkpoint` (or, for Lightning's own
resume, is checked by it first), so a file that holds pickled objects is refused without
running anything, and the user is told what to do instead of being advised to turn
``weights_only`` off.
"""

from __future__ import annotations

import logging
import os
import pickle
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from simdiff.base.errors import DataError

log = logging.getLogger("simdiff")

#: The checkpoints a training stage resumes from, newest first: ``last.ckpt`` (every
#: ``checkpoint_every_n_steps`` steps and every epoch), then ``best.ckpt`` (a whole training
#: state too, at the end of the best epoch so far).
RESUME_ORDER = ("last.ckpt", "best.ckpt")

#: Lines of torch's message that advise loading with ``weights_only=False``: never our advice.
_ADVICE = ("weights_only", "Weights only load failed", "trusted source", "Check the documentation",
           "torch.serialization", "safe_globals")


def _reason(err: BaseException) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    kept = [ln for ln in lines if not any(a in ln for a in _ADVICE)]
    return "; ".join(kept) or type(err).__name__


def load_checkpoint(path: str | Path, *, stage: str = "the stage that wrote it") -> dict[str, Any]:
    """The contents of checkpoint ``path``, loaded with ``torch.load(weights_only=True)`` on the CPU.

    Raises:
        DataError: the file is missing, not a torch checkpoint, truncated, or holds objects
            other than tensors and plain values (a pickled class or function: refused unrun).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no checkpoint here; run `simdiff {stage}` first")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any failure to read the file is bad input, said once
        raise DataError(
            f"{path}: not a checkpoint simdiff can read safely ({type(err).__name__}: {_reason(err)}). "
            "simdiff checkpoints hold tensors and plain values only; this file is foreign, truncated "
            f"or was edited, and nothing in it was run. Fix: re-run `simdiff {stage}` with force=true "
            "to write it again"
        ) from err
    if not isinstance(state, dict) or not isinstance(state.get("state_dict"), dict):
        raise DataError(f"{path}: not a Lightning checkpoint (no state_dict); re-run `simdiff {stage}` "
                        "with force=true to write it again")
    return state


def damaged(path: str | Path) -> str | None:
    """Why ``path`` cannot be read as a checkpoint at all (cut short, not a torch file), or None.

    A file that reads but holds pickled objects is not "damaged": it is refused, unrun, by
    :func:`load_checkpoint` with its own message, and never moved aside.
    """
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        return None
    except Exception as err:
        return f"{type(err).__name__}: {_reason(err)}"
    return None


def resume_point(ckpt_dir: str | Path, *, stage: str, primary: bool = True) -> Path | None:
    """The newest checkpoint of ``ckpt_dir`` a training stage can resume from (``RESUME_ORDER``).

    A kill while Lightning writes ``last.ckpt`` leaves it cut short, and every later resume
    would stop on it. The primary process moves such a file aside (``NAME.damaged-TIME``, kept
    for a post-mortem), says so, and takes the next one; with none left the stage starts over.
    Other processes skip damaged files the same way without moving anything, so every rank
    resumes from the same file.
    """
    ckpt_dir = Path(ckpt_dir)
    for name in RESUME_ORDER:
        path = ckpt_dir / name
        if not path.is_file():
            continue
        reason = damaged(path)
        if reason is None:
            return path
        if primary:
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
            aside = path.with_name(f"{name}.damaged-{stamp}")
            os.replace(path, aside)
            log.warning("%s: %s is damaged (%s); moved it aside to %s", stage, path, reason, aside.name)
    return None
