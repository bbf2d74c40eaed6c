"""The training store ``run_dir/data/train.zarr``: its schema and its reader.

Schema (zarr v3, written through xarray, opens with ``xr.open_zarr``)::

  data         float32 (S, channel, [D], Y, X)  transformed + normalised; 0 at masked cells.
                                                Chunked (k, C, [D], Y, X): k whole samples
                                                per chunk, sized for fast random reads.
  mask         bool    ([D], Y, X)              True where valid.
  weights      float32 ([D], Y, X)              cell weights (cos lat, voxel volume).
  mean, std    float32 (channel, [D])           statistics of the transformed variables,
                                                computed on the train split only.
  split        int8    (S)                      0 train, 1 val, 2 test (CF flag attrs).
  block        int32   (S)                      contiguous-run id: a forecasting window
                                                never crosses a block (split change or
                                                a gap in time).
  time_features float32 (S, time_feature)       optional: sin/cos of hour and day of year.
  label        int64   (S)                      optional: class index (e.g. molecule);
                                                attr ``label_names``.
  covariates   float32 (S, covariate)           optional: other scalar conditions.
  reference    float32 (S, reference_channel, [D], Y, X)
                                                optional: per-sample reference fields in
                                                physical units (a molecule's promolecule);
                                                ``data`` of those variables is
                                                (T(x) - T(reference) - mean) / std.
  profile_level, profile_mean, profile_scale
               float64 (channel, profile_bin)   optional, with ``reference``
                                                (``prepare.reference_profile``): the
                                                reference-level profile; ``data`` of those
                                                variables is then (u - mean) / std with
                                                u = (T(x) - T(ref) - m(T(ref))) / s(T(ref))
                                                (simdiff.data.stores.profile).

  coords: the sample dim (``time`` or ``sample``), ``channel`` (variable names), the
  depth dim (``level``/``z``) and the horizontal dims, with their source attrs.

  attrs:
    simdiff_store = "training", format_version = 1
    layout        = {"sample_dim", "depth_dim" (or null), "y_dim", "x_dim"}
    variables     = {VAR: {"units", "standard_name", "long_name", ...}} from the source
    transforms    = {VAR: transform spec}  (see simdiff.data.transforms.from_spec)
    geometry      = Geometry.to_attrs()
    provenance    = {"sources": [{"path", "sha256", "bytes"}], "config": YAML text,
                     "simdiff_version", "created"}

A store is published complete by an atomic rename of the finished directory; a directory
that is not a complete store never sits at the final path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
import zarr

from simdiff.base.errors import DataError
from simdiff.base.registry import check_stored
from simdiff.data.geometry import Geometry
from simdiff.data.transforms import Transform, from_spec

STORE_KIND = "training"
#: Store kinds this reader opens: the latent store (simdiff.data.stores.latents) shares the schema.
READABLE_KINDS = (STORE_KIND, "latents")
FORMAT_VERSION = 1
SPLITS = {"train": 0, "val": 1, "test": 2}


@dataclass(frozen=True)
class StoreLayout:
    """Names of the dims of a training store."""

    sample_dim: str
    depth_dim: str | None
    y_dim: str
    x_dim: str

    @property
    def data_dims(self) -> tuple[str, ...]:
        """``(sample_dim, "channel", [depth_dim], y_dim, x_dim)``."""
        depth = (self.depth_dim,) if self.depth_dim else ()
        return (self.sample_dim, "channel", *depth, self.y_dim, self.x_dim)

    @property
    def spatial_dims(self) -> tuple[str, ...]:
        depth = (self.depth_dim,) if self.depth_dim else ()
        return (*depth, self.y_dim, self.x_dim)


class TrainingStore:
    """Read access to a training store: labelled metadata via xarray, fast arrays via zarr.

    Args:
        path: the ``train.zarr`` directory.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise DataError(
                f"{self.path}: no training store here; run `simdiff prepare run_dir=...` first"
            )
        fix = "it is damaged or incomplete: re-run the stage that wrote it with force=true"
        try:
            self.group = zarr.open_group(str(self.path), mode="r")
            attrs = dict(self.group.attrs)
            data = self.group["data"] if "data" in self.group else None
            missing = 0 if data is None else data.nchunks - data.nchunks_initialized
        except (KeyError, ValueError, TypeError, OSError) as err:  # JSONDecodeError is a ValueError
            raise DataError(f"{self.path}: cannot be read as a zarr store ({type(err).__name__}: {err}); "
                            f"{fix}") from None
        # The writers write every chunk of data (write_empty_chunks=True), and its fill value is NaN,
        # which a store never holds (0 at masked cells): an absent chunk was lost, not skipped as empty.
        if missing and data is not None:
            raise DataError(f"{self.path}: array data has {missing} of its {data.nchunks} chunks missing "
                            f"(they would read as fill values); {fix}")
        if attrs.get("simdiff_store") not in READABLE_KINDS:
            raise DataError(f"{self.path}: not a simdiff training store (attrs {sorted(attrs)})")
        if attrs.get("format_version") != FORMAT_VERSION:
            raise DataError(
                f"{self.path}: store format_version {attrs.get('format_version')} is not "
                f"{FORMAT_VERSION}; re-run `simdiff prepare` with this simdiff version"
            )
        self.attrs: dict[str, Any] = attrs
        self.layout = StoreLayout(**attrs["layout"])
        specs = attrs.get("transforms", {})
        if not isinstance(specs, dict):
            raise DataError(f"{self.path}: attribute transforms = {specs!r} is not a mapping of variable to "
                            "transform spec; re-run `simdiff prepare`")
        for name, spec in specs.items():  # refuse a foreign _target_ on opening, before any stage writes
            check_stored(spec, source=str(self.path), key=f"transforms.{name}")

    # -- fast arrays (no xarray overhead in the hot path) --------------------------------
    @property
    def data(self) -> zarr.Array:
        """The normalised array ``(S, channel, [D], Y, X)``."""
        return self.group["data"]  # type: ignore[return-value]

    @property
    def n_samples(self) -> int:
        return int(self.data.shape[0])

    @property
    def periodic(self) -> tuple[bool, ...]:
        """Per spatial axis ``([D], Y, X)``, True where the geometry wraps (global longitude)."""
        wraps = set(self.attrs["geometry"].get("periodic", []))
        return tuple(d in wraps for d in self.layout.spatial_dims)

    @property
    def chunk_samples(self) -> int:
        """Samples per chunk along the sample dim."""
        return int(self.data.chunks[0])

    def array(self, name: str) -> np.ndarray:
        """A small array (mask, weights, mean, std, split, block, conditions) in memory."""
        return np.asarray(self.group[name][...])

    def has(self, name: str) -> bool:
        return name in self.group

    @property
    def split(self) -> np.ndarray:
        return self.array("split")

    def label_classes(self) -> int:
        """The classes of the ``label`` condition: its ``label_names``, else the largest label + 1."""
        names = self.group["label"].attrs.get("label_names")
        return len(names) if names else int(self.array("label").max()) + 1

    def indices(self, split: str) -> np.ndarray:
        """Sample indices of ``split`` ("train", "val" or "test")."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
        return np.flatnonzero(self.split == SPLITS[split])

    # -- labelled views --------------------------------------------------------------------
    def dataset(self) -> xr.Dataset:
        """The whole store as a lazy, labelled xarray Dataset."""
        return xr.open_zarr(self.path, consolidated=False)

    @property
    def variables(self) -> list[str]:
        """Variable names in channel order."""
        return [str(v) for v in self.group["channel"][...]]

    @property
    def transforms(self) -> dict[str, Transform]:
        specs = self.attrs.get("transforms", {})
        return {k: from_spec(v, source=str(self.path), key=f"transforms.{k}") for k, v in specs.items()}

    def geometry(self) -> Geometry:
        ds = self.dataset()
        return Geometry.from_attrs(self.attrs["geometry"], ds["weights"].load(), ds["mask"].load())
