"""Bad-input corpus: every bad input gets one clear message and exit code 2, before any output.

Each case (``CASES``, one row each: an id, the sub-command, its overrides, the damage done
before it runs, and what stderr must name) runs the real ``simdiff`` in a subprocess on either a
copy of one tiny trained run (prepare, train-autoencoder, encode, train-diffusion; ``tiny_run``
of tests/cli/conftest.py, built once per session) or an empty run_dir, and checks: exit code 2,
one ``simdiff STAGE: ...`` line naming the file or the key and its value, no Python traceback,
and nothing written that looks complete (no file of the run changed or appeared, logs aside, and
no ``.NAME.partial`` store left).

Files come from the shared reference data (``../shared/data``: climate netCDF/GRIB, cube files
incl. ``molecular/edge_cases``) or from the tiny run, damaged by the case. To add a case, add a
row: ``overrides`` and ``needles`` are formatted with ``run`` (the run_dir), ``tmp`` (a scratch
folder outside it), ``shared`` (the shared data) and whatever the setup returns.

Every case is a ``simdiff`` process (about 10 s of imports and config alone), so only the rows
marked ``quick`` run in the default suite (a config group option and a run_dir refused before
Hydra, a count and prepare.split refused when the config is read, a scheduler address where
none answers, a lost store chunk: about 2 min with the tiny run built); the others are marked
slow (``-m slow``: about 10 min).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from clirun import FAST, simdiff

from simdiff.base.provenance import sha256_path

Setup = Callable[[Path, Path, Path], dict[str, str]]


def nothing(run: Path, tmp: Path, shared: Path) -> dict[str, str]:
    return {}


@dataclass(frozen=True)
class Case:
    id: str
    stage: str
    overrides: tuple[str, ...]
    needles: tuple[str, ...]  # what stderr must name (the file, or the key and the value)
    setup: Setup = nothing
    trained: bool = True  # on a copy of the tiny trained run; False: an empty run_dir
    quick: bool = False  # in the default suite; else marked slow


# -- damage done by a case's setup -----------------------------------------------------------

def _cut(src: Path, dst: Path, fraction: float = 0.5) -> Path:
    data = src.read_bytes()
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


def truncated_netcdf4(run, tmp, shared):
    return {"file": str(_cut(shared / "climate" / "xrtutorial_sst.mnmean.nc", tmp / "in" / "sst.nc"))}


def truncated_netcdf3(run, tmp, shared):
    return {"file": str(_cut(shared / "climate" / "eofs_hgt_djf.nc", tmp / "in" / "hgt.nc"))}


def truncated_grib(run, tmp, shared):
    return {"file": str(_cut(shared / "climate" / "era5-2mt-2019-03-uk.grib", tmp / "in" / "t2m.grib", 0.3))}


def text_named_nc(run, tmp, shared):
    dst = tmp / "in" / "readme.nc"
    dst.parent.mkdir(parents=True)
    shutil.copyfile(shared / "README.md", dst)
    return {"file": str(dst)}


def empty_nc(run, tmp, shared):
    dst = tmp / "in" / "empty.nc"
    dst.parent.mkdir(parents=True)
    dst.touch()
    return {"file": str(dst)}


def not_a_dataset_dir(run, tmp, shared):
    dst = tmp / "in" / "folder"
    dst.mkdir(parents=True)
    shutil.copyfile(shared / "README.md", dst / "README.md")
    return {"file": str(dst)}


def empty_glob(run, tmp, shared):
    (tmp / "in").mkdir()
    return {"file": str(tmp / "in" / "*.nc")}


def one_real_file(run, tmp, shared):
    dst = tmp / "in" / "sst.nc"
    dst.parent.mkdir(parents=True)
    shutil.copyfile(shared / "climate" / "xrtutorial_sst.mnmean.nc", dst)
    return {"file": str(dst)}


def broken_cube_header(run, tmp, shared):
    """cclib's water_mp2.cube: natoms = 3 in the header, but no atom lines."""
    dst = tmp / "in" / "water_mp2.cube"
    dst.parent.mkdir(parents=True)
    shutil.copyfile(shared / "molecular" / "edge_cases" / "cclib_water_mp2.cube", dst)
    return {"file": str(dst)}


def truncated_cube(run, tmp, shared):
    return {"file": str(_cut(shared / "molecular" / "h5cube_grid20.cube", tmp / "in" / "grid20.cube"))}


