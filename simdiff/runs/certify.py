"""The downstream certificate of an augmented dataset (:mod:`simdiff.evaluate.certificate`) run on a
run directory: the real and synthetic examples, the cells, resume, the published JSON.

Pairs (``task=next_state``). Real pairs ``(x_t, x_{t+1})`` are every two consecutive samples of
one block of a split of the training store, normalised as the store holds them; with a
non-spatial depth (pressure levels, QG layers) levels are folded into channels. Synthetic pairs
are the augmented dataset's next-state draws with the state that conditioned each
(``source_index``), normalised with the training store's statistics and transforms. The
generative model was trained on the whole train split, so below 100 % the certificate measures
what synthetic data passes on from training data the downstream model did not see, not
augmentation of a short record on its own.

Labelled fields (``task=label``). Real examples are the samples of a split with their ``label``;
synthetic ones are the augmented dataset's draws with the label that conditioned each. Both are
read in physical units (a store modelled relative to a reference field, molecules against their
promolecule, is put back together first), passed through each variable's transform (log1p for
densities) and standardised per channel with the real training samples' mean and std over the
valid cells, 0 at masked cells: the classifier sees the field itself, not the generative
model's internal normalisation.

Cells. One training per (arm, fraction, seed): ``real`` and ``real+synthetic`` (each batch half
real and half synthetic: ``synthetic_share``) at each fraction, ``synthetic`` once (it uses no
real training data). Each finished cell is written at once to
``run_dir/certificate.cells-HASH/`` (HASH: the inputs and every setting that changes a cell's
result, not the list of fractions or the number of seeds), so a killed run resumes with the
cells left and ends with the same numbers, and a later run that asks for more fractions or seeds
trains only the new cells. The certificate is published as ``run_dir/certificate.json`` in one
atomic write; the cells of other settings are removed then.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Callable, Sequence
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
from simdiff.data.stores.stats import denormalise, normalise, transform_of
from simdiff.data.stores.training import SPLITS, TrainingStore
from simdiff.evaluate.certificate import (
    ARMS,
    Downstream,
    downstream_error,
    fraction_key,
    interval,
    label_scores,
    summarise,
    train_classifier,
    train_emulator,
)
from simdiff.runs.layout import RunDir

log = logging.getLogger("simdiff")

#: The downstream tasks built: a forecasting dataset's next-state emulator; a labelled dataset's
#: classifier of the label.
TASKS = ("next_state", "label")


@dataclass(frozen=True)
class Certify:
    """What the certificate runs (``conf/certify/``)."""

    task: str = "next_state"
    fractions: tuple[float, ...] = (0.01, 0.05, 0.25, 1.0)
    seeds: int = 3
    synthetic_share: float | None = 0.5
    downstream: Downstream = field(default_factory=Downstream)

    def __post_init__(self) -> None:
        if self.synthetic_share is not None and not 0 < float(self.synthetic_share) < 1:
            raise DataError(f"certify.synthetic_share={self.synthetic_share}: give the synthetic share of "
                            "each real+synthetic batch in (0, 1), or null for batches drawn from all pairs")
        if self.task not in TASKS:
            raise DataError(f"certify.task={self.task!r}: the downstream tasks built are {list(TASKS)} "
                            "(next_state: a forecasting dataset's emulator; label: a classifier of a "
                            "labelled dataset's label)")
        if not self.fractions or any(not 0 < float(f) <= 1 for f in self.fractions):
            raise DataError(f"certify.fractions={list(self.fractions)}: give fractions of the real "
                            "training pairs in (0, 1], e.g. [0.05, 0.1, 0.25, 1.0]")
        if int(self.seeds) < 1:
            raise DataError(f"certify.seeds={self.seeds}: give a count >= 1 (3 or more for intervals)")


@dataclass(frozen=True)
class Pairs:
    """(N, C, [D], H, W) float32 inputs, normalised, 0 at masked cells, and their targets: the
    next states (same shape) or the labels (N,) int64."""

    inputs: np.ndarray
    targets: np.ndarray

    def __len__(self) -> int:
        return len(self.inputs)

    def take(self, n: int) -> Pairs:
        return Pairs(self.inputs[:n], self.targets[:n])


def has_levels(store: TrainingStore) -> bool:
    """True when the store's depth axis holds distinct levels (folded into channels), not a
    spatial axis of one volume."""
    depth = store.layout.depth_dim
    return depth is not None and depth not in SPATIAL_DEPTH_DIMS


def fold_levels(x: np.ndarray, store: TrainingStore) -> np.ndarray:
    """(N, C, D, H, W) -> (N, C*D, H, W) when ``store``'s depth holds levels (the downstream
    models' layout); unchanged otherwise."""
    return x.reshape(x.shape[0], -1, *x.shape[-2:]) if has_levels(store) else x


