"""What a run does with its trained autoencoder: the reconstruction report, and encoding the
training store into ``latents.zarr`` (atomically; skipped when it holds this checkpoint's latents)."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from simdiff.base.atomic import scratch_dir
from simdiff.base.errors import DataError
from simdiff.base.provenance import config_yaml, sha256_path
from simdiff.data.loading.loader import valid_windows
from simdiff.data.stores.training import TrainingStore
from simdiff.nets.window import window_cells, windowed_shape
from simdiff.runs.layout import RunDir
from simdiff.runs.models import ae_window, check_fits, load_autoencoder

log = logging.getLogger("simdiff")


def publish_checkpoint(src: Path, dst: Path) -> None:
    """Copy a checkpoint onto ``dst`` atomically: the final checkpoint appears whole or not at all."""
    tmp = dst.parent / f".{dst.name}.tmp"
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def reconstruction_report(net: Any, store: TrainingStore, out_dir: Path, batch_size: int,
                          window: int = 1) -> None:
    """Reconstruct the test split (val when empty); write reconstruction.json/.png into ``out_dir``
    atomically. ``window``: states per latent (each state reconstructed from the window holding it)."""
    from simdiff.data.stores.stats import denormalise
    from simdiff.evaluate.reconstruction import reconstruction_report as write
    from simdiff.lit.encode import reconstruct_store

    split, idx = "test", store.indices("test")
    if not len(idx):
        split, idx = "val", store.indices("val")
        log.warning("the test split of %s is empty; the reconstruction report uses the val split", store.path)
    ds = store.dataset()
    truth_ds = ds.isel({store.layout.sample_dim: idx})
    recon = reconstruct_store(net, store, indices=idx, batch_size=batch_size, window=window)
    shape = windowed_shape(store.data.shape[2:], window)
    tmp = Path(tempfile.mkdtemp(prefix=".report.tmp-", dir=out_dir))
    try:
        write(
            denormalise(truth_ds),
            denormalise(truth_ds.assign(data=recon.variable)),
            weights=ds["weights"].load(),
            periodic=set(store.attrs["geometry"].get("periodic", [])),
            compression_ratio=net.compression_ratio(shape),
            out_dir=tmp,
            sample=0,
        )
        for f in sorted(tmp.iterdir()):
            os.replace(f, out_dir / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("reconstruction report (%s split): %s", split, out_dir / "reconstruction.json")


def encode_run(run: RunDir, atom_subcells: int = 1) -> Path:
    """Encode the training store with the run's autoencoder into ``latents.zarr``, replacing it
    atomically (whether to encode at all is :mod:`simdiff.runs.completion`'s decision).

    ``atom_subcells``: a molecular store's atom densities are drawn on this many sub-cells per
    latent cell and axis (:func:`simdiff.data.stores.atoms.molecular_conditions`).
    """
    from simdiff.data.stores.latents import LatentStore, write_latent_store
    from simdiff.lit.encode import encode_store, store_runs

    final, target = run.final("autoencoder"), run.latents
    if not final.is_file():
        raise DataError(
            f"{final}: no trained autoencoder here; run `simdiff train-autoencoder run_dir={run.root}` first"
        )
    net, saved = load_autoencoder(run)
    store = TrainingStore(run.store)
    check_fits(saved, store, run.stage_dir("autoencoder"))
    digest, _ = sha256_path(final)
    shape = [int(n) for n in store.data.shape[2:]]
    log.info("encode: %d samples of %s with %s", store.data.shape[0], run.store, final)
    window = ae_window(saved["autoencoder"])
    latents = encode_store(net, store, batch_size=int(saved["autoencoder"]["encode_batch_size"]),
                           window=window)
    shape = windowed_shape(shape, window)
    info = {
        "checkpoint": str(final.resolve()),
        "checkpoint_sha256": digest,
        "config": config_yaml(saved),
        "input_dims": list(store.layout.spatial_dims),
        "input_shape": shape,
        "latent_shape": list(net.latent_shape(shape)),
        "factors": list(net.total_factors),
        "compression_ratio": float(net.compression_ratio(shape)),
        **({"window": window} if window > 1 else {}),
    }
    tmp = scratch_dir(target)
    try:
        write_latent_store(
            latents,
            store,
            tmp / target.name,
            factors=net.total_factors,
            periodic=net.periodic,
            autoencoder=info,
            atom_subcells=atom_subcells,
            valid=valid_windows(store_runs(store), window),
            weights=window_cells(store.array("weights"), window, store.layout.depth_dim is not None),
        )
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp / target.name, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    std = np.asarray(LatentStore(target).scale)
    log.info(
        "encode: wrote %s, latents %s, per-channel scale %s",
        target,
        info["latent_shape"],
        np.array2string(std, precision=3),
    )
    return target
