#!/usr/bin/env bash
# What following forked workers costs (README, "Forked workers"), side by
# side in one run: bench/plain_prefork forks 64 workers that serve requests
# for 2 s, bare, preloaded with `follow_fork = false` (the master's agent
# only) and with the default `follow_fork = true` (an agent in every worker),
# runs interleaved. Prints medians over the repetitions of: the master's
# 64-fork loop (wall, and its thread's CPU time), and a worker's CPU time
# (every thread, the agent's included), RSS growth and private memory growth
# over its life; then what following costs over not following.
#
#   bench/prefork.sh [--reps N] [--workers N] [--life MS]
# A short --life (500: the 200 ms grace, the start and no tick) isolates
# what the start itself costs a worker.
# Environment: HOLMES_BUILD (default: build-bench beside the sources).
set -euo pipefail

SRC=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${HOLMES_BUILD:-$SRC/build-bench}
REPS=5 WORKERS=64 LIFE_MS=2000
while (($#)); do
    case $1 in
    --reps) REPS=$2; shift ;;
    --workers) WORKERS=$2; shift ;;
    --life) LIFE_MS=$2; shift ;;
    *) echo "usage: $0 [--reps N] [--workers N] [--life MS]" >&2; exit 2 ;;
    esac
    shift
done
OUT=$(mktemp -d /tmp/holmes-prefork-bench.XXXXXX)
LOG=$OUT/log.txt
export BENCH_DUMPS=$OUT/dumps

[[ -f $BUILD/CMakeCache.txt ]] || cmake -S "$SRC" -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo >>"$LOG"
cmake --build "$BUILD" -j2 --target holmes plain_prefork >>"$LOG"
LIBHOLMES=$BUILD/libholmes.so
PREFORK=$BUILD/bench/plain_prefork

for mode in master follow; do
    sed -e 's/^log_level = warn/log_level = warn\nfollow_fork = '"$([[ $mode == follow ]] && echo true || echo false)"'/' \
        "$SRC/bench/typical.ini" >"$OUT/$mode.ini"
done

run_mode() {
    local mode=$1 rep=$2
    case $mode in
    bare) "$PREFORK" "$WORKERS" "$LIFE_MS" ;;
    *) env LD_PRELOAD="$LIBHOLMES" HOLMES_CONFIG="$OUT/$mode.ini" "$PREFORK" "$WORKERS" "$LIFE_MS" ;;
    esac >"$OUT/$mode.$rep" 2>>"$LOG"
}

for ((rep = 0; rep < REPS; rep++)); do
    for mode in bare master follow; do run_mode "$mode" "$rep"; done
done

# The median of one figure over a mode's repetitions.
figure() { cat "$OUT/$1".* | awk -v k="$2" '$1 == k {print $2}' | sort -g | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }

echo "$WORKERS workers living ${LIFE_MS} ms, median of $REPS runs per mode (bench/typical.ini's rules)"
printf '%-24s %12s %12s %12s\n' figure bare follow_fork=false follow_fork=true
for k in master_fork_wall_ms master_fork_cpu_ms worker_cpu_ms worker_rss_kib worker_private_kib; do
    printf '%-24s %12s %12s %12s\n' "$k" "$(figure bare $k)" "$(figure master $k)" "$(figure follow $k)"
done
awk -v a="$(figure master master_fork_wall_ms)" -v b="$(figure follow master_fork_wall_ms)" \
    -v c="$(figure master worker_cpu_ms)" -v d="$(figure follow worker_cpu_ms)" \
    -v e="$(figure master worker_private_kib)" -v f="$(figure follow worker_private_kib)" 'BEGIN {
    printf "master: %d forks take %.2fx the time with following on\n", '"$WORKERS"', b / a
    printf "worker: its agent costs %.1f ms CPU and %.0f KiB private memory over %d ms\n", d - c, f - e, '"$LIFE_MS"'
}'
echo "(runs and log in $OUT)"