def real_pairs(store: TrainingStore, split: str) -> Pairs:
    """Every ``(x_t, x_{t+1})`` of one block of ``split``, in sample order."""
    targets = window_targets(store.array("split"), store.array("block"), SPLITS[split], 2)
    data = store.dataset()["data"]
    sdim = store.layout.sample_dim
    x = np.asarray(data.isel({sdim: targets - 1}).values, dtype=np.float32)
    y = np.asarray(data.isel({sdim: targets}).values, dtype=np.float32)
    return Pairs(fold_levels(x, store), fold_levels(y, store))


def synthetic_rows(augmented: xr.Dataset, path: Path) -> np.ndarray:
    """The positions of the augmented dataset's synthetic samples (a merged store holds real ones
    first); refused when there is none."""
    fake = np.flatnonzero(np.asarray(augmented["synthetic"].values, dtype=bool))
    if not fake.size:
        raise DataError(f"{path}: no synthetic samples; run simdiff augment with augment.samples >= 1")
    return fake


def synthetic_pairs(store: TrainingStore, augmented: xr.Dataset, path: Path) -> tuple[Pairs, np.ndarray]:
    """The augmented dataset's next-state draws with their sources; and the source indices."""
    if augmented.attrs.get("simdiff_draws") != "next_state" or "source_index" not in augmented:
        raise DataError(
            f"{path}: its samples are not next-state draws (attr simdiff_draws="
            f"{augmented.attrs.get('simdiff_draws')!r}); certify.task=next_state needs an augmented "
            "dataset of a forecaster (diffusion.conditioning.previous >= 1)"
        )
    sdim = store.layout.sample_dim
    fake = synthetic_rows(augmented, path)
    source = np.asarray(augmented["source_index"].values, dtype=np.int64)[fake]
    ds = store.dataset()
    draws = augmented[store.variables].isel({sdim: fake})
    if "reference" in ds:
        raise DataError(f"{store.path}: its variables are normalised relative to a reference field; the "
                        "next-state certificate does not support such stores")
    normalised = normalise(draws, ds[["mean", "std"]], ds["mask"], store.transforms, block_samples=64)
    y = fold_levels(np.asarray(normalised.values, dtype=np.float32), store)
    x = fold_levels(np.asarray(ds["data"].isel({sdim: source}).values, dtype=np.float32), store)
    return Pairs(x, y), source


def loss_weights(store: TrainingStore) -> np.ndarray:
    """(C', [D], H, W) cell weight x validity, broadcast over the channels the net sees."""
    ds = store.dataset()
    w = np.asarray(ds["weights"].values, dtype=np.float32) * np.asarray(ds["mask"].values, dtype=np.float32)
    w = np.broadcast_to(w[None], (len(store.variables), *w.shape))
    return (w.reshape(-1, *w.shape[-2:]) if has_levels(store) else w).copy()


def periodic_axes(store: TrainingStore) -> list[bool]:
    """Per spatial axis the net convolves over, True where it wraps."""
    periodic = set(store.attrs["geometry"].get("periodic", []))
    dims = list(store.layout.spatial_dims)
    if has_levels(store):
        dims = dims[-2:]
    return [d in periodic for d in dims]


