#!/usr/bin/env bash
# The CPU history's always-on cost, side by side in one run: the agent
# preloaded with `history = 0s` (off) and with the default (10s at 19 Hz),
# runs interleaved, on the sqlite3 workload of bench/run.sh and on a
# 16-thread CPU-bound program. Prints CPU time (median of user + system),
# instructions (callgrind, whole run, identical from run to run) and peak
# RSS for both, and their ratios.
#
#   bench/history.sh [--reps N]
# Environment: HOLMES_BUILD (default: build-bench beside the sources).
set -euo pipefail

SRC=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${HOLMES_BUILD:-$SRC/build-bench}
REPS=5
[[ ${1:-} == --reps ]] && REPS=$2
SQL_ROWS=300000 CG_SQL_ROWS=20000 SPIN_M=150 CG_SPIN_M=4
OUT=$(mktemp -d /tmp/holmes-history-bench.XXXXXX)
LOG=$OUT/log.txt
export BENCH_DUMPS=$OUT/dumps

[[ -f $BUILD/CMakeCache.txt ]] || cmake -S "$SRC" -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo >>"$LOG"
cmake --build "$BUILD" -j2 --target holmes plain_spin16 >>"$LOG"
LIBHOLMES=$BUILD/libholmes.so
SPIN=$BUILD/bench/plain_spin16
# The same SQL session as bench/run.sh (its sql_script function, read from there).
eval "$(sed -n '/^sql_script() {/,/^}/p' "$SRC/bench/run.sh")"
sql_script "$SQL_ROWS" >"$OUT/big.sql"
sql_script "$CG_SQL_ROWS" >"$OUT/small.sql"

# Heap sampling off in both, so the only difference is the history.
for mode in off on; do
    sed -e 's/^sample_bytes = .*/sample_bytes = 0/' "$SRC/bench/typical.ini" >"$OUT/$mode.ini"
done
sed -i 's/^log_level = warn/log_level = warn\nhistory = 0s/' "$OUT/off.ini"

agent() { echo env HOLMES_INHERIT=1 LD_PRELOAD="$LIBHOLMES" HOLMES_CONFIG="$OUT/$1.ini"; }
# "CPU_SECONDS MAX_RSS_KIB" of one run.
measure() {
    local mode=$1
    shift
    /usr/bin/time -f '%U %S %M' -o "$OUT/time" $(agent "$mode") "$@" >>"$LOG" 2>&1
    awk '{ printf "%.3f %d\n", $1 + $2, $3 }' "$OUT/time"
}
instructions() {
    local mode=$1 dir=$OUT/cg-$1-$RANDOM
    shift
    mkdir -p "$dir"
    $(agent "$mode") valgrind --tool=callgrind --callgrind-out-file="$dir/cg.%p" "$@" >>"$LOG" 2>&1
    cat "$dir"/cg.* | awk '/^summary:/ { s += $2 } END { print s }'
}
# Instructions of the workload alone: a run less an empty run of the same
# program in the same mode (the agent's start, unwind tables included, is
# the same with the history on or off and would drown a small workload).
workload_instructions() {
    local mode=$1 empty=$2 full=$3 e f
    e=$(eval "instructions $mode $empty")
    f=$(eval "instructions $mode $full")
    echo $((f - e))
}
# The history's own instructions in the last "on" run: its signal handler
# (unwinding included), its thread's scans and rotations, and the refreshes
# of the unwind tables it asks for; inclusive counts from callgrind.
history_share() {
    local f total own
    f=$(ls -S "$OUT"/cg-on-*/cg.* | head -1)
    callgrind_annotate --inclusive=yes --threshold=100 "$f" >"$OUT/annotate.txt" 2>>"$LOG"
    total=$(awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1; exit }' "$OUT/annotate.txt")
    own=$(grep -E ':(holmes__history_on_sigprof|threads_scan|rotate|holmes__unwind_try_prepare) \[' \
        "$OUT/annotate.txt" | grep -v '=>' | awk '{ gsub(",", "", $1); s += $1 } END { print s + 0 }')
    echo "$own $total"
}
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
pct() { awk "BEGIN { printf \"%+.2f%%\", ($1 / $2 - 1) * 100 }"; }

bench() {
    local name=$1 cg_empty=$2 cg_full=$3
    shift 3
    local cpu_off=() cpu_on=() rss_off=() rss_on=() r m
    for ((r = 0; r < REPS; r++)); do
        for m in off on; do
            read -r c k < <(measure "$m" "$@")
            if [[ $m == off ]]; then cpu_off+=("$c") rss_off+=("$k"); else cpu_on+=("$c") rss_on+=("$k"); fi
        done
    done
    local co=$(median "${cpu_off[@]}") cn=$(median "${cpu_on[@]}")
    local ro=$(median "${rss_off[@]}") rn=$(median "${rss_on[@]}")
    rm -rf "$OUT"/cg-on-*
    local io=$(workload_instructions off "$cg_empty" "$cg_full")
    local in=$(workload_instructions on "$cg_empty" "$cg_full")
    local own total
    read -r own total < <(history_share)
    printf '%-10s CPU %ss -> %ss (%s, runs: off %s / on %s)\n' "$name" "$co" "$cn" "$(pct "$cn" "$co")" \
        "${cpu_off[*]}" "${cpu_on[*]}"
    printf '%-10s instructions %s -> %s (%s); the history itself: %s of %s (%s)\n' "$name" "$io" "$in" \
        "$(pct "$in" "$io")" "$own" "$total" "$(awk "BEGIN { printf \"%.3f%%\", $own * 100 / $total }")"
    printf '%-10s peak RSS %s KiB -> %s KiB (%+d KiB)\n' "$name" "$ro" "$rn" "$((rn - ro))"
}

echo "CPU history: off (history = 0s) vs on (10s at 19 Hz), $REPS interleaved runs each; log in $LOG"
bench sqlite3 "sqlite3 :memory: ''" "sqlite3 :memory: '.read $OUT/small.sql'" \
    sqlite3 :memory: ".read $OUT/big.sql"
bench spin16 "$SPIN 0" "$SPIN $CG_SPIN_M" "$SPIN" "$SPIN_M"
