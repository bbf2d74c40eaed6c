"""One stage-completion mechanism for all seven stages, and one writer per stage.

Each stage, once it knows what it would make, enters :func:`stage` with its **identity**: the
resolved config its outputs depend on, the files and folders it reads (its inputs) and the
outputs that must exist for it to count as done. Inside, under the stage's lock:

* no record, or an output missing: the stage runs (a killed stage resumes through its own
  resume points: checkpoints, partial stores; the scratch a killed run left is removed first,
  :func:`sweep_leftovers`), and a record is written when it returns;
* a record with the same config and the same input checksums: the stage is skipped;
* anything changed: refused with a message listing what changed (config keys, inputs whose
  sha256 differs), unless ``force``, which runs the stage again.

Records live in ``run_dir/.simdiff/stages/`` (one JSON per stage and output). Input checksums
are sha256 of the bytes (a folder: of its files in order); a checksum is reused without reading
the bytes again while a file's size and modification time are those recorded with it.

Locks. Only one process may run a stage of a run_dir at a time: ``run_dir/.simdiff/locks/STAGE.lock``
holds the owner's host, PID and command. A second run refuses with a message naming the first;
a lock whose process is gone (same host, PID not running; or the same SLURM job before it was
requeued, SLURM_RESTART_COUNT) is stale and taken over. Only the
primary process of a multi-process launch (rank 0) takes locks and writes records.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from simdiff.base.atomic import sweep_owned, sweep_scratch, write_json
from simdiff.base.errors import DataError
from simdiff.base.provenance import config_differences, config_yaml, sha256_path
from simdiff.runs.layout import RunDir

log = logging.getLogger("simdiff")


def is_primary_process() -> bool:
    """False in the extra processes of a multi-process launch (DDP workers, SLURM tasks > 0).

    Read from the launchers' environment (Lightning: LOCAL_RANK, NODE_RANK; SLURM:
    SLURM_PROCID), since it is needed before torch.distributed starts.
    """
    return all(os.environ.get(k, "0") == "0" for k in ("LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


def slurm_step() -> tuple[str, str, int] | None:
    """(job id, step id, times requeued) of a SLURM step of several tasks (``srun`` starting one
    rank per task), or None outside one: every rank of the step shares it, no other step has it."""
    env = os.environ
    tasks = env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS") or "1"
    if not env.get("SLURM_JOB_ID") or not tasks.isdigit() or int(tasks) < 2 or "SLURM_STEP_ID" not in env:
        return None
    return env["SLURM_JOB_ID"], env["SLURM_STEP_ID"], int(env.get("SLURM_RESTART_COUNT") or 0)


@dataclass
class Identity:
    """What a stage's outputs depend on, and what they are."""

    config: Mapping[str, Any]
    inputs: Mapping[str, Path] = field(default_factory=dict)
    outputs: list[Path] = field(default_factory=list)


#: True while a stage runs because ``force=true`` redoes it (its config or inputs changed).
_REDO: contextvars.ContextVar[bool] = contextvars.ContextVar("simdiff_redo", default=False)


def redoing() -> bool:
    """Whether the running stage is a forced redo: its outputs exist from another config or other
    inputs. A training stage's folder then holds checkpoints of the old inputs even where its own
    config is unchanged (re-encoded latents): :func:`simdiff.runs.stage_dir.claim` discards them,
    after the stage's own checks, instead of skipping or resuming."""
    return _REDO.get()


def trained(run: RunDir, *stages: str) -> dict[str, Path]:
    """The inputs a stage reads from trained models: each final checkpoint and the config.yaml the
    network is rebuilt from (a changed one is a changed input)."""
    out: dict[str, Path] = {}
    for stage in stages:
        out[stage] = run.final(stage)
        out[f"{stage} config"] = run.config(stage)
    return out


def _stat(path: Path) -> tuple[int, int]:
    """(bytes, newest mtime_ns) of a file, or of a folder's files."""
    if path.is_file():
        st = path.stat()
        return st.st_size, st.st_mtime_ns
    size, newest = 0, 0
    for p in path.rglob("*"):
        if p.is_file():
            st = p.stat()
            size, newest = size + st.st_size, max(newest, st.st_mtime_ns)
    return size, newest


