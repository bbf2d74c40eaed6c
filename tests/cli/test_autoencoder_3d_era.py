"""The 3D path end to end on real pressure-level data: ERA-Interim u/v/z on 3 levels (2 times)."""

from __future__ import annotations

from functools import partial

import clirun
import numpy as np
import pytest

from simdiff.data.stores.latents import LatentStore

simdiff = partial(clirun.simdiff, timeout=600)


@pytest.mark.slow
def test_era_interim_uvz_through_the_3d_autoencoder(tmp_path, shared_data):
    run_dir = tmp_path / "era"
    common = (f"run_dir={run_dir}", "debug=tiny", f"shared_data={shared_data}", "data=era_interim")
    split = ("prepare.split.train=0.5", "prepare.split.val=0.5", "prepare.split.test=0")
    out = simdiff("prepare", *common, *split)
    assert out.returncode == 0, out.stderr
    out = simdiff("train-autoencoder", *common, "autoencoder.batch_size=1", "debug.ae_max_epochs=1")
    assert out.returncode == 0, out.stderr
    assert "test split" in out.stderr + out.stdout  # empty test split: the report says it used val
    out = simdiff("encode", *common, "autoencoder.batch_size=1", "debug.ae_max_epochs=1")
    assert out.returncode == 0, out.stderr
    lat = LatentStore(run_dir / "latents.zarr")
    data = lat.array("data")
    # (time, latent, level, lat, lon): levels kept, 241 x 480 -> 61 x 120 (241 padded to 244).
    assert data.shape == (2, 2, 3, 61, 120)
    assert np.isfinite(data).all()
    assert lat.layout.depth_dim == "latent_depth"
    assert lat.attrs["geometry"]["periodic"] == ["latent_x"]
    assert lat.autoencoder["input_dims"] == ["level", "lat", "lon"]
