"""The downstream certificate of an augmented dataset (:mod:`simdiff.evaluate.certificate`) run on a
run directory: the real and synthetic pairs, the cells, resume, the published JSON.

Pairs. Real pairs ``(x_t, x_{t+1})`` are every two consecutive samples of one block of a split
of the training store, normalised as the store holds them; with a non-spatial depth (pressure
levels, QG layers) levels are folded into channels. Synthetic pairs are the augmented
dataset's next-state draws with the state that conditioned each (``source_index``), normalised
with the training store's statistics and transforms. The generative model was trained on the
whole train split, so below 100 % the certificate measures what synthetic data passes on from
training data the downstream model did not see, not augmentation of a short record on its own.

Cells. One training per (arm, fraction, seed): ``real`` and ``real+synthetic`` (each batch half
real and half synthetic: ``synthetic_share``) at each fraction, ``synthetic`` once (it uses no
real training data). Each finished cell is written at once to
``run_dir/certificate.partial-HASH/`` (HASH: the settings and the inputs), so a killed run
resumes with the cells left and ends with the same numbers; the certificate is published as
``run_dir/certificate.json`` in one atomic write and the partial folder removed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from simdiff.base.atomic import write_json
from simdiff.base.errors import DataError
from simdiff.data.field import SPATIAL_DEPTH_DIMS
from simdiff.data.loading.loader import window_targets
from simdiff.data.stores.stats import normalise
from simdiff.data.stores.training import SPLITS, TrainingStore
from simdiff.evaluate.certificate import (
    ARMS,
    Downstream,
    downstream_error,
    fraction_key,
    summarise,
    train_emulator,
)
from simdiff.runs.layout import RunDir

log = logging.getLogger("simdiff")

#: The downstream tasks built: a forecasting dataset's next-state emulator.
TASKS = ("next_state",)


@dataclass(frozen=True)
class Certify:
    """What the certificate runs (``conf/certify/``)."""

    task: str = "next_state"
    fractions: tuple[float, ...] = (0.05, 0.1, 0.25, 1.0)
    seeds: int = 3
    synthetic_share: float | None = 0.5
    downstream: Downstream = field(default_factory=Downstream)

    def __post_init__(self) -> None:
        if self.synthetic_share is not None and not 0 < float(self.synthetic_share) < 1:
            raise DataError(f"certify.synthetic_share={self.synthetic_share}: give the synthetic share of "
                            "each real+synthetic batch in (0, 1), or null for batches drawn from all pairs")
        if self.task not in TASKS:
            raise DataError(f"certify.task={self.task!r}: the downstream tasks built are {list(TASKS)} "
                            "(a label regressor for unconditional models is not built yet)")
        if not self.fractions or any(not 0 < float(f) <= 1 for f in self.fractions):
            raise DataError(f"certify.fractions={list(self.fractions)}: give fractions of the real "
                            "training pairs in (0, 1], e.g. [0.05, 0.1, 0.25, 1.0]")
        if int(self.seeds) < 1:
            raise DataError(f"certify.seeds={self.seeds}: give a count >= 1 (3 or more for intervals)")


@dataclass(frozen=True)
class Pairs:
    """(N, C, [D], H, W) float32 inputs and targets, normalised, 0 at masked cells."""

    inputs: np.ndarray
    targets: np.ndarray

    def __len__(self) -> int:
        return len(self.inputs)

    def take(self, n: int) -> Pairs:
        return Pairs(self.inputs[:n], self.targets[:n])


def _fold(x: np.ndarray, fold: bool) -> np.ndarray:
    """(N, C, D, H, W) -> (N, C*D, H, W) when the depth is not spatial."""
    return x.reshape(x.shape[0], -1, *x.shape[-2:]) if fold else x


def _has_levels(store: TrainingStore) -> bool:
    depth = store.layout.depth_dim
    return depth is not None and depth not in SPATIAL_DEPTH_DIMS


def real_pairs(store: TrainingStore, split: str) -> Pairs:
    """Every ``(x_t, x_{t+1})`` of one block of ``split``, in sample order."""
    targets = window_targets(store.array("split"), store.array("block"), SPLITS[split], 2)
    data = store.dataset()["data"]
    sdim = store.layout.sample_dim
    fold = _has_levels(store)
    x = np.asarray(data.isel({sdim: targets - 1}).values, dtype=np.float32)
    y = np.asarray(data.isel({sdim: targets}).values, dtype=np.float32)
    return Pairs(_fold(x, fold), _fold(y, fold))


def synthetic_pairs(store: TrainingStore, augmented: xr.Dataset, path: Path) -> tuple[Pairs, np.ndarray]:
    """The augmented dataset's next-state draws with their sources; and the source indices."""
    if augmented.attrs.get("simdiff_draws") != "next_state" or "source_index" not in augmented:
        raise DataError(
            f"{path}: its samples are not next-state draws (attr simdiff_draws="
            f"{augmented.attrs.get('simdiff_draws')!r}); certify.task=next_state needs an augmented "
            "dataset of a forecaster (diffusion.conditioning.previous >= 1)"
        )
    sdim = store.layout.sample_dim
    fake = np.flatnonzero(np.asarray(augmented["synthetic"].values, dtype=bool))
    if not fake.size:
        raise DataError(f"{path}: no synthetic samples; run simdiff augment with augment.samples >= 1")
    source = np.asarray(augmented["source_index"].values, dtype=np.int64)[fake]
    ds = store.dataset()
    draws = augmented[store.variables].isel({sdim: fake})
    if "reference" in ds:
        raise DataError(f"{store.path}: its variables are normalised relative to a reference field; the "
                        "next-state certificate does not support such stores")
    normalised = normalise(draws, ds[["mean", "std"]], ds["mask"], store.transforms, block_samples=64)
    fold = _has_levels(store)
    y = _fold(np.asarray(normalised.values, dtype=np.float32), fold)
    x = _fold(np.asarray(ds["data"].isel({sdim: source}).values, dtype=np.float32), fold)
    return Pairs(x, y), source


