"""One table and one plot of every point of a sweep: what each point's report says.

Reads ``SWEEP_DIR/POINT/autoencoder/reconstruction.json`` and ``SWEEP_DIR/POINT/report/metrics.json``
of every point, and the point's overrides from its newest Hydra record
(``POINT/logs/run/TIME/.hydra/overrides.yaml``), and writes beside them:

* ``summary.csv``: one row per point: the overrides that differ between points, the
  autoencoder's compression and test rmse/std (mean over variables), and per variable the
  ensemble's CRPS, its ratio to the climatology and persistence baselines and the AE ceiling, and
  the spread-skill ratio (means over leads, as in the report);
* ``summary.md``: the overrides that differ, compression, AE rmse/std and the means over
  variables as a markdown table, with the overrides all points share above it;
* ``summary.png``: CRPS / climatology (mean over variables) against compression, one marker per
  point, labelled with its overrides and the autoencoder's rmse/std.

A point without a report (failed, or still running) is listed with what it has and a note.

    python workflows/slurm_sweep/gather.py SWEEP_DIR
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import yaml

from simdiff.base.atomic import atomic_file

#: overrides that say where or how a point runs, not what it computes
WHERE = ("run_dir", "sweep_dir", "force", "cache_dir", "shared_data", "allowed_targets", "hydra/launcher",
         "preemption")


#: the markdown table's columns after the overrides (summary.csv has every variable's)
SUMMARY = ("compression", "ae rmse/std", "crps/climatology (mean)", "crps/persistence (mean)",
           "spread-skill (mean)", "note")


def overrides(point: Path) -> dict[str, str]:
    """``key -> value`` of the point's newest Hydra record (empty when it has none)."""
    records = sorted(point.glob("logs/run/*/.hydra/overrides.yaml"), key=lambda p: p.parent.parent.name)
    if not records:
        return {}
    out = {}
    for item in yaml.safe_load(records[-1].read_text()) or []:
        key, _, value = str(item).partition("=")
        key = key.lstrip("+~")
        if key not in WHERE and not key.startswith(("hydra.", "prepare/cluster")):
            out[key] = value
    return out


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


def point_row(point: Path) -> dict[str, Any]:
    row: dict[str, Any] = {"point": point.name, **{f"override {k}": v for k, v in overrides(point).items()}}
    recon = _read(point / "autoencoder" / "reconstruction.json")
    metrics = _read(point / "report" / "metrics.json")
    notes = []
    if recon:
        row["compression"] = recon.get("compression_ratio")
        row["ae rmse/std"] = (recon.get("mean") or {}).get("rmse_over_std")
    else:
        notes.append("no reconstruction.json")
    if metrics:
        ratios = []
        for name, v in sorted((metrics.get("variables") or {}).items()):
            row[f"{name} crps"] = v.get("crps")
            for base in ("climatology", "persistence", "ae_ceiling"):
                ref = v.get(f"crps_{base}")
                row[f"{name} crps/{base}"] = v["crps"] / ref if ref else None
            row[f"{name} spread-skill"] = v.get("spread_skill")
            if row[f"{name} crps/climatology"] is not None:
                ratios.append(row[f"{name} crps/climatology"])
        row["crps/climatology (mean)"] = sum(ratios) / len(ratios) if ratios else None
        pers = [row[f"{n}/persistence"] for n in (f"{v} crps" for v in metrics["variables"])
                if row.get(f"{n}/persistence") is not None]
        row["crps/persistence (mean)"] = sum(pers) / len(pers) if pers else None
        variables = metrics["variables"].values()
        skills = [v["spread_skill"] for v in variables if v.get("spread_skill") is not None]
        row["spread-skill (mean)"] = sum(skills) / len(skills) if skills else None
    else:
        notes.append("no report/metrics.json")
    row["note"] = "; ".join(notes)
    return row


def gather(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per point folder of ``sweep_dir`` (a folder with a run's ``logs/``)."""
    points = sorted(p for p in sweep_dir.iterdir() if p.is_dir() and (p / "logs").is_dir())
    if not points:
        raise SystemExit(f"{sweep_dir}: no sweep points here (folders with logs/); run the sweep first")
    return [point_row(p) for p in points]


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.4g}"
    return "" if v is None else str(v)


def tables(rows: list[dict[str, Any]]) -> tuple[str, str]:
    """(CSV, markdown); overrides equal in every row go to the markdown's header line."""
    columns = list(dict.fromkeys(k for r in rows for k in r))
    shared = {k: rows[0].get(k) for k in columns if k.startswith("override ")
              and len({str(r.get(k)) for r in rows}) == 1}
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    varied = [c for c in columns if c.startswith("override ") and c not in shared]
    shown = (varied or ["point"]) + [c for c in SUMMARY if c in columns]
    common = ", ".join(f"{k.removeprefix('override ')}={v}" for k, v in sorted(shared.items())) or "none"
    md = [f"{len(rows)} points; shared: {common}", "",
          "| " + " | ".join(c.removeprefix("override ") for c in shown) + " |",
          "|" + "---|" * len(shown)]
    md += ["| " + " | ".join(_fmt(r.get(c)) for c in shown) + " |" for r in rows]
    return buf.getvalue(), "\n".join(md) + "\n"


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for r in rows:
        x, y = r.get("compression"), r.get("crps/climatology (mean)")
        if x is None or y is None:
            continue
        varied = ", ".join(f"{k.removeprefix('override ').split('.')[-1]}={v}"
                           for k, v in r.items() if k.startswith("override ") and k != "override experiment")
        ax.scatter([x], [y], s=40)
        ax.annotate(f"{varied}\nAE rmse/std {_fmt(r.get('ae rmse/std'))}", (x, y), fontsize=7,
                    xytext=(4, 4), textcoords="offset points")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("autoencoder compression (x)")
    ax.set_ylabel("ensemble CRPS / climatology CRPS (mean over variables)")
    ax.axhline(1.0, color="0.6", lw=0.8, ls="--")
    ax.set_title("sweep points: lower is better, 1 = climatology")
    fig.tight_layout()
    with atomic_file(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("sweep_dir", type=Path)
    a = p.parse_args()
    rows = gather(a.sweep_dir)
    text_csv, text_md = tables(rows)
    for name, text in (("summary.csv", text_csv), ("summary.md", text_md)):
        with atomic_file(a.sweep_dir / name) as fh:
            fh.write(text)
    plot(rows, a.sweep_dir / "summary.png")
    print(text_md)
    print(f"wrote {a.sweep_dir / 'summary.csv'}, summary.md, summary.png")


if __name__ == "__main__":
    main()