def _digest(settings: Certify, inputs: dict[str, Any]) -> str:
    """What one cell's result depends on: a cell is (arm, fraction, seed) under these."""
    cell = {k: v for k, v in asdict(settings).items() if k not in ("fractions", "seeds")}
    text = json.dumps({"settings": cell, "inputs": inputs}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _cells(settings: Certify) -> list[tuple[str, str, int]]:
    cells = []
    for seed in range(int(settings.seeds)):
        for f in settings.fractions:
            cells += [("real", fraction_key(f), seed), ("real+synthetic", fraction_key(f), seed)]
        cells.append(("synthetic", "all", seed))
    return cells


def label_classes(store: TrainingStore) -> int:
    """The label's classes (:meth:`TrainingStore.label_classes`), refused without a label."""
    if not store.has("label"):
        raise DataError(f"{store.path}: no `label` condition; certify.task=label needs a labelled dataset "
                        "(molecules), certify.task=next_state a forecasting one")
    return store.label_classes()


def _transformed(data: xr.Dataset, store: TrainingStore) -> np.ndarray:
    """Physical variables (N, [D], H, W) -> (N, C, [D], H, W) float64 under each variable's
    transform (levels folded into channels), NaN at masked cells."""
    parts = [np.asarray(transform_of(store.transforms, v).forward(data[v].astype(np.float64)).values)
             for v in store.variables]
    return fold_levels(np.stack(parts, axis=1), store)


@dataclass(frozen=True)
class ChannelScale:
    """Per channel mean and std of the transformed real training fields over the valid cells."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def of(cls, x: np.ndarray) -> ChannelScale:
        axes = (0, *range(2, x.ndim))
        mean = np.nanmean(x, axis=axes)
        std = np.nanstd(x, axis=axes)
        return cls(mean, np.where(std > 0, std, 1.0))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        shape = (1, -1) + (1,) * (x.ndim - 2)
        z = (x - self.mean.reshape(shape)) / self.std.reshape(shape)
        return np.nan_to_num(z, nan=0.0).astype(np.float32)


def real_labelled(store: TrainingStore, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The transformed fields (N, C, [D], H, W) and labels (N,) of every sample of ``split``."""
    rows = store.indices(split)
    physical = denormalise(store.dataset().isel({store.layout.sample_dim: rows}))
    return _transformed(physical, store), store.array("label")[rows].astype(np.int64)


def synthetic_labelled(
    store: TrainingStore, augmented: xr.Dataset, path: Path
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The augmented dataset's synthetic fields (transformed, as :func:`real_labelled`), the label
    that conditioned each, and their real source samples."""
    if "label" not in augmented:
        raise DataError(f"{path}: its samples carry no `label`: the generative model does not condition on "
                        "the label, so no draw has one; certify.task=label needs draws of a "
                        "label-conditioned model (diffusion.conditioning.label=true)")
    fake = synthetic_rows(augmented, path)
    sdim = store.layout.sample_dim
    draws = augmented[store.variables].isel({sdim: fake}).load()
    labels = np.asarray(augmented["label"].values, dtype=np.int64)[fake]
    sources = (np.asarray(augmented["source_index"].values, dtype=np.int64)[fake]
               if "source_index" in augmented else np.full(fake.size, -1))
    return _transformed(draws, store), labels, sources


@dataclass
class Examples:
    """One task's real training, held-out and synthetic examples, how to fit its downstream model
    and how to score one on the held-out examples."""

    real: Pairs
    test: Pairs
    synthetic: Pairs
    sources: np.ndarray
    fit: Callable[[list[tuple[np.ndarray, np.ndarray]], int, list[float] | None], Any]
    score: Callable[[Any], dict[str, float]]  # model (None: the baseline) -> {"error", ...}
    baseline: str
    score_text: str


def _next_state_examples(store: TrainingStore, augmented: xr.Dataset, path: Path,
                         spec: Downstream) -> Examples:
    real = real_pairs(store, "train")
    test = real_pairs(store, "test")
    if not len(test):
        test = real_pairs(store, "val")
    if len(real) < 2 or not len(test):
        raise DataError(f"{store.path}: {len(real)} training and {len(test)} held-out (state, next state) "
                        "pairs; the certificate needs a time series with consecutive samples in train "
                        "and test")
    synthetic, sources = synthetic_pairs(store, augmented, path)
    weights, periodic = loss_weights(store), periodic_axes(store)
    return Examples(
        real, test, synthetic, sources,
        fit=lambda parts, seed, shares: train_emulator(parts, weights, periodic, spec, seed, shares),
        score=lambda model: {"error": downstream_error(model, test.inputs, test.targets, weights)},
        baseline="persistence",
        score_text="weighted mean squared error of the next state over the real test pairs, normalised units",
    )


def _label_examples(store: TrainingStore, augmented: xr.Dataset, path: Path, spec: Downstream) -> Examples:
    classes = label_classes(store)
    x, y = real_labelled(store, "train")
    held = "test" if len(store.indices("test")) else "val"
    tx, ty = real_labelled(store, held)
    if len(x) < 2 or not len(tx):
        raise DataError(f"{store.path}: {len(x)} training and {len(tx)} held-out labelled samples; the "
                        "certificate needs both")
    if min(x.shape[2:]) < 4:
        raise DataError(f"{store.path}: fields of {'x'.join(map(str, x.shape[2:]))} cells; the label "
                        "classifier embeds 4x4 patches, so every spatial axis needs at least 4 cells")
    sx, sy, sources = synthetic_labelled(store, augmented, path)
    if sy.min() < 0 or sy.max() >= classes:
        raise DataError(f"{path}: labels {sorted(set(sy.tolist()))} outside the store's {classes} classes")
    scale = ChannelScale.of(x)
    real, test, synthetic = Pairs(scale(x), y), Pairs(scale(tx), ty), Pairs(scale(sx), sy)
    prior = np.bincount(y, minlength=classes) + 0.5  # add-half smoothing: no class at probability 0
    periodic = periodic_axes(store)

    def score(model: Any) -> dict[str, float]:
        out = label_scores(model, test.inputs, test.targets, prior)
        # (misclassified + 1/2) / (n + 1): never 0, so a ratio to it stays defined when a
        # classifier gets every test sample right
        wrong = (1.0 - out["accuracy"]) * len(test)
        return {"error": (wrong + 0.5) / (len(test) + 1), **out}

    return Examples(
        real, test, synthetic, sources,
        fit=lambda parts, seed, shares: train_classifier(parts, classes, periodic, spec, seed, shares),
        score=score,
        baseline="class prior",
        score_text=(f"error rate of the label ({classes} classes) over the real {held} samples, "
                    "(misclassified + 1/2) / (samples + 1)"),
    )


def certify(run: RunDir, augmented: xr.Dataset, augmented_path: Path, settings: Certify,
            seed: int = 0) -> dict[str, Any]:
    """Run (or resume) every cell and publish ``run_dir/certificate.json``; returns it."""
    store = TrainingStore(run.store)
    spec = settings.downstream
    build = {"next_state": _next_state_examples, "label": _label_examples}[settings.task]
    ex = build(store, augmented, augmented_path, spec)
    real, synthetic = ex.real, ex.synthetic
    inputs = {"store": str(store.path), "augmented": str(augmented_path),
              "augmented_history": str(augmented.attrs.get("history", "")), "seed": int(seed)}
    partial = run.root / f"certificate.cells-{_digest(settings, inputs)}"
    partial.mkdir(exist_ok=True)
    errors: dict[str, dict[str, list[float]]] = {arm: {} for arm in ARMS}
    cross_entropy: dict[str, dict[str, list[float]]] = {arm: {} for arm in ARMS}
    cells = _cells(settings)
    log.info("certify (%s): %d real training examples, %d synthetic (%d sources), %d held-out; %d "
             "trainings of %d steps", settings.task, len(real), len(synthetic), len(np.unique(ex.sources)),
             len(ex.test), len(cells), spec.steps)
    with Progress(TextColumn("certify"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()) as bar:
        task = bar.add_task("trainings", total=len(cells))
        for arm, key, s in cells:
            cell = partial / f"{arm}@{key}@seed{s}.json"
            if cell.is_file():
                scores = json.loads(cell.read_text())
            else:
                n_real = real_count(float(key), len(real)) if key != "all" else 0
                parts = {"real": [real.take(n_real)], "real+synthetic": [real.take(n_real), synthetic],
                         "synthetic": [synthetic]}[arm]
                share = settings.synthetic_share
                shares = None if len(parts) == 1 or share is None else [1 - share, share]
                model = ex.fit([(p.inputs, p.targets) for p in parts], int(seed) * 1000 + s, shares)
                got = ex.score(model)
                scores = {"test_error": got.pop("error"), **got}
                write_json({"arm": arm, "fraction": key, "seed": s, "pairs": sum(len(p) for p in parts),
                            **scores}, cell)
                log.info("certify: %s at %s of the real examples, seed %d: test error %.4g", arm, key, s,
                         scores["test_error"])
            errors[arm].setdefault(key, []).append(float(scores["test_error"]))
            if "cross_entropy" in scores:
                cross_entropy[arm].setdefault(key, []).append(float(scores["cross_entropy"]))
            bar.advance(task)
    base = ex.score(None)
    table = summarise(errors, settings.fractions, {"name": ex.baseline, **base})
    out = {
        "task": settings.task,
        "score": ex.score_text,
        "pairs": {"real_train": len(real), "synthetic": len(synthetic),
                  "synthetic_sources": len(np.unique(ex.sources)), "test": len(ex.test),
                  "real_by_fraction": {fraction_key(f): real_count(f, len(real))
                                       for f in settings.fractions}},
        "seeds": int(settings.seeds),
        "downstream": asdict(spec),
        "errors": errors,
        **table,
        "caveat": ("the generative model was trained on the whole train split: below 100 % of the real "
                   "examples the gain measures what synthetic data passes on from training data the "
                   "downstream model did not see"),
        "source": {"store": str(store.path), "augmented": str(augmented_path)},
    }
    if any(cross_entropy.values()):  # the label task: the classifiers' confidence beside their errors
        out["cross_entropy"] = {arm: {k: interval(v) for k, v in by.items()}
                                for arm, by in cross_entropy.items()}
    write_json(out, run.certificate)
    for old in run.root.glob("certificate.cells-*"):
        if old != partial:
            shutil.rmtree(old, ignore_errors=True)
    return out


def real_count(fraction: float, n: int) -> int:
    """The real pairs a fraction keeps: the first ``round(fraction n)``, at least one."""
    return max(1, round(float(fraction) * n))


def fractions_of(values: Sequence[float]) -> tuple[float, ...]:
    """Sorted, de-duplicated fractions."""
    return tuple(sorted({float(v) for v in values}))
