"""Autoencoder compression curve of a preset: compression ratio against test reconstruction error.

Prepares the preset once, then trains one autoencoder per point (down-sampling stages x latent
channels) for the same wall-clock budget, each through the real CLI in its own run directory
sharing the prepared store, and reads ``autoencoder/reconstruction.json`` (test split, physical
units). Prints a table and writes ``bench_results/ae_compression_<preset>.json``.

    python benchmarks/ae_compression_curve.py --preset wfde5_temperature --budget 00:00:03:00
    python benchmarks/ae_compression_curve.py --preset qg --points "2x2:4,2x2+2x2:2"

A point is ``STAGES:LATENT_CHANNELS``; STAGES is ``none`` (full resolution) or ``2x2`` stages
joined by ``+`` (each halves y and x).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from simdiff.base.atomic import write_json  # noqa: E402

DEFAULT_POINTS = "none:1,2x2:4,2x2:2,2x2+2x2:4,2x2+2x2:2"


WIDTHS = "32,64,64,64"  # channels per resolution level, finest first (--widths)


def _net(stages: str, widths: str) -> tuple[str, str]:
    """``autoencoder.net.factors`` and ``.channels`` for STAGES (one more width than stages)."""
    n = 0 if stages == "none" else len(stages.split("+"))
    factors = "[" + ",".join("[2,2]" for _ in range(n)) + "]"
    return factors, "[" + ",".join(widths.split(",")[: n + 1]) + "]"


def simdiff(*args: str) -> None:
    out = subprocess.run([sys.executable, "-m", "simdiff.cli.main", *args], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"simdiff {' '.join(args)} failed ({out.returncode}):\n{out.stderr[-3000:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="wfde5_temperature")
    ap.add_argument("--points", default=DEFAULT_POINTS)
    ap.add_argument("--budget", default="00:00:03:00", help="autoencoder.max_time per point (dd:hh:mm:ss)")
    ap.add_argument("--widths", default=WIDTHS, help="autoencoder widths per level, finest first")
    ap.add_argument("--work", default=None, help="run directories (default: runs/ae_curve_<preset>)")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides for every stage")
    args = ap.parse_args()
    work = Path(args.work or REPO / "runs" / f"ae_curve_{args.preset}")
    base = work / "prepared"
    common = [f"data={args.preset}", *args.overrides]
    if not (base / "data" / "train.zarr").exists():
        simdiff("prepare", f"run_dir={base}", *common)
    rows = []
    for point in args.points.split(","):
        stages, latent = point.split(":")
        run_dir = work / point.replace(":", "_c").replace("+", "-")
        if not (run_dir / "data").exists():
            run_dir.mkdir(parents=True, exist_ok=True)
            shutil.copytree(base / "data", run_dir / "data")
        t0 = time.perf_counter()
        factors, channels = _net(stages, args.widths)
        simdiff("train-autoencoder", f"run_dir={run_dir}", *common, f"autoencoder.net.factors={factors}",
                f"autoencoder.net.channels={channels}", f"autoencoder.net.latent_channels={latent}",
                f"autoencoder.max_time={args.budget}")
        wall = time.perf_counter() - t0
        rec = json.loads((run_dir / "autoencoder" / "reconstruction.json").read_text())
        rows.append({"point": point, "compression_ratio": rec["compression_ratio"],
                     "rmse_over_std": rec["mean"]["rmse_over_std"],
                     "spectrum_ratio_low": rec["mean"]["spectrum_ratio_low"],
                     "variables": rec["variables"], "wall_s": round(wall, 1)})
    table = Table(title=f"autoencoder compression curve: {args.preset}, budget {args.budget} per point")
    for col in ("point", "compression", "test rmse/std", "spectrum ratio (low k)", "wall s"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r["point"], f"{r['compression_ratio']:.3g}", f"{r['rmse_over_std']:.4f}",
                      f"{r['spectrum_ratio_low']:.3f}", f"{r['wall_s']:.0f}")
    Console().print(table)
    out = REPO / "bench_results" / f"ae_compression_{args.preset}.json"
    out.parent.mkdir(exist_ok=True)
    write_json({"preset": args.preset, "budget": args.budget, "widths": args.widths, "points": rows}, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
