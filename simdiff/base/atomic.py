"""Files that appear complete or not at all: write beside the target, then rename."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


@contextmanager
def atomic_file(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success fsync and rename it onto ``path``.

    On any exception the temporary file is removed and ``path`` is left as it was, so a
    reader never sees a half-written file.

    Args:
        path: the final file; its folder is created if needed.
        mode: ``"w"`` (text, UTF-8) or ``"wb"``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(obj: Any, path: str | Path, *, allow_nan: bool = False) -> Path:
    """Write ``obj`` as indented JSON atomically; NaN/inf are refused unless ``allow_nan``."""
    text = json.dumps(obj, indent=2, allow_nan=allow_nan) + "\n"
    with atomic_file(path) as fh:
        fh.write(text)
    return Path(path)


@contextmanager
def exclusive(path: str | Path) -> Iterator[Path]:
    """Hold an exclusive lock on the file ``path`` (created if missing) across processes.

    ``flock`` on a file beside a cache: a second process that wants to build the same cached
    data waits here, then finds it built. The kernel drops the lock when its process dies, so a
    killed job never leaves a stale lock behind.
    """
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield path
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# Scratch beside an output: ``.NAME.tmp-XXXX`` (being written) and ``.NAME.old-XXXX`` (the
# previous version, moved aside while the new one is renamed in). A process killed between
# creating one and renaming or deleting it leaves it behind; the next run of the stage that owns
# ``NAME`` (holding its lock, so no writer of it is alive) removes it with :func:`sweep_scratch`.
SCRATCH_KINDS = ("tmp", "old")


def scratch_dir(path: str | Path, kind: str = "tmp") -> Path:
    """A new empty folder beside ``path`` for writing (``kind="tmp"``) or moving aside (``"old"``)."""
    if kind not in SCRATCH_KINDS:
        raise ValueError(f"scratch kind {kind!r}: one of {SCRATCH_KINDS}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{path.name}.{kind}-", dir=path.parent))


def sweep_scratch(path: str | Path) -> list[Path]:
    """Remove what killed writers of ``path`` left beside it; returns what was removed.

    That is the scratch folders of :func:`scratch_dir` and the temporary files of
    :func:`atomic_file` (``.NAME.XXXX.tmp``). Call it only while no other process writes
    ``path`` (under the lock of the stage that owns it).
    """
    path = Path(path)
    if not path.parent.is_dir():
        return []
    candidates = path.parent.glob(f".{path.name}.*")
    return _remove(sorted(p for p in candidates if scratch_owner(p.name) == path.name))


def sweep_owned(folder: str | Path) -> list[Path]:
    """Remove every scratch entry (see :func:`sweep_scratch`) anywhere under ``folder``, a folder
    one stage owns whole (``run_dir/autoencoder``, ``run_dir/report``); only under its lock."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = sorted(p for p in folder.rglob(".*") if scratch_owner(p.name) is not None)
    removed = [p for p in found if not any(q in p.parents for q in found)]  # not inside another
    return _remove(removed)


def scratch_owner(name: str) -> str | None:
    """``NAME`` for a scratch entry ``.NAME.tmp-X`` / ``.NAME.old-X`` / ``.NAME.X.tmp``, else None."""
    if not name.startswith("."):
        return None
    stem = name[1:]
    for kind in SCRATCH_KINDS:
        head, sep, _ = stem.rpartition(f".{kind}-")
        if sep and head:
            return head
    if stem.endswith(".tmp") and stem.count(".") >= 2:
        return stem[: -len(".tmp")].rpartition(".")[0]
    return None


def _remove(paths: list[Path]) -> list[Path]:
    for p in paths:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return paths
