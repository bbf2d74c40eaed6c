"""The allowlist of ``_target_``s (simdiff.base.registry): stored specs and config targets.

Every payload here is live: ``test_payloads_are_live`` runs each one the way an unguarded
importer would (import the dotted path and call it; Hydra's instantiate) and sees its marker
file appear. The guarded paths must then refuse each one before it runs: no marker.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import pytest
import zarr

from simdiff.base import registry
from simdiff.base.errors import DataError
from simdiff.data.stores.training import TrainingStore
from simdiff.data.transforms import Identity, Log1p, from_spec


def payloads(marker: Path) -> dict[str, dict]:
    """Specs that, if built, create ``marker``."""
    return {
        "os.system": {"_target_": "os.system", "command": f"touch {marker}"},
        "subprocess.call": {"_target_": "subprocess.call", "args": f"touch {marker}", "shell": True},
        "builtins.exec": {"_target_": "builtins.exec", "_args_": [f"open({str(marker)!r}, 'w').close()"]},
        "via-import": {"_target_": "simdiff.data.stores.prepare.os.system", "command": f"touch {marker}"},
        "oc.create": {"_target_": "simdiff.data.transforms.Log1p",
                      "scale": f'${{oc.create:"{{_target_: builtins.open, file: {marker}, mode: w}}"}}'},
    }


def pickled_payload(marker: Path) -> object:
    """An object whose unpickling creates ``marker``."""

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    return Payload()


def _unguarded(spec: dict) -> None:
    """What the old from_spec did: import the target and call it with the rest as kwargs."""
    spec = dict(spec)
    module, _, name = spec.pop("_target_").rpartition(".")
    getattr(importlib.import_module(module), name)(**spec)


@pytest.fixture
def marker(tmp_path) -> Path:
    return tmp_path / "MARKER"


@pytest.fixture(autouse=True)
def clean_registry(monkeypatch):
    monkeypatch.setattr(registry, "_registered", set())


@pytest.mark.parametrize("name", ["os.system", "subprocess.call", "builtins.exec", "oc.create"])
def test_payloads_are_live(name, marker):
    """Control: unguarded, each payload runs (so 'no marker' below means 'refused')."""
    hydra_utils = pytest.importorskip("hydra.utils")
    spec = payloads(marker)[name]
    if name in ("os.system", "subprocess.call"):
        _unguarded(spec)
    elif name == "builtins.exec":  # what Hydra does with _args_ (Hydra 1.3.8 also blocklists exec)
        exec(*spec["_args_"])
    else:
        with pytest.raises(Exception, match="Log1p"):  # Log1p(scale=<file>) fails after open() ran
            hydra_utils.instantiate(spec)
    assert marker.exists()


def test_pickled_checkpoint_payload_is_live(tmp_path, marker):
    """Control for the checkpoint tests: unpickled without weights_only, the payload runs."""
    import torch

    torch.save({"state_dict": {}, "x": pickled_payload(marker)}, tmp_path / "evil.ckpt")
    torch.load(tmp_path / "evil.ckpt", weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("name", ["os.system", "subprocess.call", "builtins.exec", "via-import", "oc.create"])
def test_from_spec_refuses_payloads_before_importing(name, marker):
    with pytest.raises(DataError) as err:
        from_spec(payloads(marker)[name], source="/x/train.zarr", key="transforms.q")
    assert not marker.exists()
    msg = str(err.value)
    assert msg.startswith("/x/train.zarr: transforms.q")
    assert "register" in msg or "interpolation" in msg


def test_from_spec_message_names_file_key_value_and_fix(marker):
    with pytest.raises(DataError, match=r"/x/train.zarr: transforms.q._target_ = 'os.system' is not a class "
                                        r".*allowed_targets=\[os.system\]"):
        from_spec(payloads(marker)["os.system"], source="/x/train.zarr", key="transforms.q")


def test_from_spec_rebuilds_simdiff_transforms():
    assert from_spec(Log1p(scale=2.0).spec()) == Log1p(scale=2.0)
    assert from_spec(Identity().spec()) == Identity()
    with pytest.raises(DataError, match="cannot be rebuilt"):
        from_spec({"_target_": "simdiff.data.transforms.Log1p", "scale": -1.0}, source="s.zarr", key="t")


class Sqrt:
    """A user's transform, allowed on purpose."""

    def forward(self, x):
        return x**0.5

    def inverse(self, y):
        return y**2

    def spec(self):
        return {"_target_": f"{__name__}.Sqrt"}


def test_register_allows_a_users_class_on_purpose():
    with pytest.raises(DataError, match="register"):
        from_spec(Sqrt().spec())
    registry.register(Sqrt)
    assert isinstance(from_spec(Sqrt().spec()), Sqrt)


def test_register_a_package_prefix():
    registry.register(f"{Sqrt.__module__}.")
    assert isinstance(from_spec(Sqrt().spec()), Sqrt)


