"""The generated-ensemble store: CF-1.10 metadata, rank-sharded writes, resume, atomic publish.

Schema (zarr v3, or netCDF-4 after :func:`finalize`)::

  forecast mode:    VAR  float32 (realization, init_time, lead_time, [D], Y, X)
  sample mode:      VAR  float32 (realization, [D], Y, X)
  conditional mode: VAR  float32 (realization, condition, [D], Y, X)

One variable per source variable (the training store's ``channel`` names), in physical units
with NaN at masked cells, dims and spatial coordinates named as in the source (``lat``/``lon``,
``y``/``x``, ``level``). Chunks: one member, one init, all leads, the full field (the lead and
spatial chunk sizes can be changed; realization and init_time chunks stay 1, see below).
Sample mode has no initial condition, so it has no init/lead dims at all (rather than dims of
length 1 that would carry invented times).

Coordinates (CF-1.10):

  realization (realization)  int32, standard_name "realization": the member ids.
  init_time   (init_time)    the store's sample coordinate at the inits. Datetimes (and
                             numbers with "UNIT since DATE" units) get standard_name
                             "forecast_reference_time". An idealised model time with a plain
                             duration unit (the QG simulator's "days" since spin-up) has no
                             reference date, so it keeps its numbers and units and gets no
                             standard name: inventing a date ("days since 0001-01-01") would
                             be a false statement, and "days since spin-up" is not valid UDUNITS.
  init_index  (init_time)    int32: the index of each init in the training store.
  lead_time   (lead_time)    standard_name "forecast_period": ``k * step`` for lead steps
                             ``k``, where step is the sample spacing (timedelta for datetime
                             stores, a number in the sample coordinate's unit otherwise).
  valid_time  (init_time, lead_time)  auxiliary coordinate: the store's sample coordinate at
                             ``init + k`` while that sample exists in the same contiguous run
                             (so monthly data keeps calendar months), else init_time +
                             lead_time. Standard name "time" where init_time has a reference date.
  condition_index (condition)  int32 (conditional mode): the store sample whose conditions
                             (a molecule's label, electron count and atoms, also copied per
                             condition) each column of members was drawn for.
  [D], Y, X                  copied from the store with their attrs (ranges dropped).

Attributes: ``Conventions = "CF-1.10"``, title, history, source, institution (optional),
``simdiff_config`` (resolved YAML), ``simdiff_config_sha256``, ``simdiff_version``,
``git_commit`` (when running from a git checkout), ``simdiff_sha256`` (JSON: name -> sha256 of
the checkpoints and the training store), ``simdiff_seed``, ``simdiff_mode``, and
``simdiff_complete = 1`` in a published store only. netCDF attributes must be strings or
numbers, so mappings are JSON text.

Writing without a gather: rank 0 calls :func:`create_partial`, which builds the skeleton
(metadata and coordinates, no data chunks) beside the target at ``.NAME.partial`` with an
int8 array ``written (realization, [init_time])`` chunked 1 per cell. Every rank then calls
:func:`write_block` for its own (member, init) blocks: it writes whole chunks (one member, one
init, all leads, full field) and then sets its ``written`` cells, so no chunk is written by two
ranks and no locks are needed. :func:`missing` lists the blocks not yet written, so a killed
run re-run with the same config generates only those. :func:`finalize` publishes: a zarr
target by marking the partial complete and renaming it onto the target, a netCDF target by
writing a temporary file beside it and renaming it. A partial store is never at the final
path and :func:`is_complete` is False for it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import netCDF4
import numpy as np
import xarray as xr
import zarr

import simdiff
from simdiff.base.atomic import scratch_dir
from simdiff.base.errors import DataError
from simdiff.generate.template import WRITTEN

OUTPUT_KIND = "generated"
#: Partial-store attr: JSON list of the variables and dims a finishing step dropped (augment's
#: per-row rejection counts once tallied); a resumed run's layout is compared without them.
FOLDED = "simdiff_folded"
#: The second unit dim of ``written`` (beside realization) -> its store-index coordinate.
COLUMN_INDEX = {"init_time": "init_index", "condition": "condition_index"}
CONVENTIONS = "CF-1.10"
#: Encoding keys that survive the move from zarr to netCDF (time units, calendar, dtype).
_NETCDF_ENCODING = ("units", "calendar", "dtype")


# -- paths and provenance -------------------------------------------------------------------
def partial_path(target: str | Path) -> Path:
    """Where the partial store of ``target`` lives: ``.NAME.partial`` beside it."""
    target = Path(target)
    return target.parent / f".{target.name}.partial"


def git_commit(path: str | Path | None = None) -> str | None:
    """HEAD of the git checkout holding ``path`` (default: this package), ``-dirty`` if modified.

    None when the code does not run from a git checkout (an installed wheel) or git is absent.
    """
    where = Path(path) if path is not None else Path(simdiff.__file__).resolve().parent
    try:
        head = subprocess.run(["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}-dirty" if status.strip() else head


def output_attrs(
    *,
    config: str,
    checksums: Mapping[str, str],
    seed: int,
    title: str,
    command: str,
    institution: str | None = None,
) -> dict[str, str | int]:
    """Global attrs of an output store (strings and numbers only, so netCDF takes them).

    Args:
        config: the resolved config as YAML text (:func:`simdiff.base.provenance.config_yaml`).
        checksums: name -> sha256 hex, e.g. the checkpoints and the training store.
        seed: the run's seed (the noise keys' first counter).
        title: a one-line description.
        command: the command line, for ``history``.
        institution: who made the data (omitted when None).
    """
    attrs: dict[str, str | int] = {
        "Conventions": CONVENTIONS,
        "title": title,
        "history": f"{datetime.now(UTC).isoformat(timespec='seconds')}: {command}",
        "source": f"simdiff {simdiff.__version__} latent diffusion",
        "simdiff_version": simdiff.__version__,
        "simdiff_config": config,
        "simdiff_config_sha256": hashlib.sha256(config.encode()).hexdigest(),
        "simdiff_sha256": json.dumps(dict(sorted(checksums.items()))),
        "simdiff_seed": int(seed),
    }
    commit = git_commit()
    if commit is not None:
        attrs["git_commit"] = commit
    if institution is not None:
        attrs["institution"] = institution
    return attrs


def _layout(ds: xr.Dataset) -> dict[str, Any]:
    """What must agree for a partial store to be resumed: variables, sizes, members, inits."""
    unit = ds[WRITTEN].dims[0]  # realization here; the sample dim in an augmented store
    out: dict[str, Any] = {"sizes": {str(k): int(v) for k, v in ds.sizes.items()},
                           "variables": sorted(str(v) for v in ds.data_vars),
                           "realization": [int(m) for m in ds[unit].values]}
    for index in COLUMN_INDEX.values():
        if index in ds:
            out[index] = [int(i) for i in ds[index].values]
    return out


def _without(layout: Any, folded: list[str]) -> Any:
    """``layout`` less the variables and dims a finishing run folded away (``FOLDED``)."""
    if not folded or not isinstance(layout, dict):
        return layout
    return {**layout, "sizes": {k: v for k, v in layout["sizes"].items() if k not in folded},
            "variables": [v for v in layout["variables"] if v not in folded]}


def _column(g: zarr.Group) -> tuple[str, list[int]] | None:
    """The unit column of a partial store: (dim, store indices), or None (sample mode)."""
    dims = g[WRITTEN].metadata.dimension_names
    if len(dims) < 2:
        return None
    return dims[1], [int(i) for i in g[COLUMN_INDEX[dims[1]]][...]]


def create_partial(
    target: str | Path, template: xr.Dataset, attrs: Mapping[str, Any], *, force: bool = False
) -> Path:
    """Create (or reuse) the partial store of ``target``; call it once, on rank 0.

    A partial store made with the same config (``attrs["simdiff_config_sha256"]``) and layout is
    reused as it is, so a killed run resumes; see :func:`missing`.

    Args:
        target: the final path, ``*.zarr`` or ``*.nc``.
        template: from :func:`forecast_template` or :func:`sample_template`.
        attrs: from :func:`output_attrs`.
        force: replace a partial store made with a different config.

    Returns:
        The partial store's path.

    Raises:
        DataError: a partial store made with a different config or layout (unless ``force``).
    """
    target = Path(target)
    _format(target)
    partial = partial_path(target)
    attrs = dict(attrs)
    if "simdiff_config_sha256" not in attrs:
        raise ValueError("attrs lack simdiff_config_sha256; build them with output_attrs()")
    layout = _layout(template)
    if partial.exists():
        old = dict(zarr.open_group(str(partial), mode="r").attrs)
        reasons = []
        if old.get("simdiff_config_sha256") != attrs["simdiff_config_sha256"]:
            reasons.append("it was made with a different config")
        folded = json.loads(old.get(FOLDED, "[]"))  # dropped while finishing, before a kill
        if _without(json.loads(old.get("simdiff_layout", "null")), folded) != _without(layout, folded):
            reasons.append("its variables, members, inits or sizes differ")
        if not reasons:
            return partial
        if not force:
            raise DataError(
                f"{partial}: a partial output is here but {' and '.join(reasons)} "
                f"(config sha256 {old.get('simdiff_config_sha256')} vs {attrs['simdiff_config_sha256']}). "
                "Fix: re-run with the config that made it to resume, or pass force=true to start over"
            )
        shutil.rmtree(partial)
    ds = template.copy()
    ds.attrs = {**template.attrs, **attrs, "simdiff_store": OUTPUT_KIND, "simdiff_layout": json.dumps(layout)}
    ds.attrs.pop("simdiff_complete", None)
    encoding = {name: {"chunks": v.data.chunksize,
                       "fill_value": np.nan if np.issubdtype(v.dtype, np.floating) else v.dtype.type(0)}
                for name, v in ds.data_vars.items()}
    partial.parent.mkdir(parents=True, exist_ok=True)
    tmp = scratch_dir(target)
    try:
        # compute=False writes the metadata and the coordinates, no data chunks: an unwritten
        # chunk reads as its fill value (NaN, or 0 in `written`).
        ds.to_zarr(tmp / "store.zarr", mode="w-", compute=False, zarr_format=3, consolidated=False,
                   encoding=encoding)
        os.replace(tmp / "store.zarr", partial)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return partial


def _open_partial(target: Path, mode: str = "r") -> zarr.Group:
    partial = partial_path(target)
    if not partial.exists():
        raise DataError(f"{partial}: no partial output here; create it first (create_partial on rank 0)")
    return zarr.open_group(str(partial), mode=mode)  # type: ignore[arg-type]


def write_block(target: str | Path, block: xr.Dataset, *, init: int | None = None) -> None:
    """Write some members' fields for one init into the partial store, then mark them written.

    Any rank may call this for blocks no other rank writes; each (member, init) block is whole
    chunks, so concurrent calls for different blocks need no lock.

    Args:
        target: the final path (the partial store beside it must exist).
        block: one variable per output variable in physical units, dims ``(realization,
            lead_time, [D], Y, X)`` (forecast) or ``(realization, [D], Y, X)`` (sample), with a
            ``realization`` coordinate of member ids; all leads, the full field.
        init: the init index (forecast mode) or the condition index (conditional mode); None
            in sample mode.
    """
    target = Path(target)
    g = _open_partial(target, "r+")
    mode = g.attrs["simdiff_mode"]
    if (init is None) != (mode == "sample"):
        want = "None" if mode == "sample" else "an init index"
        raise ValueError(f"{mode} store: init must be {want}, got {init}")
    if "realization" not in block.coords:
        raise ValueError("block needs a realization coordinate holding the member ids")
    positions = {int(m): k for k, m in enumerate(g["realization"][...])}
    rows = [positions.get(int(m)) for m in block["realization"].values]
    if None in rows:
        raise ValueError(f"members {block['realization'].values.tolist()} are not all among the "
                         f"store's {sorted(positions)}")
    col, coldim = None, None
    column = _column(g)
    if init is not None and column is not None:
        coldim, inits = column
        if int(init) not in inits:
            raise ValueError(f"init {init} is not one of the store's {COLUMN_INDEX[coldim]} values {inits}")
        col = inits.index(int(init))
    names = [n for n in json.loads(g.attrs["simdiff_layout"])["variables"] if n != WRITTEN]
    if sorted(str(v) for v in block.data_vars) != names:
        raise ValueError(f"block has variables {sorted(map(str, block.data_vars))}, the store {names}")
    values = {}
    for name in names:
        arr = g[name]
        dims = [d for d in arr.metadata.dimension_names if d != coldim]
        if set(block[name].dims) != set(dims):
            raise ValueError(f"block[{name!r}] has dims {block[name].dims}, expected {tuple(dims)}")
        v = np.asarray(block[name].transpose(*dims).values, dtype=np.float32)
        expected = (len(rows), *(n for d, n in zip(arr.metadata.dimension_names, arr.shape, strict=True)
                                 if d not in ("realization", coldim)))
        if v.shape != expected:
            raise ValueError(f"block[{name!r}] has shape {v.shape}, expected {expected} "
                             "(all leads, the full field)")
        values[name] = v
    for name, v in values.items():
        arr = g[name]
        for j, row in enumerate(rows):
            arr[(row,) if col is None else (row, col)] = v[j]
    written = g[WRITTEN]
    for row in rows:
        written[(row,) if col is None else (row, col)] = 1


def missing(target: str | Path) -> list[tuple[int, int]]:
    """The ``(member, init)`` blocks not yet written, grouped by init (init = -1 in sample mode)."""
    target = Path(target)
    g = _open_partial(target)
    if g.attrs.get("simdiff_complete") == 1:  # finalize was interrupted after marking it
        return []
    written = np.asarray(g[WRITTEN][...])
    members = [int(m) for m in g[g[WRITTEN].metadata.dimension_names[0]][...]]
    if written.ndim == 1:
        return [(members[r], -1) for r in np.flatnonzero(written == 0)]
    column = _column(g)
    assert column is not None
    inits = column[1]
    return [(members[r], inits[c]) for c in range(len(inits)) for r in np.flatnonzero(written[:, c] == 0)]


# -- publishing -----------------------------------------------------------------------------
def _format(target: Path) -> str:
    if target.suffix == ".zarr":
        return "zarr"
    if target.suffix == ".nc":
        return "netcdf"
    raise ValueError(f"{target}: the output path must end in .zarr or .nc")


def finalize(target: str | Path, *, force: bool = False) -> Path:
    """Publish the partial store at ``target`` once every block is written.

    A ``.zarr`` target: drop ``written``, mark ``simdiff_complete = 1``, consolidate the
    metadata and rename the partial store onto ``target``. A ``.nc`` target: write netCDF-4 to
    a temporary file beside it, rename it onto ``target``, then remove the partial store.

    Args:
        target: the final path.
        force: replace an existing ``target``.

    Raises:
        DataError: blocks are still missing, or ``target`` exists (without ``force``).
    """
    target = Path(target)
    fmt = _format(target)
    todo = missing(target)
    if todo:
        raise DataError(
            f"{partial_path(target)}: {len(todo)} (member, init) blocks are not written yet, e.g. "
            f"{todo[:5]}; re-run generate with the same config to write them, then finalize"
        )
    if target.exists() and not force:
        raise DataError(f"{target} exists; remove it or pass force=true to replace it")
    partial = partial_path(target)
    if fmt == "zarr":
        g = zarr.open_group(str(partial), mode="r+")
        g.attrs["simdiff_complete"] = 1
        if WRITTEN in g:
            del g[WRITTEN]
        with warnings.catch_warnings():  # zarr notes that v3 has no consolidated-metadata spec yet
            warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
            zarr.consolidate_metadata(str(partial))
        _replace(partial, target)
        return target
    # times stay raw numbers with their units/calendar attrs: copied verbatim, not re-encoded
    ds = xr.open_zarr(partial, consolidated=False, decode_times=False, decode_timedelta=False)
    ds = ds.drop_vars(WRITTEN, errors="ignore")
    kept = {k: v for k, v in ds.attrs.items() if k not in ("simdiff_layout", FOLDED)}
    ds.attrs = kept | {"simdiff_complete": 1}
    for v in ds.variables.values():
        v.encoding = {k: v.encoding[k] for k in _NETCDF_ENCODING if k in v.encoding}
    encoding = {name: {"zlib": True, "complevel": 4, "chunksizes": v.data.chunksize}
                for name, v in ds.data_vars.items()}
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        ds.to_netcdf(tmp, engine="netcdf4", format="NETCDF4", encoding=encoding)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    shutil.rmtree(partial)
    return target


def _replace(src: Path, dst: Path) -> None:
    """Rename the directory ``src`` onto ``dst``; an existing ``dst`` is moved aside first."""
    if not dst.exists():
        os.replace(src, dst)
        return
    aside = scratch_dir(dst, "old")
    os.replace(dst, aside / dst.name)
    os.replace(src, dst)
    shutil.rmtree(aside)


def is_complete(path: str | Path) -> bool:
    """True for a published output store (zarr or netCDF); False for a partial or absent one."""
    path = Path(path)
    if path.name.endswith(".partial") or not path.exists():
        return False
    if path.is_dir():
        return zarr.open_group(str(path), mode="r").attrs.get("simdiff_complete") == 1
    with netCDF4.Dataset(path) as nc:
        return "simdiff_complete" in nc.ncattrs() and int(nc.getncattr("simdiff_complete")) == 1


def open_output(path: str | Path) -> xr.Dataset:
    """A published generate/augment output (zarr or netCDF), lazily, with its times decoded.

    ``init_time``/``valid_time`` decode to datetimes (numpy or cftime, from their CF units and
    calendar) and ``lead_time`` to timedelta64 exactly when the store's times are datetimes;
    a store whose time is a plain number (QG's model days: units ``days``, no ``since``) keeps
    ``lead_time`` numeric in the same units, as its truth's sample coordinate is.

    Raises:
        DataError: no complete output at ``path`` (absent, or only a partial one beside it).
    """
    path = Path(path)
    if not is_complete(path):
        hint = " (a partial one is beside it: re-run the stage to finish it)"
        hint = hint if partial_path(path).exists() else ""
        raise DataError(f"{path}: no complete simdiff output here{hint}; run `simdiff generate` first")

    def _open(decode_timedelta: bool) -> xr.Dataset:
        if path.suffix == ".zarr":
            return xr.open_zarr(path, decode_timedelta=decode_timedelta)
        return xr.open_dataset(path, decode_timedelta=decode_timedelta, chunks={})

    ds = _open(False)
    init = ds.coords.get("init_time")
    dated = init is not None and (np.issubdtype(init.dtype, np.datetime64) or init.dtype == object)
    if dated and "lead_time" in ds.coords and not np.issubdtype(ds["lead_time"].dtype, np.timedelta64):
        ds.close()
        ds = _open(True)
    return ds
