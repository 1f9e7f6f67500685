#!/usr/bin/env bash
# Stop the local Slurm cluster started by scripts/slurm/up.sh.
#
# Cancels every job first (their slurmstepd processes would outlive slurmd), then stops slurmd, slurmctld
# and munged by the PIDs in their pid files -- never by process name. Packages, config and state stay,
# so a later up.sh starts again in well under a second. Safe to run when nothing is up.
set -uo pipefail

if command -v squeue >/dev/null && scontrol ping 2>/dev/null | grep -q 'is UP'; then
  jobs=$(squeue -h -o %A 2>/dev/null || true)
  if [ -n "$jobs" ]; then
    # shellcheck disable=SC2086
    scancel $jobs 2>/dev/null || true
    for _ in $(seq 100); do [ -z "$(squeue -h -o %A 2>/dev/null)" ] && break; sleep 0.1; done
  fi
fi

stop() {
  local f=$1 p
  [ -s "$f" ] || return 0
  p=$(cat "$f")
  if kill -TERM "$p" 2>/dev/null; then
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$p" 2>/dev/null && kill -KILL "$p" 2>/dev/null
  fi
  rm -f "$f"
}
stop /run/slurm/slurmd.pid
stop /run/slurm/slurmctld.pid
stop /run/munge/munged.pid
exit 0
