"""Every stage killed with SIGKILL at random points and re-run ends with an uninterrupted run's outputs.

CI's sample of ``benchmarks/kill_resume.py`` (the local run uses ``--kills 20``): three kills per
stage, debug=tiny, in two groups so that two test workers share them. Each re-run must end with
outputs equal to the reference (checkpoints, stores and evaluate's report bit for bit) and leave
no scratch or partial store behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
GROUPS = {
    "training": ["prepare", "train-autoencoder", "encode", "train-diffusion"],
    "outputs": ["generate", "augment", "evaluate"],
}


@pytest.mark.slow
@pytest.mark.parametrize("group", sorted(GROUPS))
def test_killed_stages_end_with_the_uninterrupted_outputs(group: str, tmp_path: Path) -> None:
    stages = GROUPS[group]
    out = tmp_path / "kill_resume.json"
    args = [sys.executable, str(REPO / "benchmarks" / "kill_resume.py"), "--kills", "3", "--seed", "1",
            "--work", str(tmp_path / "work"), "--json", str(out)]
    for s in stages:
        args += ["--stage", s]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=1500, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads(out.read_text())
    assert [r["stage"] for r in summary["stages"]] == stages
    for r in summary["stages"]:
        bad = [row for row in r["rows"] if not row["identical"] or row["leftovers"]]
        assert not bad, f"{r['stage']}: {bad}"
        assert r["trials"] == 3 and r["identical_of_kills"] == r["kills"]
    # at least one kill landed while a stage was working, not after it had ended
    assert sum(r["kills"] for r in summary["stages"]) > 0
