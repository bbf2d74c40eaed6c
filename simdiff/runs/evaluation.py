"""Scoring a run's outputs: the forecast against the training store's truth and its baselines,
and an augmented dataset against held-out data. The ``evaluate`` stage writes what these return
into the report; the Python API returns it as a dict.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

from simdiff.data.stores.stats import denormalise
from simdiff.data.stores.training import SPLITS, TrainingStore
from simdiff.data.transforms import domain_of
from simdiff.evaluate.baselines import climatology_needs_care
from simdiff.generate.renormalise import RENORMALISATION
from simdiff.runs.layout import RunDir

log = logging.getLogger("simdiff")


@dataclass(frozen=True)
class Scoring:
    """What the forecast is scored against (``conf/evaluate/``)."""

    climatology: bool = True
    persistence: bool = True
    ae_ceiling: bool = True
    climatology_window_days: float = 15.0
    spectra: bool = True
    diurnal: bool = True
    diurnal_window: tuple[float, float] = (6.0, 12.0)
    block_inits: int | None = 8


def ae_ceiling(run: RunDir, store: TrainingStore, indices: np.ndarray) -> xr.Dataset | None:
    """decode(encode(truth)) at the store's samples ``indices``, physical units; None without an AE."""
    from simdiff.lit.encode import reconstruct_store
    from simdiff.runs.models import ae_window, load_autoencoder

    if not run.final("autoencoder").is_file():
        log.warning(
            "evaluate: no autoencoder at %s; the AE-ceiling baseline is left out", run.final("autoencoder")
        )
        return None
    net, saved = load_autoencoder(run)
    recon = reconstruct_store(
        net, store, indices=indices, batch_size=int(saved["autoencoder"]["encode_batch_size"]),
        window=ae_window(saved["autoencoder"]),
    )
    ds = store.dataset().isel({store.layout.sample_dim: indices})
    return denormalise(ds.assign(data=recon.variable))


def score_forecast(run: RunDir, forecast: xr.Dataset, scoring: Scoring, seed: int = 0) -> dict[str, Any]:
    """metrics.json's forecast part: CRPS, spread-skill, ranks, spectra, domain checks, baselines."""
    from simdiff.evaluate.report import evaluate_forecast

    store = TrainingStore(run.store)
    sdim = store.layout.sample_dim
    ds = store.dataset()
    truth = denormalise(ds)
    train_idx = store.indices("train")
    leads = forecast.sizes["lead_time"]
    valid = (np.asarray(forecast["init_index"].values)[:, None] + np.arange(1, leads + 1)).ravel()
    valid = np.unique(valid[valid < store.n_samples])
    ceiling = ae_ceiling(run, store, valid) if scoring.ae_ceiling else None
    features = ds["time_features"].isel({sdim: train_idx}) if "time_features" in ds else None
    metrics = evaluate_forecast(
        forecast,
        truth,
        train=truth.isel({sdim: train_idx}) if scoring.climatology else None,
        ae_ceiling=ceiling,
        weights=ds["weights"],
        periodic=set(store.attrs["geometry"].get("periodic", [])),
        sample_dim=sdim,
        time_features=features,
        seed=int(seed),
        persistence_baseline=scoring.persistence,
        window_days=float(scoring.climatology_window_days),
        spectra=scoring.spectra,
        diurnal_window=tuple(scoring.diurnal_window) if scoring.diurnal else None,
        block_inits=scoring.block_inits,
        domains={name: domain_of(t) for name, t in store.transforms.items()},
    )
    clim = metrics["baselines"]["climatology"]
    if clim is not None and climatology_needs_care(clim):
        log.warning(
            "evaluate: the climatology baseline is weak on this record (%d training states, "
            "pools %s, smallest %d for %d members); read crps_climatology with care",
            clim["training_states"],
            clim["pools"],
            clim["smallest_pool"],
            clim["members"],
        )
    metrics["source"] = {"store": str(store.path), "decoder_residual_rms_over_std": residual_attr(forecast)}
    return metrics


def residual_attr(forecast: xr.Dataset) -> dict[str, float] | None:
    """The forecast's ``simdiff_decoder_residual_rms_over_std`` attribute; None when absent or
    unreadable."""
    text = forecast.attrs.get("simdiff_decoder_residual_rms_over_std")
    if text is None:
        return None
    try:
        value = json.loads(text) if text else None
    except (TypeError, ValueError):
        log.warning(
            "evaluate: the forecast's simdiff_decoder_residual_rms_over_std attribute is not JSON "
            "(%r); left out of the report",
            text,
        )
        return None
    if not (isinstance(value, dict) and all(isinstance(v, (int, float)) for v in value.values())):
        log.warning(
            "evaluate: the forecast's simdiff_decoder_residual_rms_over_std attribute is not a "
            "mapping of numbers (%r); left out of the report",
            text,
        )
        return None
    return value


