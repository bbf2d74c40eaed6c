"""The generator's own one-step skill beside the downstream certificate's emulator.

A synthetic next-state pair can only teach a downstream emulator what the generator knows: an
emulator trained on draws learns the generator's conditional mean. This scores the run's
forecast at lead 1 (``generate``'s forecast mode, held-out inits) in the certificate's metric,
the weighted mean squared error of the normalised next state
(:func:`simdiff.evaluate.certificate.downstream_error`): the ensemble mean, one member and
persistence on the same inits. Beside them, from ``certificate.json``, the emulator's test error
by fraction of the real pairs. Each error is also given over persistence on its own test pairs,
so the two sets of inits compare.

    python benchmarks/generator_skill.py --run-dir runs/aug
    python benchmarks/generator_skill.py --run-dir runs/aug --forecast runs/aug/forecast_val.zarr

Prints a table and writes ``bench_results/generator_skill.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import xarray as xr
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from simdiff.base.atomic import write_json  # noqa: E402
from simdiff.data.stores.stats import normalise  # noqa: E402
from simdiff.data.stores.training import TrainingStore  # noqa: E402
from simdiff.evaluate.certificate import downstream_error  # noqa: E402
from simdiff.runs.certify import fold_levels, loss_weights  # noqa: E402


def lead_one(path: Path, store: TrainingStore) -> dict[str, float]:
    """Ensemble-mean, member and persistence errors at the first lead of the forecast at ``path``."""
    forecast = xr.open_zarr(path, consolidated=False)
    if forecast.attrs.get("simdiff_mode") != "forecast":
        raise SystemExit(f"{path}: not a forecast (simdiff_mode="
                         f"{forecast.attrs.get('simdiff_mode')!r})")
    ds = store.dataset()
    sdim = store.layout.sample_dim
    inits = np.asarray(forecast["init_index"].values, dtype=np.int64)
    times = ds[sdim].values
    step = round(float(forecast["lead_time"].values[0] / (times[1] - times[0])))  # samples per lead
    truth = fold_levels(np.asarray(ds["data"].isel({sdim: inits + step}).values, np.float32), store)
    before = fold_levels(np.asarray(ds["data"].isel({sdim: inits}).values, np.float32), store)
    members = []
    for r in range(forecast.sizes["realization"]):
        one = forecast[store.variables].isel(realization=r, lead_time=0, drop=True)
        one = one.drop_vars([c for c in one.coords if c not in one.dims]).rename({"init_time": sdim})
        scaled = normalise(one, ds[["mean", "std"]], ds["mask"], store.transforms, block_samples=16)
        members.append(fold_levels(np.asarray(scaled.values, np.float32), store))
    members_a = np.stack(members)
    weights = loss_weights(store)
    persistence = downstream_error(None, before, truth, weights)
    mean = downstream_error(None, members_a.mean(0), truth, weights)
    one_member = float(np.mean([downstream_error(None, m, truth, weights) for m in members_a]))
    return {"inits": len(inits), "members": len(members_a), "persistence": persistence,
            "ensemble_mean": mean, "member": one_member}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", required=True, type=Path)
    ap.add_argument("--forecast", type=Path, default=None,
                    help="the forecast to score (default: RUN_DIR/forecast.zarr; e.g. one of the val split)")
    ap.add_argument("--out", default="bench_results/generator_skill.json")
    args = ap.parse_args()
    store = TrainingStore(args.run_dir / "data" / "train.zarr")
    gen = lead_one(args.forecast or args.run_dir / "forecast.zarr", store)
    cert_path = args.run_dir / "certificate.json"
    cert = json.loads(cert_path.read_text()) if cert_path.is_file() else None

    table = Table(title=f"one-step error (weighted MSE, normalised units), {args.run_dir}")
    for col in ("what", "error", "over persistence", "test pairs"):
        table.add_column(col)
    rows = []
    for key in ("persistence", "ensemble_mean", "member"):
        rows.append({"what": f"generator lead 1: {key.replace('_', ' ')}", "error": gen[key],
                     "over_persistence": gen[key] / gen["persistence"], "pairs": gen["inits"]})
    if cert is not None and cert.get("task") == "next_state":
        base = cert["baseline"]["error"]
        for fraction, errors in cert["errors"]["real"].items():
            e = float(np.mean(errors))
            rows.append({"what": f"emulator, real only, {float(fraction):.0%} of the real pairs", "error": e,
                         "over_persistence": e / base, "pairs": cert["pairs"]["test"]})
        e = float(np.mean(cert["errors"]["synthetic"]["all"]))
        rows.append({"what": "emulator, synthetic only", "error": e, "over_persistence": e / base,
                     "pairs": cert["pairs"]["test"]})
    for row in rows:
        table.add_row(row["what"], f"{row['error']:.5f}", f"{row['over_persistence']:.3f}", str(row["pairs"]))
    Console().print(table)
    write_json({"run_dir": str(args.run_dir), "generator": gen, "rows": rows}, args.out)


if __name__ == "__main__":
    main()
