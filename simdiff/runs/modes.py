"""Generation modes: what ``simdiff generate`` makes from a trained run, as swappable objects.

A mode is chosen in the config by its ``_target_`` (``conf/generate/mode/``):

* :class:`Forecast`: for each init time of a split, members rolled out ``lead_steps`` steps
  autoregressively in latent space, decoded per step -> ``forecast.zarr``;
* :class:`Sample`: independent draws (unconditional, or with the labels/covariates of real
  samples of a split) -> ``samples.zarr``;
* :class:`Conditional`: for each chosen sample of a split, members drawn for that sample's
  conditions (a molecule's identity, electron count and geometry) -> ``conditional.zarr``, to
  be compared with that sample (its reference density on the same grid).

Each computes blocks of members (:meth:`compute`) that the output runner
(:mod:`simdiff.runs.outputs`) writes, or the Python API (:mod:`simdiff.runs.api`) returns; a
new mode is one more class with the same methods.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from simdiff.base.errors import DataError
from simdiff.data.loading.loader import contiguous_runs, window_targets
from simdiff.data.stores.latents import LatentStore
from simdiff.data.stores.stats import to_physical
from simdiff.data.stores.training import SPLITS, TrainingStore
from simdiff.generate.noise import SAMPLE_INIT
from simdiff.generate.output import missing, write_block
from simdiff.generate.renormalise import factor_variables, renormalise
from simdiff.generate.rollout import Conditions, SamplerSpec, draw_samples, member_batches, rollout
from simdiff.generate.template import conditional_template, forecast_template, sample_template
from simdiff.runs.models import Models, rollout_perturbations

#: The store arrays a model may be conditioned on, per sample.
CONDITIONS = ("time_features", "covariates", "label", "atoms")


@dataclass
class Generation:
    """One generation: the trained run's stores and models, how to sample, and which members."""

    store: TrainingStore
    latents: LatentStore
    models: Models
    spec: SamplerSpec
    members: list[int]
    seed: int
    batch_size: int = 16
    chunks: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # inflation's training tendencies, for a model conditioned on previous states (a forecaster)
        if self.spec.rollout_noise > 0 and self.spec.perturbations is None and self.models.previous:
            pool = rollout_perturbations(self.latents).to(self.models.model.residual_scale.device)
            self.spec = replace(self.spec, perturbations=pool)

    @cached_property
    def conditions(self) -> dict[str, np.ndarray]:
        """The store's conditions the model uses (time features, covariates, label), read once."""
        return {n: self.latents.array(n) for n in CONDITIONS if self.latents.has(n) and self.models.uses(n)}

    @cached_property
    def source(self) -> xr.Dataset:
        return self.store.dataset()

    def draw(
        self, conditions: Conditions, members: list[int], rows: np.ndarray, init: int = SAMPLE_INIT,
    ) -> xr.Dataset:
        """Independent draws ``members`` for ``conditions`` (noise keyed by ``init``):
        ``(realization, [D], Y, X)`` per variable, physical; ``rows``: the store sample whose
        conditions (and reference field, if the store has one) each member takes. Conditions
        given as a function of the draw ids are drawn in fixed member groups
        (:func:`draw_samples`)."""
        fields = draw_samples(
            self.models.model,
            self.models.decoder,
            self.spec,
            latent_shape=tuple(self.latents.data.shape[1:]),
            conditions=conditions,
            members=members,
            seed=self.seed,
            init=init,
        )
        return self.physical(fields, members, ("realization", "channel", *self.store.layout.spatial_dims),
                             rows)

    def physical(
        self, fields: np.ndarray, members: Sequence[int], dims: tuple[str, ...], rows: np.ndarray
    ) -> xr.Dataset:
        """Normalised fields (B, [L,] C, [D], Y, X) -> physical Dataset per variable, masked cells
        NaN; ``rows`` (B, [L]): the store sample each field stands for (its reference field)."""
        realization = np.asarray(members, dtype=np.int32)
        return to_physical(fields, dims, self.source, rows).assign_coords(
            realization=("realization", realization))


def without_previous(gen: Generation, what: str) -> None:
    """Refuse a mode that draws without an initial state for a forecasting model."""
    if gen.models.previous:
        raise DataError(
            f"the model forecasts from {gen.models.previous} previous state(s), so it cannot draw {what} "
            "without an initial state; use generate/mode=forecast, or train a model without previous "
            "states (diffusion.conditioning.previous=0)"
        )


def single_states(models: Models, what: str) -> None:
    """Refuse drawing single states (``what``) from a model of windows of several states."""
    if models.window > 1:
        raise DataError(
            f"the autoencoder encodes windows of {models.window} consecutive states "
            f"(autoencoder.window={models.window}), so the model draws whole windows and cannot draw {what}; "
            "use generate/mode=forecast, or train with autoencoder.window=1"
        )


