"""The command-line contract (DESIGN.md section 2), exercised through real subprocesses."""

from __future__ import annotations

from functools import partial

import clirun
import pytest

from simdiff.data.stores.training import TrainingStore

simdiff = partial(clirun.simdiff, timeout=600)


def test_help_lists_every_sub_command():
    out = simdiff("--help")
    assert out.returncode == 0, out.stderr
    for name in ("prepare", "train-autoencoder", "encode", "train-diffusion", "generate", "augment",
                 "evaluate", "run"):
        assert f"  {name} " in out.stdout


def test_the_entry_module_imports_no_sub_command():
    """Processes spawned by multiprocessing import the main module again (prepare/cluster=local's
    dask workers): simdiff.cli.main must not bring Hydra, torch or Lightning with it."""
    import subprocess
    import sys

    code = ("import sys, simdiff.cli.main; print(sorted(m for m in ('hydra', 'torch', 'lightning', "
            "'simdiff.cli.stages') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_unknown_sub_command_is_refused():
    out = simdiff("prepar", "run_dir=x")
    assert out.returncode == 2
    assert "unknown sub-command 'prepar'" in out.stderr


def test_augment_without_a_trained_model_names_the_command_to_run_first(tmp_path):
    out = simdiff("augment", f"run_dir={tmp_path}", "debug=tiny")
    assert out.returncode == 2, out.stderr
    assert "train.zarr" in out.stderr and "simdiff prepare" in out.stderr


def test_a_stage_without_its_inputs_names_the_command_to_run_first(tmp_path):
    out = simdiff("train-diffusion", f"run_dir={tmp_path}", "debug=tiny")
    assert out.returncode == 2, out.stderr
    assert "latents.zarr" in out.stderr and "simdiff encode" in out.stderr


def test_an_empty_simdiff_cache_is_refused_before_anything_is_cached_in_the_current_folder(tmp_path):
    import os

    work = tmp_path / "checkout"
    work.mkdir()
    out = simdiff("prepare", f"run_dir={tmp_path / 'run'}", "debug=tiny", cwd=work,
                  env={**os.environ, "SIMDIFF_CACHE": ""})
    assert out.returncode == 2, out.stderr
    assert "cache_dir=''" in out.stderr and "SIMDIFF_CACHE" in out.stderr
    assert not list(work.iterdir())  # no qg/ simulation cache beside the user's files
    assert not (tmp_path / "run" / "data").exists()


def test_missing_run_dir_is_a_clear_error():
    out = simdiff("prepare")
    assert out.returncode != 0
    assert "run_dir" in out.stderr


def test_prepare_tiny_qg_writes_a_training_store(tmp_path):
    run_dir = tmp_path / "run"
    cache = tmp_path / "cache"
    out = simdiff("prepare", f"run_dir={run_dir}", "debug=tiny", f"cache_dir={cache}")
    assert out.returncode == 0, out.stderr
    store = TrainingStore(run_dir / "data" / "train.zarr")
    assert store.variables == ["q", "psi"]
    assert store.layout.depth_dim == "level"
    assert store.n_samples > 0
    # Re-running with the same config is a no-op; a different config is refused unless forced.
    again = simdiff("prepare", f"run_dir={run_dir}", "debug=tiny", f"cache_dir={cache}")
    assert again.returncode == 0, again.stderr
    other = simdiff("prepare", f"run_dir={run_dir}", "debug=tiny", f"cache_dir={cache}",
                    "prepare.split.train=0.7", "prepare.split.val=0.2")
    assert other.returncode == 2
    assert "force=true" in other.stderr


def test_empty_glob_names_the_pattern_and_leaves_no_store(tmp_path):
    run_dir = tmp_path / "run"
    pattern = str(tmp_path / "nothing-*.nc")
    out = simdiff("prepare", f"run_dir={run_dir}", "data=custom", f"data.source='{pattern}'")
    assert out.returncode == 2, out.stderr
    assert pattern in out.stderr
    assert not (run_dir / "data").exists()


@pytest.mark.slow
def test_prepare_real_sst_file(tmp_path, shared_data):
    run_dir = tmp_path / "run"
    out = simdiff("prepare", f"run_dir={run_dir}", "data=ersst", f"shared_data={shared_data}")
    assert out.returncode == 0, out.stderr
    store = TrainingStore(run_dir / "data" / "train.zarr")
    assert store.variables == ["sst"]
    mask = store.array("mask")
    assert 0.6 < mask.mean() < 0.75  # ~31 % of ERSST cells are land
