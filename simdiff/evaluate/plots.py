"""Figures for reports, built as ``matplotlib.figure.Figure`` objects (Agg, no pyplot state).

:func:`save_figure` writes a figure atomically (temporary file beside the target, then
``os.replace``), so a PNG at its final path is always complete.
"""

from __future__ import annotations

from collections.abc import Hashable
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.image import AxesImage

from simdiff.base.atomic import atomic_file
from simdiff.data.field import SPATIAL_DEPTH_DIMS

PANEL_WIDTH_IN = 3.4
PANEL_HEIGHT_IN = 2.6
DPI = 100


def format_level(value: object) -> str:
    """A level coord value as text, without a trailing ``.0``: 500.0 -> "500", 0.5 -> "0.5"."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _rows(truth: xr.Dataset, sample: int, max_rows: int) -> tuple[list[tuple[str, str, dict]], int]:
    """(variable, label, isel) per panel row, capped at ``max_rows``; and the uncapped count.

    Levels get a row each; a spatial depth axis (``z`` of a volume) shows its middle plane.
    """
    rows: list[tuple[str, str, dict]] = []
    for name, var in truth.data_vars.items():
        dims = var.dims
        base = {dims[0]: sample}
        if len(dims) == 4:
            depth = dims[1]
            coord = truth[depth].values if depth in truth.coords else np.arange(var.sizes[depth])
            if depth in SPATIAL_DEPTH_DIMS:
                mid = var.sizes[depth] // 2
                rows.append((str(name), f"{name} ({depth}={format_level(coord[mid])})", {**base, depth: mid}))
            else:
                for i, c in enumerate(coord):
                    rows.append((str(name), f"{name}@{format_level(c)}", {**base, depth: i}))
        else:
            rows.append((str(name), str(name), base))
    return rows[:max_rows], len(rows)


def _sample_title(truth: xr.Dataset, sample_dim: Hashable, sample: int) -> str:
    """"sample 3 (time=2019-03-01)": the position, and the coord value where there is one."""
    if sample_dim not in truth.coords:
        return f"sample {sample}"
    value = truth[sample_dim].values[sample]
    text = np.datetime_as_string(value, unit="m") if isinstance(value, np.datetime64) else format_level(value)
    return f"sample {sample} ({sample_dim}={text})"


def _image(ax: Axes, field: np.ndarray, y_ascending: bool, **kwargs: Any) -> AxesImage:
    masked = np.ma.masked_invalid(field)
    return ax.imshow(masked, origin="lower" if y_ascending else "upper", aspect="auto",
                     interpolation="nearest", **kwargs)


def reconstruction_figure(
    truth: xr.Dataset, recon: xr.Dataset, *, sample: int = 0, max_rows: int = 6
) -> Figure:
    """Truth / reconstruction / error panels for one sample: rows = variables (and levels).

    Args:
        truth, recon: physical units, one variable per channel, dims ``(S, [D], Y, X)``, NaN
            at masked cells (drawn blank).
        sample: position along ``S``.
        max_rows: at most this many rows (variables x levels, in order).

    Truth and reconstruction share one colour scale per row; the error (recon - truth) uses a
    diverging map centred on 0. Titles carry the units. The figure is
    ``(3 * PANEL_WIDTH_IN, rows * PANEL_HEIGHT_IN)`` inches at ``DPI``.
    """
    rows, total = _rows(truth, sample, max_rows)
    fig = Figure(figsize=(3 * PANEL_WIDTH_IN, len(rows) * PANEL_HEIGHT_IN), dpi=DPI)
    FigureCanvasAgg(fig)
    height = len(rows) * PANEL_HEIGHT_IN
    axes = fig.subplots(len(rows), 3, squeeze=False)
    # fixed margins (in inches, so they hold for any row count); constrained layout is 3x slower
    fig.subplots_adjust(left=0.02, right=0.97, bottom=0.15 / height, top=1 - 0.55 / height,
                        wspace=0.15, hspace=0.35 / PANEL_HEIGHT_IN * 2.6)
    for r, (name, label, where) in enumerate(rows):
        t_da = truth[name].isel(where)
        t = np.asarray(t_da.values, dtype=float)
        x = np.asarray(recon[name].isel(where).values, dtype=float)
        err = x - t
        y_dim = t_da.dims[0]
        y = t_da[y_dim].values if y_dim in t_da.coords else np.arange(t.shape[0])
        y_ascending = bool(y.size < 2 or y[-1] > y[0])
        units = truth[name].attrs.get("units", "")
        unit_text = f" [{units}]" if units else ""
        both = np.concatenate([t[np.isfinite(t)], x[np.isfinite(x)]])
        lo, hi = (float(both.min()), float(both.max())) if both.size else (0.0, 1.0)
        bound = float(np.nanmax(np.abs(err))) if np.isfinite(err).any() else 1.0
        bound = bound if bound > 0 else 1.0
        panels = (
            (t, f"{label} truth{unit_text}", {"cmap": "viridis", "vmin": lo, "vmax": hi}),
            (x, f"{label} reconstruction{unit_text}", {"cmap": "viridis", "vmin": lo, "vmax": hi}),
            (err, f"{label} recon − truth{unit_text}", {"cmap": "RdBu_r", "vmin": -bound, "vmax": bound}),
        )
        for c, (field, title, style) in enumerate(panels):
            ax = axes[r, c]
            im = _image(ax, field, y_ascending, **style)
            ax.set_title(title, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
            fig.colorbar(im, ax=ax, shrink=0.85, format="%.3g")  # no offset text over the title
    title = _sample_title(truth, truth[rows[0][0]].dims[0], sample)
    if total > len(rows):
        title += f": first {len(rows)} of {total} rows"
    fig.suptitle(title, fontsize=9)
    return fig


def save_figure(fig: Figure, path: Path) -> Path:
    """Write ``fig`` as PNG at ``path`` atomically (temporary file beside it, then rename)."""
    with atomic_file(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=fig.dpi)
    return Path(path)


# -- forecast report figures (simdiff.evaluate.report) ---------------------------------------


def _level_panels(ds: xr.Dataset, max_rows: int) -> list[tuple[str, str, dict]]:
    """(variable, KEY, isel) per row: ``VAR`` or ``VAR@LEVEL`` (a spatial ``z`` shows its middle plane)."""
    rows: list[tuple[str, str, dict]] = []
    for name, var in ds.data_vars.items():
        spatial = [d for d in var.dims if d not in ("realization", "init_time", "lead_time")]
        if len(spatial) == 3:
            depth = spatial[0]
            coord = ds[depth].values if depth in ds.coords else np.arange(var.sizes[depth])
            if depth in SPATIAL_DEPTH_DIMS:
                rows.append((str(name), str(name), {depth: var.sizes[depth] // 2}))
            else:
                rows += [(str(name), f"{name}@{format_level(c)}", {depth: i}) for i, c in enumerate(coord)]
        else:
            rows.append((str(name), str(name), {}))
    return rows[:max_rows]


def ensemble_figure(
    verifying: xr.Dataset,
    forecast: xr.Dataset,
    *,
    case: int = 0,
    lead: int = 0,
    n_members: int = 4,
    member_dim: str = "realization",
    max_rows: int = 6,
) -> Figure:
    """Truth, the first ``n_members`` members and the ensemble mean of one case and lead.

    Args:
        verifying: ``(init_time, lead_time, [level], Y, X)`` truth at the valid times.
        forecast: ``(member_dim, init_time, lead_time, [level], Y, X)``.
        case, lead: positions along ``init_time`` and ``lead_time``.

    One row per variable (and level), one colour scale per row; NaN (masked) cells are blank.
    """
    rows = _level_panels(verifying, max_rows)
    n_members = min(n_members, forecast.sizes[member_dim])
    cols = n_members + 2
    fig = Figure(figsize=(cols * PANEL_WIDTH_IN * 0.8, len(rows) * PANEL_HEIGHT_IN), dpi=DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(rows), cols, squeeze=False)
    where_case = {"init_time": case, "lead_time": lead}
    for r, (name, key, where) in enumerate(rows):
        t_da = verifying[name].isel({**where_case, **where})
        members = forecast[name].isel({**where_case, **where})
        y_dim = t_da.dims[0]
        y = t_da[y_dim].values if y_dim in t_da.coords else np.arange(t_da.shape[0])
        y_ascending = bool(y.size < 2 or y[-1] > y[0])
        panels = [(np.asarray(t_da.values, dtype=float), f"{key} truth")]
        panels += [(np.asarray(members.isel({member_dim: i}).values, dtype=float), f"{key} member {i}")
                   for i in range(n_members)]
        panels.append((np.asarray(members.mean(member_dim).values, dtype=float), f"{key} ensemble mean"))
        finite = np.concatenate([p[np.isfinite(p)] for p, _ in panels])
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        units = verifying[name].attrs.get("units", "")
        for c, (field, title) in enumerate(panels):
            ax = axes[r, c]
            im = _image(ax, field, y_ascending, cmap="viridis", vmin=lo, vmax=hi)
            ax.set_title(title + (f" [{units}]" if units and c == 0 else ""), fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
        fig.colorbar(im, ax=axes[r, -1], shrink=0.85, format="%.3g")
    fig.suptitle(f"case {case}, lead {lead}", fontsize=9)
    return fig


def _key_grid(n: int, width: float, height: float) -> tuple[Figure, np.ndarray]:
    cols = min(n, 3)
    rows = -(-n // cols)
    fig = Figure(figsize=(cols * width, rows * height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = np.asarray(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes


def _series(entry: dict, leads: list[str], score: str) -> np.ndarray:
    return np.array([np.nan if entry["by_lead"][lead][score] is None else entry["by_lead"][lead][score]
                     for lead in leads], dtype=float)


def lead_time_figure(metrics: dict) -> Figure:
    """CRPS of the ensemble and the baselines, and spread, RMSE and spread-skill, against lead time.

    Two panels per KEY of ``metrics["variables"]`` (the forecast report's schema).
    """
    variables, leads = metrics["variables"], list(metrics["lead_times"])
    fig, axes = _key_grid(2 * len(variables), PANEL_WIDTH_IN * 1.2, PANEL_HEIGHT_IN)
    x = np.arange(len(leads))
    for i, (key, entry) in enumerate(variables.items()):
        ax = axes[2 * i]
        for score, style in (("crps", "o-"), ("crps_climatology", "s--"), ("crps_persistence", "^--"),
                             ("crps_ae_ceiling", "v:")):
            y = _series(entry, leads, score)
            if np.isfinite(y).any():
                ax.plot(x, y, style, label=score.replace("crps_", "") if score != "crps" else "ensemble")
        ax.set_title(f"{key}: CRPS", fontsize=8)
        ax.legend(fontsize=6)
        ax = axes[2 * i + 1]
        for score, style in (("rmse", "o-"), ("spread", "s--")):
            ax.plot(x, _series(entry, leads, score), style, label=score)
        twin = ax.twinx()
        twin.plot(x, _series(entry, leads, "spread_skill"), "k:", label="spread-skill")
        twin.axhline(1.0, color="0.6", lw=0.5)
        twin.set_ylabel("spread-skill", fontsize=7)
        ax.set_title(f"{key}: RMSE and spread", fontsize=8)
        ax.legend(fontsize=6, loc="upper left")
    for ax in axes[: 2 * len(variables)]:
        ax.set_xticks(x, leads, fontsize=7)
        ax.set_xlabel("lead time", fontsize=7)
    return fig


def rank_histogram_figure(metrics: dict) -> Figure:
    """Rank histogram per KEY (all leads pooled), with the flat 1/(M + 1) of a calibrated ensemble."""
    variables = metrics["variables"]
    fig, axes = _key_grid(len(variables), PANEL_WIDTH_IN, PANEL_HEIGHT_IN)
    for ax, (key, entry) in zip(axes, variables.items(), strict=False):
        freq = np.asarray(entry["rank_histogram"] or [], dtype=float)
        ax.bar(np.arange(freq.size), freq, color="tab:blue")
        if freq.size:
            ax.axhline(1.0 / freq.size, color="k", lw=0.8, ls="--")
        ax.set_title(f"{key}: rank of truth", fontsize=8)
        ax.set_xlabel("rank", fontsize=7)
    return fig


def spectra_figure(metrics: dict) -> Figure:
    """Power spectra of truth, members and AE ceiling per KEY (log-log, k > 0)."""
    spectra = metrics.get("spectra", {})
    fig, axes = _key_grid(max(len(spectra), 1), PANEL_WIDTH_IN, PANEL_HEIGHT_IN)
    for ax, (key, spec) in zip(axes, spectra.items(), strict=False):
        k = np.asarray(spec["wavenumber"], dtype=float)
        for name, style in (("truth", "k-"), ("members", "C0--"), ("ae_ceiling", "C1:")):
            if name in spec:
                e = np.asarray([np.nan if v is None else v for v in spec[name]], dtype=float)
                ax.loglog(k[k > 0], e[k > 0], style, label=name)
        ax.set_title(f"{key}: power spectrum", fontsize=8)
        ax.set_xlabel("wavenumber", fontsize=7)
        ax.legend(fontsize=6)
    return fig


def certificate_figure(certificate: dict) -> Figure:
    """The downstream certificate: test error of real + synthetic and of synthetic-only training
    relative to real-only, against the fraction of real pairs, with the 95 % intervals over seeds
    (below 1: better than real data alone)."""
    fig, axes = _key_grid(1, PANEL_WIDTH_IN * 1.4, PANEL_HEIGHT_IN)
    ax = axes[0]
    by = certificate["by_fraction"]
    pairs = certificate["pairs"]["real_by_fraction"]
    x = np.asarray([float(k) for k in by], dtype=float)
    arms = (("ratio_real+synthetic", "o-"), ("ratio_synthetic", "s--"))
    # ratios on a log axis (0.1 and 10 equally far from 1); an interval reaching 0 or below
    # (a t interval over few seeds) is drawn down to a tenth of the smallest mean
    floor = 0.1 * min(by[k][arm]["mean"] for k in by for arm, _ in arms)
    for arm, style in arms:
        mean = np.asarray([by[k][arm]["mean"] for k in by], dtype=float)
        lo, hi = (np.asarray([np.nan if by[k][arm][b] is None else by[k][arm][b] for k in by], dtype=float)
                  for b in ("lower", "upper"))
        lo = np.maximum(lo, floor)
        ax.errorbar(x, mean, yerr=np.nan_to_num(np.stack([mean - lo, hi - mean])), fmt=style, capsize=3,
                    label=arm.removeprefix("ratio_") + " / real")
    ax.axhline(1.0, color="k", lw=0.8, ls=":")
    ax.set_yscale("log")
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(x, [f"{float(k):g}\n({pairs[k]})" for k in by], fontsize=6)
    ax.set_xlabel("fraction of the real training examples (count)", fontsize=7)
    ax.set_ylabel("test error ratio", fontsize=7)
    ax.set_title(f"downstream certificate: {certificate['task']} ({certificate['seeds']} seeds)", fontsize=8)
    ax.legend(fontsize=6)
    return fig


def tails_figure(section: dict) -> Figure:
    """Quantiles 0.1 %-99.9 % of synthetic and held-out real values per KEY, each with its
    bootstrap band (an augment or samples section of the report), on a logit probability axis
    so both tails are visible."""
    variables = section["variables"]
    fig, axes = _key_grid(len(variables), PANEL_WIDTH_IN, PANEL_HEIGHT_IN)
    for ax, (key, entry) in zip(axes, variables.items(), strict=False):
        q = entry["quantiles"]
        p = np.asarray(q["q"], dtype=float)
        for side, style, colour in (("test", "k-", "0.6"), ("synthetic", "C0--", "C0")):
            if f"{side}_lower" in q:
                ax.fill_between(p, q[f"{side}_lower"], q[f"{side}_upper"], color=colour, alpha=0.3, lw=0)
            ax.plot(p, q[side], style, label="held-out real" if side == "test" else side, lw=1)
        ax.set_xscale("logit")
        ax.set_title(f"{key}: quantiles", fontsize=8)
        ax.set_xlabel("probability", fontsize=7)
        ax.tick_params(labelsize=6)
        ax.legend(fontsize=6)
    return fig


def diurnal_figure(metrics: dict) -> Figure:
    """Mean change per step by local hour, ensemble mean against truth, per variable."""
    diurnal = metrics["diurnal"]
    fig, axes = _key_grid(len(diurnal), PANEL_WIDTH_IN * 1.2, PANEL_HEIGHT_IN)
    for ax, (name, d) in zip(axes, diurnal.items(), strict=False):
        by = d["by_hour"]
        hour = np.asarray(by["hour"], dtype=float)
        for key, style in (("truth", "k-o"), ("members", "C0--s")):
            y = np.array([np.nan if v is None else v for v in by[key]], dtype=float)
            ax.plot(hour, y, style, ms=3, label="ensemble mean" if key == "members" else key)
        if "training" in d:
            y = np.array([np.nan if v is None else v for v in d["training"]["mean"]], dtype=float)
            ax.plot(hour, y, ":", color="0.4", lw=1, label="training record")
        lo, hi = d["morning"]["window"]
        ax.axvspan(lo, hi, color="0.9", zorder=0)
        ax.axhline(0.0, color="0.6", lw=0.5)
        ax.set_title(f"{name}: mean change per step", fontsize=8)
        ax.set_xlabel(f"hour the step ends ({d['clock'].split(' (')[0]})", fontsize=7)
        ax.set_xticks(np.arange(0, 25, 6))
        ax.legend(fontsize=6)
    return fig


# -- molecular report figures (simdiff.evaluate.molecular) ----------------------------------
def density_figure(reference: np.ndarray, members: np.ndarray, title: str) -> Figure:
    """Rows: the reference, then up to three members; columns: the central z slice and the
    max and mean projections along z, on one logarithmic colour scale (e bohr^-3)."""
    from matplotlib.colors import LogNorm

    rows = [("reference", reference)] + [(f"member {m}", members[m]) for m in range(min(3, len(members)))]
    top = float(max(np.nanmax(r) for _, r in rows))
    norm = LogNorm(vmin=max(top * 1e-5, 1e-12), vmax=max(top, 1e-11))
    fig = Figure(figsize=(3 * PANEL_WIDTH_IN * 0.8, len(rows) * PANEL_HEIGHT_IN), dpi=DPI,
                 layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(rows), 3, squeeze=False)
    for i, (name, rho) in enumerate(rows):
        rho = np.clip(np.asarray(rho, np.float64), norm.vmin, None)
        views = (("z slice", rho[rho.shape[0] // 2]), ("max over z", rho.max(axis=0)),
                 ("mean over z", rho.mean(axis=0)))
        for j, (what, img) in enumerate(views):
            im = axes[i, j].imshow(img, origin="lower", norm=norm, cmap="magma")
            axes[i, j].set_title(f"{name}: {what}", fontsize=8)
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
    fig.colorbar(im, ax=axes[:, -1], shrink=0.6, label="density")
    fig.suptitle(title, fontsize=9)
    return fig


def radial_profile_figure(profiles: dict, width: float, titles: dict[int, str]) -> Figure:
    """Radially averaged density about the centre of charge, members against the reference,
    one panel per condition (at most six)."""
    keys = list(profiles)[:6]
    fig = Figure(figsize=(PANEL_WIDTH_IN * min(len(keys), 3), PANEL_HEIGHT_IN * ((len(keys) + 2) // 3)),
                 dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots((len(keys) + 2) // 3, min(len(keys), 3), squeeze=False).ravel()
    for ax, c in zip(axes, keys, strict=False):
        ref = profiles[c]["reference"]
        r = (np.arange(ref.size) + 0.5) * width
        for k, prof in enumerate(profiles[c]["members"]):
            ax.semilogy(r, np.clip(prof, 1e-12, None), color="tab:blue", alpha=0.5, lw=1,
                        label="members" if k == 0 else None)
        ax.semilogy(r, np.clip(ref, 1e-12, None), color="black", lw=1.5, label="reference")
        ax.set_title(titles.get(c, str(c)), fontsize=8)
        ax.set_xlabel("r (bohr)")
        ax.set_ylabel("shell mean density")
        ax.legend(fontsize=7)
    for ax in axes[len(keys):]:
        ax.set_visible(False)
    return fig
