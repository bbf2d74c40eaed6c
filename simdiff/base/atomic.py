"""Files that appear complete or not at all: write beside the target, then rename."""

from __future__ import annotations

import json
import os
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