def _against_held_out(run: RunDir, synthetic: xr.Dataset, synthetic_dim: str | None = None,
                      seed: int = 0) -> dict[str, Any]:
    """Synthetic fields against the store's held-out data (test, else val): quantiles,
    Wasserstein-1, spectra, memorisation (:func:`simdiff.evaluate.report.evaluate_augmented`)."""
    from simdiff.evaluate.report import evaluate_augmented

    store = TrainingStore(run.store)
    sdim = store.layout.sample_dim
    ds = store.dataset()
    truth = denormalise(ds)
    test_idx = store.indices("test")
    if not len(test_idx):
        test_idx = store.indices("val")
    return evaluate_augmented(
        synthetic[list(truth.data_vars)],
        truth.isel({sdim: store.indices("train")}),
        truth.isel({sdim: test_idx}),
        weights=ds["weights"],
        periodic=set(store.attrs["geometry"].get("periodic", [])),
        sample_dim=sdim,
        synthetic_dim=synthetic_dim,
        seed=seed,
    )


#: At most this many held-out inits of the forecast are the successor test's reference.
HELD_OUT_SOURCES = 100
#: The successor test loads at most this many values (sources x members x cells) a side, taking
#: evenly spaced sources (at least 20), so a large grid bounds its memory (400 MB in float64).
SUCCESSOR_VALUES = 50_000_000


def _evenly(n: int, keep: int) -> np.ndarray:
    """``keep`` evenly spaced positions of ``n`` (all when ``keep >= n``)."""
    return np.unique(np.linspace(0, n - 1, min(n, keep)).astype(int))


