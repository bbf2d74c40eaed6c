"""Executable payloads planted wherever the CLI reads specs back, or passed as config overrides.

One tiny run (prepare, train-autoencoder, encode, train-diffusion; debug=tiny) is built once per
session (``tiny_run``, tests/cli/conftest.py); each test copies it, plants one payload (a
``_target_`` or pickled object that would create a marker file if built), runs the real
``simdiff`` in a subprocess and checks: exit code 2, one message naming the file (or config key)
and the value, no marker, nothing written. The
payloads are shown to be live in tests/base/test_registry.py (``test_payloads_are_live``,
``test_pickled_checkpoint_payload_is_live``).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml
import zarr
from clirun import simdiff

from simdiff.base.provenance import sha256_path


class Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def run(tiny_run, tmp_path) -> tuple[Path, tuple[str, ...], Path]:
    """A fresh copy of the tiny run, its common overrides, and the marker a payload would create."""
    src, common = tiny_run
    run_dir = tmp_path / "run"
    shutil.copytree(src, run_dir, ignore=shutil.ignore_patterns("logs"))
    return run_dir, common, tmp_path / "MARKER"


def _snapshot(run_dir: Path) -> dict[str, str]:
    """sha256 of every file the stages write (logs aside), to show that nothing was written."""
    return {str(p.relative_to(run_dir)): sha256_path(p)[0] for p in sorted(run_dir.rglob("*"))
            if p.is_file() and "logs" not in p.relative_to(run_dir).parts}


def _refused(out, marker: Path, *needles: str) -> None:
    assert out.returncode == 2, out.stderr[-3000:]
    assert not marker.exists(), "the payload ran"
    err = out.stderr
    for needle in needles:
        assert needle in err, (needle, err[-3000:])
    assert "Traceback" not in err


def _set_transforms(store: Path, spec: dict) -> None:
    zarr.open_group(str(store), mode="r+").attrs["transforms"] = {"q": spec}


# -- stored specs: store attributes ----------------------------------------------------------

STORE_PAYLOADS = {
    "os.system": lambda m: {"_target_": "os.system", "command": f"touch {m}"},
    "subprocess.call": lambda m: {"_target_": "subprocess.call", "args": f"touch {m}", "shell": True},
    "builtins.exec": lambda m: {"_target_": "builtins.exec", "_args_": [f"open({str(m)!r}, 'w').close()"]},
}


@pytest.mark.parametrize(("payload", "stage"), [("os.system", "evaluate"), ("subprocess.call", "generate"),
                                                 ("builtins.exec", "augment")])
def test_training_store_transforms_payload(run, payload, stage):
    run_dir, common, marker = run
    store = run_dir / "data" / "train.zarr"
    _set_transforms(store, STORE_PAYLOADS[payload](marker))
    before = _snapshot(run_dir)
    out = simdiff(stage, f"run_dir={run_dir}", *common, "force=true")
    _refused(out, marker, f"{store}: transforms.q._target_ = '{payload}'", "register")
    assert _snapshot(run_dir) == before
    assert not any(run_dir.glob("*forecast*")) and not any(run_dir.glob("*augmented*"))


def test_latent_store_transforms_payload(run):
    run_dir, common, marker = run
    store = run_dir / "latents.zarr"
    _set_transforms(store, STORE_PAYLOADS["os.system"](marker))
    before = _snapshot(run_dir)
    out = simdiff("train-diffusion", f"run_dir={run_dir}", *common, "force=true")
    _refused(out, marker, f"{store}: transforms.q._target_ = 'os.system'")
    assert _snapshot(run_dir) == before


# -- stored specs: the config.yaml beside each checkpoint -----------------------------------

def test_saved_autoencoder_config_payload(run):
    run_dir, common, marker = run
    path = run_dir / "autoencoder" / "config.yaml"
    saved = yaml.safe_load(path.read_text())
    saved["autoencoder"]["net"]["bottleneck"] = {"_target_": "subprocess.call", "args": f"touch {marker}",
                                                 "shell": True}
    path.write_text(yaml.safe_dump(saved))
    before = _snapshot(run_dir)
    out = simdiff("encode", f"run_dir={run_dir}", *common, "force=true")
    _refused(out, marker, f"{path}: autoencoder.net.bottleneck._target_ = 'subprocess.call'")
    assert _snapshot(run_dir) == before


def test_saved_diffusion_config_payloads(run):
    """A foreign net _target_, then an interpolation that would build one when resolved."""
    run_dir, common, marker = run
    path = run_dir / "diffusion" / "config.yaml"
    original = path.read_text()
    saved = yaml.safe_load(original)
    saved["diffusion"]["net"]["_target_"] = "os.system"
    saved["diffusion"]["net"]["command"] = f"touch {marker}"
    path.write_text(yaml.safe_dump(saved))
    out = simdiff("generate", f"run_dir={run_dir}", *common)
    _refused(out, marker, f"{path}: diffusion.net._target_ = 'os.system'")
    saved = yaml.safe_load(original)
    create = f"{{_target_: builtins.open, file: {marker}, mode: w}}"
    saved["diffusion"]["net"]["channels"] = f'${{oc.create:"{create}"}}'
    path.write_text(yaml.safe_dump(saved))
    out = simdiff("generate", f"run_dir={run_dir}", *common)
    _refused(out, marker, f"{path}: diffusion.net.channels", "holds an interpolation")
    assert not any(run_dir.glob("*forecast*"))


# -- checkpoints ------------------------------------------------------------------------------

def _poison(path: Path, marker: Path) -> None:
    state = torch.load(path, map_location="cpu", weights_only=True)
    state["evil"] = Payload(marker)
    torch.save(state, path)


def test_final_checkpoint_with_a_pickled_object(run):
    run_dir, common, marker = run
    path = run_dir / "diffusion" / "diffusion.ckpt"
    _poison(path, marker)
    out = simdiff("generate", f"run_dir={run_dir}", *common)
    _refused(out, marker, f"{path}: not a checkpoint simdiff can read safely", "train-diffusion")
    assert "weights_only" not in out.stderr.splitlines()[-1]
    assert not any(run_dir.glob("*forecast*"))


def test_resume_checkpoint_with_a_pickled_object(run):
    """Lightning's resume (trainer.fit(ckpt_path=last.ckpt)) is checked before it loads the file."""
    run_dir, common, marker = run
    (run_dir / "autoencoder" / "autoencoder.ckpt").unlink()  # an unfinished run: resumes from last.ckpt
    path = run_dir / "autoencoder" / "checkpoints" / "last.ckpt"
    _poison(path, marker)
    before = _snapshot(run_dir)
    out = simdiff("train-autoencoder", f"run_dir={run_dir}", *common)
    _refused(out, marker, f"{path}: not a checkpoint simdiff can read safely", "train-autoencoder")
    assert _snapshot(run_dir) == before


