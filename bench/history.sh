#!/usr/bin/env bash
# The CPU history's always-on cost, side by side in one run: the agent
# preloaded with `history = 0s` (off) and with the default (10s at 19 Hz),
# on the sqlite3 workload of bench/run.sh and on a 16-thread CPU-bound
# program. Prints CPU time (perf's task-clock where perf runs, else user +
# system: see CPU_CLOCK below), instructions (callgrind: the whole run, and
# the same less the unwind tables built once) and peak RSS for both, and
# their ratios.
#
# The two modes of a repetition run at the same time, not one after the
# other: on this shared VM the CPU time of one program drifts by 5-8% from
# one run to the next (other tenants, frequency), a hundred times the
# difference sought, while two programs running together see the same
# machine. So each repetition gives one ratio, on/off, and the figure is the
# median of those ratios (the first to start alternates), with their mean
# and two standard errors of it. A last line repeats the sqlite3 pairs with
# heap sampling on in both, which leaves the history's steady cost alone.
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

# Heap sampling off in both, so the only difference is the history. The
# heap- pair has heap sampling on in both: its first samples compile the
# unwind tables of the modules they meet, so the history's first samples
# find them compiled and what differs is its steady cost alone.
for mode in off on; do
    sed -e 's/^sample_bytes = .*/sample_bytes = 0/' "$SRC/bench/typical.ini" >"$OUT/$mode.ini"
    cp "$SRC/bench/typical.ini" "$OUT/heap-$mode.ini"
done
sed -i 's/^log_level = warn/log_level = warn\nhistory = 0s/' "$OUT/off.ini" "$OUT/heap-off.ini"

CFG= # the pair of configurations: "" (off.ini, on.ini) or heap-
agent() { echo env HOLMES_INHERIT=1 LD_PRELOAD="$LIBHOLMES" HOLMES_CONFIG="$OUT/$CFG$1.ini"; }
# CPU time from perf's task-clock where perf runs (the program and its
# children, to the nanosecond): the user and system times of getrusage move
# in the kernel's 10 ms steps here, 0.5% of a 2 s run, as large as the cost
# looked for. Where it does not, those times.
if perf stat -x, -e task-clock -o /dev/null -- true 2>/dev/null; then
    CPU_CLOCK=task-clock
else
    CPU_CLOCK=rusage
fi
# Runs one program in both modes at once; prints "OFF_CPU ON_CPU OFF_RSS ON_RSS"
# (seconds of CPU, peak KiB). FIRST is the mode started first.
measure_pair() {
    local first=$1 m
    shift
    for m in $first $([[ $first == off ]] && echo on || echo off); do
        local clock=()
        [[ $CPU_CLOCK == task-clock ]] && clock=(perf stat -x, -e task-clock -o "$OUT/perf.$m" --)
        "${clock[@]}" /usr/bin/time -f '%U %S %M' -o "$OUT/time.$m" $(agent "$m") "$@" >>"$LOG" 2>&1 &
    done
    wait
    local m_off m_on
    if [[ $CPU_CLOCK == task-clock ]]; then
        m_off=$(awk -F, '$3 == "task-clock" { print $1 / 1000 }' "$OUT/perf.off")
        m_on=$(awk -F, '$3 == "task-clock" { print $1 / 1000 }' "$OUT/perf.on")
    fi
    awk -v m_off="${m_off:-}" -v m_on="${m_on:-}" '{ cpu[FILENAME] = $1 + $2; rss[FILENAME] = $3 }
         END { o = ARGV[1]; n = ARGV[2]; if (m_off != "") { cpu[o] = m_off; cpu[n] = m_on }
               printf "%.4f %.4f %d %d\n", cpu[o], cpu[n], rss[o], rss[n] }' \
        "$OUT/time.off" "$OUT/time.on"
}
# Prints "TOTAL TABLES": a run's instructions, and those of them that built
# unwind tables (tables.c's refresh_tables, inclusive, whichever agent
# thread ran it).
instructions() {
    local mode=$1 dir=$OUT/cg-$1-$RANDOM f total=0 tables=0
    shift
    mkdir -p "$dir"
    $(agent "$mode") valgrind --tool=callgrind --callgrind-out-file="$dir/cg.%p" "$@" >>"$LOG" 2>&1
    for f in "$dir"/cg.*; do
        total=$((total + $(awk '/^summary:/ { print $2 }' "$f")))
        tables=$((tables + $(callgrind_annotate --inclusive=yes --auto=no --threshold=100 "$f" 2>>"$LOG" |
            awk '/tables\.c:refresh_tables / && !v { gsub(",", "", $1); v = $1 } END { print v + 0 }')))
    done
    echo "$total $tables"
}
# Instructions of the workload alone, as "ALL LESS_TABLES": a run less an
# empty run of the same program in the same mode (the agent's start is the
# same with the history on or off and would drown a small workload), and
# the same without the unwind tables built in either. Those are paid once
# per module and process: the history compiles a library's when its
# samples first meet it, which the empty run never does, so on a run as
# short as callgrind's their one-time cost would read as a share of it.
workload_instructions() {
    local mode=$1 empty=$2 full=$3 e et f ft
    read -r e et < <(eval "instructions $mode $empty")
    read -r f ft < <(eval "instructions $mode $full")
    echo "$((f - e)) $((f - ft - e + et)) $((ft - et))"
}
# The history's own instructions in the last "on" run: its signal handler
# (unwinding included) and everything its thread does (looks, listings,
# rotations) but its calls into the unwinder's tables (the program's at its
# start, a library's when a sample met it, and the once-a-second check for
# loaded modules), which the line above counts; inclusive counts from
# callgrind's call tree, by function name, so what the compiler inlines
# still counts. Under valgrind a walk of the main thread stops at its first
# frame (valgrind runs it on a stack of its own, not the "[stack]" the
# walker reads from /proc/self/maps), so sqlite3's count leaves out the
# unwinding and the library tables it would ask for: task-clock has them.
history_share() {
    local f total own
    f=$(ls -S "$OUT"/cg-on-*/cg.* | head -1)
    callgrind_annotate --inclusive=yes --tree=calling --threshold=100 "$f" >"$OUT/annotate.txt" 2>>"$LOG"
    total=$(awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1; exit }' "$OUT/annotate.txt")
    own=$(awk 'function n(v) { gsub(",", "", v); return v + 0 }
        /%\) +\* / { in_main = $0 ~ /:history_main \[/ }
        /%\) +\* / && /:(history_main|holmes__history_on_sigprof) \[/ { s += n($1) }
        in_main && /%\) +> / && /:holmes__unwind_(try_)?(prepare|refresh) / { s -= n($1) }
        END { print s + 0 }' "$OUT/annotate.txt")
    echo "$own $total"
}
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
pct() { awk "BEGIN { printf \"%+.2f%%\", ($1 / $2 - 1) * 100 }"; }
# "MEAN% +-2SE%" of ratios: the mean change and two standard errors of it.
mean_2se() {
    printf '%s\n' "$@" | awk '{ x[NR] = $1; s += $1 } END { m = s / NR; for (i = 1; i <= NR; i++) v += (x[i] - m) ^ 2
        se = NR > 1 ? sqrt(v / (NR - 1) / NR) : 0; printf "%+.2f%% +-%.2f%%", (m - 1) * 100, 2 * se * 100 }'
}

