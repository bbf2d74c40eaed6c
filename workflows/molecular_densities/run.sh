#!/usr/bin/env bash
# Molecular densities end to end: train on the built-in PySCF densities, draw members for
# held-out geometries (the test split) and for geometries seen in training, write Gaussian cube
# files and the report.
#
#   workflows/molecular_densities/run.sh RUN_DIR [HYDRA OVERRIDES ...]
#
# CI runs it with `debug=tiny` (tests/cli/test_molecules_end_to_end.py). SIMDIFF names the
# command (default: the repository's .venv/bin/simdiff).
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
read -r -a simdiff <<< "${SIMDIFF:-$repo/.venv/bin/simdiff}"
run_dir="${1:?usage: $0 RUN_DIR [overrides ...]}"
shift

# prepare -> train-autoencoder -> encode -> train-diffusion -> generate (held-out geometries:
# conditional.zarr and cubes/) -> evaluate (report/)
"${simdiff[@]}" run run_dir="$run_dir" data=molecules "$@"

# the same model asked for geometries it was trained on (no cube files, not scored)
"${simdiff[@]}" generate run_dir="$run_dir" data=molecules generate.mode.split=train \
  generate.mode.cubes=false generate.out="$run_dir/seen.zarr" "$@"

echo "report:   $run_dir/report/index.html"
echo "cubes:    $run_dir/cubes/"
echo "held-out: $run_dir/conditional.zarr   seen: $run_dir/seen.zarr"
