"""benchmarks/bench_main_job.py times every stage of a (tiny) main job and writes its JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
STAGES = ["prepare", "train-autoencoder", "encode", "train-diffusion", "generate", "evaluate"]


def test_main_job_benchmark_times_each_stage(tmp_path: Path) -> None:
    out = tmp_path / "main_job.json"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_main_job.py"), "debug=tiny",
                           f"cache_dir={tmp_path / 'cache'}", "--out", str(out)],
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
