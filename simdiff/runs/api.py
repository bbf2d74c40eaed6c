"""The Python face of a trained run: open it, draw forecasts and samples, encode, decode, score.

::

    import simdiff
    run = simdiff.open_run("runs/qg")
    fc = run.forecast(init_index=run.inits()[0], members=10, lead_steps=4)   # xr.Dataset, physical units
    metrics = run.evaluate(fc)

No Hydra: networks are rebuilt from the configs saved beside the checkpoints
(:mod:`simdiff.runs.models`). For the same seed, members, init and sampler settings, the members
are the numbers ``simdiff generate`` writes, bit for bit (the same code computes them:
:mod:`simdiff.runs.modes`). Sampling defaults are those of ``conf/generate/default.yaml``.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from simdiff.base.errors import DataError
from simdiff.data.stores.latents import LatentStore
from simdiff.data.stores.training import TrainingStore
from simdiff.diffusion.samplers import sample_heun
from simdiff.diffusion.sampling import Sampling
from simdiff.generate.augment import physical
from simdiff.generate.output import COLUMN_INDEX
from simdiff.generate.rollout import SamplerSpec
from simdiff.runs.evaluation import Scoring, score_forecast
from simdiff.runs.layout import RunDir
from simdiff.runs.models import Models, load_autoencoder, load_models, open_latents, residual_summary
from simdiff.runs.modes import Conditional, Forecast, Generation, Sample

#: What guidance acts on by default (conf/generate/default.yaml).
GUIDED = ("label", "covariates", "time_features", "atoms")


def open_run(path: str | Path, device: str | torch.device = "cpu") -> Run:
    """A trained run directory (at least prepared; the models are loaded when first needed)."""
    return Run(path, device)


class Run:
    """A run directory as Python objects; see the module docstring."""

    def __init__(self, path: str | Path, device: str | torch.device = "cpu") -> None:
        self.dir = RunDir(path)
        if not (self.dir.store / "zarr.json").is_file():
            raise DataError(
                f"{self.dir.store}: no training store here; run `simdiff prepare "
                f"run_dir={self.dir.root}` (or `simdiff run`) first"
            )
        self.store = TrainingStore(self.dir.store)
        self.device = torch.device(device)
        self._models: dict[int, Models] = {}

    def __repr__(self) -> str:
        return f"Run({str(self.dir.root)!r}, variables={self.store.variables})"

    @cached_property
    def latents(self) -> LatentStore:
        return open_latents(self.dir)

    @cached_property
    def autoencoder(self) -> Any:
        return load_autoencoder(self.dir)[0].to(self.device)

    def models(self, decoder_noise_samples: int = 64) -> Models:
        """The diffusion model and decoder, with a residual model fitted on that many val samples
        (0: none)."""
        key = int(decoder_noise_samples)
        if key not in self._models:
            self._models[key] = load_models(self.dir, self.latents, self.device, key)
        return self._models[key]

    # -- sampling --------------------------------------------------------------------------
    def sampler(
        self,
        *,
        steps: int = 18,
        sampler: Any = None,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        rho: float = 7.0,
        guidance: float = 1.0,
        guided: Sequence[str] = GUIDED,
        batch_invariant: bool = True,
        member_group: int = 10,
        rollout_noise: float = 0.0,
    ) -> SamplerSpec:
        """How to sample: ``sampler`` (a function of :mod:`simdiff.diffusion.samplers`, default
        Heun without churn, as ``conf/sampler/heun.yaml``) over ``steps`` Karras noise levels;
        ``batch_invariant``/``member_group``/``rollout_noise``: as ``generate.*`` (:class:`SamplerSpec`)."""
        fn = sampler if sampler is not None else functools.partial(sample_heun, s_churn=0.0)
        sampling = Sampling(fn, int(steps), float(sigma_min), float(sigma_max), float(rho))
        return SamplerSpec(
            sampling.sampler, sampling.sigmas(), float(guidance), tuple(guided), bool(batch_invariant),
            int(member_group), float(rollout_noise),
        )

    def _generation(
        self,
        members: int | Sequence[int],
        seed: int,
        decoder_noise: bool,
        decoder_noise_samples: int,
        batch_size: int,
        **sampling: Any,
    ) -> Generation:
        ids = list(range(members)) if isinstance(members, int) else [int(m) for m in members]
        models = self.models(decoder_noise_samples if decoder_noise else 0)
        return Generation(
            self.store, self.latents, models, self.sampler(**sampling), ids, int(seed), int(batch_size)
        )

    def inits(self, split: str = "test", lead_steps: int = 4, every: int = 1) -> list[int]:
        """The valid init indices of ``split`` for ``lead_steps`` leads (every ``every``-th)."""
        mode = Forecast(split=split, init_every=every, max_inits=10**9, lead_steps=lead_steps)
        return mode.inits(self.latents, self.models(0).previous + 1)

    def init_index(self, init_time: Any) -> int:
        """The store index of ``init_time`` (a datetime, a date string, cftime, or a model time)."""
        sdim = self.store.layout.sample_dim
        index = self.store.dataset().indexes[sdim]
        try:
            loc = index.get_loc(init_time)
        except KeyError as err:
            raise DataError(
                f"{self.store.path}: init_time={init_time!r} is not one of the store's {sdim} "
                f"values ({index[0]} .. {index[-1]})"
            ) from err
        if not isinstance(loc, (int, np.integer)):
            raise DataError(
                f"{self.store.path}: init_time={init_time!r} matches several samples; pass init_index instead"
            )
        return int(loc)

    def forecast(
        self,
        init_time: Any = None,
        *,
        init_index: int | Sequence[int] | None = None,
        members: int | Sequence[int] = 10,
        lead_steps: int = 4,
        seed: int = 0,
        decoder_noise: bool = True,
        decoder_noise_samples: int = 64,
        batch_size: int = 16,
        **sampling: Any,
    ) -> xr.Dataset:
        """Ensemble forecasts from one init (``init_time`` or ``init_index``) or several (a list of
        indices): ``VAR (realization, init_time, lead_time, [D], Y, X)`` in physical units, labelled
        as ``forecast.zarr`` is. ``sampling``: see :meth:`sampler`."""
        if (init_time is None) == (init_index is None):
            raise DataError("forecast: pass one of init_time or init_index")
        inits = (
            [self.init_index(init_time)]
            if init_time is not None
            else [int(i) for i in np.atleast_1d(init_index)]
        )
        gen = self._generation(members, seed, decoder_noise, decoder_noise_samples, batch_size, **sampling)
        mode = Forecast(init_indices=inits, lead_steps=lead_steps)
        return self._labelled(_fill(mode, gen, [(m, i) for i in inits for m in gen.members]), gen)

    def sample(
        self,
        n: int | Sequence[int],
        *,
        labels: Sequence[Any] | None = None,
        split: str = "test",
        seed: int = 0,
        decoder_noise: bool = True,
        decoder_noise_samples: int = 64,
        batch_size: int = 16,
        **sampling: Any,
    ) -> xr.Dataset:
        """``n`` independent draws (or the draw ids in a list) of an unconditional model:
        ``VAR (realization, [D], Y, X)``. A model conditioned on labels, covariates or time
        features takes those of the real samples of ``split`` (as ``simdiff generate`` does), or,
        with ``labels`` (class names or integers, cycled over the draws), those labels."""
        gen = self._generation(n, seed, decoder_noise, decoder_noise_samples, batch_size, **sampling)
        if labels is not None:
            gen.conditions["label"] = self._labels(labels, gen, split)
        return self._labelled(_fill(Sample(split=split), gen, [(m, -1) for m in gen.members]), gen)

    def conditional(
        self,
        index: int | Sequence[int],
        *,
        members: int | Sequence[int] = 10,
        seed: int = 0,
        decoder_noise: bool = False,
        decoder_noise_samples: int = 64,
        batch_size: int = 16,
        **sampling: Any,
    ) -> xr.Dataset:
        """Members drawn for the conditions (molecule, electron count, geometry) of store sample
        ``index`` (or of several): ``VAR (realization, condition, [D], Y, X)`` with the conditions
        copied per condition, as ``simdiff generate`` with ``generate/mode=conditional`` writes
        them (the same members for the same seed). ``sampling``: see :meth:`sampler`."""
        indices = [int(i) for i in np.atleast_1d(index)]
        gen = self._generation(members, seed, decoder_noise, decoder_noise_samples, batch_size, **sampling)
        mode = Conditional(indices=indices, cubes=False)
        return self._labelled(_fill(mode, gen, [(m, i) for i in indices for m in gen.members]), gen)

    def _labelled(self, ds: xr.Dataset, gen: Generation) -> xr.Dataset:
        """The attrs ``simdiff generate`` gives its output that the members themselves determine."""
        ds.attrs["simdiff_seed"] = gen.seed
        if gen.models.decoder.residual is not None:
            rms = residual_summary(gen.models.decoder.residual, self.store)
            ds.attrs["simdiff_decoder_residual_rms_over_std"] = json.dumps(rms)
        return ds

    def _labels(self, labels: Sequence[Any], gen: Generation, split: str) -> np.ndarray:
        """Per draw id, the requested label, laid out so that :class:`Sample` picks it for that id."""
        if "label" not in gen.conditions:
            raise DataError(
                f"{self.latents.path}: the model is not conditioned on labels (the store has "
                "none, or diffusion.conditioning.label was false)"
            )
        names = self.latents.group["label"].attrs.get("label_names") or []
        codes = [names.index(v) if isinstance(v, str) and v in names else v for v in labels]
        if not all(isinstance(c, (int, np.integer)) for c in codes):
            raise DataError(f"labels={list(labels)}: use integers or the store's label_names {names}")
        pool = self.latents.indices(split)
        out = np.array(gen.conditions["label"], copy=True)
        if len(pool) < len(gen.members):
            raise DataError("sample(labels=...) needs at most as many draws as the split has samples")
        for k, m in enumerate(gen.members):  # Sample reads row pool[m % len(pool)] for draw m
            out[pool[m % len(pool)]] = codes[k % len(codes)]
        return out

    # -- the autoencoder -------------------------------------------------------------------
    def encode(self, ds: xr.Dataset, rows: Sequence[int] | None = None) -> xr.DataArray:
        """Physical fields (the store's variables, one per data variable; a sample dim first)
        -> standardised latents ``(sample, latent_channel, [d], h, w)``, as ``latents.zarr`` holds.
        ``rows``: the store sample each field stands for, where the store models a variable
        relative to per-sample reference fields (molecules: the promolecule of its geometry)."""
        from simdiff.data.stores.stats import normalise, statistics, store_reference

        src = self.store.dataset()
        names = self.store.variables
        missing = [v for v in names if v not in ds]
        if missing:
            raise DataError(f"encode: the dataset lacks {missing}; it needs {names}")
        n = ds[names[0]].shape[0]  # prepare's normalisation, the store's own statistics
        rows = self._rows("encode", rows, n)
        fields = normalise(ds[names], statistics(src), src["mask"], self.store.transforms,
                           block_samples=n, reference=None if rows is None else store_reference(src, rows))
        x = torch.from_numpy(np.asarray(fields.values, dtype=np.float32)).to(self.device)
        with torch.no_grad():
            mu = self.autoencoder.encode(x).float().cpu().numpy()
        view = (1, -1, *([1] * (mu.ndim - 2)))
        shift = np.asarray(self.latents.shift, np.float32).reshape(view)
        scale = np.asarray(self.latents.scale, np.float32).reshape(view)
        sdim = ds[names[0]].dims[0]
        dims = (sdim, *self.latents.dataset()["data"].dims[1:])
        return xr.DataArray(
            (mu - shift) / scale,
            dims=dims,
            coords={sdim: ds[sdim].values} if sdim in ds else {},
            name="latents",
        )

    def decode(self, latents: xr.DataArray | np.ndarray, rows: Sequence[int] | None = None) -> xr.Dataset:
        """Standardised latents ``(sample, c, [d], h, w)`` -> the decoder's mean fields, physical
        units; ``rows`` as in :meth:`encode` (stores with reference fields only)."""
        z = torch.from_numpy(np.asarray(latents, dtype=np.float32)).to(self.device)
        rows = self._rows("decode", rows, z.shape[0])
        decoder = self.models(0).decoder
        return physical(decoder(z).float().cpu().numpy(), self.store, rows)

    def _rows(self, what: str, rows: Sequence[int] | None, n: int) -> np.ndarray | None:
        """``rows`` as an index array; refused (DataError) where the store models a variable
        relative to per-sample reference fields and they are missing or not one per field."""
        src = self.store.dataset()
        if "reference" in src and (rows is None or len(rows) != n):
            raise DataError(f"{what}: {self.store.path} models {list(src['reference_channel'].values)} "
                            "relative to per-sample reference fields; pass rows= (the store sample of each "
                            f"of the {n} fields)")
        return None if rows is None else np.asarray(rows, dtype=np.int64)

    # -- scoring ---------------------------------------------------------------------------
    def evaluate(self, forecast: xr.Dataset, *, seed: int = 0, **scoring: Any) -> dict[str, Any]:
        """The report's metrics (metrics.json) for ``forecast`` against this run's truth and
        baselines; ``scoring``: the fields of :class:`simdiff.runs.evaluation.Scoring`."""
        return score_forecast(self.dir, forecast, Scoring(**scoring), seed=seed)


def _fill(mode: Forecast | Sample | Conditional, gen: Generation, units: list[tuple[int, int]]) -> xr.Dataset:
    """Compute every block of ``mode`` and return them in the output's template, in memory."""
    template = mode.template(gen)
    names = [str(v) for v in template.data_vars if v != "written"]
    out = {n: np.full(template[n].shape, np.nan, dtype=template[n].dtype) for n in names}
    position = {int(m): k for k, m in enumerate(template["realization"].values)}
    index = next((c for c in COLUMN_INDEX.values() if c in template), None)
    column = {int(i): k for k, i in enumerate(template[index].values)} if index else {-1: None}
    coldim = template[index].dims[0] if index else None
    for init, members in mode.blocks(gen, units):
        block = mode.compute(gen, init, members)
        for name in names:
            dims = [d for d in template[name].dims if d != coldim]
            values = np.asarray(block[name].transpose(*dims).values, dtype=template[name].dtype)
            for j, m in enumerate(members):
                index = (position[m],) if column[init] is None else (position[m], column[init])
                out[name][index] = values[j]
    ds = template.drop_vars("written").copy()
    for name in names:
        ds[name] = ds[name].copy(data=out[name])
    return ds
