"""Renderings of the forecast report's metrics: ``index.html``, ``metrics.csv`` and the terminal table.

``index.html`` is plain HTML with inline CSS and no scripts, so it opens from a cluster's file
system as is: a short score table, links to the data files, and every figure.
"""

from __future__ import annotations

import csv
import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.table import Table

from simdiff.base.atomic import atomic_file
from simdiff.evaluate.baselines import climatology_needs_care

#: The scalar scores of one KEY (and lead) in metrics.json (see simdiff.evaluate.report).
SCORES = (
    "crps",
    "crps_fair",
    "rmse",
    "spread",
    "spread_skill",
    "crps_climatology",
    "crps_persistence",
    "crps_ae_ceiling",
    "spectrum_ratio",
)

_SHORT = ("crps", "crps_climatology", "crps_persistence", "crps_ae_ceiling", "rmse", "spread",
          "spread_skill", "spectrum_ratio")
_STYLE = ("body{font-family:sans-serif;margin:2em;max-width:80em}table{border-collapse:collapse}"
          "td,th{border:1px solid #ccc;padding:.2em .6em;text-align:right}th{background:#eee}"
          "img{max-width:100%;border:1px solid #ddd;margin:.5em 0}")


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def index_html(metrics: dict, pngs: Sequence[str], data_files: Sequence[str]) -> str:
    """The page: a forecast table (all leads pooled), the augmentation table, then each PNG."""
    parts = ["<!DOCTYPE html><html><head><meta charset='utf-8'><title>simdiff report</title>",
             f"<style>{_STYLE}</style></head><body><h1>simdiff evaluation report</h1>"]
    if "variables" in metrics:
        parts.append(
            f"<p>{metrics['members']} members, {metrics['cases']} cases, lead times "
            f"{html.escape(', '.join(metrics['lead_times']))}. Scores are cell-weighted means over "
            "valid cells; spread_skill carries the sqrt((M+1)/M) correction (1 = calibrated).</p>"
        )
        source = metrics.get("source") or {}
        if "decoder_residual_rms_over_std" in source:
            rms = source["decoder_residual_rms_over_std"]
            if rms:
                listed = html.escape(", ".join(f"{k} {v:.3g}" for k, v in rms.items()))
                parts.append("<p>Members are draws of p(x | z): the decoder's output plus the decoder "
                             f"residual model (noise rms / std: {listed}).</p>")
            else:
                parts.append("<p>Members are the decoder's output (generate.decoder_noise=false): their "
                             "spread leaves out the autoencoder's reconstruction error.</p>")
        rows = [[key, *(entry.get(s) for s in _SHORT)] for key, entry in metrics["variables"].items()]
        parts.append(_table(["variable", *_SHORT], rows))
        parts.extend(_baselines_html(metrics.get("baselines") or {}))
        parts.extend(_domain_html(metrics.get("domain") or {}))
        parts.extend(_diurnal_html(metrics.get("diurnal") or {}))
    parts.extend(_molecular_html(metrics.get("molecular") or {}))
    for key, title in (("samples", "Samples (generate/mode=sample) against held-out data"),
                       ("augment", "Augmentation")):
        parts.extend(_distribution_html(metrics.get(key), title))
    parts.extend(_certificate_html(metrics.get("certificate")))
    parts.append("<p>Data: " + ", ".join(f"<a href='{html.escape(f)}'>{html.escape(f)}</a>"
                                          for f in data_files) + "</p>")
    for png in pngs:
        name = html.escape(png)
        parts.append(f"<h3>{html.escape(png.removesuffix('.png'))}</h3><img src='{name}' alt='{name}'>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _distribution_html(augment: dict[str, Any] | None, title: str) -> list[str]:
    """Synthetic samples against held-out data: W1, spectra, memorisation."""
    parts: list[str] = []
    if augment:
        parts.append(f"<h2>{html.escape(title)} ({augment['samples']} synthetic samples)</h2>")
        rows = [[key, e["wasserstein1"], e["wasserstein1_train_test"], e["spectrum_ratio"],
                 e["quantiles"]["synthetic"][-1], e["quantiles"]["test"][-1],
                 ", ".join(f"{q:g}" for q in e["quantiles"].get("outside_test_band", [])) or "none",
                 (e.get("beyond_train_range") or {}).get("total")]
                for key, e in augment["variables"].items()]
        parts.append(_table(["variable", "W1 synthetic-test", "W1 train-test", "spectrum_ratio",
                             "q99.9 synthetic", "q99.9 held-out", "quantiles outside the held-out band",
                             "share beyond train range"], rows))
        mem = dict(augment.get("memorisation", {}))
        successors = mem.pop("successors", None)
        parts.append("<p>Nearest-neighbour check (unconditional draws): synthetic samples' distance to "
                     "the nearest training sample against held-out samples' (ratio about 1 when novel).</p>")
        verdict = mem.pop("verdict", None)
        parts.append(_table(list(mem), [list(mem.values())]))
        if verdict:
            parts.append(f"<p>{html.escape(str(verdict))}.</p>")
        if successors is not None:
            verdict = successors.get("verdict") or successors.get("skipped", "")
            parts.append(f"<p><b>Memorisation of next-state draws:</b> {html.escape(str(verdict))}.</p>")
    return parts


def _certificate_html(cert: dict[str, Any] | None) -> list[str]:
    """The downstream certificate: per fraction of real pairs, the errors and their ratios."""
    if not cert:
        return []

    def ci(e: dict[str, Any]) -> str:
        if e["lower"] is None:
            return f"{e['mean']:.3g}"
        return f"{e['mean']:.3g} [{e['lower']:.3g}, {e['upper']:.3g}]"

    # certificates before the label task had only the emulator's persistence
    base = cert.get("baseline") or {"name": "persistence", "error": cert["persistence"]}
    parts = [f"<h2>Downstream certificate ({html.escape(cert['task'])}, {cert['seeds']} seeds)</h2>",
             f"<p>Score: {html.escape(cert['score'])}; {html.escape(base['name'])} {base['error']:.4g}. "
             f"{cert['pairs']['synthetic']} synthetic examples; {html.escape(cert['caveat'])}.</p>"]
    rows = [[key, cert["pairs"]["real_by_fraction"][key], ci(e["real"]), ci(e["real+synthetic"]),
             ci(e["synthetic"]), ci(e["ratio_real+synthetic"]), ci(e["ratio_synthetic"]), e["verdict"]]
            for key, e in cert["by_fraction"].items()]
    parts.append(_table(["fraction", "real examples", "error real", "error real+synthetic", "error synthetic",
                         "real+synthetic / real", "synthetic / real", "verdict"], rows))
    if cert.get("cross_entropy"):
        ce = cert["cross_entropy"]
        rows = [[key, ci(ce["real"][key]), ci(ce["real+synthetic"][key]), ci(ce["synthetic"]["all"])]
                for key in cert["by_fraction"]]
        parts.append(f"<p>Test cross-entropy of the label, nats (class prior: "
                     f"{cert['baseline']['cross_entropy']:.3g}):</p>")
        parts.append(_table(["fraction", "real", "real+synthetic", "synthetic"], rows))
    return parts


def _molecular_html(molecular: dict[str, Any]) -> list[str]:
    """Generated densities against their references: pooled, per molecule, memorisation."""
    parts = []
    for name, e in molecular.items():
        if not isinstance(e, dict) or "electron_count_relative_error" not in e:
            continue
        c = e["electron_count_relative_error"]
        parts.append(
            f"<h2>{html.escape(name)}: {e['members']} members x {e['conditions']} conditions "
            f"({html.escape(', '.join(e.get('split', [])))} samples)</h2><p>Each member against the "
            "density of the molecule and geometry it was drawn for, on the same grid. Electron count "
            "N = sum(rho dV) on the grid; radial error: fraction of charge at the wrong distance from "
            "the centre of charge.</p>"
        )
        rows = [["members", c["median"], c["p90"], e["negative_fraction"],
                 e["radial_profile_relative_error"]["median"], e["peak_ratio"]["median"], e["spectrum_ratio"],
                 e["spectrum_ratio_high_k"]]]
        if e.get("renormalised"):  # the counts above are after the flagged post-processing
            rows[0][0] = "members (renormalised to the promolecule's count)"
            raw = e["electron_count_relative_error_raw"]
            rows.append(["members as drawn", raw["median"], raw["p90"], None, None, None, None, None])
        for base, b in (e.get("baselines") or {}).items():
            bc = b["electron_count_relative_error"]
            rows.append([f"{base} (baseline)", bc["median"], bc["p90"], None,
                         b["radial_profile_relative_error"]["median"], b["peak_ratio"]["median"],
                         b["spectrum_ratio"], b["spectrum_ratio_high_k"]])
        parts.append(_table(
            ["", "count error median", "count error p90", "negative fraction", "radial error median",
             "peak ratio median", "spectrum ratio", "spectrum ratio (high k)"], rows))
        if e.get("baselines"):
            parts.append("<p>promolecule: the superposition of free-atom densities at the same geometry "
                         "and grid (PySCF's atomic guess, no SCF), the baseline to beat.</p>")
        per = e.get("by_molecule") or {}
        if per:
            parts.append(_table(["molecule", "conditions", "reference N", "count error", "radial error",
                                 "peak ratio"],
                                [[mol, m["conditions"], m["reference_electron_count"],
                                  m["electron_count_relative_error"], m["radial_profile_relative_error"],
                                  m["peak_ratio"]] for mol, m in per.items()]))
        mem = e.get("memorisation")
        if mem:
            parts.append(_table(list(mem), [list(mem.values())]))
    return parts


def _baselines_html(info: dict[str, Any]) -> list[str]:
    """Which baselines ran, and a warning when the climatology had few states to draw from."""
    off = [name for name in ("persistence", "ae_ceiling") if info.get(name) is False]
    clim = info.get("climatology")
    out = []
    if clim is None and "climatology" in info:
        off.append("climatology")
    if off:
        out.append(f"<p>Baselines switched off (evaluate.baselines): {html.escape(', '.join(off))}.</p>")
    if clim:
        pools = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in clim["pools"].items() if v)
        text = (f"Climatology: {clim['members']} of {clim['training_states']} training states per valid "
                f"time, drawn from {pools} (valid times per pool).")
        if climatology_needs_care(clim):
            text += (f" <b>Weak baseline</b>: the smallest pool held {clim['smallest_pool']} states"
                     f"{', some drawn with replacement' if clim['with_replacement'] else ''}, or the record "
                     "lacks the valid times' hour or season; read crps_climatology with care.")
        out.append(f"<p>{text}</p>")
    return out


