#!/usr/bin/env bash
# Synthetic weather ensembles end to end: prepare the fields, train the autoencoder and the latent
# forecaster, draw a 50-member ensemble for every test case, score it against climatology,
# persistence and the autoencoder ceiling (report/index.html, metrics.json).
#
#   workflows/weather_ensemble/run.sh RUN_DIR [HYDRA OVERRIDES ...]
#   workflows/weather_ensemble/run.sh runs/wfde5 data=wfde5_temperature   # a real file instead of QG
#
# CI runs it with `debug=tiny` (tests/cli/test_workflows.py). SIMDIFF names the command
# (default: the repository's .venv/bin/simdiff).
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
read -r -a simdiff <<< "${SIMDIFF:-$repo/.venv/bin/simdiff}"
run_dir="${1:?usage: $0 RUN_DIR [overrides ...]}"
shift

# prepare -> train-autoencoder -> encode -> train-diffusion -> generate (forecast.zarr) -> evaluate
"${simdiff[@]}" run run_dir="$run_dir" experiment=weather_ensemble "$@"

echo "ensemble: $run_dir/forecast.zarr"
echo "report:   $run_dir/report/index.html"
