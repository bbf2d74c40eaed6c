"""``simdiff prepare`` from the cluster tests: the commands of the README's "`prepare` on a dask
cluster" section (run_dir replaced, overrides added), run in a fresh interpreter, and its log."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def prepare_command(cluster: str, run_dir: Path, *extra: str) -> list[str]:
    """The README's ``simdiff prepare ... prepare/cluster=CLUSTER ...`` without ``simdiff``, its
    ``run_dir`` set to ``run_dir``, then ``extra``."""
    block = re.search(r"### `prepare` on a dask cluster.*?```bash\n(.*?)```", README.read_text(), re.S)
    assert block, "README lost its section on prepare on a dask cluster"
    for line in block.group(1).replace("\\\n", " ").splitlines():
        if line.startswith("simdiff prepare ") and f" prepare/cluster={cluster} " in f"{line} ":
            args = shlex.split(line)[1:]
            return [f"run_dir={run_dir}" if a.startswith("run_dir=") else a for a in args] + list(extra)
    raise AssertionError(f"README has no `simdiff prepare ... prepare/cluster={cluster}` command")


#: Overrides that make many dask blocks of the ERSST preset (one per six samples), so that every
#: worker gets work; both commands of a comparison get them.
MANY_BLOCKS = ("prepare.chunk_mb=0.25", "prepare.work_mb=0.5")


def simdiff_prepare(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``simdiff ARGS`` (``prepare ...``) in a fresh interpreter, one BLAS thread."""
    env = {**(env or os.environ), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "simdiff.cli.main", *args], capture_output=True, text=True,
                          env=env, timeout=600)


def job_log(run_dir: Path) -> str:
    """The Hydra log of the newest ``simdiff prepare`` in ``run_dir``."""
    logs = sorted((run_dir / "logs" / "prepare").glob("*/prepare.log"))
    assert logs, f"no prepare log in {run_dir}/logs/prepare"
    return logs[-1].read_text()