def garbled_cube_counts(run, tmp, shared):
    src = (shared / "molecular" / "h5cube_grid20.cube").read_text().splitlines(keepends=True)
    src[2] = "  abc  0.0 0.0 0.0\n"  # the natoms/origin line
    dst = tmp / "in" / "grid20.cube"
    dst.parent.mkdir(parents=True)
    dst.write_text("".join(src))
    return {"file": str(dst)}


def store_chunk_deleted(run, tmp, shared):
    chunks = sorted(p for p in (run / "data" / "train.zarr" / "data" / "c").rglob("*") if p.is_file())
    chunks[0].unlink()
    return {"file": str(run / "data" / "train.zarr")}


def store_zarr_json_corrupt(run, tmp, shared):
    path = run / "data" / "train.zarr" / "zarr.json"
    path.write_text(path.read_text()[:50])
    return {"file": str(path.parent)}


def store_data_zarr_json_corrupt(run, tmp, shared):
    path = run / "data" / "train.zarr" / "data" / "zarr.json"
    path.write_text("{not json")
    return {"file": str(path.parents[1])}


def store_data_wrong_shape(run, tmp, shared):
    store = run / "data" / "train.zarr"
    g = zarr.open_group(str(store), mode="r+")
    old = g["data"]
    shape = (old.shape[0], old.shape[1], old.shape[2] + 3, old.shape[3])
    attrs = dict(old.attrs)
    del g["data"]
    new = g.create_array("data", shape=shape, dtype=old.dtype if hasattr(old, "dtype") else "float32",
                         chunks=(1, *shape[1:]))
    new[:] = np.zeros(shape, dtype="float32")
    new.attrs.update(attrs)
    return {"file": str(store)}


def latents_missing(run, tmp, shared):
    shutil.rmtree(run / "latents.zarr")
    return {"file": str(run / "latents.zarr")}


def latents_chunk_deleted(run, tmp, shared):
    store = run / "latents.zarr"
    chunks = sorted(p for p in (store / "data" / "c").rglob("*") if p.is_file())
    chunks[0].unlink()
    return {"file": str(store)}


def latents_zarr_json_corrupt(run, tmp, shared):
    path = run / "latents.zarr" / "zarr.json"
    path.write_text("")
    return {"file": str(run / "latents.zarr")}


def _ckpt(run: Path, which: str) -> Path:
    return run / which / f"{which}.ckpt"


def ae_ckpt_truncated(run, tmp, shared):
    return {"file": str(_cut(_ckpt(run, "autoencoder"), _ckpt(run, "autoencoder")))}


def ae_ckpt_foreign(run, tmp, shared):
    path = _ckpt(run, "autoencoder")
    torch.save({"weights": torch.zeros(3), "note": "something else"}, path)
    return {"file": str(path)}


def dm_ckpt_random(run, tmp, shared):
    path = _ckpt(run, "diffusion")
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    return {"file": str(path)}


def dm_ckpt_truncated(run, tmp, shared):
    return {"file": str(_cut(_ckpt(run, "diffusion"), _ckpt(run, "diffusion")))}


def dm_ckpt_foreign_tensor(run, tmp, shared):
    path = _ckpt(run, "diffusion")
    torch.save(torch.ones(4), path)
    return {"file": str(path)}


def ae_ckpt_missing(run, tmp, shared):
    _ckpt(run, "autoencoder").unlink()
    return {"file": str(_ckpt(run, "autoencoder"))}


def regular_file_run_dir(run, tmp, shared):
    (tmp / "afile").write_text("a regular file\n")
    return {"bad_run": str(tmp / "afile" / "run")}


CUSTOM = ("data=custom",)

