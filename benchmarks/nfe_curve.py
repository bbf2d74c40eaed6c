"""CRPS against the number of denoiser evaluations (NFE): which sampler and step count a run needs.

Draws the same forecasts (test inits, members, leads, seed) from a trained run with each sampler
and step count through the Python API (:mod:`simdiff.runs.api`), scores each against the truth
and its baselines as ``simdiff evaluate`` does, and times the generation. Heun with N noise
levels costs 2N-1 evaluations a draw, Euler and DPM-Solver++(2M) N.

    python benchmarks/nfe_curve.py --run-dir runs/qg
    python benchmarks/nfe_curve.py --run-dir runs/qg --points heun:6,heun:10,dpmpp_2m:10 --inits 10

Prints a table (per point: NFE, seconds, CRPS / climatology CRPS averaged over variables by lead,
spread-skill by lead) and writes ``bench_results/nfe_curve.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from simdiff.base.atomic import write_json  # noqa: E402
from simdiff.diffusion.samplers.dpmpp_2m import sample_dpmpp_2m  # noqa: E402
from simdiff.diffusion.samplers.euler import sample_euler  # noqa: E402
from simdiff.diffusion.samplers.heun import sample_heun  # noqa: E402
from simdiff.runs.api import open_run  # noqa: E402

SAMPLERS = {
    "heun": (functools.partial(sample_heun, s_churn=0.0), lambda n: 2 * n - 1),
    "euler": (sample_euler, lambda n: n),
    "dpmpp_2m": (sample_dpmpp_2m, lambda n: n),
}
DEFAULT_POINTS = "heun:4,heun:6,heun:10,heun:18,dpmpp_2m:10"


def summarise(metrics: dict) -> dict:
    """Per lead: CRPS over climatology CRPS and spread-skill, averaged over variables and levels."""
    by_lead: dict[str, dict[str, list[float]]] = {}
    for entry in metrics["variables"].values():
        for lead, e in entry["by_lead"].items():
            cell = by_lead.setdefault(lead, {"crps_vs_clim": [], "crps_vs_pers": [], "spread_skill": []})
            if e.get("crps_climatology"):
                cell["crps_vs_clim"].append(e["crps"] / e["crps_climatology"])
            if e.get("crps_persistence"):
                cell["crps_vs_pers"].append(e["crps"] / e["crps_persistence"])
            cell["spread_skill"].append(e["spread_skill"])
    return {lead: {k: float(np.mean(v)) if v else None for k, v in cell.items()}
            for lead, cell in by_lead.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", required=True, help="a run with a trained autoencoder and diffusion model")
    ap.add_argument("--points", default=DEFAULT_POINTS, help="SAMPLER:STEPS, comma-separated")
    ap.add_argument("--inits", type=int, default=10, help="test inits, evenly spaced over the split")
    ap.add_argument("--members", type=int, default=10)
    ap.add_argument("--lead-steps", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(REPO / "bench_results" / "nfe_curve.json"))
    args = ap.parse_args()

    run = open_run(args.run_dir)
    valid = run.inits("test", lead_steps=args.lead_steps)
    inits = [valid[i] for i in np.linspace(0, len(valid) - 1, min(args.inits, len(valid))).astype(int)]
    rows = []
    for point in args.points.split(","):
        name, steps = point.split(":")
        if name not in SAMPLERS:
            raise SystemExit(f"nfe_curve: unknown sampler {name!r} in --points; choose from "
                             f"{sorted(SAMPLERS)}")
        fn, nfe = SAMPLERS[name]
        t0 = time.perf_counter()
        fc = run.forecast(init_index=inits, members=args.members, lead_steps=args.lead_steps,
                          seed=args.seed, sampler=fn, steps=int(steps))
        seconds = time.perf_counter() - t0
        metrics = run.evaluate(fc, seed=args.seed, spectra=False, diurnal=False, ae_ceiling=False)
        rows.append({"point": point, "sampler": name, "steps": int(steps), "nfe": nfe(int(steps)),
                     "seconds": round(seconds, 1), "by_lead": summarise(metrics),
                     "variables": {k: v["by_lead"] for k, v in metrics["variables"].items()}})
        print(f"{point}: {seconds:.0f} s", flush=True)

    leads = list(rows[0]["by_lead"])
    table = Table(title=f"CRPS vs NFE: {args.run_dir}, {len(inits)} inits x {args.members} members")
    for col in ("point", "NFE", "s", *(f"CRPS/clim {ld}" for ld in leads), *(f"ss {ld}" for ld in leads)):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r["point"], str(r["nfe"]), f"{r['seconds']:.0f}",
                      *(f"{r['by_lead'][ld]['crps_vs_clim']:.4f}" for ld in leads),
                      *(f"{r['by_lead'][ld]['spread_skill']:.2f}" for ld in leads))
    Console(width=200).print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json({"run_dir": str(args.run_dir), "inits": [int(i) for i in inits], "members": args.members,
                "lead_steps": args.lead_steps, "seed": args.seed, "points": rows}, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
