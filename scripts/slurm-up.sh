#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine, for CI and for trying sweeps locally:
# installs Debian's slurm-wlm and munge when missing (scripts/system-deps.sh), writes a minimal
# slurm.conf into a state folder, and starts munged, slurmctld and slurmd by hand (the packages'
# service scripts do not start in containers), then waits until the node is idle.
#
#   scripts/slurm-up.sh                 # then: export SLURM_CONF=/tmp/simdiff-slurm/slurm.conf
#   scripts/slurm-down.sh               # stops what slurm-up started
#
# Environment: SIMDIFF_SLURM_DIR (state folder: slurm.conf, logs, PID files, spool; default
# /tmp/simdiff-slurm), SIMDIFF_SLURM_TIMEOUT (seconds to wait for the node, default 60).
# Run as root (slurmd is root's). Running it again while the cluster is up does nothing; a new
# start forgets the jobs of an earlier cluster in the same folder.
# One node, `localhost`, with this machine's CPUs and memory (slurmd -C), one partition `debug`,
# no accounting (submitit then warns "bypassing sacct" on each poll, and works), no cgroups.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
dir="${SIMDIFF_SLURM_DIR:-/tmp/simdiff-slurm}"
timeout="${SIMDIFF_SLURM_TIMEOUT:-60}"
conf="$dir/slurm.conf"
export SLURM_CONF="$conf"
since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

if [ "$(id -u)" -ne 0 ]; then
  echo "slurm-up: run as root (sudo $0): slurmd and munged start as system daemons" >&2
  exit 1
fi
t0=$(date +%s.%N)
"$here/system-deps.sh" slurm-wlm munge
installed=$(since "$t0")
start=$(date +%s.%N)
for cmd in munged slurmctld slurmd sinfo; do
  command -v "$cmd" >/dev/null || { echo "slurm-up: $cmd not found; install slurm-wlm and munge" >&2; exit 1; }
done

alive() {  # alive PIDFILE: the process named in PIDFILE runs
  [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

running() {  # running NAME: print the PID of a process called NAME, if one runs (no procps needed)
  local f
  for f in /proc/[0-9]*/comm; do
    if [ "$(cat "$f" 2>/dev/null)" = "$1" ]; then f=${f#/proc/}; echo "${f%/comm}"; return 0; fi
  done
  return 1
}

node_state() {
  sinfo -h -N -n localhost -o %T 2>/dev/null | head -n1 || true
}

up() {  # up STATE: the node answers and takes jobs (busy with some counts)
  case "$1" in idle|mixed|allocated|completing) return 0 ;; *) return 1 ;; esac
}

if alive "$dir/slurmctld.pid" && alive "$dir/slurmd.pid" && up "$(node_state)"; then
  echo "slurm-up: already up ($conf); export SLURM_CONF=$conf"
  exit 0
fi

# A daemon running without its PID file here was started from another state folder (or the
# folder was removed under it): starting a second one would fail on its port while sinfo answers
# from the first. Stop it with the slurm-down.sh of its folder (or by its PID) first.
for d in slurmctld slurmd; do
  if ! alive "$dir/$d.pid" && pid=$(running "$d"); then
    echo "slurm-up: $d already runs (PID $pid: $(tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null)) but not from $dir;" \
      "stop it first" >&2
    exit 1
  fi
done

mkdir -p "$dir/state" "$dir/spool"

# munge: the key the package made (or a new one), the daemon unless one answers already.
if [ ! -s /etc/munge/munge.key ]; then
  mkdir -p /etc/munge
  if command -v mungekey >/dev/null; then mungekey --create --keyfile=/etc/munge/munge.key
  else dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none; fi
  chown munge:munge /etc/munge/munge.key
  chmod 0400 /etc/munge/munge.key
fi
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  install -d -o munge -g munge -m 0755 /run/munge
  install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
  runuser -u munge -- munged --pid-file=/run/munge/munged.pid
  echo /run/munge/munged.pid > "$dir/munged.started"   # slurm-down stops only a munged it started
  for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
fi

# slurm.conf: this machine as node `localhost` at 127.0.0.1, its CPUs and memory from slurmd -C
# (a job asking for more memory than RealMemory is refused). Written once; kept while up.
if ! alive "$dir/slurmctld.pid"; then
  hw=$(slurmd -C | head -n1 | sed -e 's/^NodeName=[^ ]*//')
  cat > "$conf" <<EOF
# Written by scripts/slurm-up.sh: a single-node cluster for CI and local tries.
ClusterName=simdiff
SlurmctldHost=$(hostname -s)(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
# No cgroups in containers: processes tracked through /proc, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
# CPUs and memory are what jobs ask for and share (several sweep points at once).
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
SchedulerType=sched/backfill
# No accounting (no slurmdbd): sacct answers nothing.
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
MailProg=/bin/true
KillWait=10
NodeName=localhost NodeAddr=127.0.0.1 $hw State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
  # -c: no jobs recovered from an earlier cluster in this folder (a job left pending by a test
  # that was killed would otherwise take the node as soon as it is up).
  slurmctld -c -f "$conf"
fi
if ! alive "$dir/slurmd.pid"; then
  slurmd -f "$conf" -N localhost
fi

fail() {
  echo "slurm-up: $1" >&2
  for log in "$dir/slurmctld.log" "$dir/slurmd.log" /var/log/munge/munged.log; do
    [ -f "$log" ] && { echo "--- $log (last 40 lines)" >&2; tail -n 40 "$log" >&2; }
  done
  exit 1
}
deadline=$(( $(date +%s) + timeout ))
state=""
while [ "$(date +%s)" -lt "$deadline" ]; do
  state=$(node_state)
  up "$state" && break
  case "$state" in
    down*|drain*|fail*) scontrol update nodename=localhost state=resume >/dev/null 2>&1 || true ;;
  esac
  sleep 0.5
done
up "$state" || fail "node localhost not up after ${timeout}s (state: '${state:-no answer}')"
echo "slurm-up: up in $(since "$start") s, packages checked/installed in ${installed} s" \
  "($(sinfo -h -o '%P %D node, %c CPUs, %m MB')); export SLURM_CONF=$conf"
