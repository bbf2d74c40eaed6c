"""The main job stage by stage: wall time of each stage of ``simdiff run`` and the report it ends with.

Runs ``simdiff run`` in a fresh interpreter on a new run_dir (so nothing is skipped; the QG
simulation cache is used as it is, its cost is set-up), reads each stage's wall time from the
run's own log lines (``== stage NAME done in T s ==``), and summarises the report: per variable
and lead, CRPS against climatology, persistence and the AE ceiling, and spread-skill.

Run::

    .venv/bin/python benchmarks/bench_main_job.py                    # the default main job (QG)
    .venv/bin/python benchmarks/bench_main_job.py data=wfde5_temperature
    .venv/bin/python benchmarks/bench_main_job.py --keep runs/bench debug=tiny

Prints a table and writes ``bench_results/main_job.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from simdiff.base.atomic import write_json

DONE = re.compile(r"== stage (\S+) done in ([0-9.]+) s ==")


def stage_times(log: str) -> dict[str, float]:
    """Each stage's wall time from the ``== stage NAME done in T s ==`` lines of a run's log."""
    return {name: float(t) for name, t in DONE.findall(log)}


def simdiff_run(run_dir: Path, overrides: list[str], who: str) -> tuple[dict[str, float], float]:
    """``simdiff run`` in a fresh interpreter: its stage times and wall time; exits (naming ``who``)
    with the end of the log if the run fails."""
    cmd = [sys.executable, "-m", "simdiff.cli.main", "run", f"run_dir={run_dir}", *overrides]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    log = done.stdout + done.stderr
    if done.returncode != 0:
        sys.exit(f"{who}: simdiff run failed (exit {done.returncode}):\n{log[-4000:]}")
    return stage_times(log), wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("overrides", nargs="*", help="Hydra overrides for simdiff run (e.g. data=ersst)")
    ap.add_argument("--keep", default=None, help="run_dir to use and keep (default: a temp dir, removed)")
    ap.add_argument("--out", default="bench_results/main_job.json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(args.keep) if args.keep else Path(tmp) / "run"
        if run_dir.exists() and any(run_dir.iterdir()):
            sys.exit(f"bench_main_job: {run_dir} is not empty; the benchmark times every stage from scratch")
        stages, wall = simdiff_run(run_dir, args.overrides, "bench_main_job")
        metrics = json.loads((run_dir / "report" / "metrics.json").read_text())
    report = {}
    for key, entry in metrics.get("variables", {}).items():
        report[key] = {lead: {s: e.get(s) for s in ("crps", "crps_climatology", "crps_persistence",
                                                     "crps_ae_ceiling", "spread_skill")}
                       for lead, e in entry["by_lead"].items()}
    result = {"command": " ".join(["simdiff run", *args.overrides]), "wall_s": round(wall, 1),
              "stages_s": stages, "stages_total_s": round(sum(stages.values()), 1),
              "members": metrics.get("members"), "cases": metrics.get("cases"), "report": report}
    total = sum(stages.values())
    print(f"simdiff run {' '.join(args.overrides)}: {wall:.0f} s wall (the stages {total:.0f} s)")
    for name, t in stages.items():
        print(f"  {name:<18}{t:>8.1f} s")
    print(f"{'variable':<12}{'lead':>6}{'crps':>11}{'clim':>11}{'pers':>11}{'ae':>11}{'ss':>7}")
    for key, leads in report.items():
        for lead, e in leads.items():
            cells = [("-" if e[s] is None else f"{e[s]:.4g}") for s in
                     ("crps", "crps_climatology", "crps_persistence", "crps_ae_ceiling")]
            ss = "-" if e["spread_skill"] is None else f"{e['spread_skill']:.2f}"
            print(f"{key:<12}{lead:>6}" + "".join(f"{c:>11}" for c in cells) + f"{ss:>7}")
    write_json(result, args.out)
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
