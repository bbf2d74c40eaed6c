"""A real cube file through the same adapter and the preset's 3D autoencoder: the smoke test of
issue 13 item 5 (`data=cubes`, `autoencoder=molecules`, the documented Log1p override).

The CRYSTAL17 charge density of bulk MgO (shared data, a periodic non-orthogonal FCC cell, a
closed grid whose last planes repeat the first) is translated by whole voxels along its lattice
vectors: each translate is the same crystal's density with its origin elsewhere, so ten of them
are ten exact densities of one real file, with the atoms moved along. They are written with
simdiff's cube writer, read back through ``data.source`` as a glob, and an autoencoder is
trained on eight of them with the count term. Measured here: every decoded voxel non-negative
(the censored Log1p inverse), every sample's count sum(rho dV) within 2.4 % of the file's, and
the Mg cusp (686 e/bohr^3 on one grid point) flattened to ~3 % of its height: nothing on this
grid resolves it and no promolecule stands in for it (a crystal has none in the store).
"""

from __future__ import annotations

import dataclasses
from functools import partial
from pathlib import Path

import clirun
import numpy as np
import pytest

from simdiff.data.sources.cube import Cube, read_cube, write_cube
from simdiff.data.stores.stats import denormalise
from simdiff.data.stores.training import TrainingStore
from simdiff.runs.evaluation import ae_ceiling
from simdiff.runs.layout import RunDir

simdiff = partial(clirun.simdiff, timeout=600)
MGO = "molecular/aiida-crystal17_mgo_sto3g_DENS_CUBE.cube"
SHIFTS = [(0, 0, 0), (5, 0, 0), (0, 5, 0), (0, 0, 5), (9, 0, 0), (0, 9, 0), (0, 0, 9), (5, 5, 0), (5, 0, 5),
          (0, 5, 5)]


def _translates(source: Path, out: Path) -> Path:
    """Ten cube files of the crystal in ``source``, each translated by whole voxels."""
    cube = read_cube(source)
    cell = cube.data[:-1, :-1, :-1]  # a closed cell: plane n - 1 repeats plane 0
    out.mkdir()
    for i, k in enumerate(SHIFTS):
        r = np.roll(cell, k, axis=(0, 1, 2))
        r = np.concatenate([r, r[:1]], 0)
        r = np.concatenate([r, r[:, :1]], 1)
        r = np.concatenate([r, r[:, :, :1]], 2)
        pos = cube.header.positions + np.asarray(k, float) @ cube.header.voxel
        write_cube(out / f"mgo_{i}.cube", Cube(dataclasses.replace(cube.header, positions=pos), r))
    return out


@pytest.mark.slow
def test_an_autoencoder_on_a_real_crystal_density_keeps_it_non_negative_and_its_count(shared_data, tmp_path):
    files = _translates(shared_data / MGO, tmp_path / "cubes")
    run_dir = tmp_path / "run"
    common = (f"run_dir={run_dir}", "data=cubes", f"data.source={files}/*.cube", "data.units=bohr-3",
              "data.transforms={density:{_target_:simdiff.data.transforms.Log1p,scale:1.0e-3}}",
              "autoencoder=molecules", "debug=tiny", f"cache_dir={tmp_path / 'cache'}")
    out = simdiff("prepare", *common)
    assert out.returncode == 0, out.stderr[-3000:]
    out = simdiff("train-autoencoder", *common, "debug.ae_max_epochs=150", "debug.ae_warmup_steps=20")
    assert out.returncode == 0, out.stderr[-3000:]
    assert (run_dir / "autoencoder" / "reconstruction.json").is_file()

    run = RunDir(run_dir)
    store = TrainingStore(run.store)
    assert store.periodic == (True, True, True)  # the CRYSTAL cell, read from the comment line
    idx = np.arange(store.n_samples)
    assert len(idx) == len(SHIFTS)
    rec = ae_ceiling(run, store, idx)["density"].values
    truth = denormalise(store.dataset())["density"].values
    assert np.isfinite(rec).all() and (rec >= 0).all()
    count = rec.reshape(len(idx), -1).sum(1) / truth.reshape(len(idx), -1).sum(1) - 1
    assert np.abs(count).max() < 0.05, count  # 0.024 measured
    # the one-voxel Mg cusp is not resolved (datasets/cubes/README.md says so; 0.02-0.05 measured):
    # if this fails, the autoencoder got better and the card should say how much
    peak = rec.reshape(len(idx), -1).max(1) / truth.reshape(len(idx), -1).max(1)
    assert peak.max() < 0.2, peak