CASES: list[Case] = [
    # -- counts, ranges, lists, splits, modes and formats: refused when the config is read ----
    Case("generate-members-0", "generate", ("generate.members=0",), ("generate.members", "0"), quick=True),
    Case("generate-members-negative", "generate", ("generate.members=-3",), ("generate.members", "-3")),
    Case("generate-members-duplicate", "generate", ("generate.members=[1,1]",),
         ("generate.members", "[1, 1]")),
    Case("generate-members-negative-id", "generate", ("generate.members=[0,-1]",),
         ("generate.members", "-1")),
    Case("generate-members-text", "generate", ("generate.members=abc",), ("generate.members", "abc")),
    Case("augment-samples-0", "augment", ("augment.samples=0",), ("augment.samples", "0")),
    Case("augment-samples-duplicate", "augment", ("augment.samples=[2,2]",), ("augment.samples", "[2, 2]")),
    Case("generate-lead-steps-0", "generate", ("generate.mode.lead_steps=0",),
         ("generate.mode.lead_steps", "0")),
    Case("generate-init-every-0", "generate", ("generate.mode.init_every=0",),
         ("generate.mode.init_every", "0")),
    Case("generate-max-inits-0", "generate", ("generate.mode.max_inits=0",),
         ("generate.mode.max_inits", "0")),
    Case("generate-init-indices-out-of-range", "generate", ("generate.mode.init_indices=[100000]",),
         ("init_indices", "100000")),
    Case("generate-init-indices-negative", "generate", ("generate.mode.init_indices=[-1]",),
         ("init_indices", "-1")),
    Case("generate-init-indices-without-context", "generate", ("generate.mode.init_indices=[0]",),
         ("init_indices", "[0]", "conditioning state")),
    Case("generate-split-nope", "generate", ("generate.mode.split=nope",), ("generate.mode.split", "nope")),
    Case("augment-split-nope", "augment", ("augment.split=nope",), ("augment.split", "nope")),
    Case("generate-format-grib", "generate", ("generate.format=grib",), ("generate.format", "grib")),
    Case("augment-format-xyz", "augment", ("augment.format=xyz",), ("augment.format", "xyz")),
    Case("generate-mode-unknown", "generate", ("generate/mode=nope",), ("generate/mode", "nope"),
         quick=True),
    Case("generate-batch-size-0", "generate", ("generate.batch_size=0",), ("generate.batch_size", "0")),
    Case("augment-max-rounds-0", "augment", ("augment.max_rounds=0",), ("augment.max_rounds", "0")),
    Case("augment-member-group-0", "augment", ("augment.member_group=0",), ("augment.member_group", "0")),
    Case("generate-member-group-0", "generate", ("generate.member_group=0",), ("generate.member_group", "0")),
    Case("generate-rollout-noise-negative", "generate", ("generate.rollout_noise=-0.5",),
         ("generate.rollout_noise", "-0.5")),
    Case("augment-draws-per-source-0", "augment", ("augment.draws_per_source=0",),
         ("augment.draws_per_source", "0")),
    Case("certify-no-augmented-dataset", "certify", (), ("augmented.zarr", "simdiff augment")),
    Case("certify-fraction-0", "certify", ("certify.fractions=[0,0.5]",), ("certify.fractions", "0.0")),
    Case("augment-filter-unknown-variable", "augment", ("augment.filter.nonnegative=[nope]",), ("nope",)),
    Case("generate-out-bad-suffix", "generate", ("generate.out={tmp}/forecast.txt",),
         ("generate.out", "forecast.txt")),
    Case("augment-out-bad-suffix", "augment", ("augment.out={tmp}/aug.csv",), ("augment.out", "aug.csv")),
    Case("prepare-split-sum", "prepare", ("prepare.split.train=0.5",),
         ("prepare.split", "0.5"), trained=False, quick=True),
    Case("prepare-split-negative", "prepare", ("prepare.split.train=1.2", "prepare.split.val=-0.2",
                                                "prepare.split.test=0.0"), ("prepare.split", "-0.2"),
         trained=False),
    # -- where prepare's dask passes run (prepare.cluster) -------------------------------------
    Case("prepare-cluster-workers-0", "prepare", ("prepare/cluster=local", "prepare.cluster.n_workers=0"),
         ("prepare.cluster.n_workers", "0"), trained=False),
    Case("prepare-cluster-address-malformed", "prepare",
         ("prepare/cluster=address", "prepare.cluster.address=localhost:8786"),
         ("prepare.cluster.address", "localhost:8786", "tcp://"), trained=False),
    Case("prepare-cluster-address-unreachable", "prepare",
         ("prepare/cluster=address", "prepare.cluster.address=tcp://127.0.0.1:9",
          "prepare.cluster.timeout_s=2"),
         ("prepare.cluster.address", "tcp://127.0.0.1:9", "no dask scheduler answered"), trained=False,
         quick=True),
    Case("prepare-cluster-slurm-walltime", "prepare",
         ("prepare/cluster=slurm", "prepare.cluster.walltime=soon"),
         ("prepare.cluster.walltime", "soon"), trained=False),
    Case("prepare-cluster-memory-too-small", "prepare",
         (*CUSTOM, "data.source={file}", "prepare/cluster=local", "prepare.cluster.memory_limit=200MB"),
         ("prepare.cluster.memory_limit", "200MB", "prepare.work_mb"), setup=one_real_file, trained=False),
    # -- paths ------------------------------------------------------------------------------
    Case("prepare-source-missing", "prepare", (*CUSTOM, "data.source={tmp}/nope.nc"), ("{tmp}/nope.nc",),
         trained=False),
    Case("prepare-source-empty-glob", "prepare", (*CUSTOM, "data.source='{file}'"), ("{file}",),
         setup=empty_glob, trained=False),
    Case("prepare-source-directory", "prepare", (*CUSTOM, "data.source={file}"), ("{file}",),
         setup=not_a_dataset_dir, trained=False),
    Case("prepare-unknown-variable", "prepare", (*CUSTOM, "data.source={file}", "data.variables=[nope]"),
         ("nope", "{file}"), setup=one_real_file, trained=False),
    Case("prepare-unknown-level", "prepare", ("data=era_interim", "data.levels=[123]"), ("123", "level"),
         trained=False),
    Case("run-dir-under-a-file", "prepare", ("run_dir={bad_run}",), ("{bad_run}",),
         setup=regular_file_run_dir, trained=False, quick=True),
    # -- damaged source files -----------------------------------------------------------------
    Case("netcdf4-truncated", "prepare", (*CUSTOM, "data.source={file}"), ("{file}",),
         setup=truncated_netcdf4, trained=False),
    Case("netcdf3-truncated", "prepare", (*CUSTOM, "data.source={file}"), ("{file}",),
         setup=truncated_netcdf3, trained=False),
    Case("text-file-named-nc", "prepare", (*CUSTOM, "data.source={file}"), ("{file}",),
         setup=text_named_nc, trained=False),
    Case("empty-file-named-nc", "prepare", (*CUSTOM, "data.source={file}"), ("{file}",),
         setup=empty_nc, trained=False),
    Case("grib-truncated", "prepare", (*CUSTOM, "data.source={file}"), ("{file}",),
         setup=truncated_grib, trained=False),
    Case("cube-broken-header", "prepare", ("data=cubes", "data.source={file}"), ("{file}",),
         setup=broken_cube_header, trained=False),
    Case("cube-truncated", "prepare", ("data=cubes", "data.source={file}"), ("{file}",),
         setup=truncated_cube, trained=False),
    Case("cube-garbled-counts", "prepare", ("data=cubes", "data.source={file}"), ("{file}",),
         setup=garbled_cube_counts, trained=False),
    # -- damaged stores -----------------------------------------------------------------------
    Case("encode-atom-subcells-0", "encode", ("force=true", "encode.atom_subcells=0"),
         ("encode.atom_subcells", "0")),
    Case("train-store-chunk-deleted", "encode", ("force=true",), ("{file}",), setup=store_chunk_deleted,
         quick=True),
    Case("train-store-zarr-json-corrupt", "encode", ("force=true",), ("{file}",),
         setup=store_zarr_json_corrupt),
    Case("train-store-data-zarr-json-corrupt", "generate", (), ("{file}",),
         setup=store_data_zarr_json_corrupt),
    Case("train-store-data-wrong-shape", "encode", ("force=true",), ("{file}", "data"),
         setup=store_data_wrong_shape),
    Case("latents-missing-generate", "generate", (), ("{file}",), setup=latents_missing),
    Case("latents-missing-train-diffusion", "train-diffusion", ("force=true",), ("{file}",),
         setup=latents_missing),
    Case("tendency-cycle-without-time-features", "train-diffusion",
         ("force=true", "diffusion.tendency_cycle.daily=1"), ("diffusion.tendency_cycle", "time features")),
    Case("autoencoder-window-with-patches", "train-autoencoder",
         ("force=true", "autoencoder.window=2", "autoencoder.patch=[16,16]"),
         ("autoencoder.window=2", "autoencoder.patch=[16, 16]")),
    Case("autoencoder-window-not-a-count", "train-autoencoder", ("force=true", "autoencoder.window=0"),
         ("autoencoder.window=0", "integer >= 1")),
    Case("standardise-by-label-without-labels", "train-diffusion",
         ("force=true", "diffusion.standardise_by_label=true"),
         ("diffusion.standardise_by_label", "no label condition", "residual is true")),
    Case("diffusion-data-noise-without-flag", "train-diffusion",
         ("force=true", "diffusion.conditioning.generated=false", "diffusion.module.data_noise=0.5"),
         ("diffusion.module.data_noise=0.5", "diffusion.conditioning.generated=true")),
    Case("latents-chunk-deleted", "generate", (), ("{file}",), setup=latents_chunk_deleted),
    Case("latents-zarr-json-corrupt", "augment", (), ("{file}",), setup=latents_zarr_json_corrupt),
    # -- damaged checkpoints ------------------------------------------------------------------
    Case("autoencoder-ckpt-truncated", "generate", (), ("{file}",), setup=ae_ckpt_truncated),
    Case("autoencoder-ckpt-truncated-encode", "encode", ("force=true",),
         ("{file}",), setup=ae_ckpt_truncated),
    Case("autoencoder-ckpt-foreign", "generate", (), ("{file}",), setup=ae_ckpt_foreign),
    Case("autoencoder-ckpt-missing", "encode", ("force=true",), ("{file}",), setup=ae_ckpt_missing),
    Case("diffusion-ckpt-random-bytes", "generate", (), ("{file}",), setup=dm_ckpt_random),
    Case("diffusion-ckpt-truncated", "augment", (), ("{file}",), setup=dm_ckpt_truncated),
    Case("diffusion-ckpt-foreign-tensor", "generate", (), ("{file}",), setup=dm_ckpt_foreign_tensor),
]