def _affordable(members: int, cells: int) -> int:
    return max(20, SUCCESSOR_VALUES // max(1, members * cells))


def successor_check(run: RunDir, synthetic: xr.Dataset, forecast: xr.Dataset | None = None,
                    seed: int = 0) -> dict[str, Any] | None:
    """The memorisation test of next-state draws (:mod:`simdiff.evaluate.successors`): the
    augmented dataset's draws from training states, grouped by source, against each source's true
    successor, with the forecast's first lead on held-out inits as the reference. None for
    draws that are not next states (the nearest-neighbour check is theirs)."""
    from simdiff.evaluate.successors import Standardiser, by_source, successor_memorisation

    if synthetic.attrs.get("simdiff_draws") != "next_state" or "source_index" not in synthetic:
        return None
    store = TrainingStore(run.store)
    sdim = store.layout.sample_dim
    ds = store.dataset()
    truth = denormalise(ds)
    names = [str(v) for v in truth.data_vars]
    train = truth.isel({sdim: store.indices("train")})
    fake = np.flatnonzero(synthetic["synthetic"].values)
    grouped, sources = by_source(synthetic[names].isel({sdim: fake}), sdim,
                                 np.asarray(synthetic["source_index"].values)[fake])
    if not len(sources):
        return {"skipped": "no training state conditions two draws or more; set augment.draws_per_source "
                           ">= 2 (e.g. 4) to test whether the draws copy the true successors"}
    cells = sum(int(np.prod([truth[n].sizes[d] for d in truth[n].dims if d != sdim])) for n in names)
    keep = _evenly(len(sources), _affordable(grouped.sizes["member"], cells))
    grouped, sources = grouped.isel(source=keep), sources[keep]
    standardised = Standardiser.fit(train, ds["weights"], sdim)  # one pass over the train split

    def successors(index: np.ndarray) -> xr.DataArray:
        picked = truth.isel({sdim: np.asarray(index, dtype=np.int64) + 1})
        picked = picked.drop_vars([n for n, c in picked.coords.items() if sdim in c.dims])
        return standardised(picked.rename({sdim: "source"}))

    held_members = held_truth = None
    if forecast is not None and forecast.sizes.get("realization", 0) >= 2:
        inits = np.asarray(forecast["init_index"].values, dtype=np.int64)
        pick = _evenly(len(inits), min(HELD_OUT_SOURCES, _affordable(forecast.sizes["realization"], cells)))
        first = forecast[names].isel(lead_time=0, init_time=pick)
        first = first.drop_vars([n for n, c in first.coords.items()
                                 if {"init_time", "realization"} & set(c.dims)])
        first = first.rename(init_time="source", realization="member")
        first = first.transpose("source", "member", ...).load()
        held_members = standardised(first)
        held_truth = successors(inits[pick])
    result = successor_memorisation(standardised(grouped), successors(sources),
                                    held_members, held_truth, seed=seed)
    log.info("evaluate: memorisation of next-state draws: %s", result["verdict"])
    return result


def score_augmented(run: RunDir, synthetic: xr.Dataset, forecast: xr.Dataset | None = None,
                    seed: int = 0) -> dict[str, Any]:
    """metrics.json's ``augment`` part for a published augmented dataset (its synthetic rows):
    the distributions against held-out data and, for next-state draws, the successor test."""
    sdim = TrainingStore(run.store).layout.sample_dim
    out = _against_held_out(run, synthetic.isel({sdim: np.flatnonzero(synthetic["synthetic"].values)}),
                            seed=seed)
    check = successor_check(run, synthetic, forecast, seed=seed)
    if check is not None:
        out["memorisation"]["successors"] = check
    return out


def score_samples(run: RunDir, samples: xr.Dataset) -> dict[str, Any]:
    """metrics.json's ``samples`` part: sample mode's draws against held-out data, as an
    augmented set is scored."""
    sdim = TrainingStore(run.store).layout.sample_dim
    return _against_held_out(run, samples.drop_vars(sdim, errors="ignore"), synthetic_dim="realization")


#: The pooled scores kept for a baseline of the molecular report.
BASELINE_SCORES = ("electron_count_relative_error", "radial_profile_relative_error", "peak_ratio",
                   "spectrum_ratio", "spectrum_ratio_high_k")


def simulator_basis(store: TrainingStore) -> str | None:
    """The basis set of a store made by the built-in molecule simulator (from its provenance
    config), None for any other store (e.g. cube files: their method is not known)."""
    import yaml

    try:
        data = yaml.safe_load(store.attrs["provenance"]["config"])["data"]
    except (KeyError, TypeError, yaml.YAMLError):
        return None
    if not str(data.get("_target_", "")).endswith("simulators.molecules.MoleculeDensities"):
        return None
    return str(data["basis"])


def promolecules(store: TrainingStore, indices: np.ndarray, basis: str) -> np.ndarray:
    """(C, Z, Y, X) promolecular densities of samples ``indices``, on the store's grid."""
    from simdiff.data.sources.simulators.molecules import promolecule_on_grid

    src = store.dataset()
    axes = tuple(np.asarray(src[d].values, np.float64) for d in store.layout.spatial_dims)
    numbers, positions = store.array("atom_numbers"), store.array("atom_positions")
    return np.stack([promolecule_on_grid(numbers[i], positions[i], axes, basis) for i in indices])


def score_conditional(run: RunDir, output: xr.Dataset) -> dict[str, Any]:
    """metrics.json's ``molecular`` part: each conditional member against the density of the
    sample it was drawn for (same molecule, geometry and grid), per variable of a voxel grid."""
    store = TrainingStore(run.store)
    return _score_conditional(store, denormalise(store.dataset()), output)


def _score_conditional(store: TrainingStore, truth: xr.Dataset, output: xr.Dataset) -> dict[str, Any]:
    from simdiff.evaluate.molecular import molecular_scores

    sdim = store.layout.sample_dim
    idx = np.asarray(output["condition_index"].values, dtype=np.int64)
    weights = np.asarray(store.array("weights"), dtype=np.float64)
    dv = float(np.median(weights))
    axes = [np.asarray(truth[d].values, np.float64) for d in store.layout.spatial_dims]
    labels = np.asarray(output["label"].values) if "label" in output.coords else None
    names = output["label"].attrs.get("label_names") if labels is not None else None
    train_idx = store.indices("train")
    basis = simulator_basis(store) if len(store.variables) == 1 else None
    split_names = {code: split for split, code in SPLITS.items()}
    out: dict[str, Any] = {}
    dims = ("realization", "condition", *store.layout.spatial_dims)
    for name in [str(v) for v in output.data_vars if set(output[v].dims) == set(dims)]:
        members = np.asarray(output[name].transpose(*dims).values)
        refs = np.asarray(truth[name].isel({sdim: idx}).values)
        train = np.asarray(truth[name].isel({sdim: train_idx}).values) if len(train_idx) >= 2 else None
        factor = f"{name}{RENORMALISATION}"
        factors = output[factor].transpose("realization", "condition").values if factor in output else None
        out[name] = molecular_scores(members, refs, axes, dv, labels=labels, label_names=names, train=train,
                                     factors=factors)
        if basis is not None:
            pro = molecular_scores(promolecules(store, idx, basis)[None], refs, axes, dv)
            out[name]["baselines"] = {"promolecule": {k: pro[k] for k in BASELINE_SCORES}}
        out[name]["split"] = sorted({split_names.get(int(s), str(s)) for s in store.array("split")[idx]})
    return out


def molecular_report(run: RunDir, output: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``molecular`` metrics of a conditional output and their figures (slices and
    projections of the first conditions, radial profiles)."""
    from simdiff.evaluate.plots import density_figure, radial_profile_figure

    store = TrainingStore(run.store)
    sdim = store.layout.sample_dim
    truth = denormalise(store.dataset())
    scores = _score_conditional(store, truth, output)
    figures: dict[str, Any] = {}
    labels = output["label"].values if "label" in output.coords else None
    names = output["label"].attrs.get("label_names") if labels is not None else None
    idx = [int(i) for i in output["condition_index"].values]

    def title(c: int) -> str:
        molecule = names[int(labels[c])] if names is not None and labels is not None else "sample"
        return f"{molecule}, sample {idx[c]}"

    for name, entry in scores.items():
        profiles = entry.pop("_profiles")
        for c in range(min(3, len(idx))):
            members = output[name].isel(condition=c).transpose("realization", ...).values
            ref = truth[name].isel({sdim: idx[c]}).values
            figures[f"{name}_density_{c}"] = density_figure(ref, members, f"{name}: {title(c)}")
        figures[f"{name}_radial_profiles"] = radial_profile_figure(
            profiles, entry["radial_bin_bohr"], {c: title(c) for c in profiles})
    return scores, figures
