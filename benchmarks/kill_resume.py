"""Kill every stage with SIGKILL at random points, re-run it, and compare with an uninterrupted run.

One uninterrupted pipeline (prepare, train-autoencoder, encode, train-diffusion, generate,
augment, evaluate; each its own command) is the reference; a copy of its run_dir is kept as it
was before each chosen stage. For each of ``--kills`` trials of a stage, a copy of that snapshot
runs the stage's command; once the stage logs that its work started, the process is killed after
a random fraction of the time the work took (uniform, from ``--seed``; the shortest span seen so
far, since the load of a shared machine changes), and the same command is run again to
completion. The re-run's outputs are compared with the reference's:

* checkpoints (``*.ckpt``): ``torch.equal`` on every entry of ``state_dict`` (weights, EMA);
* stores (``*.zarr``, ``*.nc``): every variable and coordinate, values (NaN equal to NaN),
  dtype and attributes, with the run directory's path written as ``<run_dir>``;
* JSON and text files of the report: equal after the same path substitution.

Reported per stage: kills (trials whose process was still running when killed), resumes
(re-runs that continued from a checkpoint or a partial store; prepare, encode and evaluate have
none: they redo their work into scratch and publish it atomically), complete (the kill came
after the outputs were published: the re-run skipped), identical (re-runs whose outputs equal
the reference bit for bit), leftovers (scratch or partial stores still in the run_dir after the
re-run; goal 0), and per trial the kill time, the outcome and the first difference.

Run (``debug=tiny``, one thread per command: ~20-30 s per trial on 2 busy CPU cores)::

    PYTHONPATH=. .venv/bin/python benchmarks/kill_resume.py --stage all --kills 20
    PYTHONPATH=. .venv/bin/python benchmarks/kill_resume.py --stage train-autoencoder --kills 10 \\
        --override bottleneck=kl --override autoencoder.checkpoint_every_n_steps=3

Prints a table and writes ``bench_results/kill_resume_<stage>.json`` (``kill_resume.json`` for
several stages). ``tests/cli/test_kill_resume_stages.py`` runs it with 3 kills per stage.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

ENTRY = [sys.executable, "-m", "simdiff.cli.main"]
#: a re-run that continued from a checkpoint or from a partial store with units written
RESUMED = r"resuming from|\((?!0 done)\d+ done before\)"
SKIPPED = r"skipping"


@dataclass(frozen=True)
class Stage:
    """How to run, kill and judge one ``simdiff`` sub-command.

    Attributes:
        command: the sub-command (the stages run in ``STAGES`` order to build each other's inputs).
        start, end: log lines (regex) marking the start and end of the work kills aim at.
        outputs: what is compared with the reference, relative to run_dir.
        rtol: numbers in JSON and CSV outputs compare equal within this relative tolerance (0:
            bit for bit, every stage now: evaluate's weighted means are plain sums in a fixed
            order, :mod:`simdiff.metrics.weighting`).
    """

    command: str
    start: str
    end: str
    outputs: tuple[str, ...]
    rtol: float = 0.0


STAGES: dict[str, Stage] = {
    s.command: s
    for s in (
        Stage("prepare", r"prepare: statistics of", r"prepare: wrote", ("data/train.zarr",)),
        Stage("train-autoencoder", r"train-autoencoder: \d+ parameters",
              r"Trainer.fit. stopped|train-autoencoder: wrote", ("autoencoder/autoencoder.ckpt",)),
        Stage("encode", r"encode: \d+ samples of", r"encode: wrote", ("latents.zarr",)),
        Stage("train-diffusion", r"train-diffusion: \d+ parameters",
              r"Trainer.fit. stopped|train-diffusion: wrote", ("diffusion/diffusion.ckpt",)),
        Stage("generate", r"generate: \d+ members to write", r"generate: published", ("forecast.zarr",)),
        Stage("augment", r"augment: \d+ rows to write", r"augment: published", ("augmented.zarr",)),
        Stage("evaluate", r"evaluate: .*members x", r"evaluate: report in",
              ("report/metrics.json", "report/metrics.csv", "report/index.html")),
    )
}


class Run:
    """``simdiff ARGS`` in a subprocess, with the time each log line arrived."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.t0 = time.monotonic()
        self.lines: list[tuple[float, str]] = []
        self._log = log.open("w")
        self.proc = subprocess.Popen([*ENTRY, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, bufsize=1)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append((time.monotonic() - self.t0, line))
            self._log.write(line)

    def seen(self, pattern: str) -> float | None:
        """Seconds from the start to the first line matching ``pattern``, or None."""
        rx = re.compile(pattern)
        return next((t for t, line in list(self.lines) if rx.search(line)), None)

    def wait(self, timeout: float = 1800) -> int:
        rc = self.proc.wait(timeout)
        self._reader.join(10)
        self._log.close()
        return rc

    def kill(self) -> bool:
        """SIGKILL; True when the process was still running."""
        alive = self.proc.poll() is None
        if alive:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.wait()
        return alive


def run_to_end(args: list[str], log: Path) -> Run:
    run = Run(args, log)
    rc = run.wait()
    if rc != 0:
        raise SystemExit(f"`simdiff {' '.join(args)}` failed ({rc}); see {log}")
    return run


#: keys whose values say when something was made, not what: a store's provenance "created",
#: the CF "history" attribute ("TIME: command")
WHEN = frozenset({"created", "history"})


def _plain(obj: Any, root: Path) -> Any:
    """``obj`` with the run directory's path written as ``<run_dir>`` and time stamps (``WHEN``)
    left out (JSON-like values)."""
    if isinstance(obj, str):
        return obj.replace(str(root.resolve()), "<run_dir>").replace(str(root), "<run_dir>")
    if isinstance(obj, dict):
        return {k: _plain(v, root) for k, v in obj.items() if k not in WHEN}
    if isinstance(obj, list | tuple):
        return [_plain(v, root) for v in obj]
    if isinstance(obj, np.ndarray) and obj.dtype.kind in "OU":
        return [_plain(v, root) for v in obj.tolist()]
    return obj.tolist() if isinstance(obj, np.ndarray | np.generic) else obj


def _checkpoints(a: Path, b: Path) -> list[str]:
    sa = torch.load(a, map_location="cpu", weights_only=True)["state_dict"]
    sb = torch.load(b, map_location="cpu", weights_only=True)["state_dict"]
    if sorted(sa) != sorted(sb):
        return [f"keys differ: {sorted(set(sa) ^ set(sb))[:3]}"]
    out = []
    for k in sorted(sa):
        if not torch.equal(sa[k], sb[k]):
            same = sa[k].shape == sb[k].shape
            d = float((sa[k].double() - sb[k].double()).abs().max()) if same else float("inf")
            out.append(f"{k}: max|d| {d:.2e}")
    return out


def _stores(a: Path, ra: Path, b: Path, rb: Path) -> list[str]:
    import xarray as xr

    kw = {"decode_times": False, "decode_timedelta": False}
    opened = [xr.open_zarr(p, consolidated=False, **kw) if p.suffix == ".zarr" else xr.open_dataset(p, **kw)
              for p in (a, b)]
    with opened[0] as da, opened[1] as db:
        out = []
        if _plain(dict(da.attrs), ra) != _plain(dict(db.attrs), rb):
            keys = sorted(k for k in set(da.attrs) | set(db.attrs)
                          if _plain(da.attrs.get(k), ra) != _plain(db.attrs.get(k), rb))
            out.append(f"attrs {keys[:4]}")
        if sorted(da.variables) != sorted(db.variables):
            return [*out, f"variables {sorted(set(da.variables) ^ set(db.variables))}"]
        for name in sorted(da.variables):
            va, vb = da[name].values, db[name].values
            nan = va.dtype.kind in "fc"
            if va.dtype != vb.dtype or va.shape != vb.shape or not np.array_equal(va, vb, equal_nan=nan):
                out.append(f"{name}: values")
            elif _plain(dict(da[name].attrs), ra) != _plain(dict(db[name].attrs), rb):
                out.append(f"{name}: attrs")
        return out


def _same(a: Any, b: Any, rtol: float) -> bool:
    """JSON-like values equal, numbers within ``rtol`` (0: exactly)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k], rtol) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y, rtol) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float) and rtol > 0:
        return bool(np.isclose(a, b, rtol=rtol, atol=0.0, equal_nan=True))
    return a == b


def _csv(text: str) -> list[list[Any]]:
    def cell(c: str) -> Any:
        try:
            return float(c)
        except ValueError:
            return c

    return [[cell(c) for c in line.split(",")] for line in text.splitlines()]


def differences(reference: Path, run_dir: Path, outputs: tuple[str, ...], rtol: float = 0.0) -> list[str]:
    """What differs between the outputs of ``reference`` and ``run_dir`` (empty: identical)."""
    out = []
    for rel in outputs:
        a, b = reference / rel, run_dir / rel
        if not b.exists():
            out.append(f"{rel}: missing")
        elif rel.endswith(".ckpt"):
            out += [f"{rel} {d}" for d in _checkpoints(a, b)]
        elif rel.endswith((".zarr", ".nc")):
            out += [f"{rel} {d}" for d in _stores(a, reference, b, run_dir)]
        elif rel.endswith(".json"):
            ja, jb = _plain(json.loads(a.read_text()), reference), _plain(json.loads(b.read_text()), run_dir)
            if not _same(ja, jb, rtol):
                out.append(f"{rel}: content")
        elif rel.endswith(".csv"):
            if not _same(_csv(_plain(a.read_text(), reference)), _csv(_plain(b.read_text(), run_dir)), rtol):
                out.append(f"{rel}: content")
        elif _plain(a.read_text(), reference) != _plain(b.read_text(), run_dir):
            out.append(f"{rel}: content")
    return out


def leftovers(run_dir: Path) -> list[str]:
    """Scratch (``.NAME.tmp-*``, ``.NAME.old-*``, ``.NAME.*.tmp``) and partial stores in ``run_dir``."""
    from simdiff.base.atomic import scratch_owner

    found = [p for p in run_dir.rglob(".*")
             if scratch_owner(p.name) is not None or p.name.endswith(".partial")]
    top = [p for p in found if not any(q in p.parents for q in found)]
    return sorted(str(p.relative_to(run_dir)) for p in top)


def build_snapshots(stages: list[str], work: Path, common: list[str]) -> tuple[Path, dict[str, float]]:
    """Run the pipeline once into ``work/reference``, keeping ``work/before-STAGE`` for each of
    ``stages``; returns the reference and each stage's uninterrupted work span (s)."""
    reference = work / "reference"
    spans = {}
    last = max(list(STAGES).index(s) for s in stages)
    shutil.rmtree(reference, ignore_errors=True)
    for name in list(STAGES)[: last + 1]:
        if name in stages:
            shutil.rmtree(work / f"before-{name}", ignore_errors=True)
            if reference.exists():
                shutil.copytree(reference, work / f"before-{name}", symlinks=True)
            else:
                (work / f"before-{name}").mkdir()
        run = run_to_end([name, f"run_dir={reference}", *common], work / f"reference-{name}.log")
        t0, t1 = run.seen(STAGES[name].start), run.seen(STAGES[name].end)
        if name in stages:
            if t0 is None or t1 is None:
                raise SystemExit(f"the reference {name} never logged {STAGES[name].start!r} / "
                                 f"{STAGES[name].end!r}; see {work / f'reference-{name}.log'}")
            spans[name] = t1 - t0
    return reference, spans


def trials(name: str, kills: int, rng: np.random.Generator, span: float, work: Path, reference: Path,
           common: list[str], keep: bool) -> list[dict[str, Any]]:
    stage = STAGES[name]
    rows = []
    for i in range(kills):
        run_dir = work / f"{name}-trial{i}"
        shutil.rmtree(run_dir, ignore_errors=True)
        shutil.copytree(work / f"before-{name}", run_dir, symlinks=True)
        args = [name, f"run_dir={run_dir}", *common]
        frac = float(rng.uniform(0.0, 1.0))
        run = Run(args, work / f"{name}-trial{i}-killed.log")
        while run.proc.poll() is None and run.seen(stage.start) is None:
            time.sleep(0.02)
        started = run.seen(stage.start)
        if started is not None:
            time.sleep(max(started + frac * span - (time.monotonic() - run.t0), 0.0))
        killed = run.kill()
        kill_s = time.monotonic() - run.t0 - (started or 0.0)
        rerun = run_to_end(args, work / f"{name}-trial{i}-rerun.log")
        s0, s1 = rerun.seen(stage.start), rerun.seen(stage.end)
        resumed = rerun.seen(RESUMED) is not None
        if not resumed and s0 is not None and s1 is not None:
            span = min(span, s1 - s0)  # a whole run: the machine's load changes, aim at the work it sees
        outcome = "resumed" if resumed else "complete" if rerun.seen(SKIPPED) is not None else "redone"
        diff = differences(reference, run_dir, stage.outputs, stage.rtol)
        left = leftovers(run_dir)
        row = {"trial": i, "killed": killed, "kill_after_s": round(kill_s, 2), "fraction": round(frac, 3),
               "outcome": outcome, "identical": not diff, "differences": diff[:5], "leftovers": left}
        rows.append(row)
        print(f"  {name} trial {i:2d}: killed={killed!s:5} at {kill_s:6.1f} s ({frac:4.2f}) {outcome:8} "
              f"identical={not diff!s:5} leftovers={len(left)} {'; '.join(diff[:2])}", flush=True)
        if not keep:
            shutil.rmtree(run_dir, ignore_errors=True)
    return rows


def summarise(name: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    killed = [r for r in rows if r["killed"]]
    resumed = [r for r in killed if r["outcome"] == "resumed"]
    return {
        "stage": name, "trials": len(rows), "kills": len(killed), "resumes": len(resumed),
        "redone": sum(r["outcome"] == "redone" for r in killed),
        "complete_before_kill": sum(r["outcome"] == "complete" for r in killed),
        "identical_of_resumes": sum(r["identical"] for r in resumed),
        "identical_of_kills": sum(r["identical"] for r in killed),
        "leftovers": sum(len(r["leftovers"]) for r in rows), "rows": rows,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--stage", action="append", choices=[*STAGES, "all"], default=None,
                   help="a stage (repeatable), or all (default: train-autoencoder)")
    p.add_argument("--kills", type=int, default=10, help="trials per stage")
    p.add_argument("--seed", type=int, default=0, help="seed of the kill times")
    p.add_argument("--override", action="append", default=[], help="Hydra override for every command")
    p.add_argument("--threads", type=int, default=1,
                   help="OMP_NUM_THREADS of every command (0: leave unset); tiny nets on a busy CPU "
                        "run ~10x faster on one")
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp dir)")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--keep", action="store_true", help="keep the scratch folder and the trials' run_dirs")
    a = p.parse_args()
    chosen = a.stage or ["train-autoencoder"]
    stages = list(STAGES) if "all" in chosen else [s for s in STAGES if s in chosen]
    if a.threads > 0:
        os.environ["OMP_NUM_THREADS"] = str(a.threads)  # inherited by every command
    work = a.work or Path(tempfile.mkdtemp(prefix="kill_resume-"))
    work.mkdir(parents=True, exist_ok=True)
    common = ["debug=tiny", f"cache_dir={work / 'cache'}", *a.override]
    reference, spans = build_snapshots(stages, work, common)
    rng = np.random.default_rng(a.seed)
    results = []
    for name in stages:
        print(f"{name}: uninterrupted work {spans[name]:.1f} s; killing {a.kills} runs at random points "
              "of it", flush=True)
        rows = trials(name, a.kills, rng, spans[name], work, reference, common, a.keep)
        results.append(summarise(name, rows))
    print("\n| stage | kills/trials | resumes/kills | redone/kills | published before the kill | "
          "identical/resumes | identical/kills | leftovers |\n|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['stage']} | {r['kills']}/{r['trials']} | {r['resumes']}/{r['kills']} "
              f"| {r['redone']}/{r['kills']} | {r['complete_before_kill']} "
              f"| {r['identical_of_resumes']}/{r['resumes']} "
              f"| {r['identical_of_kills']}/{r['kills']} | {r['leftovers']} |")
    summary = {"stages": results, "overrides": common, "seed": a.seed, "threads": a.threads,
               "kills_per_stage": a.kills, "spans_s": {k: round(v, 2) for k, v in spans.items()}}
    out = a.json or Path("bench_results") / (f"kill_resume_{stages[0]}.json" if len(stages) == 1
                                             else "kill_resume.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2))
    print(f"wrote {out}")
    if not a.keep and a.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
