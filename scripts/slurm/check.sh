#!/usr/bin/env bash
# Check the local Slurm cluster of up.sh end to end: a 2-task srun, USR1 delivered to a python job step
# (scancel --signal and, with --slow, sbatch --signal=USR1@50 near a 1-minute time limit), and a requeue
# that reruns a job with SLURM_RESTART_COUNT=1. Prints one PASS/FAIL line per check and their timings,
# then "N passed, N failed"; exits non-zero on any failure. About 10 s (70 s with --slow).
set -uo pipefail
PY=${PYTHON:-python3}
D=$(mktemp -d /tmp/slurm-check.XXXX)
cd "$D" || exit 1
pass=0; fail=0
ok() { echo "PASS $1"; pass=$((pass + 1)); }
ko() { echo "FAIL $1"; fail=$((fail + 1)); }
now() { date +%s.%N; }
since() { echo "$(now) - $1" | bc; }
wait_gone() { for _ in $(seq "${2:-600}"); do [ -z "$(squeue -h -j "$1" 2>/dev/null)" ] && return 0; sleep 0.1; done; return 1; }
wait_grep() { for _ in $(seq "${3:-600}"); do grep -q "$1" "$2" 2>/dev/null && return 0; sleep 0.1; done; return 1; }

cat > trap.py <<'PYEOF'
import os, signal, sys, time
out, limit = sys.argv[1], float(sys.argv[2])
start, fired = time.time(), []
def handler(signum, frame):
    fired.append(signum)
    with open(f"{out}.{os.environ.get('SLURM_PROCID')}", "w") as f:
        f.write(f"{signal.Signals(signum).name} after {time.time() - start:.1f}s\n")
signal.signal(signal.SIGUSR1, handler)
print("ready", flush=True)
while not fired and time.time() - start < limit:
    time.sleep(0.1)
PYEOF

# 1. srun -N1 -n2 from the login side
t=$(now); out=$(srun -N1 -n2 bash -c 'echo "$SLURM_PROCID/$SLURM_NTASKS"' 2>&1 | sort | tr '\n' ' ')
[ "$out" = "0/2 1/2 " ] && ok "srun -N1 -n2 ($(since "$t") s): $out" || ko "srun -N1 -n2: $out"

# 2. --signal=USR1@50 with --time=1 (slow: Slurm checks time limits about every 30 s)
if [ "${1:-}" = "--slow" ]; then
  T=$(sbatch --parsable --time=1 --signal=USR1@50 -o t.out --wrap "srun $PY $D/trap.py $D/sigt 90")
fi

# 3. scancel --signal=USR1 reaches python running as a job step
J=$(sbatch --parsable -o c.out --wrap "srun $PY $D/trap.py $D/sigc 60")
wait_grep ready c.out
t=$(now); scancel --signal=USR1 "$J"; wait_gone "$J"
[ -s sigc.0 ] && ok "scancel --signal=USR1 -> python step: $(cat sigc.0) (job gone after $(since "$t") s)" \
  || ko "scancel --signal=USR1: $(cat c.out)"

# 4. scontrol requeue of a running job reruns it with SLURM_RESTART_COUNT=1
J=$(sbatch --parsable --requeue --open-mode=append -o d.out \
  --wrap 'echo "restart=${SLURM_RESTART_COUNT:-0}"; [ "${SLURM_RESTART_COUNT:-0}" -ge 1 ] || sleep 300')
wait_grep 'restart=0' d.out
t=$(now); scontrol requeue "$J"
for _ in $(seq 100); do squeue -h -j "$J" -o %T | grep -q PENDING && break; sleep 0.1; done
scontrol update jobid="$J" StartTime=now 2>/dev/null   # skip the cred_expire begin-time delay
wait_grep 'restart=1' d.out 600
grep -q 'restart=1' d.out && ok "scontrol requeue -> rerun with SLURM_RESTART_COUNT=1 after $(since "$t") s" \
  || ko "scontrol requeue: $(cat d.out)"
wait_gone "$J"

if [ -n "${T:-}" ]; then
  wait_gone "$T" 900
  [ -s sigt.0 ] && ok "--signal=USR1@50 --time=1 -> python step: $(cat sigt.0)" || ko "--signal=USR1@50: $(cat t.out)"
fi
rm -rf "$D"
echo "slurm check summary: $pass ok, $fail failed"
[ "$fail" = 0 ]
