"""Evaluate's memory does not grow with the number of cases: peak RSS at many cases over few.

Runs ``benchmarks/bench_evaluate_oc.py`` (evaluate out of core on a zarr forecast, in blocks of
``evaluate.block_inits`` inits whose additive sums are combined) in two fresh processes, one
with ``--small`` cases and one with ``--large``, and reports the ratio of their peak RSS.

    python benchmarks/bench_evaluate_memory.py                 # 50 members x 8 vs 100 cases of 721x1440
    python benchmarks/bench_evaluate_memory.py --quick         # 20 members x 4 vs 32 cases of 181x360

Prints a table and writes ``bench_results/evaluate_memory.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from simdiff.base.atomic import write_json  # noqa: E402


def measure(cases: int, members: int, ny: int, nx: int, lat_chunk: int, tmp: Path) -> dict:
    out = tmp / f"oc_{cases}.json"
    (tmp / f"w{cases}").mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        str(REPO / "benchmarks" / "bench_evaluate_oc.py"),
        "--cases",
        str(cases),
        "--members",
        str(members),
        "--ny",
        str(ny),
        "--nx",
        str(nx),
        "--lat-chunk",
        str(lat_chunk),
        "--workdir",
        str(tmp / f"w{cases}"),
        "--out",
        str(out),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"bench_evaluate_memory: {' '.join(cmd)} failed:\n{(done.stdout + done.stderr)[-3000:]}")
    subprocess.run(["rm", "-rf", str(tmp / f"w{cases}")], check=False)
    return json.loads(out.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a small grid (a check, not the figure)")
    ap.add_argument("--small", type=int, default=8)
    ap.add_argument("--large", type=int, default=100)
    ap.add_argument("--out", default=str(REPO / "bench_results" / "evaluate_memory.json"))
    args = ap.parse_args()
    members, ny, nx, chunk = (20, 181, 360, 46) if args.quick else (50, 721, 1440, 91)
    if args.quick:
        args.small, args.large = 4, 32
    with tempfile.TemporaryDirectory() as tmp:
        small = measure(args.small, members, ny, nx, chunk, Path(tmp))
        large = measure(args.large, members, ny, nx, chunk, Path(tmp))
    ratio = large["peak_rss_gb"] / small["peak_rss_gb"]
    print(f"evaluate out of core, {members} members x {ny}x{nx}")
    print(f"{'cases':>6}{'forecast GB':>13}{'evaluate s':>12}{'peak RSS GB':>13}")
    for n, r in ((args.small, small), (args.large, large)):
        print(f"{n:>6}{r['forecast']['gb']:>13.2f}{r['evaluate_s']:>12.1f}{r['peak_rss_gb']:>13.3f}")
    print(f"peak RSS {args.large} / {args.small} cases: {ratio:.3f} (goal <= 1.2)")
    write_json(
        {
            "members": members,
            "grid": [ny, nx],
            "small": args.small,
            "large": args.large,
            "small_peak_rss_gb": round(small["peak_rss_gb"], 3),
            "large_peak_rss_gb": round(large["peak_rss_gb"], 3),
            "peak_rss_ratio": round(ratio, 3),
            "quick": args.quick,
            "runs": {"small": small, "large": large},
        },
        args.out,
    )
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
