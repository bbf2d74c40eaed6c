"""Augmentation as a :class:`simdiff.runs.outputs.Job`: synthetic samples in the source's schema,
filtered by physical bounds (:mod:`simdiff.generate.augment`).

Rows. The store holds ``len(real)`` real samples first (when merging; de-normalised from the
training store, ``synthetic = False``), then one row per synthetic id. A synthetic row is drawn
in rounds: a candidate the filter rejects is redrawn with the next round's keys, up to
``max_rounds`` candidates; rejection counts per reason go to the log and, summed, to the
``simdiff_rejected`` attribute. Rows still rejected after ``max_rounds`` stop the run with a
message (the rows written are kept: re-run with a larger ``max_rounds``, which resumes, or a
wider filter, which starts over).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property, partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
import zarr

from simdiff.base.errors import DataError
from simdiff.data.loading.loader import window_targets
from simdiff.data.stores.latents import LatentStore
from simdiff.data.stores.training import SPLITS, TrainingStore
from simdiff.generate.augment import (
    REASONS,
    augment_template,
    choose_sources,
    open_rows,
    physical,
    tally_rejections,
    write_rows,
)
from simdiff.generate.noise import SAMPLE_INIT
from simdiff.generate.output import partial_path
from simdiff.generate.rollout import SamplerSpec, draw_samples, member_batches
from simdiff.runs.models import Models
from simdiff.runs.modes import CONDITIONS, single_states

log = logging.getLogger("simdiff")


def source_pool(latents: LatentStore, split: str, previous: int) -> np.ndarray:
    """The real samples a draw may start from: indices into the store.

    A forecaster's candidates are states ``t`` whose ``previous`` states and target ``t + 1`` lie
    in one block of ``split`` (the draw takes the conditions of ``t + 1``); an unconditional
    model's are all samples of ``split``.
    """
    if split not in SPLITS:
        raise DataError(f"augment.split={split!r} is not one of {sorted(SPLITS)}")
    if previous:
        pool = window_targets(latents.array("split"), latents.array("block"), SPLITS[split], previous + 1) - 1
    else:
        pool = latents.indices(split)
    if not len(pool):
        raise DataError(
            f"{latents.path}: the {split!r} split has no sample to condition draws on "
            f"(a forecaster needs {previous} previous state(s) and the next one in one block); "
            "choose another augment.split"
        )
    return pool.astype(np.int64)


def condition_templates(latents: LatentStore, names: list[str]) -> dict[str, xr.DataArray]:
    """One sample's value of each condition, with dims and coords (for the output template)."""
    ds = latents.dataset()
    sdim = latents.layout.sample_dim
    return {n: ds[n].isel({sdim: 0}, drop=True).load() for n in names}


def filter_bounds(target: Path, variables: Sequence[str]) -> xr.Dataset:
    """The filter's training range, as rank 0 wrote it into the partial store's attrs."""
    attrs = json.loads(zarr.open_group(str(partial_path(target)), mode="r").attrs["simdiff_filter"])
    return xr.Dataset(
        {
            "minimum": ("channel", [attrs["bounds"][v][0] for v in variables]),
            "maximum": ("channel", [attrs["bounds"][v][1] for v in variables]),
        },
        coords={"channel": list(variables)},
    )