# REPS pairs of one program; prints the CPU line and leaves the peak RSS
# medians in RSS_OFF and RSS_ON.
cpu_pairs() {
    local name=$1
    shift
    local cpu_off=() cpu_on=() rss_off=() rss_on=() ratios=() r first c_off c_on k_off k_on
    for ((r = 0; r < REPS; r++)); do
        first=$( ((r % 2)) && echo on || echo off)
        read -r c_off c_on k_off k_on < <(measure_pair "$first" "$@")
        cpu_off+=("$c_off") cpu_on+=("$c_on") rss_off+=("$k_off") rss_on+=("$k_on")
        ratios+=("$(awk "BEGIN { printf \"%.4f\", $c_on / $c_off }")")
    done
    local ratio=$(median "${ratios[@]}")
    local lo=$(printf '%s\n' "${ratios[@]}" | sort -g | head -1) hi=$(printf '%s\n' "${ratios[@]}" | sort -g | tail -1)
    RSS_OFF=$(median "${rss_off[@]}") RSS_ON=$(median "${rss_on[@]}")
    printf '%-10s CPU on/off %s (%s; mean %s; ratios of the %d pairs %s..%s; runs: off %s / on %s)\n' \
        "$name" "$ratio" "$(pct "$ratio" 1)" "$(mean_2se "${ratios[@]}")" "$REPS" "$lo" "$hi" \
        "${cpu_off[*]}" "${cpu_on[*]}"
}

bench() {
    local name=$1 cg_empty=$2 cg_full=$3
    shift 3
    cpu_pairs "$name" "$@"
    rm -rf "$OUT"/cg-on-*
    local io io_nt io_t in in_nt in_t own total
    read -r io io_nt io_t < <(workload_instructions off "$cg_empty" "$cg_full")
    read -r in in_nt in_t < <(workload_instructions on "$cg_empty" "$cg_full")
    read -r own total < <(history_share)
    printf '%-10s instructions %s -> %s (%s); less the unwind tables built once (%s -> %s): %s; the history itself: %s of %s (%s)\n' \
        "$name" "$io" "$in" "$(pct "$in" "$io")" "$io_t" "$in_t" "$(pct "$in_nt" "$io_nt")" \
        "$own" "$total" "$(awk "BEGIN { printf \"%.3f%%\", $own * 100 / $total }")"
    printf '%-10s peak RSS %s KiB -> %s KiB (%+d KiB)\n' "$name" "$RSS_OFF" "$RSS_ON" "$((RSS_ON - RSS_OFF))"
}

echo "CPU history: off (history = 0s) vs on (10s at 19 Hz), $REPS pairs run side by side, CPU time by $CPU_CLOCK; log in $LOG"
# The two single-threaded sqlite3 runs of a pair share one CPU: on two CPUs
# each would see its own (they differ as much as two runs in a row do).
bench sqlite3 "sqlite3 :memory: ''" "sqlite3 :memory: '.read $OUT/small.sql'" \
    taskset -c 0 sqlite3 :memory: ".read $OUT/big.sql"
bench spin16 "$SPIN 0" "$SPIN $CG_SPIN_M" "$SPIN" "$SPIN_M"
# The sqlite3 pairs above differ by the history's steady cost and by the
# unwind tables its first samples make the agent compile (libsqlite3's and
# libc's, tens of milliseconds once): with heap sampling on in both, the
# tables are compiled either way.
CFG=heap- cpu_pairs sqlite3-hs taskset -c 0 sqlite3 :memory: ".read $OUT/big.sql"