def column_blocks(
    gen: Generation, pending: Sequence[tuple[int, int]], group: int = 1
) -> list[tuple[int, list[int]]]:
    """``(init, members)`` blocks of at most ``gen.batch_size`` members, init (or conditioning
    sample) by init; with ``group`` > 1, of whole member groups (:func:`member_batches`)."""
    by_init: dict[int, list[int]] = {}
    for m, i in pending:
        by_init.setdefault(i, []).append(m)
    return [(i, b) for i, ms in sorted(by_init.items()) for b in member_batches(ms, gen.batch_size, group)]


def check_indices(key: str, indices: Sequence[Any], what: str) -> None:
    """Refuse (DataError) a list of store sample indices that is empty or holds anything but ints >= 0."""
    bad = [i for i in indices if not isinstance(i, int) or isinstance(i, bool) or i < 0]
    if bad or not len(indices):
        raise DataError(
            f"generate.mode.{key}={list(indices)}: give store sample indices >= 0 (not {bad}), {what}"
        )


def longest_run(split: np.ndarray, block: np.ndarray, code: int) -> int:
    """The longest run of consecutive samples of one block in split ``code``."""
    lengths = np.bincount(contiguous_runs(split, block)[np.asarray(split) == code])
    return int(lengths.max()) if lengths.size else 0


@dataclass
class Forecast:
    """Ensemble forecasts: ``lead_steps`` autoregressive steps from each init of ``split``.

    The inits are ``init_indices`` if given, else every ``init_every``-th valid init of the
    split, at most ``max_inits``. A valid init ``t`` has its conditioning states and its
    ``lead_steps`` verifying states in one contiguous block of the split, so every lead has its
    conditions (time features) and a truth to be scored against. With latents of windows of
    ``k`` states (:attr:`LatentStore.window`) each step forecasts the next ``k`` leads, so
    ``lead_steps`` must be a multiple of ``k``, and the conditioning states are the windows
    ending at ``t``, ``t - k``, ...
    """

    split: str = "test"
    init_every: int = 10
    max_inits: int = 30
    init_indices: list[int] | None = None
    lead_steps: int = 4

    kind = "forecast"  # the output's name (forecast.zarr)

    def __post_init__(self) -> None:
        if int(self.lead_steps) < 1:
            raise DataError(
                f"generate.mode.lead_steps={self.lead_steps}: forecasts need at least 1 lead step"
            )
        if self.init_indices is None and self.split not in SPLITS:
            raise DataError(f"generate.mode.split={self.split!r} is not one of {sorted(SPLITS)}")
        if self.init_indices is not None:
            check_indices("init_indices", self.init_indices,
                          "or null to choose the inits of generate.mode.split")
        for key in ("init_every", "max_inits"):
            if int(getattr(self, key)) < 1:
                raise DataError(f"generate.mode.{key}={getattr(self, key)}: give a count >= 1")

    def inits(self, latents: LatentStore, window: int) -> list[int]:
        """The forecast inits in ``latents`` for a model that conditions on ``window - 1`` states."""
        leads, k = int(self.lead_steps), latents.window
        if leads % k:
            raise DataError(
                f"{latents.path}: generate.mode.lead_steps={leads}, but each step of this model forecasts a "
                f"window of {k} states (autoencoder.window={k}); give a multiple of {k}"
            )
        if self.init_indices:
            n = len(latents.array("split"))
            far = [int(i) for i in self.init_indices if int(i) + leads >= n]
            if far:
                raise DataError(
                    f"{latents.path}: generate.mode.init_indices={list(self.init_indices)}: {far} leave no "
                    f"room for generate.mode.lead_steps={leads} later states in its {n} samples; give "
                    f"indices <= {n - 1 - leads}"
                )
            context = max(window - 1, 1) * k
            block = latents.array("block")
            cut = [int(i) for i in self.init_indices if int(i) - context + 1 < 0
                   or len(np.unique(block[int(i) - context + 1 : int(i) + leads + 1])) > 1]
            if cut:
                raise DataError(
                    f"{latents.path}: generate.mode.init_indices={list(self.init_indices)}: {cut} need "
                    f"their {context} conditioning state(s) and generate.mode.lead_steps={leads} later "
                    "states in one block (consecutive times, no gap: variable 'block'), and these cross a "
                    "gap or the store's start; choose other inits or fewer lead steps"
                )
            return [int(i) for i in self.init_indices]
        context = max(window - 1, 1) * k  # the states the conditioning latents encode
        valid = (
            window_targets(
                latents.array("split"), latents.array("block"), SPLITS[self.split], context + leads
            )
            - leads
        )
        chosen = valid[:: int(self.init_every)][: int(self.max_inits)]
        if not len(chosen):
            longest = longest_run(latents.array("split"), latents.array("block"), SPLITS[self.split])
            raise DataError(
                f"{latents.path}: the {self.split!r} split has no init with {context} state(s) and "
                f"generate.mode.lead_steps={leads} later states in one contiguous block (its longest run "
                f"is {longest} samples); set generate.mode.lead_steps <= {max(longest - context, 0)}, "
                "choose another generate.mode.split, or pass generate.mode.init_indices"
            )
        return [int(i) for i in chosen]

    def template(self, gen: Generation) -> xr.Dataset:
        inits = self.inits(gen.latents, gen.models.previous + 1)
        return forecast_template(
            gen.store, gen.members, inits, list(range(1, int(self.lead_steps) + 1)), chunks=gen.chunks
        )

    def blocks(self, gen: Generation, pending: Sequence[tuple[int, int]]) -> list[tuple[int, list[int]]]:
        return column_blocks(gen, pending, gen.spec.grouped)

    def compute(self, gen: Generation, init: int, members: list[int]) -> xr.Dataset:
        """Members ``members`` from init ``init``: ``(realization, lead_time, [D], Y, X)`` per variable."""
        previous, lat, k = gen.models.previous, gen.latents.data, gen.latents.window
        window = (
            torch.from_numpy(np.asarray(lat[init - (previous - 1) * k : init + 1])[::k])
            if previous
            else torch.zeros((0, *lat.shape[1:]))
        )
        fields, _ = rollout(
            gen.models.model,
            gen.models.decoder,
            gen.spec,
            window=window,
            conditions=self._conditions(gen, init),
            members=members,
            init=init,
            leads=int(self.lead_steps) // k,
            seed=gen.seed,
        )
        leads = int(self.lead_steps)
        rows = np.broadcast_to(np.arange(init + 1, init + leads + 1), (len(members), leads))
        return gen.physical(
            fields, members, ("realization", "lead_time", "channel", *gen.store.layout.spatial_dims), rows
        )

    def _conditions(self, gen: Generation, init: int) -> dict[str, torch.Tensor]:
        """Per step, the conditions of its valid sample (``init + j``, or the last of the ``j``-th
        window's states: ``init + j*k``): time features, covariates, label."""
        k = gen.latents.window
        idx = np.arange(init + k, init + int(self.lead_steps) + 1, k)
        out = {}
        for name, values in gen.conditions.items():
            if idx[-1] >= len(values):
                raise DataError(
                    f"{gen.latents.path}: condition {name!r} is needed at sample {int(idx[-1])} "
                    f"(init {init} + {self.lead_steps} leads) but the store ends at "
                    f"{len(values) - 1}; choose earlier inits or fewer generate.mode.lead_steps"
                )
            out[name] = torch.from_numpy(np.asarray(values[idx]))
        return out

    @staticmethod
    def write(target: Path, block: xr.Dataset, init: int) -> None:
        write_block(target, block, init=init)


