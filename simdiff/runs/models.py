"""A trained run's models, rebuilt without Hydra: the autoencoder, the diffusion model, the decoder.

Networks are rebuilt from the ``config.yaml`` each training stage saved beside its checkpoint,
through :func:`simdiff.base.registry.build_spec` (allow-listed classes only, checked before
anything is imported), and loaded with ``weights_only`` checkpoints (:mod:`simdiff.lit.checkpoint`).
The same builders serve the training stages, so a trained model and a rebuilt one are the same
network.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from simdiff.base.errors import DataError
from simdiff.base.provenance import sha256_path
from simdiff.base.registry import build_spec, check_stored
from simdiff.data.loading.loader import valid_windows, window_targets
from simdiff.data.stores.latents import LatentStore
from simdiff.data.stores.training import SPLITS, TrainingStore
from simdiff.data.transforms import censored_below, domain_of
from simdiff.generate.residual import DryFit, ResidualModel
from simdiff.generate.rollout import LatentDecoder
from simdiff.nets.window import window_signature, windowed_shape
from simdiff.runs.layout import RunDir

log = logging.getLogger("simdiff")

#: The training stage that writes each model.
WRITER = {"autoencoder": "train-autoencoder", "diffusion": "train-diffusion"}
#: The nodes of a saved config.yaml that later stages rebuild (encode, generate, augment, evaluate).
REBUILT = (("autoencoder", "net"), ("diffusion", "net"))


def read_config(path: Path) -> dict[str, Any]:
    """A stage's saved ``config.yaml``, its rebuilt nodes (:data:`REBUILT`) checked against the registry.

    Raises:
        DataError: the file is missing or not a YAML mapping, or a rebuilt node names a
            ``_target_`` outside the allowlist (nothing is imported or run).
    """
    try:
        saved = yaml.safe_load(path.read_text())
    except FileNotFoundError as err:
        raise DataError(f"{path}: missing; re-run the stage that writes {path.parent.name}/") from err
    except yaml.YAMLError as err:
        raise DataError(
            f"{path}: not valid YAML ({err}); re-run the stage that wrote it with force=true"
        ) from err
    if not isinstance(saved, dict):
        raise DataError(f"{path}: not a simdiff stage config (a mapping); re-run the stage that wrote it")
    for top, node in REBUILT:
        if isinstance(saved.get(top), dict) and node in saved[top]:
            check_stored(saved[top][node], source=str(path), key=f"{top}.{node}")
    return saved


def build_net(
    ae_cfg: dict[str, Any], signature: dict[str, Any], source: str = "the autoencoder config"
) -> Any:
    """The autoencoder for a store with ``signature`` (in_channels and periodic flags from it, and
    the depth of a 3D field when the net folds it into channels); with ``ae_cfg["window"]`` > 1,
    for windows of that many states stacked along depth (:mod:`simdiff.nets.window`).

    ``ae_cfg["net"]`` is a plain spec; it must be one :mod:`simdiff.base.registry` allows
    (DataError naming ``source`` otherwise).
    """
    signature = window_signature(signature, ae_window(ae_cfg))
    extra = {}
    if ae_cfg["net"].get("fold_depth") and len(signature["periodic"]) == 3:
        extra["depth"] = int(signature["spatial_shape"][0])
    return build_spec(
        ae_cfg["net"],
        source=source,
        key="autoencoder.net",
        in_channels=len(signature["variables"]),
        periodic=list(signature["periodic"]),
        **extra,
    )


def ae_window(ae_cfg: dict[str, Any]) -> int:
    """``autoencoder.window``: consecutive states per latent (1 when the config predates it)."""
    return int(ae_cfg.get("window") or 1)


def check_fits(saved: dict[str, Any], store: TrainingStore, where: Path) -> None:
    """Refuse (DataError) when ``store`` is not the data the autoencoder saved in ``where`` was built for."""
    from simdiff.lit.autoencoder import data_signature, signature_differences

    diff = signature_differences(saved["data_signature"], data_signature(store))
    if diff:
        raise DataError(
            f"{store.path}: the autoencoder in {where} was trained on other data (channels, variables or "
            f"grid differ):\n  "
            + "\n  ".join(diff)
            + "\nFix: re-run `simdiff train-autoencoder` with force=true for this store, or point "
            "run_dir at the store it was trained on"
        )


def latent_signature(store: TrainingStore) -> dict[str, Any]:
    """What a diffusion model is built for: the latents' shape, channels, periodicity and autoencoder."""
    layout = dict(store.attrs["layout"])
    dims = [d for d in (layout.get("depth_dim"), layout["y_dim"], layout["x_dim"]) if d]
    periodic = set(store.attrs["geometry"].get("periodic", []))
    return {
        "channels": [str(c) for c in store.group["channel"][...]],
        "latent_shape": [int(n) for n in store.data.shape[2:]],
        "periodic": [d in periodic for d in dims],
        "autoencoder_sha256": str(store.attrs.get("autoencoder", {}).get("checkpoint_sha256", "")),
    }


