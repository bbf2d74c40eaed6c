"""Kill a stage with SIGKILL at random points, re-run it, and compare with an uninterrupted run.

For each of ``--kills`` trials a copy of a prepared ``run_dir`` runs the stage's command; once
the stage logs that its work started, the process is killed after a random fraction of the
work time an uninterrupted run took (uniform, from ``--seed``; the shortest such time seen so
far, since the load of a shared machine changes), and the same command is run
again to completion. The re-run's final checkpoint is compared tensor by tensor with the
uninterrupted run's (``torch.equal`` on every entry of ``state_dict``: the weights and the EMA
weights).

Reported: kills (trials whose process was still running when killed), resumes (re-runs that
resumed from a checkpoint, rather than starting afresh before the first checkpoint or skipping
the stage because the kill came after its final checkpoint was written), identical (re-runs
whose final weights equal the uninterrupted run's bit for bit), per trial the kill time, the
step the re-run resumed from and the largest absolute weight difference.

Run (``debug=tiny``, one thread per command: ~30-40 s per trial on 2 busy CPU cores)::

    PYTHONPATH=. .venv/bin/python benchmarks/kill_resume.py --stage train-autoencoder --kills 10
    PYTHONPATH=. .venv/bin/python benchmarks/kill_resume.py --stage train-autoencoder --kills 10 \\
        --override bottleneck=kl --override autoencoder.checkpoint_every_n_steps=3

Prints a table and writes ``bench_results/kill_resume_<stage>.json``. A stage is one
:class:`Stage` entry in ``STAGES``: the commands that build its inputs, its command, the log
lines that mark the start and end of its work, its final checkpoint and its resume point.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

ENTRY = [sys.executable, "-m", "simdiff.cli.main"]


@dataclass(frozen=True)
class Stage:
    """How to run, kill and judge one ``simdiff`` sub-command.

    Attributes:
        command: the sub-command.
        inputs: sub-commands run once, in order, to build the run_dir it reads.
        start, end: log lines (regex) marking the start and end of the work kills aim at.
        final: the final checkpoint, relative to run_dir.
        resume_point: the checkpoint a re-run resumes from, relative to run_dir.
    """

    command: str
    inputs: tuple[str, ...]
    start: str
    end: str
    final: str
    resume_point: str
    overrides: tuple[str, ...] = field(default_factory=tuple)


STAGES: dict[str, Stage] = {
    "train-autoencoder": Stage(
        command="train-autoencoder",
        inputs=("prepare",),
        start=r"train-autoencoder: \d+ parameters",
        end=r"Trainer.fit. stopped|train-autoencoder: wrote",
        final="autoencoder/autoencoder.ckpt",
        resume_point="autoencoder/checkpoints/last.ckpt",
    ),
    "train-diffusion": Stage(
        command="train-diffusion",
        inputs=("prepare", "train-autoencoder", "encode"),
        start=r"train-diffusion: \d+ parameters",
        end=r"Trainer.fit. stopped|train-diffusion: wrote",
        final="diffusion/diffusion.ckpt",
        resume_point="diffusion/checkpoints/last.ckpt",
    ),
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


def state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def compare(reference: Path, other: Path) -> dict[str, Any]:
    """Bitwise comparison of two checkpoints' state dicts: model and EMA entries separately."""
    a, b = state(reference), state(other)
    out: dict[str, Any] = {"same_keys": sorted(a) == sorted(b), "model_max_abs": 0.0, "ema_max_abs": 0.0,
                           "differing": []}
    for k in sorted(set(a) & set(b)):
        if torch.equal(a[k], b[k]):
            continue
        out["differing"].append(k)
        same_shape = a[k].shape == b[k].shape
        diff = float((a[k].double() - b[k].double()).abs().max()) if same_shape else float("inf")
        key = "ema_max_abs" if k.startswith("ema.") else "model_max_abs"
        out[key] = max(out[key], diff)
    out["identical"] = out["same_keys"] and not out["differing"]
    return out


