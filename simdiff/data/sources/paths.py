"""What a ``data.source`` names: a path, a glob, or a list of either, expanded to files."""

from __future__ import annotations

import glob as globmod
import os
from collections.abc import Sequence
from pathlib import Path

from simdiff.base.errors import DataError

Source = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]


def expand_source(source: Source, *, accepts: str = "") -> list[Path]:
    """Paths named by a path, a glob, or a list of either (globs sorted by name, lists in order).

    Args:
        source: a path, a glob pattern, or a sequence of them (``~`` is expanded).
        accepts: what the caller opens, appended to error messages (e.g. the supported types).

    Raises:
        DataError: an empty list, a glob that matches nothing (showing the pattern), or a
            path that does not exist.
    """
    hint = f" ({accepts})" if accepts else ""
    items = [source] if isinstance(source, str | os.PathLike) else list(source)
    if not items:
        raise DataError(f"data.source is an empty list; give a file, a glob or a list of them{hint}")
    paths: list[Path] = []
    for item in items:
        text = os.path.expanduser(os.fspath(item))
        if globmod.has_magic(text):
            matches = sorted(globmod.glob(text, recursive=True))
            if not matches:
                raise DataError(
                    f"the glob {text!r} matches no files; check the folder and the pattern{hint}"
                )
            paths.extend(Path(m) for m in matches)
        else:
            if not os.path.exists(text):
                raise DataError(f"{text}: file not found; check data.source (a path, a glob or a list){hint}")
            paths.append(Path(text))
    return paths
