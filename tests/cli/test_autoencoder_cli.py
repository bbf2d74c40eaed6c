"""`simdiff train-autoencoder` and `simdiff encode` end to end through the CLI (debug=tiny)."""

from __future__ import annotations

import json
import shutil
from functools import partial
from pathlib import Path

import clirun
import numpy as np
import pytest
import torch
import yaml

from simdiff.data.stores.latents import LatentStore
from simdiff.data.stores.training import TrainingStore

simdiff = partial(clirun.simdiff, timeout=600)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, tuple[str, ...]]:
    """A tiny QG run_dir with a prepared store and a trained autoencoder."""
    tmp = tmp_path_factory.mktemp("ae")
    run_dir = tmp / "run"
    common = (f"run_dir={run_dir}", "debug=tiny", f"cache_dir={tmp / 'cache'}")
    out = simdiff("prepare", *common)
    assert out.returncode == 0, out.stderr
    out = simdiff("train-autoencoder", *common)
    assert out.returncode == 0, out.stderr
    assert "epoch 1 step" in out.stderr + out.stdout  # one log line per epoch
    return run_dir, common


def test_train_writes_checkpoint_config_and_report(trained):
    run_dir, _ = trained
    ae = run_dir / "autoencoder"
    assert (ae / "autoencoder.ckpt").is_file()
    assert (ae / "checkpoints" / "last.ckpt").is_file()
    config = yaml.safe_load((ae / "config.yaml").read_text())
    assert config["data_signature"]["variables"] == ["q", "psi"]
    assert config["trainer"]["precision"] == "32-true"  # the CPU path is 32-bit
    # Checkpoints hold tensors and primitives only.
    ckpt = torch.load(ae / "autoencoder.ckpt", map_location="cpu", weights_only=True)
    assert any(k.startswith("ema.shadow_") for k in ckpt["state_dict"])
    assert ckpt["hyper_parameters"]["signature"]["spatial_shape"] == [2, 32, 32]
    assert not list(ae.glob(".*tmp*"))
    # The report is part of the stage. The stage only warns when simdiff.evaluate.reconstruction does
    # not import (simdiff/cli/autoencoder.py, _report), so both fail here: the import, then the file.
    import simdiff.evaluate.reconstruction  # noqa: F401
    assert (ae / "reconstruction.json").is_file(), "no reconstruction report: see the stage's warning"
    report = json.loads((ae / "reconstruction.json").read_text())
    assert report["compression_ratio"] == pytest.approx(4.0)
    assert (ae / "reconstruction.png").is_file()


def test_same_config_is_skipped_and_other_config_refused(trained):
    run_dir, common = trained
    before = (run_dir / "autoencoder" / "autoencoder.ckpt").stat().st_mtime_ns
    again = simdiff("train-autoencoder", *common)
    assert again.returncode == 0, again.stderr
    assert "skipping" in again.stderr + again.stdout
    assert (run_dir / "autoencoder" / "autoencoder.ckpt").stat().st_mtime_ns == before
    other = simdiff("train-autoencoder", *common, "autoencoder.net.latent_channels=3")
    assert other.returncode == 2
    assert "force=true" in other.stderr and "latent_channels" in other.stderr


def test_a_patch_the_net_cannot_tile_is_refused_at_startup(trained):
    run_dir, common = trained
    before = (run_dir / "autoencoder" / "autoencoder.ckpt").stat().st_mtime_ns
    out = simdiff("train-autoencoder", *common, "autoencoder.patch=[31,32]", "force=true")
    assert out.returncode == 2
    assert "autoencoder.patch=[31, 32]" in out.stderr and "factor 2" in out.stderr  # the QG preset's
    assert "use 30 or 32" in out.stderr
    assert (run_dir / "autoencoder" / "autoencoder.ckpt").stat().st_mtime_ns == before  # nothing discarded