def _values(v: Sequence[float | None] | None) -> str:
    return "–" if not v else " / ".join("–" if x is None else f"{x:.3g}" for x in v)


def _domain_html(domain: dict[str, Any]) -> list[str]:
    """The physical-domain checks: below-domain fraction, dry fraction, wet quantiles."""
    if not domain:
        return []
    rows = []
    for name, d in domain.items():
        dry = d.get("dry_fraction") or {}
        wq = d.get("wet_quantiles") or {}
        qs = "/".join(f"{q:g}" for q in wq.get("q", []))
        rows.append([name, d.get("below_fraction"), dry.get("members"), dry.get("truth"),
                     f"{_values(wq.get('members'))} (q {qs})", _values(wq.get("truth"))])
    head = ["variable", "below domain", "dry members", "dry truth", "wet quantiles members", "truth"]
    return ["<h2>Physical domain</h2>", _table(head, rows)]


def _days(days: list[dict[str, Any]]) -> str:
    """``date: members / truth`` per morning, ``; ``-joined."""
    return "; ".join(f"{d['date']}: {d['members']:.3g} / {d['truth']:.3g}" for d in days)


def _diurnal_html(diurnal: dict[str, Any]) -> list[str]:
    """The diurnal-cycle check: the morning's summed change, members against truth."""
    if not diurnal:
        return []
    rows = []
    for name, d in diurnal.items():
        m = d["morning"]
        hours = f"{m['window'][0]:g}-{m['window'][1]:g} h"
        hours += "" if m["complete"] else f" (only {m['hours']})"
        rows.append([name, d["clock"], hours, m["members"], m["truth"], m["relative_error"],
                     m.get("training"), _days(m.get("days") or [])])
    head = ["variable", "clock", "morning", "change members", "change truth", "relative error",
            "change, training record", "by local date, members / truth"]
    return ["<h2>Diurnal cycle</h2><p>Mean change per step by local hour (figure <i>diurnal</i>); "
            "the morning's changes summed. The training record's morning (every pair of training "
            "states one step apart) says what the model could have learnt, where a few test inits "
            "may fall on unusual days.</p>", _table(head, rows)]


