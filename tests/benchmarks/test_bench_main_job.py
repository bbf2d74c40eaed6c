"""benchmarks/bench_main_job.py times every stage of a (tiny) main job and writes its JSON;
benchmarks/nfe_curve.py then scores the same run's forecasts against the sampler's step count,
and benchmarks/peer_diffusers.py sets a pixel-space diffusers model beside it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STAGES = ["prepare", "train-autoencoder", "encode", "train-diffusion", "generate", "evaluate"]


def test_main_job_benchmark_times_each_stage(tmp_path: Path) -> None:
    out = tmp_path / "main_job.json"
    run_dir = tmp_path / "run"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_main_job.py"), "debug=tiny",
                           f"cache_dir={tmp_path / 'cache'}", "--out", str(out), "--keep", str(run_dir)],
                          capture_output=True, text=True, timeout=900,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    result = json.loads(out.read_text())
    assert list(result["stages_s"]) == STAGES
    assert all(t >= 0 for t in result["stages_s"].values())
    assert result["stages_total_s"] <= result["wall_s"]
    assert set(result["report"]) == {"q@1", "q@2", "psi@1", "psi@2"}
    for leads in result["report"].values():
        assert all(e["crps"] is not None and e["crps"] > 0 for e in leads.values())
    assert "train-diffusion" in done.stdout and "-> " in done.stdout

    curve = tmp_path / "nfe.json"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "nfe_curve.py"),
                           "--run-dir", str(run_dir),
                           "--points", "heun:2,euler:3,heun:2", "--inits", "2", "--members", "2",
                           "--lead-steps", "2", "--reference", "heun:2", "--out", str(curve)],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    sweep = json.loads(curve.read_text())
    points = sweep["points"]
    assert [p["nfe"] for p in points] == [3, 3, 3]  # Heun: 2N - 1 (no second order at sigma 0); Euler: N
    for p in points:
        assert list(p["by_lead"]) == list(points[0]["by_lead"]) and len(p["by_lead"]) == 2
        for e in p["by_lead"].values():
            assert 0 < e["crps_vs_clim"] < float("inf") and e["spread_skill"] > 0
    assert points[0]["variables"] == points[2]["variables"]  # the same draws, scored the same
    assert points[0]["variables"] != points[1]["variables"]
    assert "CRPS vs NFE" in done.stdout
    # the reference draws the same members from the same noise: the heun:2 points match it exactly
    assert sweep["reference"]["point"] == "heun:2" and len(points) == 3
    assert points[0]["crps_vs_reference"] == pytest.approx(1.0, abs=1e-12)
    assert points[1]["crps_vs_reference"] != pytest.approx(1.0, abs=1e-9)
    assert sweep["samplers"]["heun"]["nfe_within_2pct"] == 3
    assert sweep["samplers"]["heun"]["nfe_within_2pct_with_spread"] == 3
    assert (tmp_path / "nfe.png").stat().st_size > 0

    peer = tmp_path / "peer.json"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "peer_diffusers.py"), "--quick",
                           "--run-dir", str(run_dir), "--budget-s", "2", "--out", str(peer)],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    side = json.loads(peer.read_text())
    assert side["diffusers"]["steps"] > 0 and side["diffusers"]["budget_s"] == 2.0
    assert set(side["crps_ratio_per_variable_lead"]) == {f"{v}/{ld}" for v in ("q@1", "q@2", "psi@1", "psi@2")
                                                         for ld in side["simdiff"]["by_lead"]}
    assert 0 < side["crps_ratio"] < float("inf") and side["members_per_s_ratio"] > 0
    for name in ("simdiff", "diffusers"):
        assert len(side[name]["by_lead"]) == 2 and side[name]["members_per_s"] > 0
        for e in side[name]["by_lead"].values():  # scored by simdiff's evaluate on the same truth
            assert 0 < e["crps_vs_clim"] < float("inf") and e["spread_skill"] > 0 and e["rank_edges"] >= 0
