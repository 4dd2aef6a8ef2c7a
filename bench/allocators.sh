#!/usr/bin/env bash
# Services with their own allocator (README: "Services with their own
# allocator"): what libholmes costs on top of jemalloc, tcmalloc and glibc.
#
#   bench/allocators.sh [--quick] [--before LIBHOLMES] [--redis-only]
#
# 1. The malloc micro benchmark (bench/plain_heap_micro: 2 threads of
#    free + malloc(16..4096)) under callgrind, instructions of its churn
#    phase: each allocator alone (preloaded) vs libholmes preloaded ahead of
#    it at the default 512 KiB sampling. With --before, glibc is also
#    measured with another libholmes.so (e.g. main's), to show the glibc
#    path did not regress.
# 2. Debian's redis-server (jemalloc) under redis-benchmark SET and GET with
#    2 KB values on 127.0.0.1, without and with libholmes preloaded, side by
#    side: each round starts both servers on CPU 0 and both benchmarks at
#    once on CPU 1, so the two see the same machine (on this shared VM,
#    rounds one after the other moved throughput by 30-50%). Per round the
#    throughput ratio holmes/none and the servers' CPU time ratio for the
#    same requests; their medians over the rounds; and INFO memory's
#    allocator_allocated / used_memory of the holmes server (jemalloc still
#    the allocator).
# Environment: HOLMES_BUILD (default build-bench, built when missing),
# BENCH_OUT (default: a fresh directory in /tmp).
set -euo pipefail

SRC=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${HOLMES_BUILD:-$SRC/build-bench}
QUICK=0 BEFORE= ALLOCS="glibc jemalloc tcmalloc"
while (($#)); do
    case $1 in
    --quick) QUICK=1 ;;
    --before) BEFORE=$2; shift ;;
    --redis-only) ALLOCS= ;;
    *) echo "usage: $0 [--quick] [--before LIBHOLMES] [--redis-only]" >&2; exit 2 ;;
    esac
    shift
done
if ((QUICK)); then CG_OPS=100000 REDIS_N=50000 REPS=2; else CG_OPS=200000 REDIS_N=200000 REPS=4; fi

OUT=${BENCH_OUT:-$(mktemp -d /tmp/holmes-alloc-bench.XXXXXX)}
mkdir -p "$OUT"
LOG=$OUT/log.txt
: >"$LOG"
LIBDIR=/usr/lib/x86_64-linux-gnu
LIBHOLMES=$BUILD/libholmes.so
JEMALLOC=$LIBDIR/libjemalloc.so.2
TCMALLOC=$LIBDIR/libtcmalloc_minimal.so.4
export BENCH_DUMPS=$OUT/dumps
CONFIG=$SRC/bench/typical.ini

say() { printf '%s\n' "$*" | tee -a "$LOG"; }
need() { command -v "$1" >/dev/null || { echo "bench: $1 is missing (scripts/deps.sh)" >&2; exit 1; }; }
for tool in valgrind redis-server redis-benchmark redis-cli cmake; do need "$tool"; done
for lib in "$JEMALLOC" "$TCMALLOC"; do [[ -e $lib ]] || { echo "bench: $lib is missing" >&2; exit 1; }; done
if [[ ! -e $LIBHOLMES || ! -e $BUILD/bench/plain_heap_micro ]]; then
    bash "$SRC/scripts/build.sh" "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo >>"$LOG" 2>&1
fi
ratio() { awk "BEGIN { printf \"%.4f\", $1 / $2 }"; }

# Instructions executed inside plain_heap_micro's churn() and what it calls
# (malloc, free: the allocator and libholmes' wrappers), with LD_PRELOAD=$1
# ("" = none). Only churn's threads count: the agent's own threads (the
# capture thread compiles unwind tables at start, ~45 M instructions) are
# the start-up cost bench/run.sh reports, not the per-call cost measured here.
churn_instructions() {
    local preload=$1 dir
    dir=$(mktemp -d "$OUT/cg.XXXXXX")
    env ${preload:+LD_PRELOAD=$preload} HOLMES_INHERIT=1 HOLMES_CONFIG="$CONFIG" \
        valgrind --tool=callgrind --collect-atstart=no --toggle-collect=churn \
        --callgrind-out-file="$dir/cg.%p" "$BUILD/bench/plain_heap_micro" "$CG_OPS" >>"$LOG" 2>&1
    cat "$dir"/cg.* | awk '/^totals:/ { s += $2 } END { print s }'
}

if [[ -n $ALLOCS ]]; then
    say "== 1. heap micro under callgrind: 2 x $CG_OPS free+malloc, instructions of the churn phase"