@dataclass
class Sample:
    """Independent draws of an unconditional model; a conditioned one takes the labels,
    covariates and time features of the real samples of ``split``, cycled by draw id."""

    split: str = "test"

    kind = "samples"  # the output's name (samples.zarr)

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise DataError(f"generate.mode.split={self.split!r} is not one of {sorted(SPLITS)}")

    def template(self, gen: Generation) -> xr.Dataset:
        without_previous(gen, "samples")
        single_states(gen.models, "samples")
        return sample_template(gen.store, gen.members, chunks=gen.chunks)

    def blocks(self, gen: Generation, pending: Sequence[tuple[int, int]]) -> list[tuple[int, list[int]]]:
        return [(-1, b) for b in member_batches([m for m, _ in pending], gen.batch_size, gen.spec.grouped)]

    def compute(self, gen: Generation, init: int, members: list[int]) -> xr.Dataset:
        """Draws ``members``: ``(realization, [D], Y, X)`` per variable (``init`` is unused, -1).
        Draw ``m`` takes the conditions of the split's sample ``m`` modulo its size, so a fixed
        member group's conditions are known whichever members were asked for."""
        pool = gen.latents.indices(self.split)

        def rows_of(ids: Sequence[int]) -> np.ndarray:
            return pool[np.asarray(ids, dtype=np.int64) % len(pool)] if len(pool) else np.zeros(0, np.int64)

        def conditions(ids: list[int]) -> dict[str, torch.Tensor]:
            rows = rows_of(ids)
            return {n: torch.from_numpy(np.asarray(v[rows])) for n, v in gen.conditions.items()}

        return gen.draw(conditions, members, rows_of(members))

    @staticmethod
    def write(target: Path, block: xr.Dataset, init: int) -> None:
        write_block(target, block)


