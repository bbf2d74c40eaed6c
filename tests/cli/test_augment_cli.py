"""`simdiff augment` end to end on a tiny trained QG run: schema, reproducibility, merge, errors.

One module-scoped `simdiff run debug=tiny` (the main job) plus one default `simdiff augment`;
the tests check the augmented store against the training store it was made from and re-run
augment with other options.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from clirun import kill_midway, simdiff

from simdiff.data.loading.loader import window_targets
from simdiff.data.stores.latents import LatentStore
from simdiff.data.stores.stats import denormalise
from simdiff.data.stores.training import TrainingStore
from simdiff.generate.augment import open_rows
from simdiff.generate.output import is_complete, partial_path
from simdiff.runs.augment import source_pool


@pytest.fixture(scope="module")
def augmented(tmp_path_factory) -> tuple[Path, tuple[str, ...], str]:
    tmp = tmp_path_factory.mktemp("aug")
    run_dir = tmp / "run"
    # member groups of 2 (ids 0-1, 2-3, ...): small enough that a killed run stops between groups
    common = (f"run_dir={run_dir}", "debug=tiny", f"cache_dir={tmp / 'cache'}", "augment.member_group=2")
    out = simdiff("run", *common)
    assert out.returncode == 0, out.stderr[-4000:]
    out = simdiff("augment", *common)
    assert out.returncode == 0, out.stderr[-4000:]
    return run_dir, common, out.stderr + out.stdout


def test_augmented_store_has_the_schema_of_the_source(augmented):
    run_dir, _, log = augmented
    target = run_dir / "augmented.zarr"
    assert is_complete(target) and not partial_path(target).exists()
    store = TrainingStore(run_dir / "data" / "train.zarr")
    source = denormalise(store.dataset())  # the source Field in physical units, as prepare stored it
    src_coords = store.dataset()
    ds = xr.open_zarr(target)
    assert sorted(v for v in ds.data_vars if ds[v].ndim > 1) == sorted(source.data_vars)
    for name in source.data_vars:
        assert ds[name].dims == source[name].dims == ("time", "level", "y", "x")
        assert ds[name].attrs == source[name].attrs and ds[name].attrs["units"]
        assert ds[name].dtype == np.float32
    for c in ("level", "y", "x"):
        np.testing.assert_array_equal(ds[c].values, src_coords[c].values)
        assert ds[c].attrs == src_coords[c].attrs
    # the sample index replaces the time coordinate: synthetic samples have no real time
    assert ds.sizes["time"] == 6 and ds["time"].values.tolist() == list(range(6))
    assert ds["synthetic"].values.all() and ds["sample_id"].values.tolist() == list(range(6))
    assert np.isfinite(ds["q"].values).all()  # the QG grid has no masked cells
    # a forecaster: each sample is a one-step draw from a real train state, recorded
    pool = source_pool(LatentStore(run_dir / "latents.zarr"), "train", 1)
    assert set(ds["source_index"].values.tolist()) <= set(pool.tolist())
    assert ds.attrs["simdiff_synthetic"] == 1 and ds.attrs["Conventions"] == "CF-1.10"
    assert ds.attrs["simdiff_seed"] == 0 and "training_store" in json.loads(ds.attrs["simdiff_sha256"])
    filt = json.loads(ds.attrs["simdiff_filter"])
    assert filt["range_margin"] == 1.0 and set(filt["bounds"]) == {"q", "psi"}
    rejected = json.loads(ds.attrs["simdiff_rejected"])
    assert rejected["total"] == int((ds["draws"].values - 1).sum())  # every candidate before the accepted
    assert f"filter rejected {rejected['total']} candidate(s)" in log
    # accepted samples lie inside the recorded bounds (margin 1.0)
    for name, (lo, hi) in filt["bounds"].items():
        v = ds[name].values
        assert v.min() >= lo - (hi - lo) and v.max() <= hi + (hi - lo)


def test_sample_k_alone_is_bitwise_sample_k(augmented, tmp_path):
    """Sample 4 asked for alone (batch_size 1: its group 4-5 is still drawn as one batch) has its
    bits in the run of 6."""
    run_dir, common, _ = augmented
    one = tmp_path / "one.zarr"
    out = simdiff("augment", *common, "augment.samples=[4]", "augment.batch_size=1", f"augment.out={one}")
    assert out.returncode == 0, out.stderr[-3000:]
    alone, full = xr.open_zarr(one), xr.open_zarr(run_dir / "augmented.zarr")
    k = int(np.flatnonzero(full["sample_id"].values == 4)[0])
    for name in ("q", "psi"):
        np.testing.assert_array_equal(alone[name].values[0], full[name].values[k])
    assert int(alone["source_index"].values[0]) == int(full["source_index"].values[k])
    # the same command again is a no-op
    again = simdiff("augment", *common, "augment.samples=[4]", "augment.batch_size=1", f"augment.out={one}")
    assert again.returncode == 0 and "skipping" in again.stderr + again.stdout


def test_merge_writes_real_then_synthetic_samples_and_prepares_again(augmented, tmp_path):
    run_dir, common, _ = augmented
    target = tmp_path / "merged.nc"
    out = simdiff("augment", *common, "augment.merge=true", "augment.format=netcdf", "augment.samples=2",
                  f"augment.out={target}")
    assert out.returncode == 0, out.stderr[-3000:]
    assert is_complete(target) and not partial_path(target).exists()
    store = TrainingStore(run_dir / "data" / "train.zarr")
    train = store.indices("train")
    with xr.open_dataset(target) as ds:
        n = len(train)
        assert ds.sizes["time"] == n + 2
        assert ds["synthetic"].values.tolist() == [False] * n + [True] * 2
        assert ds["source_index"].values[:n].tolist() == train.tolist()
        assert ds["sample_id"].values.tolist() == [-1] * n + [0, 1]
        real = denormalise(store.dataset()).isel(time=train)
        for name in ("q", "psi"):
            np.testing.assert_array_equal(ds[name].values[:n], real[name].values.astype(np.float32))
        # the synthetic rows equal those of the zarr run (same ids, same keys)
        full = xr.open_zarr(run_dir / "augmented.zarr")
        np.testing.assert_array_equal(ds["q"].values[n:], full["q"].values[:2])
    # the merged store prepares as a custom dataset (a user trains on it)
    out = simdiff("prepare", f"run_dir={tmp_path / 'again'}", "debug=tiny", "data=custom",
                  f"data.source={target}")
    assert out.returncode == 0, out.stderr[-3000:]
    # the tiny model forecasts, so each synthetic sample is a next-state draw: prepare writes it
    # after a copy of its source state, and the pair is one training window
    again = TrainingStore(tmp_path / "again" / "data" / "train.zarr")
    assert sorted(again.variables) == ["psi", "q"] and again.n_samples == n + 4
    assert again.attrs["synthetic_samples"] == 2 and again.attrs["synthetic_pairs"] == 2
    split, block = again.array("split"), again.array("block")
    assert split[n:].tolist() == [0] * 4  # never val/test
    assert {1, 2} <= set(split[:n].tolist())
    assert block[n] == block[n + 1] != block[n + 2] == block[n + 3] and block[n] != block[n - 1]
    assert {n + 1, n + 3} <= set(window_targets(split, block, 0, 2).tolist())
    with xr.open_dataset(target) as ds:
        sources = ds["source_index"].values[n:]
    prepared = denormalise(again.dataset())["q"].values
    for j, head in enumerate((n, n + 2)):  # the head is the real state the draw came from
        np.testing.assert_allclose(prepared[head], real["q"].values[list(train).index(sources[j])],
                                   rtol=1e-5, atol=1e-6 * float(np.abs(prepared).max()))
    log = out.stderr + out.stdout
    assert f"2 of {n + 4} samples" in log and "2 of them as (state, next state) pairs" in log


def test_a_filter_nothing_passes_stops_with_a_clear_error_and_no_output(augmented, tmp_path):
    _, common, _ = augmented
    target = tmp_path / "never.zarr"
    # q (potential vorticity) takes both signs, so no candidate is non-negative
    out = simdiff("augment", *common, "augment.filter.nonnegative=[q]", "augment.max_rounds=2",
                  "augment.samples=2", f"augment.out={target}")
    assert out.returncode == 2, out.stderr[-3000:]
    assert "failed the physical-bounds filter in all 2 rounds" in out.stderr
    assert "augment.max_rounds" in out.stderr and "'negative': 4" in out.stderr
    assert not target.exists() and partial_path(target).exists() and open_rows(target) == [0, 1]
    bad = simdiff("augment", *common, "augment.filter.nonnegative=[rain]", f"augment.out={target}")
    assert bad.returncode == 2 and "['rain']" in bad.stderr and "fix the list" in bad.stderr


@pytest.mark.slow
def test_killed_augment_resumes_only_the_missing_samples(augmented, tmp_path):
    run_dir, common, _ = augmented
    target = tmp_path / "big.zarr"
    # kill once some, not all, of the 10 samples are written
    args = ["augment", *common, "augment.samples=10", "augment.batch_size=1", f"augment.out={target}"]
    kill_midway(args, target, lambda t: len(open_rows(t)), total=10, kill_at=7)
    assert not target.exists() and not is_complete(target)
    done_before = 10 - len(open_rows(target))
    assert done_before > 0
    out = simdiff("augment", *common, "augment.samples=10", "augment.batch_size=4",
                  f"augment.out={target}")
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"{done_before} done before" in out.stderr + out.stdout
    full = xr.open_zarr(run_dir / "augmented.zarr")
    np.testing.assert_array_equal(xr.open_zarr(target)["psi"].values[:6], full["psi"].values)


@pytest.mark.slow
def test_ddp_augment_on_two_processes_matches_one_process(augmented, tmp_path):
    run_dir, common, _ = augmented
    target = tmp_path / "ddp.zarr"
    out = simdiff("augment", *common, "augment.devices=2", "augment.strategy=ddp", "augment.batch_size=2",
                  f"augment.out={target}")
    assert out.returncode == 0, out.stderr[-3000:]
    log = out.stderr + out.stdout
    assert "rank 0 wrote" in log and "rank 1 wrote" in log
    np.testing.assert_array_equal(xr.open_zarr(target)["q"].values,
                                  xr.open_zarr(run_dir / "augmented.zarr")["q"].values)


def test_evaluate_adds_an_augment_section_to_the_report(augmented):
    run_dir, common, _ = augmented
    out = simdiff("evaluate", *common)
    assert out.returncode == 0, out.stderr[-3000:]
    metrics = json.loads((run_dir / "report" / "metrics.json").read_text())
    aug = metrics["augment"]
    assert aug["samples"] == 6
    assert set(aug["variables"]) == {"q@1", "q@2", "psi@1", "psi@2"}
    for entry in aug["variables"].values():
        # finite and non-zero: computed on real data, and synthetic samples are not copies of test ones
        assert 0 < entry["wasserstein1"] < float("inf")
        assert 0 < entry["wasserstein1_train_test"] < float("inf")
        q = entry["quantiles"]
        assert len(q["synthetic"]) == len(q["test"]) == len(q["q"])
    assert aug["memorisation"]["median_ratio"] > 0
    assert "variables" in metrics  # the forecast part is still there