def loss_weights(store: TrainingStore) -> np.ndarray:
    """(C', [D], H, W) cell weight x validity, broadcast over the channels the net sees."""
    ds = store.dataset()
    w = np.asarray(ds["weights"].values, dtype=np.float32) * np.asarray(ds["mask"].values, dtype=np.float32)
    w = np.broadcast_to(w[None], (len(store.variables), *w.shape))
    return (w.reshape(-1, *w.shape[-2:]) if _has_levels(store) else w).copy()


def periodic_axes(store: TrainingStore) -> list[bool]:
    """Per spatial axis the net convolves over, True where it wraps."""
    periodic = set(store.attrs["geometry"].get("periodic", []))
    dims = list(store.layout.spatial_dims)
    if _has_levels(store):
        dims = dims[-2:]
    return [d in periodic for d in dims]


def _digest(settings: Certify, inputs: dict[str, Any]) -> str:
    text = json.dumps({"settings": asdict(settings), "inputs": inputs}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _cells(settings: Certify) -> list[tuple[str, str, int]]:
    cells = []
    for seed in range(int(settings.seeds)):
        for f in settings.fractions:
            cells += [("real", fraction_key(f), seed), ("real+synthetic", fraction_key(f), seed)]
        cells.append(("synthetic", "all", seed))
    return cells


def certify(run: RunDir, augmented: xr.Dataset, augmented_path: Path, settings: Certify,
            seed: int = 0) -> dict[str, Any]:
    """Run (or resume) every cell and publish ``run_dir/certificate.json``; returns it."""
    store = TrainingStore(run.store)
    real = real_pairs(store, "train")
    test = real_pairs(store, "test")
    if not len(test):
        test = real_pairs(store, "val")
    if len(real) < 2 or not len(test):
        raise DataError(f"{store.path}: {len(real)} training and {len(test)} held-out (state, next state) "
                        "pairs; the certificate needs a time series with consecutive samples in train "
                        "and test")
    synthetic, sources = synthetic_pairs(store, augmented, augmented_path)
    weights, periodic = loss_weights(store), periodic_axes(store)
    spec = settings.downstream
    inputs = {"store": str(store.path), "augmented": str(augmented_path),
              "augmented_history": str(augmented.attrs.get("history", "")), "seed": int(seed)}
    partial = run.root / f"certificate.partial-{_digest(settings, inputs)}"
    partial.mkdir(exist_ok=True)
    errors: dict[str, dict[str, list[float]]] = {arm: {} for arm in ARMS}
    cells = _cells(settings)
    log.info("certify: %d real training pairs, %d synthetic pairs (%d sources), %d test pairs; %d trainings "
             "of %d steps", len(real), len(synthetic), len(np.unique(sources)), len(test), len(cells),
             spec.steps)
    with Progress(TextColumn("certify"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()) as bar:
        task = bar.add_task("trainings", total=len(cells))
        for arm, key, s in cells:
            cell = partial / f"{arm}@{key}@seed{s}.json"
            if cell.is_file():
                value = float(json.loads(cell.read_text())["test_error"])
            else:
                n_real = real_count(float(key), len(real)) if key != "all" else 0
                parts = {"real": [real.take(n_real)], "real+synthetic": [real.take(n_real), synthetic],
                         "synthetic": [synthetic]}[arm]
                share = settings.synthetic_share
                shares = None if len(parts) == 1 or share is None else [1 - share, share]
                model = train_emulator([(p.inputs, p.targets) for p in parts], weights, periodic, spec,
                                       seed=int(seed) * 1000 + s, shares=shares)
                value = downstream_error(model, test.inputs, test.targets, weights)
                write_json({"arm": arm, "fraction": key, "seed": s, "pairs": sum(len(p) for p in parts),
                            "test_error": value},
                           cell)
                log.info("certify: %s at %s of the real pairs, seed %d: test error %.4g", arm, key, s, value)
            errors[arm].setdefault(key, []).append(value)
            bar.advance(task)
    table = summarise(errors, settings.fractions, downstream_error(None, test.inputs, test.targets, weights))
    out = {
        "task": settings.task,
        "score": "weighted mean squared error of the next state over the real test pairs, normalised units",
        "pairs": {"real_train": len(real), "synthetic": len(synthetic),
                  "synthetic_sources": len(np.unique(sources)), "test": len(test),
                  "real_by_fraction": {fraction_key(f): real_count(f, len(real))
                                       for f in settings.fractions}},
        "seeds": int(settings.seeds),
        "downstream": asdict(spec),
        "errors": errors,
        **table,
        "caveat": ("the generative model was trained on the whole train split: below 100 % of the real "
                   "pairs the gain measures what synthetic data passes on from training data the "
                   "downstream model did not see"),
        "source": {"store": str(store.path), "augmented": str(augmented_path)},
    }
    write_json(out, run.certificate)
    for old in run.root.glob("certificate.partial-*"):
        shutil.rmtree(old, ignore_errors=True)
    return out


def real_count(fraction: float, n: int) -> int:
    """The real pairs a fraction keeps: the first ``round(fraction n)``, at least one."""
    return max(1, round(float(fraction) * n))


def fractions_of(values: Sequence[float]) -> tuple[float, ...]:
    """Sorted, de-duplicated fractions."""
    return tuple(sorted({float(v) for v in values}))
