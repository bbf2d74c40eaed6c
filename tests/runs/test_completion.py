"""The one stage-completion mechanism and the per-stage lock (simdiff.runs.completion)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from simdiff.base.errors import DataError
from simdiff.runs.completion import Identity, fingerprint, lock, record_path, stage
from simdiff.runs.layout import RunDir


def _identity(tmp_path: Path, **config) -> Identity:
    out = tmp_path / "out.txt"
    return Identity({"a": 1, **config}, {"source": tmp_path / "in.txt"}, [out])


def _run(run: RunDir, ident: Identity, force: bool = False) -> bool:
    with stage(run, "encode", ident, force=force) as todo:
        if todo:
            ident.outputs[0].write_text("made")
    return todo


@pytest.fixture
def run(tmp_path: Path) -> RunDir:
    (tmp_path / "in.txt").write_text("input v1")
    return RunDir(tmp_path)


def test_a_stage_runs_once_then_is_skipped(run, tmp_path):
    ident = _identity(tmp_path)
    assert _run(run, ident) is True
    record = json.loads(record_path(run, "encode", ident.outputs).read_text())
    assert record["inputs"]["source"]["sha256"] == fingerprint(tmp_path / "in.txt")["sha256"]
    assert _run(run, ident) is False


def test_a_changed_config_is_refused_with_the_key_unless_forced(run, tmp_path):
    _run(run, _identity(tmp_path))
    with pytest.raises(DataError, match=r"(?s)config: a: 1 -> 2.*force=true"):
        _run(run, _identity(tmp_path, a=2))
    assert _run(run, _identity(tmp_path, a=2), force=True) is True
    assert _run(run, _identity(tmp_path, a=2)) is False


def test_a_changed_input_is_refused_with_its_name(run, tmp_path):
    _run(run, _identity(tmp_path))
    (tmp_path / "in.txt").write_text("input v2")
    with pytest.raises(DataError, match=r"input source .*in.txt.*sha256"):
        _run(run, _identity(tmp_path))


def test_a_touched_but_unchanged_input_is_rehashed_and_still_skipped(run, tmp_path):
    _run(run, _identity(tmp_path))
    os.utime(tmp_path / "in.txt", ns=(1, 1))
    assert _run(run, _identity(tmp_path)) is False


def test_a_missing_output_runs_the_stage_again(run, tmp_path):
    ident = _identity(tmp_path)
    _run(run, ident)
    ident.outputs[0].unlink()
    assert _run(run, ident) is True


def test_a_stage_that_fails_leaves_no_record_and_no_lock(run, tmp_path):
    ident = _identity(tmp_path)
    with pytest.raises(RuntimeError), stage(run, "encode", ident) as todo:
        assert todo
        raise RuntimeError("killed")
    assert not record_path(run, "encode", ident.outputs).exists()
    assert not (tmp_path / ".simdiff" / "locks" / "encode.lock").exists()


def test_a_second_writer_is_refused_naming_the_first(run):
    with (
        lock(run, "generate"),
        pytest.raises(DataError, match=rf"PID {os.getpid()} on {socket.gethostname()}"),
    ):
        with lock(run, "generate"):
            pass
    with lock(run, "generate"):  # released
        pass


def test_a_stale_lock_of_a_dead_process_is_taken_over(run):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    path = run.root / ".simdiff" / "locks" / "generate.lock"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead.stdout), "started": 0}))
    with lock(run, "generate") as held:
        assert json.loads(held.read_text())["pid"] == os.getpid()


def test_a_lock_held_on_another_host_is_never_broken(run):
    path = run.root / ".simdiff" / "locks" / "generate.lock"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"host": "node-that-is-not-here", "pid": 1, "started": 0}))
    with pytest.raises(DataError, match=r"(?s)node-that-is-not-here.*remove the lock"):
        with lock(run, "generate"):
            pass


def test_a_requeued_slurm_job_takes_over_its_own_lock_from_another_node(run, monkeypatch):
    path = run.root / ".simdiff" / "locks" / "train-diffusion.lock"
    path.parent.mkdir(parents=True)
    before = {"host": "node-a", "pid": 1, "started": 0, "slurm_job": "77", "slurm_restart": 0}
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    path.write_text(json.dumps(before))
    with lock(run, "train-diffusion") as held:
        assert json.loads(held.read_text())["slurm_restart"] == 1
    # another job, or the same run of this one, on another node: never broken
    for other in ({**before, "slurm_job": "78"}, {**before, "slurm_restart": 1}):
        path.write_text(json.dumps(other))
        with pytest.raises(DataError, match="node-a"), lock(run, "train-diffusion"):
            pass


def test_worker_processes_neither_lock_nor_record(run, tmp_path, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "1")
    ident = _identity(tmp_path)
    with lock(RunDir(tmp_path), "encode"):  # held by "rank 0": a worker does not wait for it
        assert _run(run, ident) is True
    assert not record_path(run, "encode", ident.outputs).exists()


def test_a_stage_that_fails_on_a_fresh_run_dir_leaves_nothing_behind(tmp_path):
    run = RunDir(tmp_path / "new")
    ident = Identity({}, {}, [run.store])
    with pytest.raises(DataError), stage(run, "prepare", ident):
        raise DataError("bad input")
    assert not run.root.exists()


def test_a_stage_that_runs_removes_the_scratch_a_killed_run_left(run, tmp_path):
    from simdiff.base.atomic import scratch_dir

    out = tmp_path / "report" / "index.html"
    out.parent.mkdir()
    ident = Identity({"a": 1}, {"source": tmp_path / "in.txt"}, [out, tmp_path / "forecast.zarr"])
    left = [scratch_dir(tmp_path / "report"), scratch_dir(tmp_path / "report", "old"),
            scratch_dir(tmp_path / "forecast.zarr"), tmp_path / "report" / ".metrics.json.x1.tmp"]
    left[-1].write_text("half")
    partial = tmp_path / ".forecast.zarr.partial"  # resumed by generate, not scratch
    partial.mkdir()
    other = scratch_dir(tmp_path / "latents.zarr")  # another stage's: its own lock, its own sweep
    with stage(run, "evaluate", ident) as todo:
        assert todo and not any(p.exists() for p in left)
        out.write_text("made")
        (tmp_path / "forecast.zarr").mkdir()
    assert partial.is_dir() and other.is_dir()


def test_an_extra_rank_waits_for_the_primary_to_finish_the_stage(run, tmp_path, monkeypatch):
    import threading
    import time

    from simdiff.runs.completion import wait_for_primary

    ident = _identity(tmp_path)
    finished = []

    def primary():
        _run(run, ident)
        finished.append(time.monotonic())

    # the primary takes the lock first, works a moment, records the stage and releases the lock
    with lock(run, "encode"):
        waiter = threading.Thread(target=lambda: wait_for_primary(run, "encode", ident, poll=0.05))
        waiter.start()
        time.sleep(0.3)
        assert waiter.is_alive()  # still waiting while the primary holds the stage
    primary()
    waiter.join(5)
    assert not waiter.is_alive() and finished


def test_an_extra_rank_is_told_when_the_primary_failed_the_stage(run, tmp_path):
    import threading

    from simdiff.runs.completion import wait_for_primary

    ident = _identity(tmp_path)
    errors = []

    def wait():
        try:
            wait_for_primary(run, "encode", ident, poll=0.05)
        except DataError as err:
            errors.append(str(err))

    with lock(run, "encode"):
        waiter = threading.Thread(target=wait)
        waiter.start()
        waiter.join(0.3)
    waiter.join(5)
    assert errors and "primary process (rank 0) stopped without finishing" in errors[0]
    with pytest.raises(DataError, match="did not start this stage"):
        wait_for_primary(run, "encode", ident, poll=0.01, start_timeout=0.05)


@pytest.mark.parametrize("record_written", [True, False])
def test_the_half_written_record_of_a_killed_run_is_removed(run, tmp_path, record_written):
    """A run killed inside write_json leaves the record's temporary file (``.NAME.XXXX.tmp``, as
    atomic_file names it); the stage's next run, skipped or not, removes it under its lock."""
    import tempfile

    ident = _identity(tmp_path)
    _run(run, ident)
    path = record_path(run, "encode", ident.outputs)
    if not record_written:
        path.unlink()
    fd, _ = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.write(fd, b'{"stage": "enc')
    os.close(fd)
    assert _run(run, ident) is (not record_written)
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_a_forced_redo_after_new_inputs_retrains_instead_of_keeping_the_old_weights(run, tmp_path):
    """A training stage whose folder holds a finished model of the same config: after its input
    changed (latents re-encoded with other conditions), force=true must retrain from scratch,
    not let the folder's own claim skip as "complete with the same config" (which recorded the
    old weights as made from the new inputs; found on a molecules run re-encoded with
    encode.atom_subcells=2)."""
    from simdiff.runs.stage_dir import claim

    folder = tmp_path / "diffusion"
    ident = Identity({"a": 1}, {"latents": tmp_path / "in.txt"}, [folder / "final.ckpt"])

    def train() -> str | None:
        with stage(run, "train-diffusion", ident, force=True) as todo:
            if not todo:
                return "skipped by the record"
            resume = claim(folder, {"a": 1}, final="final.ckpt", stage="train-diffusion", force=True)
            if resume == "":  # the last step writes the final checkpoint from what it was trained on
                assert not (folder / "checkpoints" / "last.ckpt").exists()
                (folder / "checkpoints").mkdir(exist_ok=True)
                (folder / "checkpoints" / "last.ckpt").write_text("step 100")
                (folder / "final.ckpt").write_text((tmp_path / "in.txt").read_text())
            return resume

    assert train() == ""  # a fresh start
    assert train() == "skipped by the record"
    (tmp_path / "in.txt").write_text("input v2")
    assert train() == ""  # from scratch: neither skipped nor resumed from the old last.ckpt
    assert (folder / "final.ckpt").read_text() == "input v2"
    assert train() == "skipped by the record"


def test_a_forced_redo_whose_checks_refuse_it_leaves_the_old_model(run, tmp_path):
    """force=true on changed inputs discards a training stage's folder only once the stage
    claims it (after its own checks): a stage that refuses its config first keeps the model."""
    from simdiff.runs.stage_dir import claim

    folder = tmp_path / "diffusion"
    ident = Identity({"a": 1}, {"latents": tmp_path / "in.txt"}, [folder / "final.ckpt"])
    with stage(run, "train-diffusion", ident) as todo:
        assert todo
        assert claim(folder, {"a": 1}, final="final.ckpt", stage="train-diffusion", force=False) == ""
        (folder / "final.ckpt").write_text("v1")
    (tmp_path / "in.txt").write_text("input v2")
    with pytest.raises(DataError, match="bad patch"):
        with stage(run, "train-diffusion", ident, force=True):
            raise DataError("diffusion.patch: bad patch")  # refused before claim
    assert (folder / "final.ckpt").read_text() == "v1"
