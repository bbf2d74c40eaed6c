"""Whether two prepared ``run_dir/data`` folders hold the same store, file by file.

Every file (zarr metadata, every chunk of every array, ``config.yaml``) must be the same bytes,
except the store's root ``zarr.json``, whose attributes must be equal but for
``provenance.created`` (the time each was written).
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT_META = Path("train.zarr") / "zarr.json"


def _root_attrs(path: Path) -> dict:
    meta = json.loads(path.read_text())
    meta["attributes"]["provenance"].pop("created")
    return meta


def store_differences(a: Path, b: Path) -> tuple[list[str], int]:
    """``(differences, files compared)`` between the data folders ``a`` and ``b``."""
    files_a = {p.relative_to(a) for p in a.rglob("*") if p.is_file()}
    files_b = {p.relative_to(b) for p in b.rglob("*") if p.is_file()}
    diffs = [f"only in {a}: {p}" for p in sorted(files_a - files_b)]
    diffs += [f"only in {b}: {p}" for p in sorted(files_b - files_a)]
    for rel in sorted(files_a & files_b):
        if rel == ROOT_META:
            if _root_attrs(a / rel) != _root_attrs(b / rel):
                diffs.append(f"{rel}: metadata or attributes differ (provenance.created aside)")
        elif (a / rel).read_bytes() != (b / rel).read_bytes():
            diffs.append(f"{rel}: bytes differ")
    return diffs, len(files_a & files_b)