fi
for alloc in $ALLOCS; do
    case $alloc in
    glibc) lib= ;;
    jemalloc) lib=$JEMALLOC ;;
    tcmalloc) lib=$TCMALLOC ;;
    esac
    alone=$(churn_instructions "$lib")
    with=$(churn_instructions "$LIBHOLMES${lib:+:$lib}")
    say "$alloc: alone $alone, with holmes $with, ratio $(ratio "$with" "$alone")"
    if [[ $alloc == glibc && -n $BEFORE ]]; then
        before=$(churn_instructions "$BEFORE")
        say "glibc: with the --before libholmes $before, ratio $(ratio "$before" "$alone");" \
            "this libholmes vs it $(ratio "$with" "$before")"
    fi
done

# ---- 2. redis ----
need taskset
base_port=$((20000 + RANDOM % 20000))
rps() { awk -F'"' '/"(SET|GET)"/ { print $4 }' | tr '\n' ' '; }

declare -A server_pid server_port

# Starts a server for $1 (none or holmes) on the next port, pinned to CPU 0.
redis_start() {
    local mode=$1 preload=()
    [[ $mode == holmes ]] && preload=(LD_PRELOAD="$LIBHOLMES" HOLMES_CONFIG="$CONFIG")
    server_port[$mode]=$base_port
    base_port=$((base_port + 1))
    env "${preload[@]}" taskset -c 0 redis-server --port "${server_port[$mode]}" --bind 127.0.0.1 \
        --save "" --appendonly no >>"$LOG" 2>&1 &
    server_pid[$mode]=$!
}

# "mode SET-rps GET-rps used_memory allocator_allocated cpu-ticks" of $1's server.
redis_result() {
    local mode=$1 info used held ticks
    info=$(redis-cli -p "${server_port[$mode]}" info memory | tr -d '\r')
    # The server's CPU ticks (user + system): the cost of the same requests.
    ticks=$(awk '{ print $14 + $15 }' "/proc/${server_pid[$mode]}/stat")
    used=$(awk -F: '$1 == "used_memory" { print $2 }' <<<"$info")
    held=$(awk -F: '$1 == "allocator_allocated" { print $2 }' <<<"$info")
    echo "$mode $(rps <"$OUT/bench.$mode.txt") $used $held $ticks"
}

# One round: both servers, then both benchmarks at once; $1 starts first.
redis_pair() {
    local first=$1 second mode clients=()
    second=$([[ $first == none ]] && echo holmes || echo none)
    for mode in "$first" "$second"; do redis_start "$mode"; done
    for mode in none holmes; do
        for _ in $(seq 100); do
            redis-cli -p "${server_port[$mode]}" ping >/dev/null 2>&1 && break
            sleep 0.1
        done
    done
    for mode in "$first" "$second"; do
        taskset -c 1 redis-benchmark -h 127.0.0.1 -p "${server_port[$mode]}" -t set,get \
            -n "$REDIS_N" -d 2048 -r 100000 -c 16 --csv >"$OUT/bench.$mode.txt" 2>>"$LOG" &
        clients+=($!)
    done
    wait "${clients[@]}"
    for mode in none holmes; do
        redis_result "$mode" >>"$OUT/redis.txt"
        kill "${server_pid[$mode]}"
        wait "${server_pid[$mode]}" 2>/dev/null || true
    done
}

say "== 2. redis-server (jemalloc), redis-benchmark SET/GET 2 KB values, -n $REDIS_N, side by side"
: >"$OUT/redis.txt"
for ((i = 0; i < REPS; i++)); do
    redis_pair "$( ((i % 2)) && echo holmes || echo none)"
    tail -n 2 "$OUT/redis.txt" | tee -a "$LOG"
done
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
# Column c of the holmes line over the none line, round by round.
pair_ratios() {
    awk -v c="$1" '$1 == "none" { n = $c } $1 == "holmes" { printf "%.4f\n", $c / n }' "$OUT/redis.txt"
}
for col in 2:SET 3:GET 6:CPU; do
    c=${col%%:*} name=${col##*:}
    what=$([[ $name == CPU ]] && echo "server CPU ticks" || echo "$name rps")
    say "redis $what holmes/none: median of the rounds $(pair_ratios "$c" | median)" \
        "(rounds: $(pair_ratios "$c" | tr '\n' ' '))"
done
awk '$1 == "holmes" { printf "redis with holmes: jemalloc holds %.1f%% of used_memory\n", $5 * 100 / $4 }' \
    "$OUT/redis.txt" | tee -a "$LOG"
say "log: $LOG"
