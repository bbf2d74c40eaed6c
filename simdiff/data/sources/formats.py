"""The file types the climate adapter opens, and how each is opened lazily with xarray."""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import xarray as xr

from simdiff.base.errors import DataError


@dataclass(frozen=True)
class FileFormat:
    """A file type the adapter opens: its suffixes, xarray engine and the module it needs."""

    name: str
    suffixes: tuple[str, ...]
    engine: str
    module: str
    install: str
    open_kwargs: Mapping[str, Any] = field(default_factory=dict)
    probe: Callable[[Path], Mapping[str, Any]] | None = None

    def kwargs_for(self, path: Path) -> dict[str, Any]:
        """Keyword arguments for ``xr.open_dataset`` on ``path``."""
        return {**self.open_kwargs, **(self.probe(path) if self.probe else {})}


def _zarr_consolidated(path: Path) -> dict[str, Any]:
    """Read consolidated metadata exactly when the store has it (v2 ``.zmetadata``, v3 in zarr.json)."""
    if (path / ".zmetadata").exists():
        return {"consolidated": True}
    root = path / "zarr.json"
    if root.exists():
        meta = json.loads(root.read_text())
        return {"consolidated": bool(meta.get("consolidated_metadata"))}
    return {"consolidated": False}


def _grib_complete(path: Path) -> dict[str, Any]:
    """Refuse (DataError) a GRIB file whose last message is cut short: cfgrib would read the
    messages before it and silently drop the rest. Walks the message headers (lengths only)."""
    size = path.stat().st_size
    with path.open("rb") as f:
        pos = 0
        while pos < size:
            f.seek(pos)
            window = f.read(1 << 16)
            start = window.find(b"GRIB")
            if start < 0:
                break  # padding at the end
            pos += start
            f.seek(pos)
            head = f.read(16)
            if len(head) < 16:
                length = size + 1
            elif head[7] == 1:
                length = int.from_bytes(head[4:7], "big")
                if length & 0x800000:  # GRIB1 large-message coding: lengths not checked
                    break
            else:
                length = int.from_bytes(head[8:16], "big")
            if pos + length > size:
                raise DataError(
                    f"{path}: the GRIB message at byte {pos} needs {length} bytes but the file ends after "
                    f"{size - pos}: the file is truncated; download or copy it again (compare its checksum)"
                )
            f.seek(pos + length - 4)
            if f.read(4) != b"7777":
                raise DataError(f"{path}: the GRIB message at byte {pos} does not end with 7777: the file is "
                                "damaged; download or copy it again (compare its checksum)")
            pos += length
    return {}


FORMATS: tuple[FileFormat, ...] = (
    FileFormat("netCDF 3/4", (".nc", ".nc4", ".netcdf", ".cdf"), "netcdf4", "netCDF4", "pip install netCDF4"),
    FileFormat("zarr v2/v3 (directory)", (".zarr",), "zarr", "zarr", "pip install zarr",
               probe=_zarr_consolidated),
    FileFormat(
        "GRIB 1/2",
        (".grib", ".grib2", ".grb", ".grb2"),
        "cfgrib",
        "cfgrib",
        "pip install simdiff[grib]",
        {"backend_kwargs": {"indexpath": ""}},
        probe=_grib_complete,
    ),
)


def supported_types() -> str:
    """One line listing the file types the adapter opens."""
    return "; ".join(f"{f.name}: {', '.join(f.suffixes)}" for f in FORMATS)


def file_format(path: Path, engine: str | None = None) -> FileFormat:
    """The FileFormat for ``path``: from ``engine`` when given, else from the suffix."""
    if engine is not None:
        known = {f.engine: f for f in FORMATS}
        return known.get(engine, FileFormat(engine, (), engine, engine, f"pip install {engine}"))
    suffix = path.suffix.lower()
    is_zarr_dir = path.is_dir() and any((path / m).exists() for m in ("zarr.json", ".zgroup", ".zarray"))
    for fmt in FORMATS:
        if suffix in fmt.suffixes or (is_zarr_dir and fmt.engine == "zarr"):
            return fmt
    raise DataError(
        f"{path}: unknown file type {suffix or '(no suffix)'!r}; supported: {supported_types()}. "
        "Rename the file, or pass engine= (an xarray engine such as 'netcdf4' or 'h5netcdf') to force one"
    )


def open_file(path: Path, engine: str | None = None) -> xr.Dataset:
    """Open one file lazily (dask arrays in the backend's own chunks), packed ints decoded."""
    fmt = file_format(path, engine)
    try:
        importlib.import_module(fmt.module)
    except ImportError as exc:
        raise DataError(
            f"{path}: opening {fmt.name} files needs the {fmt.module!r} package, which is not "
            f"installed; run `{fmt.install}`"
        ) from exc
    try:
        return xr.open_dataset(path, engine=fmt.engine, chunks={}, **fmt.kwargs_for(path))
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise DataError(
            f"{path}: cannot be opened as {fmt.name} (xarray engine {fmt.engine!r}): {exc}. Check that the "
            "file is complete (compare its checksum) or pass engine= to choose another reader"
        ) from exc
