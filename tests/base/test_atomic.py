"""Outputs that appear whole or not at all, and the scratch a killed writer leaves (simdiff.base.atomic)."""

from __future__ import annotations

import pytest

from simdiff.base.atomic import atomic_file, scratch_dir, sweep_owned, sweep_scratch, write_json


def test_an_atomic_file_is_whole_or_absent(tmp_path):
    path = tmp_path / "a.json"
    write_json({"x": 1}, path)
    with pytest.raises(RuntimeError), atomic_file(path) as fh:
        fh.write('{"x": 2, "half')
        raise RuntimeError("killed half-way")
    assert path.read_text() == '{\n  "x": 1\n}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_scratch_is_named_after_its_output_and_kind(tmp_path):
    tmp, old = scratch_dir(tmp_path / "forecast.zarr"), scratch_dir(tmp_path / "forecast.zarr", "old")
    assert tmp.parent == old.parent == tmp_path and tmp.is_dir() and not any(tmp.iterdir())
    assert tmp.name.startswith(".forecast.zarr.tmp-") and old.name.startswith(".forecast.zarr.old-")
    with pytest.raises(ValueError, match="scratch kind"):
        scratch_dir(tmp_path / "x", "partial")


def _leftovers(folder):
    """What a writer of ``x.zarr`` killed at each point leaves, and what is not its scratch."""
    target = folder / "x.zarr"
    mine = [scratch_dir(target), scratch_dir(target, "old"), folder / ".x.zarr.k3j9.tmp"]
    (mine[0] / "store.zarr").mkdir()
    (mine[0] / "store.zarr" / "c0").write_bytes(b"\0" * 8)
    mine[2].write_text("half")
    kept = [folder / "x.zarr", folder / ".x.zarr.partial", folder / ".y.zarr.tmp-abc", folder / ".zattrs",
            folder / "x.zarr.tmp-not-hidden"]
    for p in kept:
        p.mkdir() if p.suffix in (".zarr", ".partial") else p.write_text("keep")
    return mine, kept


def test_sweep_removes_only_the_scratch_of_that_output(tmp_path):
    mine, kept = _leftovers(tmp_path)
    assert sweep_scratch(tmp_path / "x.zarr") == sorted(mine)
    assert not any(p.exists() for p in mine) and all(p.exists() for p in kept)
    assert sweep_scratch(tmp_path / "x.zarr") == []
    assert sweep_scratch(tmp_path / "missing" / "x.zarr") == []


def test_sweep_owned_removes_scratch_at_any_depth_and_keeps_store_metadata(tmp_path):
    owned = tmp_path / "autoencoder"
    deep = owned / "checkpoints"
    deep.mkdir(parents=True)
    mine, kept = _leftovers(deep)
    ckpt = owned / ".autoencoder.ckpt.tmp"  # publish_checkpoint's copy, killed before the rename
    ckpt.write_bytes(b"half")
    removed = sweep_owned(owned)
    # .y.zarr.tmp-abc is another output's scratch, but inside an owned folder it is the owner's too
    assert set(removed) == {*mine, ckpt, deep / ".y.zarr.tmp-abc"}
    assert all(p.exists() for p in kept if p.name != ".y.zarr.tmp-abc")