def fingerprint(path: Path, known: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``{"sha256", "bytes", "mtime_ns"}`` of ``path``; the sha256 of ``known`` is reused while
    the size and modification time are unchanged."""
    if not path.exists():
        raise DataError(f"{path}: missing; run the stage that writes it first")
    size, mtime = _stat(path)
    if known and known.get("bytes") == size and known.get("mtime_ns") == mtime and known.get("sha256"):
        return dict(known)
    return {"sha256": sha256_path(path)[0], "bytes": size, "mtime_ns": mtime}


def record_path(run: RunDir, stage: str, outputs: list[Path]) -> Path:
    """The record of ``stage`` for these outputs (a stage may write several, e.g. ``generate.out``).

    Keyed by the outputs' paths relative to the run directory, so a run directory that is
    moved or copied keeps its records.
    """
    root = run.root.resolve()

    def name(p: Path) -> str:
        p = p.resolve()
        return p.relative_to(root).as_posix() if p.is_relative_to(root) else str(p)

    key = hashlib.sha256("\n".join(name(p) for p in outputs).encode()).hexdigest()[:12]
    return run.root / ".simdiff" / "stages" / f"{stage}-{key}.json"


def _changes(old: Mapping[str, Any], identity: Identity, now: Mapping[str, Mapping[str, Any]]) -> list[str]:
    plain_old = yaml.safe_load(config_yaml(old.get("config") or {}))
    plain_new = yaml.safe_load(config_yaml(identity.config))
    changes = [f"config: {d}" for d in config_differences(plain_old or {}, plain_new or {})]
    before = old.get("inputs") or {}
    for name, fp in now.items():
        was = before.get(name, {}).get("sha256")
        if was != fp["sha256"]:
            changes.append(
                f"input {name} ({identity.inputs[name]}): sha256 {str(was)[:12]} -> {fp['sha256'][:12]}"
            )
    for name in sorted(set(before) - set(now)):
        changes.append(f"input {name}: no longer read")
    return changes


@contextlib.contextmanager
def stage(run: RunDir, name: str, identity: Identity, *, force: bool = False) -> Iterator[bool]:
    """Run a stage under its lock, once: yields True when the stage must run, False to skip it.

    The record is written when the block exits normally after running; a DataError names what
    changed when outputs exist from another config or other inputs and ``force`` is off.
    """
    if not is_primary_process():
        yield True
        return
    with lock(run, name):
        path = record_path(run, name, identity.outputs)
        # A run killed while it wrote this record left its temporary file (the record itself is
        # either the old one or the new one): no writer of it is alive under the lock.
        if sweep_scratch(path):
            log.info("%s: removed the half-written record a killed run left beside %s", name, path.name)
        old = _read(path)
        known = (old or {}).get("inputs", {})
        # A stage whose input is missing runs (and says which stage to run first). A record
        # without an input the stage now reads (an augmented set made after the report) is not
        # done for it: the stage runs again, as for a missing output.
        done = (
            old is not None
            and all(p.exists() for p in identity.outputs)
            and all(Path(p).exists() and k in known for k, p in identity.inputs.items())
        )
        now = {k: fingerprint(Path(p), known.get(k)) for k, p in identity.inputs.items()} if done else {}
        if done:
            changes = _changes(old, identity, now)
            if not changes:
                log.info(
                    "%s: %s complete with the same config and inputs; skipping",
                    name,
                    ", ".join(str(p) for p in identity.outputs),
                )
                yield False
                return
            if not force:
                raise DataError(
                    f"{name}: {', '.join(str(p) for p in identity.outputs)} were made with another config or "
                    "other inputs:\n  " + "\n  ".join(changes) + f"\nFix: pass force=true to redo {name} "
                    "(and then the stages that read its outputs), or use another run_dir"
                )
            log.info("%s: force=true, redoing it (%s)", name, "; ".join(changes))
        redo = _REDO.set(bool(done))
        # The old record stays until the stage succeeds: outputs are published atomically, so
        # they are either those it describes, or newer ones it refuses as changed (never trusted).
        sweep_leftovers(run, name, identity.outputs)
        try:
            yield True
        finally:
            _REDO.reset(redo)
        # the inputs as the stage read them (a stage may refresh a cached checksum)
        now = {k: fingerprint(Path(p), now.get(k) or known.get(k)) for k, p in identity.inputs.items()}
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(
            {
                "stage": name,
                "config": yaml.safe_load(config_yaml(identity.config)),
                "inputs": now,
                "outputs": [str(p) for p in identity.outputs],
                "finished": time.time(),
            },
            path,
        )


def _slurm_incarnation() -> dict[str, Any]:
    """This process's SLURM job and how often it was requeued (empty outside SLURM)."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return {}
    return {"slurm_job": job, "slurm_restart": int(os.environ.get("SLURM_RESTART_COUNT") or 0)}


def _earlier_incarnation(owner: Mapping[str, Any], me: Mapping[str, Any]) -> bool:
    """The lock was taken by this same SLURM job before a requeue: SLURM starts a requeued job
    only once the previous run of it has ended, on whichever node, so that owner is gone."""
    return (
        "slurm_job" in me
        and owner.get("slurm_job") == me["slurm_job"]
        and isinstance(owner.get("slurm_restart"), int)
        and owner["slurm_restart"] < me["slurm_restart"]
    )


def lock_path(run: RunDir, name: str) -> Path:
    """``run_dir/.simdiff/locks/NAME.lock``: held while stage ``name`` runs."""
    return run.root / ".simdiff" / "locks" / f"{name}.lock"


def wait_for_primary(run: RunDir, name: str, identity: Identity, *, poll: float = 1.0,
                     start_timeout: float = 900.0) -> None:
    """In an extra process of a multi-process launch: return once the primary has finished stage
    ``name`` (its record, for this config, is written and its lock released).

    So the ranks of one command (``srun`` starting ``simdiff run`` once per GPU) move from stage
    to stage together: only the primary runs the single-process stages (prepare, encode,
    evaluate) and publishes what the rank-aware ones (training, generate, augment) made, and no
    rank starts the next stage before the outputs it reads exist. A DataError when the primary
    released the lock without recording the stage (it failed: its log says why), or never took
    it within ``start_timeout`` seconds.
    """
    path = record_path(run, name, identity.outputs)
    lock_file = lock_path(run, name)
    want = yaml.safe_load(config_yaml(identity.config))

    def recorded() -> bool:
        old = _read(path)
        return old is not None and old.get("config") == want and all(p.exists() for p in identity.outputs)

    started, seen_lock = time.monotonic(), False
    while True:
        held = lock_file.exists()
        seen_lock = seen_lock or held
        done = recorded()
        if done and not held:
            return
        if seen_lock and not held and not done:
            time.sleep(poll)  # the record is written just before the lock goes: look once more
            if recorded():
                return
            raise DataError(f"{name}: the primary process (rank 0) stopped without finishing this stage in "
                            f"{run.root}; its log (run_dir/logs/) says why")
        if not seen_lock and not done and time.monotonic() - started > start_timeout:
            raise DataError(f"{name}: the primary process (rank 0) did not start this stage in {run.root} "
                            f"within {start_timeout:.0f} s; check that every rank sees the same run_dir")
        time.sleep(poll)


def sweep_leftovers(run: RunDir, name: str, outputs: list[Path]) -> list[Path]:
    """Remove what a killed run of stage ``name`` left half-written (under the stage's lock).

    The scratch beside each output and beside each of its folders inside the run directory,
    and anything scratch inside a folder the stage owns (an output's folder other than the run
    directory itself: ``data/``, ``autoencoder/``, ``report/``). Partial outputs a stage resumes
    (``.forecast.zarr.partial``) and checkpoints are not scratch and stay.
    """
    root = run.root.resolve()
    removed: list[Path] = []
    for out in outputs:
        out = Path(out).resolve()
        removed += sweep_scratch(out)
        for folder in out.parents:
            if folder == root or not folder.is_relative_to(root):
                break
            removed += sweep_scratch(folder) + sweep_owned(folder)
    if removed:
        log.info("%s: removed %d leftover(s) of a killed run: %s", name, len(removed),
                 ", ".join(str(p.relative_to(root)) if p.is_relative_to(root) else str(p) for p in removed))
    return removed


def _read(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        log.warning("%s: unreadable stage record; the stage runs again", path)
        return None
    return value if isinstance(value, dict) else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def lock(run: RunDir, name: str) -> Iterator[Path]:
    """Hold :func:`lock_path` (see the module docstring)."""
    path = lock_path(run, name)
    created = [d for d in (run.root, path.parent.parent, path.parent) if not d.exists()]
    path.parent.mkdir(parents=True, exist_ok=True)
    me = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": time.time(),
        "command": " ".join(sys.argv),
        **_slurm_incarnation(),
    }
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = _read(path) or {}
            if (
                owner.get("host") == me["host"]
                and isinstance(owner.get("pid"), int)
                and not _alive(owner["pid"])
            ):
                log.warning(
                    "%s: stale lock of PID %s (no longer running); taking it over", path, owner["pid"]
                )
                path.unlink(missing_ok=True)
                continue
            if _earlier_incarnation(owner, me):
                log.warning(
                    "%s: lock of SLURM job %s before its requeue (run %s, on %s); taking it over",
                    path, owner["slurm_job"], owner["slurm_restart"], owner.get("host"),
                )
                path.unlink(missing_ok=True)
                continue
            raise DataError(
                f"{path}: stage {name} of this run_dir is being run by PID {owner.get('pid')} on "
                f"{owner.get('host')} since {time.ctime(owner.get('started', 0))} "
                f"({owner.get('command', '?')}). Wait for it to finish; if that process is gone (another "
                "host, a killed job), remove the lock file and run again"
            ) from None
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        break
    else:  # pragma: no cover - the stale lock came back between unlink and create
        raise DataError(f"{path}: another process took the lock of stage {name}; run again")
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)
        for d in reversed(created):  # a stage that wrote nothing leaves nothing, not even run_dir
            with contextlib.suppress(OSError):
                d.rmdir()
