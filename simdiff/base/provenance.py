"""Provenance records: what a store was made from (files with sha256), with which config and code.

Files are hashed in a streaming way (1 MiB reads), so multi-GB sources cost no memory. A
directory source (a zarr store) is hashed as one digest over its files in sorted order, each
contributing its relative path and its bytes, so renaming a chunk changes the digest too.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

import simdiff
from simdiff.base.errors import DataError

_BLOCK = 1 << 20


def _update_from_file(h: Any, path: Path) -> int:
    n = 0
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            h.update(block)
            n += len(block)
    return n


def sha256_path(path: str | Path) -> tuple[str, int]:
    """``(hex sha256, bytes)`` of a file, or of a directory's files in sorted relative-path order."""
    path = Path(path)
    if path.is_file():
        return _file_digest(path)
    if not path.is_dir():
        raise DataError(
            f"{path}: source listed in the field's provenance does not exist; "
            f"check data.source (or the simulator cache under cache_dir)"
        )
    h = hashlib.sha256()
    total = 0
    files = sorted(p for p in path.rglob("*") if p.is_file())
    for p in files:
        h.update(p.relative_to(path).as_posix().encode() + b"\0")
        total += _update_from_file(h, p)
    return h.hexdigest(), total


def _file_digest(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    n = _update_from_file(h, path)
    return h.hexdigest(), n


def source_records(sources: Iterable[str | Path]) -> list[dict[str, Any]]:
    """``[{"path", "sha256", "bytes"}]`` for each source (absolute paths)."""
    records = []
    for src in sources:
        digest, size = sha256_path(src)
        records.append({"path": os.path.abspath(src), "sha256": digest, "bytes": size})
    return records


def config_yaml(config: Mapping[str, Any]) -> str:
    """The resolved config as YAML text (keys sorted), the form stored beside every output."""
    return yaml.safe_dump(_plain(config), sort_keys=True, default_flow_style=False)


def _plain(obj: Any) -> Any:
    """Mappings -> dict, tuples/lists -> list, paths -> str; anything else must be YAML-safe."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return obj


def provenance(sources: Iterable[str | Path], config: Mapping[str, Any]) -> dict[str, Any]:
    """The store's ``provenance`` attr: sources with checksums, config YAML, version, UTC time."""
    return {
        "sources": source_records(sources),
        "config": config_yaml(config),
        "simdiff_version": simdiff.__version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def config_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two configs, as ``key: old -> new`` lines (an
    empty config, e.g. a stage record from before the stage had options, has no keys)."""
    a, b = (_flatten(_plain(c)) if c else {} for c in (old, new))
    missing = object()
    lines = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, missing), b.get(key, missing)
        if va != vb:
            show_a = "(absent)" if va is missing else repr(va)
            show_b = "(absent)" if vb is missing else repr(vb)
            lines.append(f"{key}: {show_a} -> {show_b}")
    return lines


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict) and obj:
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): obj}
