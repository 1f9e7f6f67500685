#!/usr/bin/env bash
# Bring up a single-node Slurm cluster on localhost (Debian 12, run as root, no systemd needed).
#
# Idempotent: packages are installed only when missing, the config is rewritten only when it changed
# (running daemons are then told to reconfigure), and daemons already running are left alone.
# Stop everything with scripts/slurm/down.sh (by PID, never by name).
#
# The node is named after `hostname -s`, listens on 127.0.0.1 and offers every CPU of the machine.
# Requeue is set up for tests: `scontrol requeue` and exit code 42 rerun a job after ~10 s.
#
# Usage: bash scripts/slurm/up.sh        (prints `sinfo` and exits 0 once the node is idle)
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

if [ "$(id -u)" != 0 ]; then
  echo "up.sh: must run as root (installs packages, starts munged/slurmctld/slurmd)" >&2
  exit 1
fi

# --- packages -----------------------------------------------------------
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v srun >/dev/null \
   || ! command -v munged >/dev/null; then
  apt-get update -q
  apt-get install -y -q --no-install-recommends slurmctld slurmd slurm-client munge
fi

HOST=$(hostname -s)
# CPUs/Boards/Sockets/Cores/Threads as slurmd itself sees them (avoids "reconfigured socket/core boundaries").
HW=$(slurmd -C | head -1 | sed -e 's/^NodeName=[^ ]* //' -e 's/ RealMemory=[0-9]*//' -e 's/ UpTime=.*//')
MEM_MB=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 85 / 100 ))

# --- munge --------------------------------------------------------------
[ -s /etc/munge/munge.key ] || mungekey --create --keyfile /etc/munge/munge.key
chown munge:munge /etc/munge/munge.key
chmod 400 /etc/munge/munge.key
install -d -o munge -g munge -m 755 /run/munge
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
if ! alive /run/munge/munged.pid; then
  runuser -u munge -- /usr/sbin/munged        # daemonizes itself and writes /run/munge/munged.pid
fi
munge -n | unmunge >/dev/null                 # fails loudly when munge does not work

# --- configuration ------------------------------------------------------
install -d -o slurm -g slurm /var/spool/slurmctld /var/log/slurm /run/slurm
install -d /var/spool/slurmd /etc/slurm
NEW_CONF=$(mktemp)
cat > "$NEW_CONF" <<CONF
# Written by d2lightning scripts/slurm/up.sh: a single-node cluster on localhost for tests.
ClusterName=d2lci
SlurmctldHost=${HOST}(127.0.0.1)
SlurmUser=slurm
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
CredType=cred/munge
# cred_expire is also the delay before a requeued job may start again (default 120 s).
AuthInfo=cred_expire=10
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
# No cgroups: process-group tracking still kills what a dead batch shell leaves behind.
ProctrackType=proctrack/pgid
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
SchedulerType=sched/backfill
# Frequent scheduler passes, so a requeued job starts as soon as its begin time has passed.
SchedulerParameters=bf_interval=1,sched_interval=5
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
ReturnToService=2
JobRequeue=1
RequeueExit=42
KillWait=5
MinJobAge=300
InactiveLimit=0
SlurmdTimeout=300
NodeName=${HOST} NodeAddr=127.0.0.1 ${HW} RealMemory=${MEM_MB} State=UNKNOWN
PartitionName=debug Nodes=${HOST} Default=YES MaxTime=INFINITE State=UP
CONF
CHANGED=0
if ! cmp -s "$NEW_CONF" /etc/slurm/slurm.conf; then
  install -m 644 "$NEW_CONF" /etc/slurm/slurm.conf
  CHANGED=1
fi
rm -f "$NEW_CONF"
# Not read with proctrack/pgid + task/none; present so that enabling a cgroup plugin later finds a sane file.
cat > /etc/slurm/cgroup.conf <<CONF
# Written by d2lightning scripts/slurm/up.sh (unused while ProctrackType=proctrack/pgid, TaskPlugin=task/none).
CgroupPlugin=autodetect
ConstrainCores=no
ConstrainRAMSpace=no
CONF

# --- daemons ------------------------------------------------------------
# Foreground mode (-D) in their own session, so that killing the caller's process group leaves them up.
# -c: a fresh controller forgets the jobs of an earlier run (its state stays in StateSaveLocation; a machine that runs
# CI again would otherwise restore them, and one still holding the node leaves the tests' jobs waiting for resources).
if ! alive /run/slurm/slurmctld.pid; then
  setsid nohup /usr/sbin/slurmctld -D -c </dev/null >/var/log/slurm/slurmctld.stdout 2>&1 &
  echo $! >/run/slurm/slurmctld.pid
  CHANGED=0
fi
for _ in $(seq 100); do scontrol ping 2>/dev/null | grep -q 'is UP' && break; sleep 0.1; done
if ! alive /run/slurm/slurmd.pid; then
  setsid nohup /usr/sbin/slurmd -D </dev/null >/var/log/slurm/slurmd.stdout 2>&1 &
  echo $! >/run/slurm/slurmd.pid
fi
if [ "$CHANGED" = 1 ]; then
  scontrol reconfigure
fi

state() { sinfo -h -n "$HOST" -o %T 2>/dev/null || true; }
for _ in $(seq 150); do
  case "$(state)" in
    idle|mixed|allocated|completing) break ;;
    down*|drain*|fail*) scontrol update nodename="$HOST" state=resume 2>/dev/null || true ;;
  esac
  sleep 0.2
done
# Daemons left running by an earlier run may still hold its jobs: this cluster is for tests, so cancel them and wait
# until the node is free again.
stale=$(squeue -h -o %A 2>/dev/null || true)
if [ -n "$stale" ]; then
  echo "up.sh: cancelling jobs left by an earlier run: $(echo $stale)"
  # shellcheck disable=SC2086
  scancel $stale 2>/dev/null || true
  for _ in $(seq 300); do [ -z "$(squeue -h -o %A 2>/dev/null)" ] && break; sleep 0.2; done
  for _ in $(seq 150); do state | grep -q '^idle$' && break; sleep 0.2; done
fi
sinfo
if ! state | grep -qE '^(idle|mixed|allocated|completing)$'; then
  echo "up.sh: node $HOST did not become idle; last log lines:" >&2
  tail -n 20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2
  exit 1
fi
