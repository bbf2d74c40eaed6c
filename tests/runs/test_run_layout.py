"""RunDir owns every path of a run; build_spec rebuilds allow-listed specs without Hydra."""

from __future__ import annotations

import functools

import pytest

from simdiff.base.errors import DataError
from simdiff.base.registry import build_spec
from simdiff.runs.layout import RunDir


def test_run_dir_paths(tmp_path):
    run = RunDir(tmp_path)
    assert run.store == tmp_path / "data" / "train.zarr"
    assert run.final("autoencoder") == tmp_path / "autoencoder" / "autoencoder.ckpt"
    assert run.config("diffusion") == tmp_path / "diffusion" / "config.yaml"
    assert run.output("forecast", "netcdf") == tmp_path / "forecast.nc"
    assert run.output("augmented") == tmp_path / "augmented.zarr"
    with pytest.raises(ValueError):
        run.output("forecasts")
    with pytest.raises(ValueError):
        run.final("encode")


def test_build_spec_builds_nested_nodes_and_partials_like_instantiate():
    from hydra.utils import instantiate

    spec = {
        "_target_": "simdiff.nets.autoencoder.Autoencoder",
        "latent_channels": 2,
        "channels": [8, 16],
        "factors": [[2, 2]],
        "blocks": 1,
        "groups": 4,
        "bottleneck": {"_target_": "simdiff.nets.bottleneck.BoundedBottleneck", "bound": 5.0},
    }
    import torch

    torch.manual_seed(0)
    ours = build_spec(spec, source="test", key="net", in_channels=3, periodic=[True, False])
    torch.manual_seed(0)
    theirs = instantiate(spec, in_channels=3, periodic=[True, False])
    assert all(
        torch.equal(a, b)
        for a, b in zip(ours.state_dict().values(), theirs.state_dict().values(), strict=True)
    )
    sampler = build_spec(
        {"_target_": "simdiff.diffusion.samplers.sample_heun", "_partial_": True, "s_churn": 0.0},
        source="test",
        key="sampler",
    )
    assert isinstance(sampler, functools.partial) and sampler.keywords == {"s_churn": 0.0}


def test_build_spec_refuses_a_foreign_target_before_importing_it(tmp_path):
    marker = tmp_path / "ran"
    spec = {"_target_": "os.system", "command": f"touch {marker}"}
    with pytest.raises(DataError, match="not a class simdiff rebuilds"):
        build_spec(
            {"_target_": "simdiff.nets.unet.UNet", "inner": spec}, source="file.yaml", key="diffusion.net"
        )
    assert not marker.exists()
