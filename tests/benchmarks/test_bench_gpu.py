"""benchmarks/bench_gpu.py runs where there is no GPU (--cpu) and writes its JSON schema."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_gpu_benchmark_runs_on_the_cpu_and_merges_its_figures(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    out.write_text(json.dumps({"peers": {"kept": True}}))
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_gpu.py"), "--cpu", "--quick",
                           "--out", str(out)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["peers"] == {"kept": True}  # merged, not overwritten
    gpu = result["gpu"]
    assert gpu["device"] == "cpu" and gpu["pending"] is True
    for label in ("64x64", "256x256"):
        train, gen = gpu["training"][label], gpu["generation"][label]
        assert train["samples_per_s"] > 0 and train["flops_per_step"] > 0
        # Heun over 4 noise levels: 2 x 4 - 1 network calls per member
        assert gen["members_per_s"] > 0 and gen["network_calls_per_member"] == 7
    # more FLOPs per sample on the larger latents
    assert (gpu["training"]["256x256"]["flops_per_step"] / gpu["training"]["256x256"]["batch"]
            > gpu["training"]["64x64"]["flops_per_step"] / gpu["training"]["64x64"]["batch"])
    assert "GPU figures pending" in done.stdout
