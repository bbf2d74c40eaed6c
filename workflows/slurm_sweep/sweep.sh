#!/usr/bin/env bash
# The learning-rate x compression sweep (conf/experiment/slurm_sweep.yaml: 2 x 2 points) submitted
# to SLURM through hydra-submitit-launcher, one job per point, each the whole main job in
# SWEEP_DIR/<its overrides>; then one table and one plot of all points (gather.py).
#
#   workflows/slurm_sweep/sweep.sh SWEEP_DIR [HYDRA OVERRIDES ...]
#   workflows/slurm_sweep/sweep.sh runs/sweep hydra.launcher.partition=gpu hydra.launcher.gpus_per_node=1
#
# Submitting it again skips every finished stage of every point and resumes killed ones.
# job.sbatch beside it runs the same points as a plain sbatch array, without Hydra's launcher.
# SIMDIFF names the command (default: the repository's .venv/bin/simdiff).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
read -r -a simdiff <<< "${SIMDIFF:-$repo/.venv/bin/simdiff}"
sweep_dir="${1:?usage: $0 SWEEP_DIR [overrides ...]}"
shift
"${simdiff[@]}" run -m experiment=slurm_sweep hydra/launcher=slurm sweep_dir="$sweep_dir" \
  hydra.launcher.cpus_per_task=1 hydra.launcher.mem_gb=4 "$@"
python="$(dirname "${simdiff[0]}")/python"
[ -x "$python" ] || python=python3
"$python" "$here/gather.py" "$sweep_dir"
