"""benchmarks/run_all.py (`make bench`): runs benchmarks, gathers their figures into
bench/results.json and renders bench/RESULTS.md; the sampler sweep's 2 % rule."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

from nfe_curve import within  # noqa: E402


def run_all(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "benchmarks" / "run_all.py"), *args],
                          capture_output=True, text=True, timeout=900,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_quick_harness_writes_results_and_table(tmp_path: Path) -> None:
    done = run_all("--quick", "--only", "latent_vs_pixel", "--out-dir", str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    fig = results["figures"]["diffusion.latent_vs_pixel_step_speedup"]
    # the same denoiser on 16x16 latents costs less per sample than on 64x64 fields, and on 8x8 less still
    assert fig["value"] > 1 and fig["quick"] is True and fig["benchmark"] == "latent_vs_pixel"
    assert results["figures"]["diffusion.latent_vs_pixel_step_speedup_8x8"]["value"] > 1
    bench = results["benchmarks"]["latent_vs_pixel"]
    assert bench["ok"] and bench["command"].startswith("python benchmarks/bench_latent_vs_pixel.py --quick")
    assert bench["result"]["rows"][0]["shape"] == [2, 2, 16, 16]
    assert results["benchmarks"]["peer"] == {"ok": False, "error": "not run"}
    table = (tmp_path / "RESULTS.md").read_text()
    assert "| `diffusion.latent_vs_pixel_step_speedup` |" in table and "*quick*" in table

    # --gather rebuilds the same figures from the parts without running anything
    again = run_all("--quick", "--gather", "--out-dir", str(tmp_path))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "== latent_vs_pixel" not in again.stdout
    assert json.loads((tmp_path / "results.json").read_text())["figures"] == results["figures"]


def test_harness_refuses_an_unknown_benchmark(tmp_path: Path) -> None:
    done = run_all("--only", "latent_vs_pixel,nope", "--out-dir", str(tmp_path))
    assert done.returncode == 2 and "unknown ['nope']" in done.stderr
    assert not (tmp_path / "results.json").exists()


def test_a_benchmark_needing_the_trained_run_fails_with_a_reason(tmp_path: Path) -> None:
    done = run_all("--quick", "--only", "nfe", "--out-dir", str(tmp_path))
    assert done.returncode == 1
    results = json.loads((tmp_path / "results.json").read_text())
    assert "needs the trained run" in results["benchmarks"]["nfe"]["error"]
    assert "failed" in (tmp_path / "RESULTS.md").read_text()


def _row(sampler: str, nfe: int, rel: float) -> dict:
    return {"sampler": sampler, "nfe": nfe, "crps_vs_reference": rel, "fields_per_s": 100.0 / nfe}


@pytest.mark.parametrize(
    ("curve", "expected"),
    [
        ([(4, 1.30), (8, 1.05), (16, 1.019), (32, 1.001)], 16),
        ([(4, 1.01), (8, 1.05), (16, 0.99)], 16),  # must stay within at every larger NFE measured
        ([(4, 1.01), (8, 1.00)], 4),
        ([(4, 1.5), (8, 1.03)], None),
    ],
)
def test_smallest_nfe_within_two_percent(curve: list[tuple[int, float]], expected: int | None) -> None:
    rows = [_row("heun", n, r) for n, r in reversed(curve)]  # order of measurement does not matter
    got = within(rows)["heun"]
    assert got["nfe_within_2pct"] == expected
    assert got["members_per_s"] == (None if expected is None else 100.0 / expected)
    assert [p[0] for p in got["curve"]] == sorted(n for n, _ in curve)


def test_crps_alone_can_match_where_the_spread_does_not() -> None:
    # a damped sampler: CRPS within 2 % from NFE 4, its spread only from NFE 32
    rows = [{**_row("euler", n, c), "spread_vs_reference": sp}
            for n, c, sp in ((4, 1.01, 0.70), (8, 0.99, 0.85), (16, 0.99, 0.95), (32, 1.0, 0.99))]
    got = within(rows)["euler"]
    assert got["nfe_within_2pct"] == 4 and got["nfe_within_2pct_with_spread"] == 32
    assert got["members_per_s_with_spread"] == 100.0 / 32
