"""The forecast report: calibrated ensembles, hand-computed weighted scores, masks, files, dask."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from rich.console import Console

from simdiff.base.errors import DataError
from simdiff.evaluate.html import CSV_COLUMNS, SCORES, summary_table
from simdiff.evaluate.report import evaluate_augmented, evaluate_forecast, report_figures, write_report

Y = np.arange(8) * 10.0
X = np.arange(8) * 10.0


def perfect_case(m: int = 9, n_init: int = 40, seed: int = 0) -> tuple[xr.Dataset, xr.Dataset]:
    """Truth and members both drawn from N(mu(t), 1) per cell: a calibrated ensemble (float time, levels)."""
    rng = np.random.default_rng(seed)
    time = np.arange(0.0, 100.0)
    mu = 3.0 * np.sin(time / 7.0)[:, None, None, None] + np.zeros((1, 2, 8, 8))
    truth = xr.Dataset(
        {"q": (("time", "level", "y", "x"), mu + rng.standard_normal(mu.shape), {"units": "s-1"})},
        coords={"time": time, "level": [1, 2], "y": Y, "x": X},
    )
    init = time[:n_init]
    lead = np.array([0.0, 2.0])
    valid = (init[:, None] + lead[None, :]).astype(int)
    members = mu[valid][None] + rng.standard_normal((m, *valid.shape, 2, 8, 8))
    forecast = xr.Dataset(
        {"q": (("realization", "init_time", "lead_time", "level", "y", "x"), members)},
        coords={
            "realization": np.arange(m),
            "init_time": init,
            "lead_time": lead,
            "level": [1, 2],
            "y": Y,
            "x": X,
        },
    )
    return forecast, truth


def test_perfect_ensemble_is_calibrated_and_schema_holds():
    forecast, truth = perfect_case()
    out = evaluate_forecast(forecast, truth, train=truth.isel(time=slice(50, None)), periodic={"x", "y"})
    assert out["members"] == 9 and out["cases"] == 40 and out["lead_times"] == ["0", "2"]
    assert set(out["variables"]) == {"q@1", "q@2"}
    for entry in out["variables"].values():
        assert set(entry) == {*SCORES, "rank_histogram", "by_lead"}
        assert entry["spread_skill"] == pytest.approx(1.0, abs=0.04)
        ranks = np.asarray(entry["rank_histogram"])
        assert ranks.sum() == pytest.approx(1.0) and ranks.size == 10
        np.testing.assert_allclose(ranks, 0.1, atol=0.015)
        assert entry["crps_fair"] < entry["crps"]  # fair removes the finite-M penalty
        assert entry["crps_ae_ceiling"] is None
        assert entry["spectrum_ratio"] == pytest.approx(1.0, abs=0.1)  # white noise on both sides
        assert set(entry["by_lead"]) == {"0", "2"}
        assert entry["by_lead"]["0"]["crps_persistence"] == 0.0  # persistence at lead 0 is the truth
        assert entry["by_lead"]["2"]["crps_persistence"] > 0.5
        # the climatology knows nothing of mu(t): worse than the calibrated ensemble
        assert entry["crps_climatology"] > 1.2 * entry["crps"]


def hand_case(mask_cell: bool) -> tuple[xr.Dataset, xr.Dataset, xr.DataArray]:
    """One case, one lead, 2 members on a 2x2 lat/lon grid with known values."""
    lat, lon = np.array([0.0, 60.0]), np.array([0.0, 180.0])
    a = np.array([[1.0, 2.0], [0.0, -1.0]])
    b = np.array([[3.0, 2.0], [4.0, 1.0]])
    y = np.array([[2.5, 0.0], [1.0, 5.0]])
    if mask_cell:  # the (60N, 180E) cell is land: NaN everywhere (a huge error that must not count)
        a, b, y = a.copy(), b.copy(), y.copy()
        a[1, 1] = b[1, 1] = y[1, 1] = np.nan
    time = np.array(["2000-01-01", "2000-01-02"], dtype="datetime64[ns]")
    truth = xr.Dataset(
        {"sst": (("time", "lat", "lon"), np.stack([y, y]))}, coords={"time": time, "lat": lat, "lon": lon}
    )
    fc = xr.Dataset(
        {"sst": (("realization", "init_time", "lead_time", "lat", "lon"), np.stack([a, b])[:, None, None])},
        coords={
            "realization": [0, 1],
            "init_time": time[:1],
            "lead_time": np.array([0], dtype="timedelta64[ns]"),
            "lat": lat,
            "lon": lon,
        },
    )
    weights = xr.DataArray(np.cos(np.deg2rad(lat))[:, None] * np.ones((1, 2)), dims=("lat", "lon"))
    return fc, truth, weights


@pytest.mark.parametrize("mask_cell", [False, True])
def test_weighted_scores_equal_hand_computation(mask_cell):
    fc, truth, w = hand_case(mask_cell)
    a, b = fc["sst"].values[0, 0, 0], fc["sst"].values[1, 0, 0]
    y, wv = truth["sst"].values[0], np.broadcast_to(w.values, (2, 2))
    ok = ~np.isnan(y)
    mean = lambda v: (wv[ok] * v[ok]).sum() / wv[ok].sum()  # noqa: E731
    crps = (np.abs(a - y) + np.abs(b - y)) / 2 - np.abs(a - b) / 4  # G&R eq. 20, M = 2
    crps_fair = (np.abs(a - y) + np.abs(b - y)) / 2 - np.abs(a - b) / 2
    rmse = np.sqrt(mean(((a + b) / 2 - y) ** 2))
    spread = np.sqrt(mean((a - b) ** 2 / 2))  # ddof = 1
    out = evaluate_forecast(fc, truth, weights=w, ae_ceiling=truth + 0.25, periodic={"lon"}, spectra=False)
    e = out["variables"]["sst"]
    assert e["crps"] == pytest.approx(mean(crps), rel=1e-12)
    assert e["crps_fair"] == pytest.approx(mean(crps_fair), rel=1e-12)
    assert e["rmse"] == pytest.approx(rmse, rel=1e-12)
    assert e["spread"] == pytest.approx(spread, rel=1e-12)
    assert e["spread_skill"] == pytest.approx(np.sqrt(3 / 2) * spread / rmse, rel=1e-12)
    assert e["crps_persistence"] == 0.0 and e["crps_ae_ceiling"] == pytest.approx(0.25)
    ranks = np.where(y < np.minimum(a, b), 0, np.where(y > np.maximum(a, b), 2, 1)).astype(float)
    ties = (a == y) | (b == y)
    assert not ties[ok].any()
    hist = [wv[ok][ranks[ok] == k].sum() / wv[ok].sum() for k in range(3)]
    np.testing.assert_allclose(e["rank_histogram"], hist, rtol=1e-12)
    assert e["spectrum_ratio"] is None and "spectra" not in out


def test_dask_backed_input_gives_the_same_numbers():
    forecast, truth = perfect_case(m=4, n_init=10)
    train = truth.isel(time=slice(50, None))
    eager = evaluate_forecast(forecast, truth, train=train, ae_ceiling=truth * 0.9, periodic={"x", "y"})
    lazy = evaluate_forecast(
        forecast.chunk({"init_time": 3, "level": 1}),
        truth.chunk({"time": 7}),
        train=train.chunk({"time": 11}),
        ae_ceiling=(truth * 0.9).chunk({"time": 13}),
        periodic={"x", "y"},
    )
    assert _close(lazy, eager)


def _close(a: object, b: object) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return a == pytest.approx(b, rel=1e-10, abs=1e-14)
    return a == b


def test_bad_forecasts_raise_data_error():
    forecast, truth = perfect_case(m=3, n_init=4)
    with pytest.raises(DataError, match="need >= 2"):
        evaluate_forecast(forecast.isel(realization=[0]), truth)
    with pytest.raises(DataError, match="not in the truth"):
        evaluate_forecast(forecast.rename(q="psi"), truth)
    with pytest.raises(DataError, match=r"none of the forecast.s .* valid times"):
        evaluate_forecast(forecast.assign_coords(init_time=forecast["init_time"] + 1000.0), truth)
    with pytest.raises(DataError, match="'x' coordinates"):
        evaluate_forecast(forecast.assign_coords(x=X + 1.0), truth)


def test_report_files_schema_html_and_atomic_replace(tmp_path: Path):
    forecast, truth = perfect_case(m=5, n_init=6)
    metrics = evaluate_forecast(forecast, truth, train=truth, ae_ceiling=truth + 0.1, periodic={"x", "y"})
    metrics["augment"] = evaluate_augmented(
        forecast.isel(init_time=0, lead_time=0, drop=True),
        truth.isel(time=slice(0, 50)),
        truth.isel(time=slice(50, None)),
        periodic={"x", "y"},
        synthetic_dim="realization",
    )
    out = tmp_path / "report"
    out.mkdir()
    (out / "stale.png").write_bytes(b"old run")
    figures = report_figures(metrics, forecast=forecast, truth=truth)
    assert set(figures) == {"ensemble", "lead_time", "rank_histogram", "spectra", "augment_tails"}
    write_report(metrics, out, figures)
    files = {p.name for p in out.iterdir()}
    assert files == {"metrics.json", "metrics.csv", "index.html", *(f"{s}.png" for s in figures)}
    assert [p.name for p in tmp_path.iterdir()] == ["report"]  # no temp folder left beside it
    saved = json.loads((out / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    assert {"members", "cases", "lead_times", "variables"} <= set(saved)
    html = (out / "index.html").read_text()
    assert set(re.findall(r"src='([^']+)'", html)) == {p for p in files if p.endswith(".png")}
    for png in (p for p in files if p.endswith(".png")):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = (out / "metrics.csv").read_text().splitlines()
    assert rows[0].split(",") == list(CSV_COLUMNS)
    assert len(rows) == 1 + 2 * (2 + 1)  # (q@1, q@2) x (leads 0, 2, and "all")
    text = Console(width=200, record=True)
    text.print(summary_table(metrics))
    rendered = text.export_text()
    assert "q@1" in rendered and "q@2" in rendered


def test_augmented_memorisation_and_distances():
    _, truth = perfect_case()
    train, test = truth.isel(time=slice(0, 60)), truth.isel(time=slice(60, None))
    copied = train.isel(time=slice(0, 30)).rename(time="sample")
    fresh = test.rename(time="sample")
    a = evaluate_augmented(copied, train, test, periodic={"x", "y"}, synthetic_dim="sample")
    b = evaluate_augmented(fresh, train, test, periodic={"x", "y"}, synthetic_dim="sample")
    assert a["memorisation"]["median_ratio"] == pytest.approx(0.0, abs=1e-6)
    assert a["memorisation"]["fraction_closer_than_test_p05"] == 1.0
    assert a["memorisation"]["verdict"].startswith("synthetic samples sit much closer")
    assert b["memorisation"]["median_ratio"] == pytest.approx(1.0, abs=1e-6)
    assert b["memorisation"]["verdict"].startswith("no sign of copying")
    assert b["variables"]["q@1"]["wasserstein1"] == 0.0  # identical samples
    assert a["variables"]["q@2"]["wasserstein1"] > 0.0
    qb = b["variables"]["q@1"]["quantiles"]
    assert set(qb) == {"q", "synthetic", "test", "synthetic_lower", "synthetic_upper", "test_lower",
                       "test_upper", "outside_test_band"}
    assert qb["synthetic"] == qb["test"] and qb["outside_test_band"] == []  # the test set itself
    bands = zip(qb["test_lower"], qb["test"], qb["test_upper"], strict=True)
    assert all(lo <= v <= hi for lo, v, hi in bands)
    # copies of training states lie inside the training range; the test states need not
    assert a["variables"]["q@1"]["beyond_train_range"]["total"] == 0.0



def test_blocks_of_inits_give_the_one_pass_scores() -> None:
    """Scores summed block by block (7 inits a pass, the last block short) equal one pass over
    all 40 inits: every score, rank histogram and spectrum, pooled and by lead."""
    forecast, truth = perfect_case()
    train = truth.isel(time=slice(50, None))
    one = evaluate_forecast(forecast, truth, train=train, periodic={"x", "y"}, block_inits=None)
    blocks = evaluate_forecast(forecast.chunk({"init_time": 3}), truth, train=train, periodic={"x", "y"},
                               block_inits=7)
    assert _close(one, blocks)


def _certificate(label: bool) -> dict:
    one = {"mean": 0.5, "lower": 0.4, "upper": 0.6}
    entry = {"real": one, "real+synthetic": one, "synthetic": one, "ratio_real+synthetic": one,
             "ratio_synthetic": one, "verdict": "synthetic data helps"}
    cert = {"task": "label" if label else "next_state", "seeds": 3, "score": "the score",
            "pairs": {"synthetic": 7, "real_by_fraction": {"0.1": 3, "1": 30}},
            "by_fraction": {"0.1": entry, "1": entry}, "caveat": "the caveat"}
    if label:
        cert["baseline"] = {"name": "class prior", "error": 0.9, "cross_entropy": 2.3, "accuracy": 0.1}
        cert["cross_entropy"] = {"real": {"0.1": one, "1": one}, "real+synthetic": {"0.1": one, "1": one},
                                 "synthetic": {"all": one}}
    else:  # as certify wrote it before the label task: persistence only
        cert["persistence"] = 0.05
    return cert


def test_certificate_section_reads_both_tasks_and_certificates_written_before_the_label_task():
    from simdiff.evaluate.html import _certificate_html
    from simdiff.evaluate.plots import certificate_figure

    old = "".join(_certificate_html(_certificate(label=False)))
    assert "persistence 0.05" in old and "cross-entropy" not in old
    new = "".join(_certificate_html(_certificate(label=True)))
    assert "Downstream certificate (label, 3 seeds)" in new and "class prior 0.9" in new
    assert "class prior: 2.3" in new  # the cross-entropy table's baseline
    for label in (False, True):
        assert certificate_figure(_certificate(label)).axes[0].get_yscale() == "log"
