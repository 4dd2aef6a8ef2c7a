#!/usr/bin/env bash
# Services with their own allocator (README: "Services with their own
# allocator"): what libholmes costs on top of jemalloc, tcmalloc and glibc.
#
#   bench/allocators.sh [--quick] [--before LIBHOLMES]
#
# 1. The malloc micro benchmark (bench/plain_heap_micro: 2 threads of
#    free + malloc(16..4096)) under callgrind, instructions of its churn
#    phase: each allocator alone (preloaded) vs libholmes preloaded ahead of
#    it at the default 512 KiB sampling. With --before, glibc is also
#    measured with another libholmes.so (e.g. main's), to show the glibc
#    path did not regress.
# 2. Debian's redis-server (jemalloc) under redis-benchmark SET and GET with
#    2 KB values on 127.0.0.1, without and with libholmes preloaded,
#    interleaved (none, holmes, none, holmes, ...): the throughput ratio, the
#    server's CPU time ratio for the same requests, and
#    INFO memory's allocator_allocated / used_memory after each holmes run
#    (jemalloc still the allocator).
# Environment: HOLMES_BUILD (default build-bench, built when missing),
# BENCH_OUT (default: a fresh directory in /tmp).
set -euo pipefail

SRC=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${HOLMES_BUILD:-$SRC/build-bench}
QUICK=0 BEFORE=
while (($#)); do
    case $1 in
    --quick) QUICK=1 ;;
    --before) BEFORE=$2; shift ;;
    *) echo "usage: $0 [--quick] [--before LIBHOLMES]" >&2; exit 2 ;;
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

say "== 1. heap micro under callgrind: 2 x $CG_OPS free+malloc, instructions of the churn phase"
for alloc in glibc jemalloc tcmalloc; do
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
port=$((20000 + RANDOM % 20000))
rps() { awk -F'"' '/"(SET|GET)"/ { print $4 }' | tr '\n' ' '; }

redis_round() {
    local mode=$1 pid info
    if [[ $mode == holmes ]]; then
        LD_PRELOAD=$LIBHOLMES HOLMES_CONFIG=$CONFIG redis-server --port "$port" --bind 127.0.0.1 \
            --save "" --appendonly no >>"$LOG" 2>&1 &
    else
        redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no >>"$LOG" 2>&1 &
    fi
    pid=$!
    for _ in $(seq 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
    local r
    r=$(redis-benchmark -h 127.0.0.1 -p "$port" -t set,get -n "$REDIS_N" -d 2048 -r 100000 \
        -c 16 --csv 2>>"$LOG" | rps)
    info=$(redis-cli -p "$port" info memory | tr -d '\r')
    # The server's CPU ticks (user + system): the cost per request, which the
    # machine's other load moves far less than throughput.
    local ticks
    ticks=$(awk '{ print $14 + $15 }' "/proc/$pid/stat")
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    local used held
    used=$(awk -F: '$1 == "used_memory" { print $2 }' <<<"$info")
    held=$(awk -F: '$1 == "allocator_allocated" { print $2 }' <<<"$info")
    echo "$mode $r $used $held $ticks"
}

say "== 2. redis-server (jemalloc), redis-benchmark SET/GET 2 KB values, -n $REDIS_N, interleaved"
: >"$OUT/redis.txt"
for ((i = 0; i < REPS; i++)); do
    for mode in none holmes; do
        line=$(redis_round "$mode")
        say "$line"
        echo "$line" >>"$OUT/redis.txt"
    done
done
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
for col in 2:SET 3:GET; do
    c=${col%%:*} name=${col##*:}
    n=$(awk -v c="$c" '$1 == "none" { print $c }' "$OUT/redis.txt" | median)
    h=$(awk -v c="$c" '$1 == "holmes" { print $c }' "$OUT/redis.txt" | median)
    say "redis $name: median rps none $n, holmes $h, ratio $(ratio "$h" "$n")"
done
n=$(awk '$1 == "none" { print $6 }' "$OUT/redis.txt" | median)
h=$(awk '$1 == "holmes" { print $6 }' "$OUT/redis.txt" | median)
say "redis server CPU ticks for the run: median none $n, holmes $h, ratio $(ratio "$h" "$n")"
awk '$1 == "holmes" { printf "redis with holmes: jemalloc holds %.1f%% of used_memory\n", $5 * 100 / $4 }' \
    "$OUT/redis.txt" | tee -a "$LOG"
say "log: $LOG"
