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

from simdiff.data.atomic import atomic_file
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
