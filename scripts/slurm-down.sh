#!/usr/bin/env bash
# Stops the cluster scripts/slurm-up.sh started: slurmd, slurmctld, and munged if slurm-up
# started it, each by its PID file in the state folder ($SIMDIFF_SLURM_DIR, default
# /tmp/simdiff-slurm). Jobs still running are killed with slurmd. Safe to run twice.
set -euo pipefail
dir="${SIMDIFF_SLURM_DIR:-/tmp/simdiff-slurm}"

stop() {  # stop NAME PIDFILE: TERM, then KILL after 10 s
  local name=$1 pidfile=$2 pid
  [ -s "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      echo "slurm-down: $name ($pid) ignored TERM for 10 s; killing it" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
    echo "slurm-down: stopped $name ($pid)"
  fi
  rm -f "$pidfile"
}

# Jobs first, so that none is left in the controller's saved state (slurm-up starts clean anyway).
if [ -s "$dir/slurmctld.pid" ] && kill -0 "$(cat "$dir/slurmctld.pid")" 2>/dev/null; then
  SLURM_CONF="$dir/slurm.conf" timeout 20 scancel --partition=debug >/dev/null 2>&1 || true
fi
stop slurmd "$dir/slurmd.pid"
stop slurmctld "$dir/slurmctld.pid"
if [ -s "$dir/munged.started" ]; then
  stop munged "$(cat "$dir/munged.started")"
  rm -f "$dir/munged.started"
fi
