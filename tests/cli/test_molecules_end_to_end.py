"""The molecular recipe end to end: `workflows/molecular_densities/run.sh RUN_DIR debug=tiny`
(`simdiff run data=molecules`, then members for training geometries).

PySCF densities of small molecules -> a 3D autoencoder -> a latent diffusion model conditioned
on each molecule's label, electron count and geometry (Gaussian atom densities on the latent
grid) -> members drawn for held-out geometries -> zarr and Gaussian cube files -> the
molecular report. The tiny model is crude, so this checks what holds for any model: the
pipeline, the physics the construction guarantees (non-negative densities), the conditions
reaching the net, the cube files read back by ase with the right atoms and values, and the
report's molecular scores.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from functools import partial
from pathlib import Path

import clirun
import numpy as np
import pytest
import torch
import xarray as xr
from ase.io.cube import read_cube_data

from simdiff.base.errors import DataError
from simdiff.data.stores.latents import LatentStore
from simdiff.data.stores.stats import denormalise
from simdiff.data.stores.training import TrainingStore
from simdiff.generate.output import open_output
from simdiff.runs.api import open_run
from simdiff.runs.models import label_standardisation

simdiff = partial(clirun.simdiff, timeout=900)
WORKFLOW = Path(__file__).resolve().parents[2] / "workflows" / "molecular_densities" / "run.sh"
BOHR_PER_ANGSTROM = 1 / 0.529177210903


@pytest.fixture(scope="module")
def molecule_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("molecules")
    run_dir = tmp / "run"
    env = {**os.environ, "SIMDIFF": " ".join(clirun.ENTRY)}
    out = subprocess.run([str(WORKFLOW), str(run_dir), "debug=tiny", f"cache_dir={tmp / 'cache'}"],
                         capture_output=True, text=True, env=env, timeout=900)
    assert out.returncode == 0, out.stderr[-4000:]
    assert (run_dir / "seen.zarr").is_dir() and "report:" in out.stdout
    log = "".join(p.read_text() for p in (run_dir / "logs").rglob("*.log"))
    return run_dir, tmp / "cache", log


def test_molecules_main_job_conditions_on_atoms_and_writes_nonnegative_densities(molecule_run):
    run_dir, _, log = molecule_run
    # the preset's encode.atom_subcells: 2: three kinds x 2^3 sub-cells of each latent cell
    assert "conditions {'covariates': 1, 'atoms': 24, 'label': 12}" in log
    latents = LatentStore(run_dir / "latents.zarr")
    atoms = latents.array("atoms")
    assert atoms.shape[:2] == (latents.n_samples, 24) and atoms.shape[2:] == latents.data.shape[2:]
    assert np.isfinite(atoms).all() and (atoms >= 0).all() and atoms.max() > 0
    store = TrainingStore(run_dir / "data" / "train.zarr")
    np.testing.assert_allclose(latents.array("covariates")[:, 0] * 10, store.array("n_electrons"))

    out = open_output(run_dir / "conditional.zarr")
    test = store.indices("test")
    assert out.attrs["simdiff_mode"] == "conditional"
    assert out["density"].dims == ("realization", "condition", "z", "y", "x")
    np.testing.assert_array_equal(out["condition_index"].values, test)
    np.testing.assert_array_equal(out["label"].values, store.array("label")[test])
    rho = out["density"].values
    assert np.isfinite(rho).all() and (rho >= 0).all()  # non-negative by construction (censored inverse)
    # the preset diffuses each molecule's latents in its own units, and the trained model carries
    # the statistics of the latent store's train split in its checkpoint
    model = open_run(run_dir).models(0).model
    shift, scale = label_standardisation(latents)
    assert model.by_label
    torch.testing.assert_close(model.label_shift, shift)
    torch.testing.assert_close(model.label_scale, scale)


def test_the_autoencoder_learns_the_electron_count_through_the_stores_inverse(molecule_run):
    """The preset's count term: the store's normalisation undone in torch is denormalise's, and the
    squared relative count error it gives has a gradient the autoencoder trained with."""
    import torch

    from simdiff.lit.physical import PhysicalAmount
    from simdiff.nets.losses import count_error

    run_dir, _, _ = molecule_run
    store = TrainingStore(run_dir / "data" / "train.zarr")
    physical = PhysicalAmount.from_store(store)
    idx = np.array([0, 3, 5])
    z = torch.from_numpy(store.data[idx]).requires_grad_(True)
    rho = physical(z, torch.from_numpy(idx))
    truth = denormalise(store.dataset())["density"].values[idx]
    np.testing.assert_allclose(rho.detach().numpy()[:, 0], truth, rtol=1e-4, atol=1e-6)
    w, mask = torch.ones(z.shape[2:]), torch.ones(z.shape[2:], dtype=torch.bool)
    err = count_error(physical(z + 0.1, torch.from_numpy(idx)), rho.detach(), w, mask)
    err.backward()
    assert err > 0 and torch.isfinite(z.grad).all() and (z.grad != 0).any()
    header = (run_dir / "autoencoder" / "logs" / "version_0" / "metrics.csv").read_text().splitlines()[0]
    assert "train/count" in header.split(",") and "val/count" in header.split(",")


def test_cube_files_hold_each_member_and_its_molecule(molecule_run):
    run_dir, _, _ = molecule_run
    out = open_output(run_dir / "conditional.zarr")
    store = TrainingStore(run_dir / "data" / "train.zarr")
    names = store.group["label"].attrs["label_names"]
    files = sorted((run_dir / "cubes").glob("*.cube"))
    assert len(files) == out.sizes["realization"] * out.sizes["condition"]
    for c, index in enumerate(out["condition_index"].values):
        molecule = names[int(store.array("label")[index])]
        for m in out["realization"].values:
            data, atoms = read_cube_data(str(run_dir / "cubes" / f"{molecule}_c{index}_m{m}.cube"))
            expect = out["density"].isel(condition=c).sel(realization=m).transpose("x", "y", "z").values
            np.testing.assert_allclose(data, expect, rtol=1e-6, atol=1e-12)
            numbers = store.array("atom_numbers")[index]
            np.testing.assert_array_equal(atoms.numbers, numbers[numbers > 0])
            np.testing.assert_allclose(atoms.positions * BOHR_PER_ANGSTROM,
                                       store.array("atom_positions")[index][numbers > 0], atol=1e-5)


def test_report_scores_every_member_against_its_reference(molecule_run):
    run_dir, _, _ = molecule_run
    metrics = json.loads((run_dir / "report" / "metrics.json").read_text())
    mol = metrics["molecular"]["density"]
    assert mol["negative_fraction"] == 0.0
    for key in ("electron_count_relative_error", "radial_profile_relative_error", "peak_ratio"):
        assert all(np.isfinite(v) and v >= 0 for v in mol[key].values()), key
    assert np.isfinite(mol["spectrum_ratio"]) and mol["split"] == ["test"]
    assert set(mol["by_molecule"]) <= set(TrainingStore(run_dir / "data" / "train.zarr")
                                          .group["label"].attrs["label_names"])
    assert {"nearest_train_rms", "reference_rms", "copies"} <= set(mol["memorisation"])
    pro = mol["baselines"]["promolecule"]  # free-atom superposition at the same geometry and grid
    # 12^3 cells of 1.33 bohr: the grid count still matches to 2 %, the peak voxel to 25 %
    assert pro["electron_count_relative_error"]["median"] < 0.05 and 0.7 < pro["peak_ratio"]["median"] < 1.5
    pngs = {p.name for p in (run_dir / "report").glob("*.png")}
    assert {"density_density_0.png", "density_radial_profiles.png"} <= pngs
    assert "electron count" in (run_dir / "report" / "index.html").read_text().lower()


def test_seen_geometries_with_guidance_and_the_python_api(molecule_run, tmp_path):
    run_dir, cache, _ = molecule_run
    out_path = tmp_path / "seen.nc"  # netCDF too: label_names and the atoms survive
    res = simdiff("generate", f"run_dir={run_dir}", "data=molecules", "debug=tiny", f"cache_dir={cache}",
                  "generate.mode.split=train", "generate.mode.every=1", "generate.mode.max_conditions=2",
                  "generate.mode.cubes=false",
                  "generate.guidance=2.0", "generate.members=2", "generate.format=netcdf",
                  f"generate.out={out_path}")
    assert res.returncode == 0, res.stderr[-4000:]
    seen = open_output(out_path)
    store = TrainingStore(run_dir / "data" / "train.zarr")
    np.testing.assert_array_equal(seen["condition_index"].values, store.indices("train")[:2])
    assert seen["label"].attrs["label_names"] == list(store.group["label"].attrs["label_names"])
    seen_rows = store.indices("train")[:2]
    np.testing.assert_array_equal(seen["atom_numbers"].values, store.array("atom_numbers")[seen_rows])
    assert (seen["density"].values >= 0).all()
    # the library draws the same member for the same condition as the CLI did, bit for bit:
    # keyed noise, and member 1 asked alone is computed in its fixed group (0..9) as before
    run = open_run(run_dir)
    published = open_output(run_dir / "conditional.zarr")
    index = int(published["condition_index"].values[0])
    one = run.conditional(index, members=[1], steps=4, guidance=2.0)  # debug=tiny: 4 noise levels;
    # the preset's guidance
    assert one["density"].dims == ("realization", "condition", "z", "y", "x")
    np.testing.assert_array_equal(one["density"].sel(realization=1).isel(condition=0).values,
                                  published["density"].sel(realization=1).isel(condition=0).values)
    assert isinstance(one, xr.Dataset)
    # encode/decode go through each field's promolecule: the store rows are required, and the
    # round trip of two stored densities is their (non-negative) autoencoder reconstruction
    truth = denormalise(store.dataset().isel(sample=[0, 1]))
    with pytest.raises(DataError, match=r"relative to per-sample reference fields; pass rows="):
        run.encode(truth)
    latents = run.encode(truth, rows=[0, 1])
    with pytest.raises(DataError, match=r"decode: .* pass rows="):
        run.decode(latents)
    back = run.decode(latents, rows=[0, 1])
    assert back["density"].shape == truth["density"].shape and (back["density"].values >= 0).all()


def test_sample_mode_draws_are_scored_against_held_out_densities(molecule_run, tmp_path):
    """generate/mode=sample (labels and atoms of test samples, cycled) and evaluate's `samples`
    section (it crashed with StopIteration, then had no score for samples)."""
    run_dir, cache, _ = molecule_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    common = (f"run_dir={copy}", "data=molecules", "debug=tiny", f"cache_dir={cache}", "generate/mode=sample")
    assert simdiff("generate", *common).returncode == 0
    samples = open_output(copy / "samples.zarr")
    assert samples["density"].dims == ("realization", "z", "y", "x")
    assert (samples["density"].values >= 0).all()
    res = simdiff("evaluate", *common, "force=true")  # the report scored the conditional draws
    assert res.returncode == 0, res.stderr[-3000:]
    scores = json.loads((copy / "report" / "metrics.json").read_text())["samples"]
    assert scores["samples"] == samples.sizes["realization"]
    assert np.isfinite(scores["variables"]["density"]["wasserstein1"])
    assert "Samples (generate/mode=sample)" in (copy / "report" / "index.html").read_text()
    # draw 2 asked alone through the library is the CLI's, bit for bit: it takes the conditions of
    # test sample 2 and is computed in its fixed member group (0..9) either way
    run = open_run(copy)
    kw = {"steps": 4, "guidance": 2.0, "decoder_noise": False}  # debug=tiny's levels, the preset's rest
    one = run.sample([2], **kw)
    np.testing.assert_array_equal(one["density"].sel(realization=2).values,
                                  samples["density"].sel(realization=2).values)
    # labels= gives each draw its label on the split it draws from (it was written on test's rows)
    latents = LatentStore(copy / "latents.zarr")
    first = int(latents.array("label")[latents.indices("train")[0]])
    other = (first + 1) % len(latents.group["label"].attrs["label_names"])
    plain = run.sample([0], split="train", **kw)["density"].values
    def labelled(label: int) -> np.ndarray:
        return run.sample([0], labels=[label], split="train", **kw)["density"].values

    np.testing.assert_array_equal(labelled(first), plain)
    # (the tiny model's label embedding has barely trained: the other label moves the draw a little)
    assert not np.array_equal(labelled(other), plain)


def test_renormalised_members_hold_the_promolecule_count_and_say_so(molecule_run, tmp_path):
    """generate.mode.renormalise=true: a flagged post-processing step, recorded per member; the
    members as drawn are the stored fields over their factors, and evaluate scores both."""
    run_dir, cache, _ = molecule_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    common = (f"run_dir={copy}", "data=molecules", "debug=tiny", f"cache_dir={cache}",
              "generate.mode.renormalise=true", "force=true")
    for stage in ("generate", "evaluate"):
        res = simdiff(stage, *common)
        assert res.returncode == 0, res.stderr[-3000:]
    out, drawn = open_output(copy / "conditional.zarr"), open_output(run_dir / "conditional.zarr")
    assert "density" in out.attrs["simdiff_renormalised"]
    f = out["density_renormalisation"].transpose("realization", "condition").values
    assert np.isfinite(f).all() and (f > 0).all()
    store = TrainingStore(run_dir / "data" / "train.zarr")
    pro = store.dataset()["reference"].sel(reference_channel="density").isel(
        sample=out["condition_index"].values).values.astype(np.float64)
    rho = out["density"].transpose("realization", "condition", ...).values.astype(np.float64)
    np.testing.assert_allclose(rho.sum(axis=(2, 3, 4)), np.broadcast_to(pro.sum(axis=(1, 2, 3)), f.shape),
                               rtol=1e-5)
    raw = drawn["density"].transpose("realization", "condition", ...).values
    np.testing.assert_allclose(rho / f[:, :, None, None, None], raw, rtol=1e-5, atol=1e-9)
    assert len(list((copy / "cubes").glob("*.cube"))) == f.size
    mol = json.loads((copy / "report" / "metrics.json").read_text())["molecular"]["density"]
    before = json.loads((run_dir / "report" / "metrics.json").read_text())["molecular"]["density"]
    assert mol["renormalised"] is True and "renormalised" not in before
    for q in ("median", "p90"):
        assert mol["electron_count_relative_error_raw"][q] == pytest.approx(
            before["electron_count_relative_error"][q], rel=1e-4)
    # renormalised to the promolecule's count: the count error is the promolecule baseline's
    assert mol["electron_count_relative_error"]["median"] == pytest.approx(
        mol["baselines"]["promolecule"]["electron_count_relative_error"]["median"], rel=1e-3, abs=1e-6)
    assert "as drawn" in (copy / "report" / "index.html").read_text()


def test_augment_and_certify_classify_molecules_on_real_and_synthetic_densities(molecule_run, tmp_path):
    """`simdiff augment` then `simdiff certify` on the molecule preset (certify.task=label): a
    classifier of which molecule a density is, trained on real, real + synthetic and synthetic
    densities, scored on the real held-out ones, and in the report."""
    run_dir, cache, _ = molecule_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    common = (f"run_dir={copy}", "data=molecules", "debug=tiny", f"cache_dir={cache}")
    for stage in ("augment", "certify"):
        res = simdiff(stage, *common)
        assert res.returncode == 0, res.stderr[-3000:]
    drawn = open_output(copy / "augmented.zarr")
    store = TrainingStore(copy / "data" / "train.zarr")
    # each draw carries the label of the training sample whose conditions it was drawn for
    np.testing.assert_array_equal(drawn["label"].values, store.array("label")[drawn["source_index"].values])
    cert = json.loads((copy / "certificate.json").read_text())
    assert cert["task"] == "label" and cert["baseline"]["name"] == "class prior"
    assert cert["pairs"]["synthetic"] == drawn.sizes["sample"]
    assert cert["pairs"]["test"] == len(store.indices("test"))
    for entry in cert["by_fraction"].values():
        for arm in ("real", "real+synthetic", "synthetic"):
            assert 0 < entry[arm]["mean"] < 1  # (misclassified + 1/2) / (n + 1)
    assert set(cert["cross_entropy"]) == {"real", "real+synthetic", "synthetic"}
    res = simdiff("evaluate", *common, "force=true")
    assert res.returncode == 0, res.stderr[-3000:]
    html = (copy / "report" / "index.html").read_text()
    assert "Downstream certificate (label" in html and "class prior" in html
    assert (copy / "report" / "certificate.png").is_file()