# -- config targets: overrides ----------------------------------------------------------------

CONFIG_PAYLOADS = {
    # the example: a callback that is a builtin
    "builtins.open": ("train-autoencoder",
                      "+trainer.callbacks=[{{_target_: builtins.open, file: '{m}', mode: w}}]",
                      "trainer.callbacks[0]._target_ = 'builtins.open'"),
    # a foreign function reached through an import inside simdiff
    "via-import": ("prepare", "+x={{_target_: simdiff.data.stores.prepare.os.system, command: 'touch {m}'}}",
                   "x._target_ = 'simdiff.data.stores.prepare.os.system'"),
    # inside torch, but it unpickles (Hydra's own blocklist lets this one through)
    "torch.load": ("train-diffusion",
                   "+trainer.callbacks=[{{_target_: torch.load, f: '{ckpt}', weights_only: false}}]",
                   "trainer.callbacks[0]._target_ = 'torch.load'"),
    # a sampler swapped for a shell
    "subprocess.call": ("generate", "sampler.sampler._target_=subprocess.call",
                        "sampler.sampler._target_ = 'subprocess.call'"),
}


@pytest.mark.parametrize("payload", list(CONFIG_PAYLOADS))
def test_config_override_payloads(run, payload):
    run_dir, common, marker = run
    stage, override, needle = CONFIG_PAYLOADS[payload]
    ckpt = run_dir.parent / "evil.ckpt"
    torch.save({"x": Payload(marker)}, ckpt)
    before = _snapshot(run_dir)
    out = simdiff(stage, f"run_dir={run_dir}", *common, "force=true", override.format(m=marker, ckpt=ckpt))
    _refused(out, marker, f"the config (presets, experiment files and overrides): {needle}",
             "nothing was instantiated or written", "allowed_targets")
    assert _snapshot(run_dir) == before


def test_allowed_targets_lets_a_trusted_target_through(run):
    run_dir, common, _ = run
    out = simdiff("encode", f"run_dir={run_dir}", *common, "+extra={_target_: collections.OrderedDict}")
    assert out.returncode == 2 and "collections.OrderedDict" in out.stderr
    out = simdiff("encode", f"run_dir={run_dir}", *common, "+extra={_target_: collections.OrderedDict}",
                  "allowed_targets=[collections.]")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "complete with the same config and inputs; skipping" in out.stderr + out.stdout


# -- outputs of generate: nothing is rebuilt from their attributes ---------------------------

@pytest.mark.slow
def test_forecast_attrs_are_never_built(run):
    """generate's and evaluate's reads of a forecast store's attrs are JSON/text only."""
    run_dir, common, marker = run
    small = ("generate.members=2", "generate.mode.lead_steps=1", "generate.decoder_noise=false")
    out = simdiff("generate", f"run_dir={run_dir}", *common, *small)
    assert out.returncode == 0, out.stderr[-3000:]
    g = zarr.open_group(str(run_dir / "forecast.zarr"), mode="r+")
    spec = {"_target_": "os.system", "command": f"touch {marker}"}
    g.attrs["transforms"] = {"q": spec}
    g.attrs["simdiff_spec"] = json.dumps(spec)
    g["q"].attrs["transform"] = spec
    out = simdiff("evaluate", f"run_dir={run_dir}", *common, *small)
    assert out.returncode == 0, out.stderr[-3000:]
    out = simdiff("generate", f"run_dir={run_dir}", *common, *small)  # complete: reads attrs, skips
    assert out.returncode == 0, out.stderr[-3000:]
    assert not marker.exists()