assert len({c.id for c in CASES}) == len(CASES)


# -- fixtures and checks ------------------------------------------------------------------------

def _snapshot(run_dir: Path) -> dict[str, str]:
    """sha256 of every file under run_dir (logs aside): nothing may change or appear."""
    if not run_dir.is_dir():
        return {}
    return {str(p.relative_to(run_dir)): sha256_path(p)[0] for p in sorted(run_dir.rglob("*"))
            if p.is_file() and "logs" not in p.relative_to(run_dir).parts}


def _partials(*roots: Path) -> list[Path]:
    return [p for r in roots if r.is_dir() for p in r.rglob(".*.partial")]


PARAMS = [pytest.param(c, id=c.id, marks=[] if c.quick else [pytest.mark.slow]) for c in CASES]


@pytest.mark.parametrize("case", PARAMS)
def test_bad_input(case: Case, request, tmp_path, shared_data):
    if case.trained:
        src, common = request.getfixturevalue("tiny_run")
        run_dir = tmp_path / "run"
        shutil.copytree(src, run_dir, ignore=shutil.ignore_patterns("logs"))
    else:
        run_dir = tmp_path / "run"
        common = (*FAST, f"cache_dir={tmp_path / 'cache'}")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    values = {"run": str(run_dir), "tmp": str(scratch), "shared": str(shared_data)}
    values.update(case.setup(run_dir, scratch, shared_data))
    overrides = [o.format(**values) for o in case.overrides]
    before = _snapshot(run_dir)
    outside = sorted(p.name for p in scratch.iterdir())
    args = [f"run_dir={run_dir}", *common, *overrides]
    if any(o.startswith("run_dir=") for o in overrides):
        args = args[1:]
    out = simdiff(case.stage, *args, env={**os.environ, "SIMDIFF_SHARED_DATA": str(shared_data)})
    err = out.stderr
    assert out.returncode == 2, f"exit {out.returncode}:\n{err[-3000:]}"
    assert "Traceback" not in err, err[-3000:]
    prefix = f"simdiff {case.stage}: "
    lines = [line for line in err.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, err[-3000:]
    message = err[err.index(prefix):]
    for needle in case.needles:
        needle = needle.format(**values)
        assert needle in message, (needle, message)
    assert _snapshot(run_dir) == before, "the run's files changed"
    assert sorted(p.name for p in scratch.iterdir()) == outside, "an output appeared outside run_dir"
    assert not _partials(run_dir, scratch), _partials(run_dir, scratch)
