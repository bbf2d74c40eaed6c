"""The autoencoder alone on molecular densities: decode(encode(truth)) scored like generated members.

``simdiff evaluate`` scores the conditional members (report ``molecular``). Their error includes
the autoencoder's reconstruction error, which no latent model can remove; this script measures
that ceiling: it reconstructs the first ``--samples`` test densities of ``run_dir`` with the
trained autoencoder and scores them against the truth with the same
:func:`simdiff.evaluate.molecular.molecular_scores` (electron count on the grid, negative
fraction, radial profile, peak ratio, spectrum ratio).

Run::

    .venv/bin/python benchmarks/eval_molecular_ae.py --run-dir runs/molecules [--samples 40]

Prints a table and writes ``bench_results/molecular_ae.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from simdiff.data.stores.stats import denormalise
from simdiff.data.stores.training import TrainingStore
from simdiff.evaluate.molecular import molecular_scores
from simdiff.runs.evaluation import ae_ceiling
from simdiff.runs.layout import RunDir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", default="runs/molecules")
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--out", default="bench_results/molecular_ae.json")
    args = parser.parse_args()
    run = RunDir(args.run_dir)
    store = TrainingStore(run.store)
    sdim = store.layout.sample_dim
    idx = store.indices("test")[: args.samples]
    rec = ae_ceiling(run, store, idx)
    truth = denormalise(store.dataset()).isel({sdim: idx})
    axes = [truth[d].values for d in store.layout.spatial_dims]
    dv = float(np.median(store.array("weights")))
    out = {"run_dir": str(args.run_dir), "samples": len(idx), "variables": {}}
    header = ("count err median", "p90", "radial", "peak", "negative")
    print(f"{'variable':10s} " + " ".join(f"{h:>16s}" for h in header))
    for name in store.variables:
        s = molecular_scores(rec[name].values[None], truth[name].values, axes, dv)
        s.pop("_profiles")
        out["variables"][name] = s
        c = s["electron_count_relative_error"]
        radial, peak = s["radial_profile_relative_error"]["median"], s["peak_ratio"]["median"]
        print(f"{name:10s} {c['median']:16.3%} {c['p90']:16.3%} {radial:16.3f} {peak:16.3f} "
              f"{s['negative_fraction']:16.3g}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
