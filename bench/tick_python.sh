#!/usr/bin/env bash
# The whole tick in a real service: Debian's python3 with the agent
# preloaded (interval 100 ms, a rule on every metric that never fires, heap
# sampling at 512 KiB), N idle threads; the watchdog thread's run time from
# /proc/PID/task/TID/schedstat over 10 s, per tick. Runs each library given,
# interleaved, so two builds compare in one run:
#   bench/tick_python.sh [--threads "10 2000"] [--reps N] LIBHOLMES.so...
# /usr/bin/python3, not a pyenv or other shim: a shim's shell would start
# the agent and strip it from the environment the real python3 gets.
set -euo pipefail
threads="10 2000" reps=2
while [[ $# -gt 0 && $1 == --* ]]; do
    case $1 in
    --threads) threads=$2; shift 2 ;;
    --reps) reps=$2; shift 2 ;;
    *) echo "usage: $0 [--threads LIST] [--reps N] LIB..." >&2; exit 2 ;;
    esac
done
(($# > 0)) || { echo "usage: $0 [--threads LIST] [--reps N] LIB..." >&2; exit 2; }
work=$(mktemp -d /tmp/holmes-tick-python.XXXXXX)
trap 'rm -rf "$work"' EXIT
cat >"$work/holmes.ini" <<INI
[agent]
interval = 100ms
log_level = warn
[rule.cpu]
abs = 1000
[rule.mem]
abs = 1000
[rule.threads]
abs = 1000000
[rule.fds]
abs = 1000000
[rule.heap]
abs = 1000
[rule.mem_pressure]
abs = 100
[rule.cpu_pressure]
abs = 100
[heap]
sample_bytes = 512KiB
[reporter.file]
dir = $work
INI

run_ns() { awk '{ print $1 }' "/proc/$1/task/$2/schedstat"; }

# One measurement: LIB THREADS -> "us per tick".
measure() {
    LD_PRELOAD=$1 HOLMES_CONFIG=$work/holmes.ini /usr/bin/python3 -c "
import threading, time
ev = threading.Event()
for _ in range($2):
    threading.Thread(target=ev.wait, daemon=True).start()
time.sleep(14)
" &
    local pid=$! tid="" a b t0 t1
    sleep 3
    for f in /proc/$pid/task/*/comm; do
        [[ $(cat "$f" 2>/dev/null) == holmes ]] && tid=$(basename "$(dirname "$f")")
    done
    [[ -n $tid ]] || { wait "$pid"; echo "no watchdog thread"; return; }
    a=$(run_ns "$pid" "$tid") t0=$(date +%s%N)
    sleep 10
    b=$(run_ns "$pid" "$tid") t1=$(date +%s%N)
    wait "$pid"
    awk -v a="$a" -v b="$b" -v t0="$t0" -v t1="$t1" \
        'BEGIN { printf "%.1f us per tick", (b - a) / 1e3 / ((t1 - t0) / 1e8) }'
}

for ((r = 1; r <= reps; r++)); do
    for lib in "$@"; do
        for n in $threads; do
            echo "$lib threads $n: $(measure "$lib" "$n")"
        done
    done
done
