#!/usr/bin/env bash
# holmes watch, measured side by side in one run (README, "Benchmarks"):
#  1. the watcher's own CPU time per interval for 1, 50 and 500 watched
#     processes (libproc2's one pass over /proc, plus each process's cgroup,
#     descriptors and PSI through the agent's sampler);
#  2. what its CPU capture from outside (perf_event_open at 100 Hz on every
#     thread) costs the target, beside the agent's in-process capture at the
#     same rate: bench_cpu's two threads burn a fixed amount of work, alone,
#     watched (a rule that fires at once, a capture lasting the whole run),
#     and with holmes' capture inside.
# Usage: bench/watch.sh BUILD_DIR [REPS]   (BUILD_DIR holds holmes and bench/bench_cpu)
set -euo pipefail
BUILD=$(cd "${1:?usage: bench/watch.sh BUILD_DIR [REPS]}" && pwd)
REPS=${2:-3}
SECONDS_PER_RUN=10
INTERVAL_MS=100
CPU_UNITS=${CPU_UNITS:-8}
work=$(mktemp -d /tmp/holmes-bench-watch.XXXXXX)
pids=()
cleanup() {
    ((${#pids[@]})) && kill "${pids[@]}" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
pct() { awk "BEGIN { printf \"%+.2f%%\", ($1 / $2 - 1) * 100 }"; }

# CPU seconds (user + system) a command and its children used.
cpu_of() {
    python3 -c 'import resource, subprocess, sys
subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
r = resource.getrusage(resource.RUSAGE_CHILDREN)
print("%.4f" % (r.ru_utime + r.ru_stime))' "$@"
}

cat >"$work/idle.ini" <<EOF
[agent]
interval = ${INTERVAL_MS}ms
window = 10
[rule.cpu]
abs = 90
[reporter.file]
dir = $work/dumps
EOF

# ---- 1. the watcher's CPU per interval ----
echo "== 1. holmes watch: its own CPU per ${INTERVAL_MS} ms interval, ${SECONDS_PER_RUN} s runs, median of $REPS"
cp "$(command -v sleep)" "$work/hw-bench-idle" # one name (comm) for --name
ticks=$((SECONDS_PER_RUN * 1000 / INTERVAL_MS))
started=0
for n in 1 50 500; do
    while ((started < n)); do
        "$work/hw-bench-idle" 3600 &
        pids+=($!)
        started=$((started + 1))
    done
    runs=()
    for ((r = 0; r < REPS; r++)); do
        runs+=("$(cpu_of "$BUILD/holmes" watch -c "$work/idle.ini" --name hw-bench-idle --for "${SECONDS_PER_RUN}s")")
    done
    cpu=$(median "${runs[@]}")
    awk -v n="$n" -v c="$cpu" -v t="$ticks" 'BEGIN {
        printf "%4d processes: %8.1f us per interval (%6.1f us per process), %.2f%% of a core\n",
               n, c * 1e6 / t, c * 1e6 / t / n, c * 100 / (t * '"$INTERVAL_MS"' / 1000) }'
    if ((n == 1)); then # --pid reads its processes alone, not every process of the machine
        runs=()
        for ((r = 0; r < REPS; r++)); do
            runs+=("$(cpu_of "$BUILD/holmes" watch -c "$work/idle.ini" --pid "${pids[0]}" --for "${SECONDS_PER_RUN}s")")
        done
        cpu=$(median "${runs[@]}")
        awk -v c="$cpu" -v t="$ticks" 'BEGIN { printf "   1 process (--pid): %8.1f us per interval\n", c * 1e6 / t }'
    fi
done
echo "(--name lists every process of the machine each interval: $(($(ls /proc | grep -c '^[0-9]') - started)) here besides the watched ones)"
kill "${pids[@]}" 2>/dev/null
pids=()

# ---- 2. the CPU capture's cost to the target ----
echo "== 2. CPU capture at 100 Hz, cost to the target: bench_cpu, 2 threads, $CPU_UNITS units, median of $REPS"
cat >"$work/capture.ini" <<EOF
[agent]
interval = 100ms
window = 2
warmup = 2
[rule.cpu]
min = 1
diff = off
abs = 1
duration = 120s
hz = 100
[reporter.file]
dir = $work/dumps
EOF
bench=$BUILD/bench/bench_cpu
nw=() nc=() ww=() wc=() hw=() hc=()
for ((r = 0; r < REPS; r++)); do
    line=$("$bench" none "$CPU_UNITS" | tail -1)
    nw+=("$(awk '{ print $3 }' <<<"$line")"); nc+=("$(awk '{ print $6 }' <<<"$line")")
    "$bench" none "$CPU_UNITS" >"$work/watched.out" &
    target=$!
    "$BUILD/holmes" watch -c "$work/capture.ini" --pid "$target" 2>"$work/watch.log" &
    watcher=$!
    wait "$target"
    wait "$watcher" || true
    grep -q "capturing from outside" "$work/watch.log" || { echo "the watcher did not capture:"; cat "$work/watch.log"; exit 1; }
    line=$(tail -1 "$work/watched.out")
    ww+=("$(awk '{ print $3 }' <<<"$line")"); wc+=("$(awk '{ print $6 }' <<<"$line")")
    line=$("$bench" holmes "$CPU_UNITS" "$work/inside.pb.gz" | tail -1)
    hw+=("$(awk '{ print $3 }' <<<"$line")"); hc+=("$(awk '{ print $6 }' <<<"$line")")
done
mnw=$(median "${nw[@]}") mnc=$(median "${nc[@]}")
mww=$(median "${ww[@]}") mwc=$(median "${wc[@]}")
mhw=$(median "${hw[@]}") mhc=$(median "${hc[@]}")
echo "target wall: alone ${mnw} s, watched from outside ${mww} s ($(pct "$mww" "$mnw")), holmes inside ${mhw} s ($(pct "$mhw" "$mnw"))"
echo "target CPU:  alone ${mnc} s, watched from outside ${mwc} s ($(pct "$mwc" "$mnc")), holmes inside ${mhc} s ($(pct "$mhc" "$mnc"))"
echo "(the watched run includes the watcher's sampling before the rule fires: 2 ticks of 100 ms)"
