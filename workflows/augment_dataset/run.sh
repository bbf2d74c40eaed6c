#!/usr/bin/env bash
# Augment a training set and show what it did: the main job (prepare ... evaluate), then
# synthetic samples in the source schema merged after the real train samples (augmented.zarr),
# then the downstream certificate (a small emulator trained on real, real + synthetic and
# synthetic pairs, scored on the real test split), then the report again with its augment
# section: synthetic against held-out real data (distribution distances, tails with bootstrap
# bands, the memorisation checks), what the filter rejected, and the certificate.
#
#   workflows/augment_dataset/run.sh RUN_DIR [HYDRA OVERRIDES ...]
#
# CI runs it with `debug=tiny` (tests/cli/test_workflows.py). SIMDIFF names the command
# (default: the repository's .venv/bin/simdiff).
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
read -r -a simdiff <<< "${SIMDIFF:-$repo/.venv/bin/simdiff}"
run_dir="${1:?usage: $0 RUN_DIR [overrides ...]}"
shift

"${simdiff[@]}" run run_dir="$run_dir" experiment=augment_dataset "$@"
"${simdiff[@]}" augment run_dir="$run_dir" experiment=augment_dataset "$@"
# the downstream certificate: a small emulator trained on real, real + synthetic and synthetic pairs
"${simdiff[@]}" certify run_dir="$run_dir" experiment=augment_dataset "$@"
# evaluate again: its inputs now include augmented.zarr, so it re-scores with the augment section
"${simdiff[@]}" evaluate run_dir="$run_dir" experiment=augment_dataset "$@"

echo "augmented: $run_dir/augmented.zarr"
echo "certificate: $run_dir/certificate.json"
echo "report:    $run_dir/report/index.html (sections: augmentation, downstream certificate)"