def store_window(store: TrainingStore) -> int:
    """States per sample's latent: a latent store's ``window`` (its next window is that many
    samples on), 1 for a store of single states."""
    return int(getattr(store, "window", 1))


def train_pairs(store: TrainingStore) -> np.ndarray:
    """(S,) bool: sample ``t`` is the target of a one-step train pair, ``t - k`` and ``t`` (``k``:
    :func:`store_window`) train samples of one block, ``t - k``'s own window inside it too."""
    k = store_window(store)
    ok = np.zeros(store.n_samples, dtype=bool)
    ok[window_targets(store.array("split"), store.array("block"), SPLITS["train"], 2 * k)] = True
    return ok


def train_tendencies(
    store: TrainingStore, ok: np.ndarray | None = None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The one-step tendencies ``x_t - x_{t-k}`` of the train pairs (targets ``ok``, default
    :func:`train_pairs`), chunk by chunk (a few MB at a time) in float64: ``(target sample
    indices (n,), tendencies (n, C, ...))`` per chunk of the store that holds any."""
    ok = train_pairs(store) if ok is None else ok
    k = store_window(store)
    data = store.data
    step = max(store.chunk_samples, 64)
    for lo in range(k, data.shape[0], step):
        hi = min(lo + step, data.shape[0])
        targets = lo + np.flatnonzero(ok[lo:hi])
        if not len(targets):  # a chunk of val/test samples only: not read
            continue
        x = np.asarray(data[lo - k : hi], dtype=np.float64)
        yield targets, x[targets - lo + k] - x[targets - lo]


def residual_scale(store: TrainingStore) -> torch.Tensor:
    """(C,) std of the one-step tendency ``x_{t+1} - x_t`` per channel over train pairs in one block."""
    c = store.data.shape[1]
    s1, s2, n = np.zeros(c), np.zeros(c), 0
    for _, y in train_tendencies(store):
        d = np.moveaxis(y, 1, 0).reshape(c, -1)
        s1 += d.sum(axis=1)
        s2 += (d**2).sum(axis=1)
        n += d.shape[1]
    if n == 0:
        raise DataError(
            f"{store.path}: no consecutive train pairs inside one block, so the residual "
            "scale is undefined; use diffusion.residual=false or a store with longer blocks"
        )
    var = s2 / n - (s1 / n) ** 2
    return torch.tensor(np.sqrt(np.maximum(var, 1e-12)), dtype=torch.float32)


def rollout_perturbations(store: TrainingStore, size: int = 512) -> torch.Tensor:
    """The perturbations of ``generate.rollout_noise`` (:class:`simdiff.generate.rollout.SamplerSpec`):
    up to ``size`` one-step train tendencies (:func:`train_tendencies`), evenly spaced over the
    record's train pairs, each channel divided by their RMS: ``(N, C, ...)`` float32.

    Raises:
        DataError: the store has no train pair inside one block.
    """
    ok = train_pairs(store)
    targets = np.flatnonzero(ok)
    if not len(targets):
        raise DataError(f"{store.path}: no consecutive train pairs inside one block, so there are no "
                        "tendencies to inflate a rollout with; set generate.rollout_noise=0")
    keep = np.unique(np.linspace(0, len(targets) - 1, min(int(size), len(targets))).round().astype(int))
    chosen = np.zeros_like(ok)
    chosen[targets[keep]] = True
    pool = np.concatenate([y for _, y in train_tendencies(store, chosen)])
    c = pool.shape[1]
    rms = np.sqrt((np.moveaxis(pool, 1, 0).reshape(c, -1) ** 2).mean(axis=1))
    pool /= np.maximum(rms, 1e-12).reshape(1, c, *([1] * (pool.ndim - 2)))
    return torch.from_numpy(pool.astype(np.float32))


def check_label_standardisation(store: TrainingStore, dm_cfg: dict[str, Any]) -> None:
    """Refuse ``diffusion.standardise_by_label`` where it cannot apply (DataError, before any write)."""
    why = []
    if not store.has("label"):
        why.append(f"{store.path} has no label condition")
    if not dm_cfg["conditioning"].get("label"):
        why.append("diffusion.conditioning.label is false, so generation would not know a member's label")
    if dm_cfg.get("residual"):
        why.append("diffusion.residual is true (the tendency is diffused, not the state)")
    if dm_cfg.get("patch") is not None:
        why.append(f"diffusion.patch={dm_cfg['patch']} (the per-label mean is of whole fields)")
    if why:
        raise DataError("diffusion.standardise_by_label=true, but " + "; ".join(why)
                        + ". Set diffusion.standardise_by_label=false, or fix the above")


def label_standardisation(store: TrainingStore, min_samples: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-label ``(shift (L, C, [d], h, w), scale (L, C))`` of the store's train states.

    ``shift[l]`` is label ``l``'s mean state, cell by cell; ``scale[l, c]`` the std of channel
    ``c`` about it over the label's cells and samples (float64 sums, chunk by chunk). A label
    with fewer than ``min_samples`` train samples keeps the store's own standardisation (shift 0,
    scale 1), with a warning.
    """
    if not store.has("label"):
        raise DataError(f"{store.path}: diffusion.standardise_by_label needs a label condition, and the "
                        "store has none; set diffusion.standardise_by_label=false")
    n_labels = store.label_classes()
    labels = store.array("label").astype(np.int64).reshape(-1)
    train = store.split == 0
    data = store.data
    shape = tuple(data.shape[1:])
    step = max(store.chunk_samples, 64)
    s1, count = np.zeros((n_labels, *shape)), np.zeros(n_labels)
    for pass_ in (0, 1):
        if pass_ == 1:
            shift = s1 / np.maximum(count, 1).reshape(-1, *(1,) * len(shape))
            s2 = np.zeros((n_labels, shape[0]))
        for lo in range(0, data.shape[0], step):
            rows = np.flatnonzero(train[lo : lo + step]) + lo
            if not len(rows):
                continue
            x = np.asarray(data[lo : lo + step], dtype=np.float64)[rows - lo]
            for lab in np.unique(labels[rows]):
                xl = x[labels[rows] == lab]
                if pass_ == 0:
                    s1[lab] += xl.sum(axis=0)
                    count[lab] += len(xl)
                else:
                    d = np.moveaxis(xl - shift[lab], 1, 0).reshape(shape[0], -1)
                    s2[lab] += (d**2).sum(axis=1)
    cells = int(np.prod(shape[1:]))
    scale = np.sqrt(s2 / np.maximum(count * cells, 1)[:, None])
    few = (count < min_samples) | np.any(scale <= 1e-6, axis=1)
    if few.any():
        log.warning("per-label standardisation: labels %s have fewer than %d train samples (or a "
                    "constant channel) and keep the store's standardisation", np.flatnonzero(few).tolist(),
                    min_samples)
    shift[few], scale[few] = 0.0, 1.0
    return torch.tensor(shift, dtype=torch.float32), torch.tensor(scale, dtype=torch.float32)


def cycle_harmonics(dm_cfg: dict[str, Any]) -> tuple[int, int]:
    """``diffusion.tendency_cycle``'s (daily, annual) harmonics; (0, 0) when absent (no cycle)."""
    spec = dm_cfg.get("tendency_cycle") or {}
    return int(spec.get("daily", 0) or 0), int(spec.get("annual", 0) or 0)


def check_tendency_cycle(store: TrainingStore, daily: int, annual: int, residual: bool = True) -> np.ndarray:
    """Refuse a tendency cycle the store cannot determine; returns the train pairs' mask (N-1,).

    Raises:
        DataError: not in residual mode (``residual``: the cycle is one of the tendency), the
            store has no time features, or its train targets do not determine a requested
            cycle (:func:`simdiff.diffusion.cycle.coverage`: e.g. daily steps for the daily
            cycle, or one month for the annual one).
    """
    from simdiff.diffusion import cycle

    if not residual:
        raise DataError("diffusion.tendency_cycle is the tendency's mean, taken out in residual mode, "
                        "and diffusion.residual is false; set diffusion.residual=true or the cycle's "
                        "harmonics to 0")
    if daily < 0 or annual < 0:
        raise DataError(f"diffusion.tendency_cycle: daily={daily}, annual={annual}; harmonics are "
                        "counts >= 0")
    if not store.has("time_features"):
        raise DataError(
            f"{store.path}: diffusion.tendency_cycle needs time features, and the store has none "
            "(its time axis is not datetimes); set diffusion.tendency_cycle.daily=0 and annual=0"
        )
    ok = train_pairs(store)
    targets = store.array("time_features").astype(np.float64)[ok]
    for name, harmonics in (("daily", daily), ("annual", annual)):
        distinct, gap = cycle.coverage(targets, name)
        if harmonics and (distinct < 2 * harmonics + 1 or gap > np.pi / 2 + 1e-9):
            raise DataError(
                f"{store.path}: diffusion.tendency_cycle.{name}={harmonics}, but the train split's "
                f"targets sample the {name} cycle at {distinct} distinct phases with a gap of "
                f"{gap / (2 * np.pi):.0%} of the cycle ({2 * harmonics + 1} phases and gaps of at most 25 % "
                f"are needed), so its mean tendency is not determined; set diffusion.tendency_cycle."
                f"{name} lower or to 0"
            )
    k = cycle.n_terms(daily, annual)
    if ok.sum() <= k:
        raise DataError(
            f"{store.path}: {int(ok.sum())} consecutive train pairs for {k} cycle terms; set "
            "diffusion.tendency_cycle.daily=0 and annual=0, or use a longer record"
        )
    return ok


def tendency_cycle(store: TrainingStore, daily: int, annual: int, residual: bool = True) -> torch.Tensor:
    """(K, C, [d], h, w) least-squares coefficients of the tendency's mean by time of day and year
    (:mod:`simdiff.diffusion.cycle`), over the train pairs in one block, at the target's time;
    refused as :func:`check_tendency_cycle` says."""
    from simdiff.diffusion import cycle

    ok = check_tendency_cycle(store, daily, annual, residual)
    features = store.array("time_features").astype(np.float64)
    data = store.data
    k = cycle.n_terms(daily, annual)
    btb, bty = np.zeros((k, k)), np.zeros((k, int(np.prod(data.shape[1:]))))
    yty = 0.0
    for targets, y in train_tendencies(store, ok):
        b = cycle.basis(torch.from_numpy(features[targets]), daily, annual).numpy()
        a, c = cycle.normal_equations(b, y)
        btb += a
        bty += c
        yty += float((y**2).sum())
    coef = cycle.solve(btb, bty, tuple(data.shape[1:]))
    n = btb[0, 0]
    total = yty - float((bty[0] ** 2).sum()) / n  # sum of squares about each cell's mean tendency
    left = yty - float((coef.reshape(k, -1) * bty).sum())  # residual sum of squares of the fit
    log.info("tendency cycle: %d daily and %d annual harmonics fitted on %d train pairs; they hold %.1f %% "
             "of the tendency's variance about its mean", daily, annual, int(n),
             100.0 * (1.0 - left / total) if total > 0 else 0.0)
    return torch.tensor(coef, dtype=torch.float32)


def static_fields(store: TrainingStore, names: list[str]) -> torch.Tensor | None:
    """(n, [d], h, w) the named store arrays, each standardised (a constant one becomes zeros)."""
    if not names:
        return None
    fields = []
    for name in names:
        if not store.has(name):
            raise DataError(
                f"{store.path}: diffusion.conditioning.static names {name!r}, which the store "
                f"does not have; use arrays of shape ([d], h, w) such as 'weights' or 'mask'"
            )
        a = store.array(name).astype(np.float64)
        sd = a.std()
        fields.append((a - a.mean()) / sd if sd > 0 else np.zeros_like(a))
    return torch.tensor(np.stack(fields), dtype=torch.float32)


def build_model(
    dm_cfg: dict[str, Any],
    signature: dict[str, Any],
    sizes: dict[str, int],
    static: torch.Tensor | None,
    scale: torch.Tensor | None,
    source: str = "the diffusion config",
    cycle: torch.Tensor | None = None,
    label_stats: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> Any:
    """The ConditionalDenoiser for latents with ``signature`` and the store's condition ``sizes``.

    ``cycle``: the tendency cycle's coefficients (:func:`tendency_cycle`) when
    ``diffusion.tendency_cycle`` asks for one; zeros of the right shape when None (a checkpoint
    fills them). ``label_stats``: the same for ``diffusion.standardise_by_label``
    (:func:`label_standardisation`).

    ``dm_cfg["net"]`` is a plain spec :mod:`simdiff.base.registry` allows (DataError naming
    ``source`` otherwise).
    """
    from simdiff.diffusion.cycle import TendencyCycle, n_terms
    from simdiff.diffusion.denoiser import ConditionalDenoiser
    from simdiff.nets.conditioning import Conditioner
    from simdiff.nets.fold import DepthAsChannels

    check_stored(dm_cfg["net"], source=source, key="diffusion.net")
    cond = dm_cfg["conditioning"]
    n_channels = len(signature["channels"])
    conditioner = Conditioner(
        int(dm_cfg["net"]["emb_dim"]),
        n_channels,
        previous=int(cond["previous"]),
        static=static,
        time_features=sizes.get("time_features", 0) if cond["time_features"] else 0,
        covariates=sizes.get("covariates", 0) if cond["covariates"] else 0,
        labels=sizes.get("label", 0) if cond["label"] else 0,
        atoms=sizes.get("atoms", 0) if cond.get("atoms") else 0,
        dropout=dict(cond.get("dropout") or {}),
        generated=bool(cond.get("generated", False)),
    )
    periodic = list(signature["periodic"])
    fold = bool(dm_cfg.get("fold_depth")) and len(periodic) == 3
    depth = int(signature["latent_shape"][0]) if fold else 1
    net = build_spec(
        dm_cfg["net"],
        source=source,
        key="diffusion.net",
        in_channels=n_channels * depth,
        out_channels=n_channels * depth,
        periodic=periodic[1:] if fold else periodic,
        cond_channels=conditioner.spatial_channels * depth,
    )
    if fold:
        net = DepthAsChannels(net, depth)
    daily, annual = cycle_harmonics(dm_cfg)
    cycle_module = None
    if daily or annual:
        shape = (n_terms(daily, annual), n_channels, *signature["latent_shape"])
        coef = cycle if cycle is not None else torch.zeros(shape)
        if tuple(coef.shape) != shape:
            raise ValueError(f"build_model: tendency cycle coefficients {tuple(coef.shape)}, not {shape}")
        cycle_module = TendencyCycle(coef, daily, annual)
    stats = None
    if dm_cfg.get("standardise_by_label"):
        n_labels = sizes.get("label", 0)
        shapes = ((n_labels, n_channels, *signature["latent_shape"]), (n_labels, n_channels))
        stats = label_stats or (torch.zeros(shapes[0]), torch.ones(shapes[1]))
        if tuple(tuple(t.shape) for t in stats) != shapes:
            got = [tuple(t.shape) for t in stats]
            raise ValueError(f"build_model: per-label statistics {got}, not {shapes}")
    if dm_cfg.get("compile"):
        net.compile()
    return ConditionalDenoiser(
        net,
        conditioner,
        sigma_data=float(dm_cfg["sigma_data"]),
        residual=bool(dm_cfg["residual"]),
        residual_scale=scale,
        cycle=cycle_module,
        label_stats=stats,
    )


def open_latents(run: RunDir) -> LatentStore:
    """The run's latent store, or a DataError that says to run ``simdiff encode`` first."""
    if not (run.latents / "zarr.json").is_file():
        raise DataError(f"{run.latents}: no latent store here; run `simdiff encode run_dir={run.root}` first")
    return LatentStore(run.latents)


def require_checkpoints(run: RunDir, *stages: str) -> None:
    """Fail with the stage to run when a model (default: both) is not trained."""
    for stage in stages or tuple(WRITER):
        if not run.final(stage).is_file():
            raise DataError(
                f"{run.final(stage)}: missing; run `simdiff {WRITER[stage]} run_dir={run.root}` first"
            )


def checkpoint_checksums(run: RunDir) -> dict[str, str]:
    """sha256 of the autoencoder's and the diffusion model's final checkpoints (provenance)."""
    return {stage: sha256_path(run.final(stage))[0] for stage in WRITER}


def load_autoencoder(run: RunDir) -> tuple[Any, dict[str, Any]]:
    """The trained autoencoder (EMA weights, eval mode) and the config it was trained with."""
    from simdiff.lit.autoencoder import load_ema_weights

    require_checkpoints(run, "autoencoder")
    saved = read_config(run.config("autoencoder"))
    net = build_net(saved["autoencoder"], saved["data_signature"], str(run.config("autoencoder")))
    net = load_ema_weights(net, run.final("autoencoder"), float(saved["autoencoder"]["module"]["ema_decay"]))
    return net, saved


def load_diffusion(run: RunDir, latents: LatentStore) -> tuple[Any, dict[str, Any]]:
    """The trained diffusion model (EMA weights, eval mode) and its diffusion config."""
    from simdiff.data.loading.datamodule import SimdiffDataModule
    from simdiff.lit.diffusion import load_ema_model

    require_checkpoints(run, "diffusion")
    saved = read_config(run.config("diffusion"))
    dm_cfg = saved["diffusion"]
    sizes = SimdiffDataModule(latents.path).condition_sizes
    n = len(saved["latent_signature"]["channels"])
    static = static_fields(latents, list(dm_cfg["conditioning"].get("static") or []))
    model = build_model(
        dm_cfg,
        saved["latent_signature"],
        sizes,
        static,
        torch.ones(n) if dm_cfg["residual"] else None,
        str(run.config("diffusion")),
    )
    return load_ema_model(model, run.final("diffusion"), float(dm_cfg["module"]["ema_decay"])), dm_cfg


@dataclass
class Models:
    """What generation needs from a trained run: the diffusion model, the latent decoder and the
    diffusion config they were trained with."""

    model: Any
    decoder: LatentDecoder
    diffusion: dict[str, Any]

    @property
    def previous(self) -> int:
        """Previous states the model conditions on (0: unconditional)."""
        return int(self.diffusion["conditioning"]["previous"])

    @property
    def window(self) -> int:
        """States per latent: each sampling step makes this many lead times."""
        return int(self.decoder.window)

    def uses(self, name: str) -> bool:
        """Whether the model reads the store array ``name`` per sample: a condition it was trained
        on, or the time features its tendency cycle is evaluated at."""
        return bool(self.diffusion["conditioning"].get(name)) or (
            name == "time_features" and any(cycle_harmonics(self.diffusion)))


def load_models(
    run: RunDir, latents: LatentStore, device: torch.device | str = "cpu", residual_samples: int = 0
) -> Models:
    """The EMA diffusion model and the latent decoder of ``run``, on ``device``.

    ``residual_samples > 0`` gives the decoder a residual model fitted on that many held-out
    samples (:func:`fit_decoder_residual`), so decoded members are samples of p(x | z).
    """
    require_checkpoints(run)
    ae, saved = load_autoencoder(run)
    model, dm_cfg = load_diffusion(run, latents)
    window, shape = ae_window(saved["autoencoder"]), saved["data_signature"]["spatial_shape"]
    decoder = LatentDecoder(
        ae.to(device),
        torch.as_tensor(np.asarray(latents.shift, dtype=np.float32)),
        torch.as_tensor(np.asarray(latents.scale, dtype=np.float32)),
        tuple(windowed_shape(shape, window)),
        window=window,
        has_depth=len(shape) == 3,
    )
    if residual_samples > 0:
        decoder.residual = fit_decoder_residual(decoder, latents, TrainingStore(run.store), residual_samples)
    return Models(model.to(device), decoder, dm_cfg)


def fit_decoder_residual(
    decoder: LatentDecoder, latents: LatentStore, store: TrainingStore, samples: int, batch_size: int = 16
) -> ResidualModel:
    """The residual model of ``decoder`` fitted on ``x`` and ``D(E(x))`` of held-out samples.

    Uses up to ``samples`` samples of the val split, evenly spaced (the train split, with a
    warning, when val is empty), decoded from their stored latents exactly as members are. The
    spectral axes are y/x, plus the depth axis on voxel grids (a store with a lattice).
    """
    from simdiff.generate.residual import ResidualFit

    split, idx = "val", store.indices("val")
    if not len(idx):
        split, idx = "train", store.indices("train")
        log.warning(
            "the val split of %s is empty; the decoder residual model is fitted on train "
            "samples, which underestimates it",
            store.path,
        )
    if len(idx) < 2:
        raise DataError(
            f"{store.path}: {len(idx)} {split} sample(s); the decoder residual model needs at "
            "least 2: set generate.decoder_noise=false"
        )
    k = decoder.window
    if k > 1:  # latents of whole windows only: the window ending at each sample lies in its run
        from simdiff.lit.encode import store_runs

        idx = idx[valid_windows(store_runs(store), k)[idx]]
        if not len(idx):
            raise DataError(f"{store.path}: no {split} sample has a whole window of {k} states in its run, "
                            "so the decoder residual model cannot be fitted; set "
                            "generate.decoder_noise=false")
    idx = np.unique(idx[np.linspace(0, len(idx) - 1, min(int(samples), len(idx))).round().astype(int)])
    geometry = store.geometry()
    dims = [store.layout.y_dim, store.layout.x_dim]
    if geometry.lattice is not None and store.layout.depth_dim:
        dims.insert(0, store.layout.depth_dim)  # a voxel grid: depth is a spatial axis too
    fit = ResidualFit(store.array("mask"), [geometry.is_periodic(d) for d in dims])
    for _, x, d in _decoded(decoder, latents, store, idx, batch_size):
        d_np = d.cpu().numpy()
        fit.add(x - d_np, d_np)
    model = fit.finish()
    log.info(
        "decoder residual model fitted on %d %s samples, noise rms/std %s",
        len(idx),
        split,
        residual_summary(model, store),
    )
    dry = dry_levels(store)
    if dry is None:
        return model
    at, value = dry
    dry_fit = DryFit(at, store.array("mask"))
    for keys, x, d in _decoded(decoder, latents, store, idx, batch_size):
        # fixed draws, one generator per state: every process fits the same thresholds
        gens = [torch.Generator(device=d.device).manual_seed(int(r)) for r in keys]
        dry_fit.add(x, model.sample_rows(d, gens).cpu().numpy())
    below, summary = dry_fit.finish()
    for key, entry in dry_summary(summary, store).items():
        log.info(
            "decoder residual model: %s is dry in %.3f of the %s cells, the draws in %.3f; %s",
            key, entry["truth_dry"], split, entry["draws_dry"],
            "no censoring needed" if entry["threshold"] is None
            else f"draws below {entry['threshold']:.4g} (normalised) are set dry",
        )
    return model.with_dry(below, value)


def _decoded(decoder: LatentDecoder, latents: LatentStore, store: TrainingStore, idx: np.ndarray,
             batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray, torch.Tensor]]:
    """Per batch of samples ``idx``: (a key per state, the states x (n, C, ...) float32, their
    decoded latents D(z) float32 tensor); with windows of ``k`` states, the ``k`` states of each
    sample's window in order, keyed ``sample * k + j``."""
    device = next(decoder.net.parameters()).device
    k = decoder.window
    for start in range(0, len(idx), batch_size):
        rows = idx[start : start + batch_size]
        z = torch.from_numpy(np.asarray(latents.data.oindex[rows], dtype=np.float32)).to(device)
        d = decoder(z).float()
        states = (rows[:, None] + np.arange(-(k - 1), 1)[None, :]).reshape(-1)
        read, where = np.unique(states, return_inverse=True)  # windows may overlap
        x = np.asarray(store.data.oindex[read], dtype=np.float32)[where]
        keys = rows if k == 1 else (rows[:, None] * k + np.arange(k)[None, :]).reshape(-1)
        yield keys, x, d.reshape(-1, *d.shape[2:]) if k > 1 else d


def dry_levels(store: TrainingStore) -> tuple[np.ndarray, np.ndarray] | None:
    """Per channel (and level), shaped like the store's ``mean``: the largest normalised value the
    store's inverse maps to the variable's lower bound (NaN: no lower bound), and the normalised
    lower bound itself; None when no variable has a lower bound."""
    mean = np.asarray(store.array("mean"), dtype=np.float64)
    std = np.asarray(store.array("std"), dtype=np.float64)
    transforms = store.transforms
    at, value = np.full(mean.shape, np.nan), np.full(mean.shape, np.nan)
    for c, name in enumerate(store.variables):
        t = transforms.get(name)
        top = None if t is None else censored_below(t)
        if top is None:
            continue
        bound = float(t.forward(np.float64(domain_of(t)[0])))  # type: ignore[union-attr]
        # + 1e-6: a dry cell stored in float32 may round just above the float64 threshold
        at[c] = (top - mean[c]) / std[c] + 1e-6
        value[c] = (bound - mean[c]) / std[c]
    return None if np.isnan(at).all() else (at, value)


def dry_summary(summary: dict[tuple[int, ...], dict[str, Any]], store: TrainingStore) -> dict[str, dict]:
    """:class:`~simdiff.generate.residual.DryFit` summary keyed ``VAR[@LEVEL]``."""
    from simdiff.evaluate.plots import format_level

    depth = store.layout.depth_dim
    levels = store.array(depth) if depth else None
    out = {}
    for idx, entry in summary.items():
        name = store.variables[idx[0]]
        key = name if len(idx) == 1 or levels is None else f"{name}@{format_level(levels[idx[1]])}"
        out[key] = entry
    return out


def residual_summary(model: ResidualModel, store: TrainingStore) -> dict[str, float]:
    """``VAR[@LEVEL]`` (the report's keys) -> the modelled residual rms in units of the variable's std."""
    from simdiff.evaluate.plots import format_level

    rms = model.rms()
    depth = store.layout.depth_dim
    levels = store.array(depth) if depth and rms.ndim > 1 else None
    out: dict[str, float] = {}
    for c, name in enumerate(store.variables):
        if levels is None:
            out[name] = round(float(np.mean(rms[c])), 4)
        else:
            for j, lev in enumerate(levels):
                out[f"{name}@{format_level(lev)}"] = round(float(rms[c][j]), 4)
    return out