def test_a_count_term_on_variables_without_a_physical_total_is_refused_at_startup(trained):
    """QG's q and psi are signed (no Log1p): what a field 'holds' has no meaning for them."""
    run_dir, common = trained
    before = (run_dir / "autoencoder" / "autoencoder.ckpt").stat().st_mtime_ns
    out = simdiff("train-autoencoder", *common, "autoencoder.loss.count_weight=10", "force=true")
    assert out.returncode == 2, out.stderr
    assert "train.zarr" in out.stderr and "['q', 'psi']" in out.stderr
    assert "autoencoder.loss.count_weight=0" in out.stderr
    assert (run_dir / "autoencoder" / "autoencoder.ckpt").stat().st_mtime_ns == before  # nothing discarded


def test_encode_writes_unit_variance_latents_with_the_split(trained):
    run_dir, common = trained
    out = simdiff("encode", *common)
    assert out.returncode == 0, out.stderr
    store = TrainingStore(run_dir / "data" / "train.zarr")
    lat = LatentStore(run_dir / "latents.zarr")
    data = lat.array("data")
    assert data.shape == (store.n_samples, 2, 2, 16, 16)  # the QG preset: 2x2 over y/x, levels kept
    assert data.dtype == np.float32
    train = lat.indices("train")
    per_channel = np.moveaxis(data[train], 1, 0).reshape(2, -1)
    np.testing.assert_allclose(per_channel.std(axis=1), 1.0, rtol=1e-4)
    np.testing.assert_allclose(per_channel.mean(axis=1), 0.0, atol=1e-4)
    np.testing.assert_array_equal(lat.array("split"), store.array("split"))
    np.testing.assert_array_equal(lat.array("block"), store.array("block"))
    info = lat.autoencoder
    assert info["compression_ratio"] == pytest.approx(4.0)
    assert len(info["checkpoint_sha256"]) == 64
    # Unscaled means round-trip through the stored scale.
    mu = lat.latent_means().values
    shape = (1, 2, 1, 1, 1)
    np.testing.assert_allclose((mu - lat.shift.reshape(shape)) / lat.scale.reshape(shape), data, atol=1e-5)
    again = simdiff("encode", *common)
    assert again.returncode == 0
    assert "latents.zarr complete with the same config and inputs; skipping" in again.stderr + again.stdout


def test_encode_refuses_a_store_the_net_was_not_trained_on(trained, tmp_path):
    """The same autoencoder over a QG store on another grid: a clear refusal, not a shape error."""
    run_dir, common = trained
    other = tmp_path / "other"
    out = simdiff("prepare", f"run_dir={other}", "debug=tiny", common[2], "debug.qg.nx=16")
    assert out.returncode == 0, out.stderr
    (other / "autoencoder").symlink_to(run_dir / "autoencoder")
    out = simdiff("encode", f"run_dir={other}", "debug=tiny", common[2])
    assert out.returncode == 2, out.stderr
    assert "spatial_shape: [2, 32, 32] -> [2, 16, 16]" in out.stderr
    assert "force=true" in out.stderr
    assert not (other / "latents.zarr").exists()


@pytest.mark.slow
def test_resume_continues_from_last_checkpoint(tmp_path, trained):
    run_dir, common = trained
    resumed = tmp_path / "resumed"
    shutil.copytree(run_dir / "data", resumed / "data")
    shutil.copytree(run_dir / "autoencoder" / "checkpoints", resumed / "autoencoder" / "checkpoints")
    shutil.copy(run_dir / "autoencoder" / "config.yaml", resumed / "autoencoder" / "config.yaml")
    # An interrupted 3-epoch run: its config, and the checkpoint written after epoch 2 (index 1).
    out = simdiff("train-autoencoder", f"run_dir={resumed}", "debug=tiny", common[2],
                  "debug.ae_max_epochs=3")
    assert out.returncode == 2 and "force=true" in out.stderr  # a different budget is a different config
    cfg = yaml.safe_load((resumed / "autoencoder" / "config.yaml").read_text())
    cfg["autoencoder"]["max_epochs"] = 3
    (resumed / "autoencoder" / "config.yaml").write_text(yaml.safe_dump(cfg))
    out = simdiff("train-autoencoder", f"run_dir={resumed}", "debug=tiny", common[2], "debug.ae_max_epochs=3")
    assert out.returncode == 0, out.stderr
    text = out.stderr + out.stdout
    assert "resuming from" in text
    assert "epoch 2 step" in text and "epoch 0 step" not in text
    assert (resumed / "autoencoder" / "autoencoder.ckpt").is_file()