CSV_COLUMNS = ("variable", "lead_time", *SCORES, "rank_histogram")


def metrics_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per KEY x lead (``CSV_COLUMNS``), then one per KEY with ``lead_time`` "all" (pooled)."""
    rows = []
    for lead in [*metrics.get("lead_times", []), "all"]:
        for key, entry in metrics.get("variables", {}).items():
            e = entry if lead == "all" else entry["by_lead"][lead]
            ranks = e.get("rank_histogram")
            rows.append({"variable": key, "lead_time": lead, **{s: e.get(s) for s in SCORES},
                         "rank_histogram": "" if ranks is None else " ".join(f"{r:.6g}" for r in ranks)})
    return rows


def summary_table(metrics: dict[str, Any]) -> Table:
    """A rich table for the terminal: per KEY (all leads pooled) the ensemble's and baselines' scores."""
    short = ("crps", "crps_climatology", "crps_persistence", "crps_ae_ceiling", "rmse", "spread",
             "spread_skill", "spectrum_ratio")
    table = Table(title=f"forecast: {metrics.get('members')} members x {metrics.get('cases')} cases, "
                        f"leads {', '.join(metrics.get('lead_times', []))}")
    table.add_column("variable")
    for s in short:
        table.add_column(s.replace("crps_", "crps "), justify="right")
    for key, e in metrics.get("variables", {}).items():
        table.add_row(key, *("–" if e.get(s) is None else f"{e[s]:.4g}" for s in short))
    return table


def write_csv(metrics: dict[str, Any], path: Path) -> None:
    """Write :func:`metrics_rows` as CSV atomically."""
    rows = metrics_rows(metrics)
    with atomic_file(path) as fh:
        writer = csv.DictWriter(fh, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
        writer.writeheader()
        writer.writerows([{k: ("" if v is None else v) for k, v in row.items()} for row in rows])


def report_summary(metrics: dict[str, Any]) -> list[str]:
    """Per variable: CRPS against the baselines (lower is better), spread-skill (1: calibrated)."""

    def fmt(v: Any) -> str:
        return "n/a" if v is None else f"{v:.4g}"

    lines = []
    for name, e in (metrics.get("molecular") or {}).items():
        if isinstance(e, dict) and "electron_count_relative_error" in e:
            c = e["electron_count_relative_error"]
            radial, peak = e["radial_profile_relative_error"]["median"], e["peak_ratio"]["median"]
            lines.append(f"{name}: {e['members']} members x {e['conditions']} conditions; electron count "
                         f"error median {c['median']:.2%}, p90 {c['p90']:.2%}; negative fraction "
                         f"{e['negative_fraction']:.3g}; radial error {fmt(radial)}; peak ratio {fmt(peak)}")
            if e.get("renormalised"):
                raw = e["electron_count_relative_error_raw"]
                lines.append(f"  renormalised (generate.mode.renormalise): as drawn, the count error median "
                             f"was {raw['median']:.2%}, p90 {raw['p90']:.2%}")
            pro = (e.get("baselines") or {}).get("promolecule")
            if pro:
                verdict = ("beats" if c["median"] < pro["electron_count_relative_error"]["median"]
                           else "WORSE than")
                lines.append(f"  electron count {verdict} the promolecule baseline (median "
                             f"{pro['electron_count_relative_error']['median']:.2%}, radial error "
                             f"{fmt(pro['radial_profile_relative_error']['median'])})")
    if "variables" in metrics:
        lines.append(f"forecast: {metrics.get('members')} members x {metrics.get('cases')} cases, "
                     f"leads {metrics.get('lead_times')}")
    for key, e in metrics.get("variables", {}).items():
        clim, crps = e.get("crps_climatology"), e.get("crps")
        verdict = "" if clim is None or crps is None else (" (beats climatology)" if crps < clim else
                                                            " (WORSE than climatology)")
        lines.append(f"  {key}: CRPS {fmt(crps)} vs climatology {fmt(clim)}, persistence "
                     f"{fmt(e.get('crps_persistence'))}, AE ceiling {fmt(e.get('crps_ae_ceiling'))}"
                     f"{verdict}; spread-skill {fmt(e.get('spread_skill'))}")
    for name, d in (metrics.get("diurnal") or {}).items():
        m = d["morning"]
        if m["truth"] is not None:
            part = "" if m["complete"] else f" (only steps ending at {m['hours']} h have cases)"
            lines.append(f"  {name}: change over the morning ({m['window'][0]:g}-{m['window'][1]:g} h "
                         f"{d['clock'].split(' (')[0]}) {fmt(m['members'])} vs truth {fmt(m['truth'])}, "
                         f"relative error {fmt(m['relative_error'])}{part}"
                         + ("" if m.get("training") is None else f"; training record {fmt(m['training'])}")
                         + (f"; by local date (members / truth) {_days(m['days'])}" if m.get("days") else ""))
    return lines