@dataclass
class AugmentJob:
    """Draw, filter and write an augmented dataset (see the module docstring)."""

    store: TrainingStore
    latents: LatentStore
    models: Models
    spec: SamplerSpec
    filt: Any  # simdiff.generate.augment.BoundsFilter
    ids: list[int]
    split: str
    merge: bool
    seed: int
    max_rounds: int
    batch_size: int
    attributes: Callable[[], dict[str, Any]]
    per_source: int = 1
    stage: str = "augment"
    unit: str = "rows"
    rejected: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))

    def __post_init__(self) -> None:
        single_states(self.models, "an augmented dataset of single states")
        self.used = [n for n in CONDITIONS if self.latents.has(n) and self.models.uses(n)]
        previous = self.models.previous
        self.pool = (
            source_pool(self.latents, self.split, previous)
            if (previous or self.used)
            else np.zeros(0, np.int64)
        )
        self.real = self.store.indices(self.split) if self.merge else np.zeros(0, np.int64)
        self.bounds: xr.Dataset | None = None

    @property
    def n_real(self) -> int:
        return len(self.real)

    def template(self) -> xr.Dataset:
        return augment_template(
            self.store, self.n_real, self.ids, condition_templates(self.latents, self.used)
        )

    def attrs(self) -> dict[str, Any]:
        return self.attributes()

    def pending(self, target: Path) -> list[int]:
        self.bounds = filter_bounds(target, self.store.variables)
        return open_rows(target)

    def blocks(self, pending: Sequence[int]) -> list[tuple[str, list[int]]]:
        real = [("real", b) for b in member_batches([p for p in pending if p < self.n_real], self.batch_size)]
        # synthetic rows in whole fixed groups of draw ids (the first round draws a group at once)
        row_of = {int(self.ids[p - self.n_real]): p for p in pending if p >= self.n_real}
        return real + [
            ("synthetic", [row_of[i] for i in b])
            for b in member_batches(list(row_of), self.batch_size, self.spec.grouped)
        ]

    def size(self, block: tuple[str, list[int]]) -> int:
        return len(block[1])

    def run(self, block: tuple[str, list[int]], target: Path) -> Iterator[int]:
        kind, rows = block
        if kind == "real":
            write_rows(target, self._real_rows(rows))
            yield len(rows)
        else:
            for _ in self._synthetic_rows(rows, target):
                yield 1

    def finish(self, target: Path) -> None:
        left = open_rows(target)
        if left:
            raise DataError(
                f"{partial_path(target)}: {len(left)} synthetic sample(s) (ids "
                f"{[self.ids[p - self.n_real] for p in left[:10]]}) failed the physical-bounds filter in all "
                f"{self.max_rounds} rounds (this rank's rejections: {self.rejected}). Fix: re-run with a "
                "larger augment.max_rounds (resumes the rows written), or widen "
                "augment.filter.range_margin (starts over); a model that needs many rounds may be "
                "under-trained"
            )
        tally = tally_rejections(target)
        log.info(
            "augment: filter rejected %d candidate(s) in all (%s)",
            tally["total"],
            ", ".join(f"{k} {v}" for k, v in tally.items() if k != "total"),
        )

    @cached_property
    def _conditions(self) -> dict[str, np.ndarray]:
        """The store's conditions the model uses, read once (every draw indexes them)."""
        return {n: self.latents.array(n) for n in self.used}

    def _conditions_at(self, index: np.ndarray) -> dict[str, np.ndarray]:
        return {n: np.asarray(v[index]) for n, v in self._conditions.items()}

    def _model_inputs(self, sources: np.ndarray) -> dict[str, torch.Tensor]:
        """What draws from ``sources`` are conditioned on: each source's previous latent states
        (a forecaster) and the conditions of the sample the draw stands for."""
        previous = self.models.previous
        rows = sources + 1 if previous else sources
        out = {n: torch.from_numpy(v) for n, v in self._conditions_at(rows).items()}
        if previous:
            lat = self.latents.data
            out["previous"] = torch.from_numpy(
                np.stack([np.asarray(lat[s - previous + 1 : s + 1]) for s in sources]))
        return out

    def _draw_conditions(self, ids: list[int], round_: int) -> dict[str, torch.Tensor]:
        """:meth:`_model_inputs` of draws ``(id, round_)`` (their sources chosen by id)."""
        return self._model_inputs(choose_sources(self.pool, ids, round_, self.seed, self.per_source))

    def _real_rows(self, rows: list[int]) -> dict[int, dict[str, Any]]:
        """Merged real samples: the training store's fields in physical units, with their conditions."""
        index = self.real[np.asarray(rows)]
        fields = np.stack([np.asarray(self.store.data[int(i)]) for i in index])
        phys = physical(fields, self.store, index)
        conds = self._conditions_at(index)
        out = {}
        for j, pos in enumerate(rows):
            values: dict[str, Any] = {v: phys[v].values[j] for v in self.store.variables}
            values.update(synthetic=False, sample_id=-1, source_index=int(index[j]), draws=0)
            values.update({n: c[j] for n, c in conds.items()})
            out[pos] = values
        return out

    def _synthetic_rows(self, rows: list[int], target: Path) -> Iterator[int]:
        """Draw, filter and write the synthetic rows ``rows``; yields once per row settled."""
        sdim = self.store.layout.sample_dim
        mask = self.store.dataset()["mask"].load()
        transforms = self.store.transforms
        lat = self.latents.data
        previous = self.models.previous
        counts = {p: np.zeros(len(REASONS), dtype=np.int32) for p in rows}
        pending = list(rows)
        for r in range(self.max_rounds):
            if not pending:
                break
            ids = [self.ids[p - self.n_real] for p in pending]
            sources = choose_sources(self.pool, ids, r, self.seed, self.per_source)
            conds = self._conditions_at(sources + 1 if previous else sources) if self.used else {}
            # the first round in fixed groups of ids (batched, bits independent of the other ids asked
            # for); a redraw, of the few rejected, row by row (as the spec says)
            first = partial(self._draw_conditions, round_=r)
            fields = draw_samples(
                self.models.model,
                self.models.decoder,
                self.spec,
                latent_shape=tuple(lat.shape[1:]),
                conditions=first if r == 0 else self._model_inputs(sources),
                members=ids,
                seed=self.seed,
                init=SAMPLE_INIT,
                counter=r + 1,
            )
            phys = physical(fields, self.store, sources + 1 if previous else sources)
            bad = self.filt.reasons(phys, self.bounds, mask, transforms, sdim).values
            keep: dict[int, dict[str, Any]] = {}
            still = []
            for j, pos in enumerate(pending):
                if bad[j].any():
                    counts[pos] += bad[j]
                    for k, reason in enumerate(REASONS):
                        self.rejected[reason] += int(bad[j, k])
                    still.append(pos)
                    continue
                values: dict[str, Any] = {v: phys[v].values[j] for v in self.store.variables}
                values.update(
                    synthetic=True,
                    sample_id=ids[j],
                    source_index=int(sources[j]),
                    draws=r + 1,
                    rejections=counts[pos],
                )
                values.update({n: c[j] for n, c in conds.items()})
                keep[pos] = values
            write_rows(target, keep)
            if still:
                why = ", ".join(
                    f"{k} {int(bad[:, i].sum())}" for i, k in enumerate(REASONS) if bad[:, i].any()
                )
                log.info(
                    "augment: round %d: %d of %d candidate(s) rejected (%s)",
                    r + 1,
                    len(still),
                    len(pending),
                    why,
                )
            yield from keep
            pending = still
        if pending:
            write_rows(
                target, {p: {"rejections": counts[p], "draws": self.max_rounds} for p in pending}, done=False
            )