def test_check_stored_walks_nested_specs():
    spec = {"_target_": "simdiff.nets.autoencoder.Autoencoder",
            "bottleneck": {"_target_": "subprocess.call", "args": "true"}}
    with pytest.raises(DataError, match=r"cfg.yaml: autoencoder.net.bottleneck._target_ = 'subprocess.call'"):
        registry.check_stored(spec, source="cfg.yaml", key="autoencoder.net")
    with pytest.raises(DataError, match="no _target_"):
        registry.check_stored({"channels": [1]}, source="cfg.yaml", key="autoencoder.net")
    registry.check_stored({"_target_": "simdiff.nets.unet.UNet", "channels": [8]}, source="c", key="k")


ALLOWED = [
    "simdiff.data.sources.climate.ClimateSource", "simdiff.diffusion.samplers.sample_heun",
    "lightning.Trainer",
    "lightning.pytorch.callbacks.ModelCheckpoint", "lightning.pytorch.loggers.CSVLogger",
    "lightning.pytorch.strategies.DDPStrategy", "lightning.pytorch.plugins.environments.SLURMEnvironment",
    "pytorch_lightning.callbacks.EarlyStopping", "torch.optim.AdamW", "torch.nn.GELU",
]
REFUSED = [
    "builtins.open", "os.system", "subprocess.call", "posix.system",
    "simdiff.data.stores.prepare.os.system",  # a foreign function reached through an import
    "simdiff.data.sources.formats.importlib.import_module",
    "torch.load", "torch.hub.load", "torch.nn.functional.torch.load",  # unpickles / runs hubconf.py
    "lightning.pytorch.LightningModule.load_from_checkpoint",  # a method: unpickles
    "lightning.fabric.plugins.io.torch_io.TorchCheckpointIO.load_checkpoint",
    "torch.nn.Module.load_state_dict", "simdiff.nets.unet.UNet.__init__",
    "simdiff.cli.main.main", "simdiff.base.registry.register",  # would run commands / widen the allowlist
    "simdiff.nets.unet.UNetTypo",
]


@pytest.mark.parametrize("target", ALLOWED)
def test_config_targets_allowed(target):
    assert registry.config_target_allowed(target)


@pytest.mark.parametrize("target", REFUSED)
def test_config_targets_refused(target):
    assert not registry.config_target_allowed(target)


@pytest.mark.parametrize("target", sorted(registry.STORED | registry.SHIPPED))
def test_every_name_checked_without_import_names_what_it_says(target):
    """STORED and SHIPPED are trusted by name: each must be a class or module-level function of
    that name, defined in (or under) the module its path names (a typo or a moved class fails
    here, not at run time)."""
    import inspect

    obj = registry.locate(target)
    module, _, name = target.rpartition(".")
    assert inspect.isclass(obj) or inspect.isfunction(obj)
    assert obj.__qualname__ == name and obj.__module__.startswith(module.split(".")[0])
    if target.startswith("simdiff."):
        assert obj.__module__.startswith(module)


def test_allowed_targets_extend_the_config_check():
    assert registry.config_target_allowed("os.system", ["os.system"])
    assert registry.config_target_allowed("collections.OrderedDict", ["collections."])
    assert not registry.config_target_allowed("collections.OrderedDict", ["collection."])


def test_check_config_names_the_key_and_refuses_escaped_interpolations():
    cfg = {"trainer": {"_target_": "lightning.Trainer", "callbacks": [{"_target_": "builtins.open"}]}}
    with pytest.raises(DataError, match=r"the config: trainer.callbacks\[0\]._target_ = 'builtins.open'"):
        registry.check_config(cfg, source="the config")
    with pytest.raises(DataError, match="interpolation"):
        registry.check_config({"diffusion": {"net": {"_target_": "simdiff.nets.unet.UNet",
                                                     "channels": "${oc.create:x}"}}}, source="the config")
    registry.check_config({"t": {"_target_": "lightning.Trainer"}}, source="the config")


def _store(path: Path, transforms: dict) -> Path:
    g = zarr.open_group(str(path), mode="w", zarr_format=3)
    g.attrs.update({"simdiff_store": "training", "format_version": 1, "transforms": transforms,
                    "layout": {"sample_dim": "time", "depth_dim": None, "y_dim": "y", "x_dim": "x"}})
    return path


@pytest.mark.parametrize("name", ["os.system", "subprocess.call", "builtins.exec"])
def test_training_store_refuses_a_foreign_transform_on_opening(name, tmp_path, marker):
    path = _store(tmp_path / "train.zarr", {"q": payloads(marker)[name]})
    with pytest.raises(DataError, match=rf"{path}: transforms.q._target_ = '{name}'"):
        TrainingStore(path)
    assert not marker.exists()


def test_training_store_opens_with_simdiff_transforms(tmp_path):
    path = _store(tmp_path / "train.zarr", {"pr": Log1p(1e-4).spec()})
    assert TrainingStore(path).transforms == {"pr": Log1p(1e-4)}
