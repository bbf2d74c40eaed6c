"""Generation speed (members/s) and memory (peak RSS) of ``simdiff generate`` on a trained run.

Runs ``simdiff generate`` in fresh processes on a run_dir that has been through
``train-diffusion`` (default ``runs/qg``, the main job's), for one init and one lead step with
the default sampler, and reports members/s and the process's peak RSS for a small and a large
ensemble. Streaming means the peak RSS is set by the batch, not by the ensemble size, so the
large ensemble's peak should be close to the small one's.

Run::

    .venv/bin/python benchmarks/bench_generate.py [--run-dir runs/qg] [--small 10] [--large 200]
        [--batch 16] [--batched]    # --batched: generate.batch_invariant=false

Prints a table and writes ``bench_results/generate.json``.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from simdiff.base.atomic import write_json

WRAPPER = """
import resource, sys
from simdiff.cli.main import main
try:
    main(sys.argv[1:])
finally:
    print("MAXRSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
"""


def run(run_dir: str, members: int, batch: int, out: Path, batched: bool) -> dict:
    args = ["generate", f"run_dir={run_dir}", f"generate.members={members}", "generate.mode.max_inits=1",
            "generate.mode.lead_steps=1", f"generate.batch_size={batch}", f"generate.out={out}",
            f"generate.batch_invariant={'false' if batched else 'true'}"]
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", WRAPPER, *args], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    log = proc.stderr + proc.stdout
    if proc.returncode != 0:
        raise SystemExit(f"simdiff generate failed:\n{log[-3000:]}")
    rate = re.search(r"wrote (\d+) members in ([\d.]+) s \(([\d.]+) members/s\)", log)
    rss = re.search(r"MAXRSS_KB (\d+)", log)
    return {"members": members, "batch": batch, "wall_s": round(wall, 2),
            "members_per_s": float(rate.group(3)) if rate else None,
            "sampling_s": float(rate.group(2)) if rate else None,
            "peak_rss_mb": round(int(rss.group(1)) / 1024, 1) if rss else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", default="runs/qg")
    ap.add_argument("--small", type=int, default=10)
    ap.add_argument("--large", type=int, default=200)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--batched", action="store_true", help="generate.batch_invariant=false")
    ap.add_argument("--out", default="bench_results/generate.json")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for m in (args.small, args.large):
            rows.append(run(args.run_dir, m, args.batch, Path(tmp) / f"m{m}.zarr", args.batched))
    print(f"simdiff generate on {args.run_dir}: 1 init x 1 lead, default sampler, "
          f"batch {args.batch}, batch_invariant={not args.batched}")
    print(f"{'members':>8}{'members/s':>12}{'sampling s':>12}{'wall s':>9}{'peak RSS MB':>13}")
    for r in rows:
        print(f"{r['members']:>8}{r['members_per_s']:>12.2f}{r['sampling_s']:>12.1f}{r['wall_s']:>9.1f}"
              f"{r['peak_rss_mb']:>13.0f}")
    ratio = rows[1]["peak_rss_mb"] / rows[0]["peak_rss_mb"]
    print(f"peak RSS {args.large} / {args.small} members: {ratio:.2f}x")
    write_json({"run_dir": args.run_dir, "batch_invariant": not args.batched, "rows": rows,
                "rss_ratio": round(ratio, 3)}, args.out)


if __name__ == "__main__":
    main()
