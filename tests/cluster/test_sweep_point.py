"""The run_dir of a sweep point (``sweep_dir`` in conf/config.yaml, resolvers in simdiff.cli.app):
derived from the point's overrides only, so the same point always lands in the same folder.
No cluster needed."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig

from simdiff.cli.app import (
    POINT_NAME_MAX,
    _register_resolvers,
    config_dir,
    log_stamp,
    point_name,
    sweep_point,
)


def _run_dir(overrides: list[str]) -> str:
    _register_resolvers()
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    hydra = HydraConfig.instance()
    before = hydra.cfg
    hydra.set_config(cfg)  # what ${hydra:...} reads
    try:
        return cfg.run_dir
    finally:
        hydra.cfg = before  # Lightning relaunches DDP workers through Hydra when it is set


def test_a_point_is_named_by_its_overrides_sorted_without_where_it_runs():
    run_dir = _run_dir(["sweep_dir=/s", "seed=3", "autoencoder.module.optimizer.lr=0.001",
                        "cache_dir=/c", "force=true"])
    assert run_dir == "/s/autoencoder.module.optimizer.lr=0.001,seed=3"
    assert _run_dir(["autoencoder.module.optimizer.lr=0.001", "seed=3", "sweep_dir=/s"]) == run_dir
    # where prepare's dask passes run is where it runs, too
    assert _run_dir(["sweep_dir=/s", "seed=3", "prepare/cluster=local"]) == "/s/seed=3"


def test_an_explicit_run_dir_wins_and_none_at_all_is_a_clear_error():
    assert _run_dir(["run_dir=/r", "sweep_dir=/s", "seed=3"]) == "/r"
    with pytest.raises(Exception, match="run_dir is required: run_dir=DIR, or for a sweep"):
        _run_dir(["seed=3"])


def test_point_names_are_one_folder_and_short_enough():
    assert point_name("") == "default"
    assert point_name("data.source=/x/y.nc,seed=1") == "data.source=%2Fx%2Fy.nc,seed=1"
    assert point_name("a=50%/") == "a=50%25%2F"
    long = ",".join(f"k{i}=v{i}" for i in range(100))
    name = point_name(long)
    assert len(name) == POINT_NAME_MAX and "/" not in name
    assert name != point_name(long + ",x=1") and name == point_name(long)
    assert sweep_point("runs/s", "seed=1") == "runs/s/seed=1"


SLURM_VARS = ("SLURM_JOB_ID", "SLURM_STEP_ID", "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", "SLURM_PROCID",
              "SLURM_RESTART_COUNT")


def test_the_ranks_of_a_slurm_step_share_one_log_folder_per_job(monkeypatch):
    for var in SLURM_VARS:
        monkeypatch.delenv(var, raising=False)
    assert log_stamp("2026-12-02_10-00-00") == "2026-12-02_10-00-00"  # not in SLURM
    monkeypatch.setenv("SLURM_JOB_ID", "41")
    monkeypatch.setenv("SLURM_STEP_ID", "0")
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "1")
    assert log_stamp("T") == "T"  # one task: its start time, as outside SLURM
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "2")
    monkeypatch.setenv("SLURM_PROCID", "0")
    assert log_stamp("T0") == "slurm-41.0-run0"
    monkeypatch.setenv("SLURM_PROCID", "1")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    assert log_stamp("T1") == "slurm-41.0-run2/rank1"
