#!/usr/bin/env bash
# Debian packages beyond Python wheels, installed when missing (without their recommends).
#   scripts/system-deps.sh              what the test suite needs (`make setup` runs it):
#                                       libudunits2-0, UDUNITS-2, which cfunits (and so the CF
#                                       checker in tests/generate) loads
#   scripts/system-deps.sh PKG ...      those packages instead (scripts/slurm-up.sh: slurm-wlm munge)
# Run as root (CI, containers) or with sudo; does nothing when everything is present.
set -euo pipefail
packages=("$@")
[ ${#packages[@]} -eq 0 ] && packages=(libudunits2-0)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null; then
  echo "system-deps: not a Debian system; install ${missing[*]} by hand" >&2
  exit 0
fi
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
