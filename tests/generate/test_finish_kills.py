"""An augment store killed at every step of its finish (tally, publish) resumes to the same store.

A child process writes every row of a partial augment store, then tallies and publishes it,
SIGKILLing itself right after its N-th write, rename or deletion under the store; the parent
re-runs the finish (create_partial with the same template, tally, finalize) and compares the
published store with one that was never interrupted: attributes and every variable.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap

import numpy as np
import xarray as xr

from simdiff.generate.augment import augment_template, open_rows, tally_rejections
from simdiff.generate.output import create_partial, finalize, is_complete, output_attrs, partial_path

#: The child: write the rows, then the finish with a kill after store event KILL_AT (0: none).
CHILD = textwrap.dedent("""
    import json, os, signal, sys
    import numpy as np
    import zarr.storage._local as local
    from simdiff.data.stores.training import TrainingStore
    from simdiff.generate.augment import augment_template, tally_rejections, write_rows
    from simdiff.generate.output import create_partial, finalize

    store_path, target, attrs, kill_at = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4])
    store = TrainingStore(store_path)
    template = augment_template(store, 2, [7, 3, 11], {})
    create_partial(target, template, attrs)
    mask = store.array("mask")
    rows = {}
    for pos in range(5):
        fields = {v: np.where(mask, np.float32(280.0 + pos if v == "t2m" else 1e-4 * pos), np.nan)
                  for v in store.variables}
        synthetic = pos >= 2
        rows[pos] = {**fields, "synthetic": synthetic, "sample_id": [-1, -1, 7, 3, 11][pos],
                     "source_index": pos, "draws": 1 + pos % 3 if synthetic else 0}
        if synthetic:
            rows[pos]["rejections"] = [pos % 2, 1, 0, pos % 3]
    write_rows(target, rows)

    events = [0]
    def event():
        events[0] += 1
        if events[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
    put, delete_dir, replace = local._put, local.LocalStore.delete_dir, os.replace
    def put_(path, value, exclusive=False):
        out = put(path, value, exclusive)
        event()
        return out
    async def delete_dir_(self, prefix):
        await delete_dir(self, prefix)
        event()
    def replace_(a, b, *args, **kw):
        replace(a, b, *args, **kw)
        event()
    local._put, local.LocalStore.delete_dir, os.replace = put_, delete_dir_, replace_
    tally_rejections(target)
    finalize(target)
    print("EVENTS", events[0])
""")


def _child(store_path, target, attrs, kill_at: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CHILD, str(store_path), str(target), json.dumps(attrs),
                           str(kill_at)], capture_output=True, text=True, timeout=120)


def _same(a: xr.Dataset, b: xr.Dataset) -> list[str]:
    out = [f"attr {k}" for k in sorted(set(a.attrs) | set(b.attrs)) if a.attrs.get(k) != b.attrs.get(k)]
    if sorted(a.variables) != sorted(b.variables):
        return [*out, f"variables {sorted(set(a.variables) ^ set(b.variables))}"]
    for name in a.variables:
        va, vb = a[name].values, b[name].values
        if va.dtype != vb.dtype or not np.array_equal(va, vb, equal_nan=va.dtype.kind == "f"):
            out.append(f"{name} values")
    return out


def test_a_kill_after_any_write_of_the_finish_resumes_to_the_same_store(latlon_store, tmp_path):
    store_path = latlon_store.path
    attrs = output_attrs(config="augment: {}\n", checksums={}, seed=0, title="t", command="simdiff augment")
    reference = tmp_path / "reference" / "augmented.zarr"
    reference.parent.mkdir()
    done = _child(store_path, reference, attrs, 0)
    assert done.returncode == 0, done.stderr
    n_events = int(done.stdout.split("EVENTS")[1])
    assert n_events >= 6  # the tally's attrs, two deletions, the complete flag, a deletion, the rename
    kw = {"decode_times": False, "decode_timedelta": False, "consolidated": False}
    with xr.open_zarr(reference, **kw) as ref:
        ref = ref.load()
    assert json.loads(ref.attrs["simdiff_folded"]) == ["rejections", "reject_reason"]
    template = augment_template(latlon_store, 2, [7, 3, 11], {})
    for kill_at in range(1, n_events + 1):
        target = tmp_path / f"kill{kill_at}" / "augmented.zarr"
        target.parent.mkdir()
        killed = _child(store_path, target, attrs, kill_at)
        assert killed.returncode == -signal.SIGKILL, (kill_at, killed.stderr)
        if not is_complete(target):  # the resumed run: reuse the partial store, finish it
            assert create_partial(target, template, attrs) == partial_path(target)
            assert open_rows(target) == []
            tally_rejections(target)
            finalize(target)
        assert is_complete(target) and not partial_path(target).exists()
        with xr.open_zarr(target, **kw) as got:
            assert _same(ref, got.load()) == [], f"killed after store event {kill_at} of {n_events}"