def checkpoint_step(path: Path) -> int | None:
    if not path.is_file():
        return None
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])
    except Exception:  # a truncated file: the re-run will say so
        return -1


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--stage", choices=sorted(STAGES), default="train-autoencoder")
    p.add_argument("--kills", type=int, default=10)
    p.add_argument("--seed", type=int, default=0, help="seed of the kill times")
    p.add_argument("--override", action="append", default=[], help="Hydra override for every command")
    p.add_argument("--threads", type=int, default=1,
                   help="OMP_NUM_THREADS of every command (0: leave unset); tiny nets on a busy CPU "
                        "run ~10x faster on one")
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp dir)")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--keep", action="store_true", help="keep the scratch folder")
    a = p.parse_args()
    stage = STAGES[a.stage]
    if a.threads > 0:
        os.environ["OMP_NUM_THREADS"] = str(a.threads)  # inherited by every command
    work = a.work or Path(tempfile.mkdtemp(prefix="kill_resume-"))
    work.mkdir(parents=True, exist_ok=True)
    common = ["debug=tiny", f"cache_dir={work / 'cache'}", *stage.overrides, *a.override]

    base = work / "base"
    if not base.exists():
        for cmd in stage.inputs:
            run_to_end([cmd, f"run_dir={base}", *common], work / f"base-{cmd}.log")
    reference = work / "reference"
    shutil.rmtree(reference, ignore_errors=True)
    shutil.copytree(base, reference)
    ref = run_to_end([stage.command, f"run_dir={reference}", *common], work / "reference.log")
    t_start, t_end = ref.seen(stage.start), ref.seen(stage.end)
    if t_start is None or t_end is None:
        raise SystemExit(f"the reference run never logged {stage.start!r} / {stage.end!r}; see {work}")
    span = t_end - t_start
    print(f"{a.stage}: uninterrupted work {span:.1f} s; killing {a.kills} runs at random points of it",
          flush=True)

    rng = np.random.default_rng(a.seed)
    rows = []
    for i in range(a.kills):
        run_dir = work / f"trial{i}"
        shutil.rmtree(run_dir, ignore_errors=True)
        shutil.copytree(base, run_dir)
        args = [stage.command, f"run_dir={run_dir}", *common]
        frac = float(rng.uniform(0.0, 1.0))
        run = Run(args, work / f"trial{i}-killed.log")
        while run.proc.poll() is None and run.seen(stage.start) is None:
            time.sleep(0.02)
        started = run.seen(stage.start)
        if started is not None:
            time.sleep(max(started + frac * span - (time.monotonic() - run.t0), 0.0))
        killed = run.kill()
        kill_s = time.monotonic() - run.t0 - (started or 0.0)
        step = checkpoint_step(run_dir / stage.resume_point)
        rerun = run_to_end(args, work / f"trial{i}-rerun.log")
        s0, s1 = rerun.seen(stage.start), rerun.seen(stage.end)
        if rerun.seen(r"resuming from") is None and s0 is not None and s1 is not None:
            span = min(span, s1 - s0)  # a whole run: the machine's load changes, aim at the work it sees
        resumed = rerun.seen(r"resuming from") is not None
        # what the re-run found: no checkpoint yet, a checkpoint to resume from, or the final one
        outcome = "resumed" if resumed else "complete" if rerun.seen(r"skipping") is not None else "fresh"
        cmp = compare(reference / stage.final, run_dir / stage.final)
        row = {"trial": i, "killed": killed, "kill_after_s": round(kill_s, 2), "fraction": round(frac, 3),
               "resumed": resumed, "outcome": outcome, "resumed_from_step": step, **cmp}
        rows.append(row)
        print(f"  trial {i:2d}: killed={killed!s:5} at {kill_s:6.1f} s ({frac:4.2f}) "
              f"{outcome:8} from step {step!s:>4}  identical={cmp['identical']!s:5} "
              f"max|d| model {cmp['model_max_abs']:.2e} ema {cmp['ema_max_abs']:.2e}", flush=True)
        if not a.keep:
            shutil.rmtree(run_dir, ignore_errors=True)

    kills = sum(r["killed"] for r in rows)
    complete = sum(r["killed"] and r["outcome"] == "complete" for r in rows)
    resumes = sum(r["killed"] and r["resumed"] for r in rows)
    same_resumed = sum(r["killed"] and r["resumed"] and r["identical"] for r in rows)
    same_killed = sum(r["killed"] and r["identical"] for r in rows)
    summary = {"stage": a.stage, "overrides": common, "trials": len(rows), "kills": kills,
               "resumes": resumes, "complete_before_kill": complete, "identical_of_resumes": same_resumed,
               "identical_of_kills": same_killed,
               "work_span_s": round(span, 2), "seed": a.seed, "threads": a.threads, "rows": rows}
    print(f"\n| stage | overrides | kills/trials | resumes/kills (final already written) | identical/resumes "
          f"| identical/kills |\n|---|---|---|---|---|---|\n"
          f"| {a.stage} | {' '.join(a.override) or '-'} | {kills}/{len(rows)} | {resumes}/{kills} "
          f"({complete}) | {same_resumed}/{resumes} | {same_killed}/{kills} |")
    out = a.json or Path("bench_results") / f"kill_resume_{a.stage}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2))
    print(f"wrote {out}")
    if not a.keep and a.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