@dataclass
class Conditional:
    """Members drawn for the conditions of chosen samples: ``indices``, else every ``every``-th
    sample of ``split``, at most ``max_conditions``. Used on molecules: sample ``i``'s molecule
    and geometry (atoms, electron count, label) condition ``members`` draws, and sample ``i``
    itself is the reference they are scored against (``split=train``: a geometry seen in
    training; ``test``: a held-out geometry)."""

    split: str = "test"
    every: int = 1
    max_conditions: int = 12
    indices: list[int] | None = None
    cubes: bool = True  # also write run_dir/cubes/ (voxel grids with atoms: simdiff.generate.cubes)
    renormalise: bool = False  # scale members to their reference's count (simdiff.generate.renormalise)

    kind = "conditional"  # the output's name (conditional.zarr)

    def __post_init__(self) -> None:
        if self.indices is None and self.split not in SPLITS:
            raise DataError(f"generate.mode.split={self.split!r} is not one of {sorted(SPLITS)}")
        if int(self.every) < 1 or int(self.max_conditions) < 1:
            raise DataError(f"generate.mode.every={self.every}, max_conditions={self.max_conditions}: "
                            "both must be >= 1")
        if self.indices is not None:
            check_indices("indices", self.indices, "or null to choose the samples of generate.mode.split")

    def chosen(self, latents: LatentStore) -> list[int]:
        """The conditioning samples: store indices."""
        if self.indices is not None:
            n = len(latents.array("split"))
            bad = [int(i) for i in self.indices if int(i) >= n]
            if bad:
                raise DataError(f"generate.mode.indices={list(self.indices)}: {bad} lie beyond the store's "
                                f"{n} samples ({latents.path})")
            return [int(i) for i in self.indices]
        pool = latents.indices(self.split)
        if not len(pool):
            raise DataError(f"{latents.path}: the {self.split!r} split is empty; choose another "
                            "generate.mode.split or pass generate.mode.indices")
        return [int(i) for i in pool[:: int(self.every)][: int(self.max_conditions)]]

    def template(self, gen: Generation) -> xr.Dataset:
        without_previous(gen, "conditional draws")
        single_states(gen.models, "conditional draws")
        ds = conditional_template(gen.store, gen.members, self.chosen(gen.latents), chunks=gen.chunks)
        return factor_variables(ds, self._renormalised(gen)) if self.renormalise else ds

    def _renormalised(self, gen: Generation) -> list[str]:
        """The variables renormalisation scales: those the store models relative to a reference."""
        if "reference" not in gen.source:
            raise DataError(
                f"{gen.store.path}: generate.mode.renormalise=true scales each member to its reference "
                "field's count (a molecule's promolecule), and this store has no reference fields; "
                "prepare with data.reference=promolecule, or set generate.mode.renormalise=false"
            )
        return [str(c) for c in gen.source["reference_channel"].values]

    def blocks(self, gen: Generation, pending: Sequence[tuple[int, int]]) -> list[tuple[int, list[int]]]:
        return column_blocks(gen, pending, gen.spec.grouped)

    def compute(self, gen: Generation, init: int, members: list[int]) -> xr.Dataset:
        """Members ``members`` for the conditions of sample ``init``: ``(realization, [D], Y, X)``."""
        def conditions(ids: list[int]) -> dict[str, torch.Tensor]:  # sample init's, for every member
            return {n: torch.from_numpy(np.repeat(np.asarray(v[init : init + 1]), len(ids), axis=0))
                    for n, v in gen.conditions.items()}

        block = gen.draw(conditions, members, np.full(len(members), init), init)
        if not self.renormalise:
            return block
        ref = gen.source["reference"].isel({gen.store.layout.sample_dim: init})
        return renormalise(block, {n: ref.sel(reference_channel=n).values for n in self._renormalised(gen)})

    @staticmethod
    def write(target: Path, block: xr.Dataset, init: int) -> None:
        write_block(target, block, init=init)


@dataclass
class GenerateJob:
    """A mode's output as a :class:`simdiff.runs.outputs.Job`."""

    mode: Any
    gen: Generation
    attributes: Any  # () -> the output attrs (rank 0 only: it hashes the training store)
    stage: str = "generate"
    unit: str = "members"

    def template(self) -> xr.Dataset:
        return self.mode.template(self.gen)

    def attrs(self) -> dict[str, Any]:
        return self.attributes()

    def pending(self, target: Path) -> list[tuple[int, int]]:
        return missing(target)

    def blocks(self, pending: Sequence[tuple[int, int]]) -> list[tuple[int, list[int]]]:
        return self.mode.blocks(self.gen, pending)

    def size(self, block: tuple[int, list[int]]) -> int:
        return len(block[1])

    def run(self, block: tuple[int, list[int]], target: Path):
        init, members = block
        self.mode.write(target, self.mode.compute(self.gen, init, members), init)
        yield len(members)

    def finish(self, target: Path) -> None:
        return None
