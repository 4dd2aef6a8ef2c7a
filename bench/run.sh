#!/usr/bin/env bash
# Runs every holmes-c benchmark side by side and prints a summary table.
#
#   bench/run.sh [--quick] [--reps N]
#
# Every figure is a ratio of runs made in this same invocation, modes
# interleaved (none, ours, the other tool, none, ours, ...), so a machine
# that is slower now than yesterday moves both sides. Wall and CPU times are
# medians over the repetitions; instruction counts come from callgrind, which
# counts the same for the same binary and input on every run. Environment:
# HOLMES_BUILD (default: build-bench beside the sources; configured and
# built here when missing), BENCH_OUT (default: a fresh directory in /tmp).
set -euo pipefail

SRC=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${HOLMES_BUILD:-$SRC/build-bench}
QUICK=0
REPS=3
while (($#)); do
    case $1 in
    --quick) QUICK=1 REPS=1 ;;
    --reps) REPS=$2; shift ;;
    *) echo "usage: $0 [--quick] [--reps N]" >&2; exit 2 ;;
    esac
    shift
done

# Sizes: the full run stays under ~10 minutes on 2 cores, --quick under ~3.
if ((QUICK)); then
    TICK_N=3000 TICK_WHOLE_S=3 IDLE_S=5 CPU_UNITS=8 MICRO_OPS=1000000 SQL_ROWS=100000 GIB_MIB=1024
else
    TICK_N=20000 TICK_WHOLE_S=10 IDLE_S=5 CPU_UNITS=24 MICRO_OPS=3000000 SQL_ROWS=300000 GIB_MIB=1024
fi
CG_TICK_N=300 CG_MICRO_OPS=200000 CG_SQL_ROWS=20000
# mmap pairs: 1M per CPU-time run is about a minute here (page faults), so --quick takes 200k.
if ((QUICK)); then MMAP_PAIRS=200000; else MMAP_PAIRS=1000000; fi
CG_MMAP_PAIRS=20000 MAPPINGS=50000
# gperftools' HEAPPROFILE records every allocation and heaptrack every call:
# 10x to 300x slower, so they run once, after the repeated modes.
FAST_MODES="none ours tcmalloc tcmalloc-sample"
SLOW_MODES="tcmalloc-heapprofile heaptrack"

OUT=${BENCH_OUT:-$(mktemp -d /tmp/holmes-bench.XXXXXX)}
mkdir -p "$OUT"
LOG=$OUT/log.txt
TABLE=$OUT/table.tsv
: >"$LOG"
: >"$TABLE"
export BENCH_DUMPS=$OUT/dumps
LIBDIR=/usr/lib/x86_64-linux-gnu
LIBHOLMES=$BUILD/libholmes.so
TYPICAL=$SRC/bench/typical.ini
NOHEAP=$OUT/typical-noheap.ini
sed 's/^sample_bytes = .*/sample_bytes = 0/' "$TYPICAL" >"$NOHEAP"

say() { printf '%s\n' "$*" | tee -a "$LOG"; }
need() { command -v "$1" >/dev/null || { echo "bench: $1 is missing (scripts/deps.sh bench)" >&2; exit 1; }; }
for tool in valgrind google-pprof heaptrack sqlite3 strace go cmake; do need "$tool"; done
for lib in libprofiler.so libtcmalloc.so; do
    [[ -e $LIBDIR/$lib ]] || { echo "bench: $LIBDIR/$lib is missing (scripts/deps.sh bench)" >&2; exit 1; }
done

build() {
    [[ -f $BUILD/CMakeCache.txt ]] || cmake -S "$SRC" -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo >>"$LOG"
    cmake --build "$BUILD" -j2 --target holmes bench_tick bench_tick_whole bench_idle bench_cpu plain_idle \
        plain_heap_micro plain_heap_gib bench_fork \
        plain_mmap_pairs bench_memory_capture >>"$LOG"
}

# ---- arithmetic and table helpers ----

calc() { awk "BEGIN { printf \"%.6g\", $* }"; }
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
# (max - min) / median of the baseline's repetitions: the noise floor of a wall ratio.
spread() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; printf "%.1f%%", m ? (v[NR] - v[1]) * 100 / m : 0 }'; }
pct() { awk "BEGIN { printf \"%+.2f%%\", ($1 / $2 - 1) * 100 }"; }
ratio() { awk "BEGIN { printf \"%.4f\", $1 / $2 }"; }
verdict() { awk "BEGIN { print ($1) ? \"PASS\" : \"MISS\" }"; }
row() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$TABLE"; }

# Runs a command, its output to the log; prints "WALL CPU" in seconds (CPU =
# user + system of the command and its children).
timed() {
    local t
    t=$( { TIMEFORMAT='%R %U %S'; time "$@" >>"$LOG" 2>&1; } 2>&1 )
    awk '{ printf "%s %.3f\n", $1, $2 + $3 }' <<<"$t"
}

# The environment of a run with the preloaded agent. valgrind (like any
# launcher that execs) would get the agent itself and strip it from the
# environment it passes on; HOLMES_INHERIT=1 lets it through to the program.
agent_env() {
    case $1 in
    none) echo env ;;
    ours) echo env HOLMES_INHERIT=1 LD_PRELOAD="$LIBHOLMES" HOLMES_CONFIG="$TYPICAL" ;;
    esac
}

# Runs a command under callgrind counting only the phases the program marks
# (bench/bench.h); prints the directory of its dumps. $1 is none or ours
# (the agent, preloaded).
callgrind_run() {
    local mode=$1 dir
    shift
    dir=$(mktemp -d "$OUT/cg.XXXXXX")
    $(agent_env "$mode") valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$dir/cg.%p" "$@" >>"$LOG" 2>&1
    echo "$dir"
}

# The instructions of the phase named $2 in the dumps of $1.
phase_total() {
    local f
    f=$(grep -l "^desc: Trigger: Client Request: $2\$" "$1"/cg.* | head -1)
    awk '/^totals:/ { print $2 }' "$f"
}

# Instructions of a whole run of a program that marks no phase (sqlite3).
callgrind_total() {
    local mode=$1 dir
    shift
    dir=$(mktemp -d "$OUT/cg.XXXXXX")
    $(agent_env "$mode") valgrind --tool=callgrind --callgrind-out-file="$dir/cg.%p" "$@" >>"$LOG" 2>&1
    cat "$dir"/cg.* | awk '/^totals:/ { s += $2 } END { print s }'
}

# ---- 1. the watchdog's tick ----

bench_tick() {
    say "== 1. watchdog tick: holmes__sampler_read (every metric) vs read(/proc/self/stat)"
    local out
    out=$("$BUILD/bench/bench_tick" "$TICK_N")
    say "$out"
    local stat_cpu tick_cpu stat_wall tick_wall
    stat_cpu=$(awk '/^stat:/ { print $4 }' <<<"$out")
    tick_cpu=$(awk '/^tick:/ { print $4 }' <<<"$out")
    stat_wall=$(awk '/^stat:/ { print $7 }' <<<"$out")
    tick_wall=$(awk '/^tick:/ { print $7 }' <<<"$out")
    local stat_i tick_i
    local dir
    dir=$(callgrind_run none "$BUILD/bench/bench_tick" "$CG_TICK_N")
    stat_i=$(phase_total "$dir" stat)
    tick_i=$(phase_total "$dir" tick)
    local stat_ipc tick_ipc
    stat_ipc=$(calc "$stat_i / $CG_TICK_N")
    tick_ipc=$(calc "$tick_i / $CG_TICK_N")
    say "tick vs stat: cpu ${tick_cpu}/${stat_cpu} us = $(ratio "$tick_cpu" "$stat_cpu")x," \
        "wall ${tick_wall}/${stat_wall} us = $(ratio "$tick_wall" "$stat_wall")x," \
        "user instructions ${tick_ipc}/${stat_ipc} = $(ratio "$tick_ipc" "$stat_ipc")x"
    row "tick: CPU per sampler_read (all metrics)" "${tick_cpu} us (stat read ${stat_cpu} us, $(ratio "$tick_cpu" "$stat_cpu")x)" \
        "<= 100 us" "$(verdict "$tick_cpu <= 100")"
    row "tick: user instructions per read" "${tick_ipc} (stat read ${stat_ipc}, $(ratio "$tick_ipc" "$stat_ipc")x)" "-" "info"
}

# ---- 1b. memory the agent adds to an idle service ----

bench_idle() {
    say "== 1b. idle service RSS after ${IDLE_S}s, with and without the agent (typical.ini)"
    local d=$OUT/idle
    mkdir -p "$d"
    # The four sleep side by side: each is idle, so they do not disturb each other.
    "$BUILD/bench/bench_idle" none "$TYPICAL" "$IDLE_S" >"$d/linked-none" 2>>"$LOG" &
    "$BUILD/bench/bench_idle" holmes "$TYPICAL" "$IDLE_S" >"$d/linked-ours" 2>>"$LOG" &
    "$BUILD/bench/plain_idle" "$IDLE_S" >"$d/preload-none" 2>>"$LOG" &
    env LD_PRELOAD="$LIBHOLMES" HOLMES_CONFIG="$TYPICAL" "$BUILD/bench/plain_idle" "$IDLE_S" \
        >"$d/preload-ours" 2>>"$LOG" &
    wait
    local f
    for f in linked-none linked-ours preload-none preload-ours; do say "$f: $(cat "$d/$f")"; done
    rss() { awk '{ for (i = 1; i < NF; i++) if ($i == "VmRSS") print $(i + 1) }' "$d/$1"; }
    anon() { awk '{ for (i = 1; i < NF; i++) if ($i == "RssAnon") print $(i + 1) }' "$d/$1"; }
    local linked preload linked_anon preload_anon
    linked=$(($(rss linked-ours) - $(rss linked-none)))
    preload=$(($(rss preload-ours) - $(rss preload-none)))
    linked_anon=$(($(anon linked-ours) - $(anon linked-none)))
    preload_anon=$(($(anon preload-ours) - $(anon preload-none)))
    say "added RSS: linked ${linked} KiB (anon ${linked_anon}), preloaded ${preload} KiB (anon ${preload_anon})"
    row "idle RSS added, linked + holmes_start" "${linked} KiB (anon ${linked_anon} KiB)" "<= 2048 KiB" \
        "$(verdict "$linked <= 2048")"
    row "idle RSS added, LD_PRELOAD (library pages included)" "${preload} KiB (anon ${preload_anon} KiB)" \
        "<= 2048 KiB" "$(verdict "$preload <= 2048")"
}

# ---- 2. CPU capture ----

# Flat share of burn_three over burn_one in a pprof text listing.
flat_ratio() {
    awk '$NF == "burn_three" { a = $1 } $NF == "burn_one" { b = $1 }
         END { gsub(/ms/, "", a); gsub(/ms/, "", b); if (b > 0) printf "%.3f", a / b; else print "nan" }'
}

bench_cpu() {
    say "== 2. CPU capture at 100 Hz: 2 threads, ${CPU_UNITS} units of work (3:1 in burn_three:burn_one)"
    local bin=$BUILD/bench/bench_cpu d=$OUT/cpu
    mkdir -p "$d"
    local nw=() nc=() hw=() hc=() gw=() gc=() sw=() sc=() hp=() sp=() r out line truth
    for ((r = 0; r < REPS; r++)); do
        line=$("$bin" none "$CPU_UNITS" | tail -1); say "$line"
        nw+=("$(awk '{ print $3 }' <<<"$line")"); nc+=("$(awk '{ print $6 }' <<<"$line")")
        out=$("$bin" holmes "$CPU_UNITS" "$d/holmes.pb.gz"); line=$(tail -1 <<<"$out"); say "$line"
        hp+=("$(awk '/polls/ { print $(NF - 1) }' <<<"$out")")
        hw+=("$(awk '{ print $3 }' <<<"$line")"); hc+=("$(awk '{ print $6 }' <<<"$line")")
        truth=$(awk '{ printf "%.3f", $9 / $12 }' <<<"$line")
        # The same capture with perf_event_open refused (seccomp): the SIGPROF path.
        out=$("$bin" holmes-signal "$CPU_UNITS" "$d/holmes-signal.pb.gz"); line=$(tail -1 <<<"$out"); say "$line"
        sp+=("$(awk '/polls/ { print $(NF - 1) }' <<<"$out")")
        sw+=("$(awk '{ print $3 }' <<<"$line")"); sc+=("$(awk '{ print $6 }' <<<"$line")")
        line=$(env LD_PRELOAD="$LIBDIR/libprofiler.so" CPUPROFILE="$d/gperf.prof" CPUPROFILE_FREQUENCY=100 \
            "$bin" none "$CPU_UNITS" 2>>"$LOG" | tail -1); say "gperf $line"
        gw+=("$(awk '{ print $3 }' <<<"$line")"); gc+=("$(awk '{ print $6 }' <<<"$line")")
    done
    local mnw mnc mhw mhc mgw mgc msw msc
    msw=$(median "${sw[@]}"); msc=$(median "${sc[@]}")
    mnw=$(median "${nw[@]}"); mnc=$(median "${nc[@]}")
    mhw=$(median "${hw[@]}"); mhc=$(median "${hc[@]}")
    mgw=$(median "${gw[@]}"); mgc=$(median "${gc[@]}")
    say "median wall: none ${mnw} s, holmes ${mhw} s ($(pct "$mhw" "$mnw")), gperftools ${mgw} s ($(pct "$mgw" "$mnw")); none's spread $(spread "${nw[@]}")"
    say "median cpu:  none ${mnc} s, holmes ${mhc} s ($(pct "$mhc" "$mnc")), gperftools ${mgc} s ($(pct "$mgc" "$mnc")); none's spread $(spread "${nc[@]}")"
    local ours theirs signal
    go tool pprof -top -unit=ms "$d/holmes-signal.pb.gz" >"$d/holmes-signal.top" 2>>"$LOG"
    signal=$(flat_ratio <"$d/holmes-signal.top")
    say "median cpu:  holmes perf path ${mhc} s ($(pct "$mhc" "$mnc")), signal path ${msc} s ($(pct "$msc" "$mnc"))"
    go tool pprof -top -unit=ms "$d/holmes.pb.gz" >"$d/holmes.top" 2>>"$LOG"
    google-pprof --text "$bin" "$d/gperf.prof" >"$d/gperf.top" 2>>"$LOG"
    ours=$(flat_ratio <"$d/holmes.top")
    theirs=$(flat_ratio <"$d/gperf.top")
    say "accuracy burn_three:burn_one: truth (thread CPU clocks) ${truth}, holmes ${ours}, gperftools ${theirs}"
    row "cpu capture 100 Hz: CPU time vs none" "$(pct "$mhc" "$mnc") (gperftools $(pct "$mgc" "$mnc"); noise $(spread "${nc[@]}"))" \
        "<= 1%" "$(verdict "$mhc / $mnc <= 1.01")"
    row "cpu capture 100 Hz: wall vs none" "$(pct "$mhw" "$mnw") (gperftools $(pct "$mgw" "$mnw"); noise $(spread "${nw[@]}"))" "-" "info"
    row "cpu capture: 3:1 accuracy" "holmes ${ours}, gperftools ${theirs}, truth ${truth}" "-" "info"
    row "cpu capture 100 Hz, perf vs signal path: CPU vs none" "perf $(pct "$mhc" "$mnc"), signal $(pct "$msc" "$mnc") (noise $(spread "${nc[@]}"))" \
        "<= 1%" "$(verdict "$mhc / $mnc <= 1.01 && $msc / $mnc <= 1.01")"
    row "cpu capture: 3:1 accuracy, perf vs signal path" "perf ${ours}, signal ${signal}, truth ${truth}" "-" "info"
    row "cpu capture: the capture thread's polls, perf vs signal path" "perf $(median "${hp[@]}") s, signal $(median "${sp[@]}") s (of ${mnc} s of work)" "-" "info"
}

# ---- 3. heap sampling ----

# One repetition of a workload under the modes in $3 (space-separated);
# appends "mode wall cpu" lines to $2.
heap_modes() {
    local name=$1 file=$2 modes=$3
    shift 3
    local m t
    for m in $modes; do
        case $m in
        none) t=$(timed "$@") ;;
        ours) t=$(timed env LD_PRELOAD="$LIBHOLMES" HOLMES_CONFIG="$TYPICAL" "$@") ;;
        tcmalloc) t=$(timed env LD_PRELOAD="$LIBDIR/libtcmalloc.so" "$@") ;;
        tcmalloc-sample) t=$(timed env LD_PRELOAD="$LIBDIR/libtcmalloc.so" TCMALLOC_SAMPLE_PARAMETER=524288 "$@") ;;
        tcmalloc-heapprofile) t=$(timed env LD_PRELOAD="$LIBDIR/libtcmalloc.so" HEAPPROFILE="$OUT/$name.hprof" "$@") ;;
        heaptrack) t=$(timed heaptrack -o "$OUT/$name.heaptrack" "$@") ;;
        esac
        echo "$m $t" >>"$file"
        say "$name $m: wall cpu = $t"
    done
}

# Median wall and cpu of one mode from a modes file.
mode_median() {
    local file=$1 mode=$2 col=$3
    median $(awk -v m="$mode" -v c="$col" '$1 == m { print $c }' "$file")
}

heap_report() {
    local name=$1 file=$2 goal=$3 cg_none=$4 cg_ours=$5
    local nw nc ow oc tw tc sw sc hw hc kw kc
    nw=$(mode_median "$file" none 2); nc=$(mode_median "$file" none 3)
    ow=$(mode_median "$file" ours 2); oc=$(mode_median "$file" ours 3)
    tw=$(mode_median "$file" tcmalloc 2); tc=$(mode_median "$file" tcmalloc 3)
    sw=$(mode_median "$file" tcmalloc-sample 2); sc=$(mode_median "$file" tcmalloc-sample 3)
    hw=$(mode_median "$file" tcmalloc-heapprofile 2); hc=$(mode_median "$file" tcmalloc-heapprofile 3)
    kw=$(mode_median "$file" heaptrack 2); kc=$(mode_median "$file" heaptrack 3)
    local noise cnoise
    noise=$(spread $(awk '$1 == "none" { print $2 }' "$file"))
    cnoise=$(spread $(awk '$1 == "none" { print $3 }' "$file"))
    say "$name medians (wall s / cpu s): none $nw/$nc, holmes $ow/$oc, tcmalloc $tw/$tc," \
        "tcmalloc sampled 512KiB $sw/$sc, tcmalloc HEAPPROFILE $hw/$hc, heaptrack $kw/$kc"
    say "$name: holmes vs none wall $(pct "$ow" "$nw") cpu $(pct "$oc" "$nc") instructions $(pct "$cg_ours" "$cg_none") ($cg_ours / $cg_none);" \
        "tcmalloc sampled vs tcmalloc wall $(pct "$sw" "$tw"); HEAPPROFILE vs tcmalloc wall $(pct "$hw" "$tw");" \
        "heaptrack vs none wall $(pct "$kw" "$nw"); none's wall spread $noise"
    row "$name: holmes heap sampling 512KiB, instructions vs none" "$(pct "$cg_ours" "$cg_none")" "<= $goal%" \
        "$(verdict "$cg_ours / $cg_none <= 1 + $goal / 100")"
    row "$name: holmes CPU time (user+sys) vs none" "$(pct "$oc" "$nc") (noise $cnoise)" "<= $goal%" \
        "$(verdict "$oc / $nc <= 1 + $goal / 100")"
    row "$name: holmes wall vs none" "$(pct "$ow" "$nw") (noise $noise)" "-" "info"
    row "$name: gperftools vs tcmalloc, wall" "sampled 512KiB $(pct "$sw" "$tw"), HEAPPROFILE $(pct "$hw" "$tw")" "-" "info"
    row "$name: heaptrack vs none, wall" "$(pct "$kw" "$nw")" "-" "info"
}

bench_heap_micro() {
    say "== 3a. heap micro: 2 threads x ${MICRO_OPS} free+malloc(16..4096), 8192 live each"
    local bin=$BUILD/bench/plain_heap_micro file=$OUT/micro.modes r
    : >"$file"
    for ((r = 0; r < REPS; r++)); do heap_modes micro "$file" "$FAST_MODES" "$bin" "$MICRO_OPS"; done
    heap_modes micro "$file" "$SLOW_MODES" "$bin" "$MICRO_OPS"
    local cg_none cg_ours
    cg_none=$(phase_total "$(callgrind_run none "$bin" "$CG_MICRO_OPS")" churn)
    cg_ours=$(phase_total "$(callgrind_run ours "$bin" "$CG_MICRO_OPS")" churn)
    heap_report micro "$file" 5 "$cg_none" "$cg_ours"
    # Kernel work is invisible to callgrind: count the system calls.
    local sc_none sc_ours
    sc_none=$(syscalls "$bin" "$CG_MICRO_OPS")
    sc_ours=$(syscalls env LD_PRELOAD="$LIBHOLMES" HOLMES_CONFIG="$TYPICAL" "$bin" "$CG_MICRO_OPS")
    say "micro system calls (total futex madvise), 2 x $CG_MICRO_OPS ops: none $sc_none, holmes $sc_ours"
    row "micro: system calls (total futex madvise)" "holmes $sc_ours, none $sc_none" "-" "info"
}

# "TOTAL FUTEX MADVISE" system calls of a run, every thread.
syscalls() {
    local f
    f=$(mktemp "$OUT/strace.XXXXXX")
    strace -f -c -o "$f" "$@" >>"$LOG" 2>&1
    awk '$NF == "total" { t = $4 } $NF == "futex" { f = $4 } $NF == "madvise" { m = $4 }
         END { printf "%d %d %d", t, f, m }' "$f"
}

# An in-memory sqlite3 session: bulk insert, two index builds, grouping,
# updates, deletes and string aggregation; deterministic (no random()).
sql_script() {
    cat <<SQL
PRAGMA cache_size = -65536;
CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT, grp INTEGER, payload BLOB);
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $1)
INSERT INTO t SELECT i, printf('user-%08x-%d', (i * 2654435761) % 4294967296, i % 977),
       (i * 40503) % 1000, zeroblob(16 + (i * 7919) % 400) FROM n;
CREATE INDEX t_name ON t(name);
CREATE INDEX t_grp ON t(grp, name);
SELECT grp, count(*), sum(length(payload)) FROM t GROUP BY grp ORDER BY 2 DESC LIMIT 3;
SELECT count(*) FROM (SELECT DISTINCT substr(name, 6, 4) FROM t);
UPDATE t SET name = name || '-x' WHERE grp % 3 = 0;
DELETE FROM t WHERE grp % 5 = 0;
SELECT count(*), max(name) FROM t WHERE name > 'user-8';
CREATE TABLE u AS SELECT grp, group_concat(name) AS names FROM t GROUP BY grp;
SELECT sum(length(names)) FROM u;
SQL
}

bench_sqlite() {
    say "== 3b. sqlite3 :memory: with ${SQL_ROWS} rows (Debian's sqlite3 CLI)"
    sql_script "$SQL_ROWS" >"$OUT/big.sql"
    sql_script "$CG_SQL_ROWS" >"$OUT/small.sql"
    local file=$OUT/sqlite.modes r
    : >"$file"
    for ((r = 0; r < REPS; r++)); do heap_modes sqlite "$file" "$FAST_MODES" sqlite3 :memory: ".read $OUT/big.sql"; done
    heap_modes sqlite "$file" "$SLOW_MODES" sqlite3 :memory: ".read $OUT/big.sql"
    # sqlite3 marks no phase: an empty session's instructions are taken
    # off, which leaves the workload's own, without the agent's start.
    local cg_none cg_ours e_none e_ours
    cg_none=$(callgrind_total none sqlite3 :memory: ".read $OUT/small.sql")
    cg_ours=$(callgrind_total ours sqlite3 :memory: ".read $OUT/small.sql")
    e_none=$(callgrind_total none sqlite3 :memory: "")
    e_ours=$(callgrind_total ours sqlite3 :memory: "")
    say "sqlite instructions: whole run none $cg_none, holmes $cg_ours ($(pct "$cg_ours" "$cg_none"));" \
        "empty session none $e_none, holmes $e_ours (the agent's start: $((e_ours - e_none)))"
    heap_report sqlite "$file" 2 "$((cg_none - e_none))" "$((cg_ours - e_ours))"
    local sw=() so=() t
    for ((r = 0; r < REPS + 2; r++)); do
        t=$(timed sqlite3 :memory: ""); sw+=("${t% *}")
        t=$(timed env LD_PRELOAD="$LIBHOLMES" HOLMES_CONFIG="$TYPICAL" sqlite3 :memory: ""); so+=("${t% *}")
    done
    local start_ms
    start_ms=$(calc "($(median "${so[@]}") - $(median "${sw[@]}")) * 1000")
    say "agent start in an empty sqlite3 session: +${start_ms} ms wall (median), +$((e_ours - e_none)) instructions"
    row "agent start (preload, in the constructor)" "+${start_ms} ms wall, +$((e_ours - e_none)) instructions" "-" "info"
}

bench_heap_gib() {
    say "== 3c. RSS added by heap sampling with ${GIB_MIB} MiB live in mixed sizes"
    local bin=$BUILD/bench/plain_heap_gib d=$OUT/gib
    mkdir -p "$d"
    "$bin" "$GIB_MIB" >"$d/none" 2>>"$LOG"
    env LD_PRELOAD="$LIBHOLMES" HOLMES_CONFIG="$NOHEAP" "$bin" "$GIB_MIB" >"$d/off" 2>>"$LOG"
    env LD_PRELOAD="$LIBHOLMES" HOLMES_CONFIG="$TYPICAL" "$bin" "$GIB_MIB" >"$d/ours" 2>>"$LOG"
    local f
    for f in none off ours; do say "$f: $(cat "$d/$f")"; done
    rss() { awk '{ for (i = 1; i < NF; i++) if ($i == "VmRSS") print $(i + 1) }' "$d/$1"; }
    local vs_none vs_off
    vs_none=$(($(rss ours) - $(rss none)))
    vs_off=$(($(rss ours) - $(rss off)))
    say "RSS added: sampling vs no agent ${vs_none} KiB, sampling vs agent without sampling ${vs_off} KiB"
    # The agent's own footprint (library, tables, threads) is the idle row's;
    # this one is what sampling adds on top of it.
    row "1 GiB live heap: RSS added by sampling (agent on, sampling on vs off)" "${vs_off} KiB (vs no agent at all: ${vs_none} KiB)" \
        "< 10240 KiB" "$(verdict "$vs_off < 10240")"
}

# ---- 1b. the whole tick, as the watchdog thread pays it ----

# The figure after "tick" on the first line of shape $2 in $1.
tick_of() { awk -v s="$2" '$1 == s && /tick / { for (i = 1; i < NF; i++) if ($i == "tick") { print $(i + 1); exit } }' <<<"$1"; }
# The figure after "wake + stat read" on that line.
beside_of() { awk -v s="$2" '$1 == s && /tick / { for (i = 1; i < NF; i++) if ($i == "stat" && $(i + 1) == "read") { print $(i + 2); exit } }' <<<"$1"; }

bench_tick_whole() {
    say "== 1b. whole tick: the watchdog thread's CPU per tick, agent running, interval 100 ms"
    local out
    out=$("$BUILD/bench/bench_tick_whole" "$TICK_WHOLE_S")
    say "$out"
    local small fds threads cgroup
    small=$(tick_of "$out" small) fds=$(tick_of "$out" fds) threads=$(tick_of "$out" threads)
    cgroup=$(tick_of "$out" cgroup)
    row "tick whole: watchdog CPU per tick, 10 threads/100 fds" \
        "${small} us (a thread waking as often and reading /proc/self/stat: $(beside_of "$out" small) us)" \
        "<= 50 us" "$(verdict "$small <= 50")"
    row "tick whole: 20,000 fds vs 100" "$(ratio "$fds" "$small")x (${fds} us)" "<= 1.2x" \
        "$(verdict "$fds <= 1.2 * $small")"
    row "tick whole: 2,000 threads vs 10" "$(ratio "$threads" "$small")x (${threads} us)" "<= 2x" \
        "$(verdict "$threads <= 2 * $small")"
    row "tick whole: mem_source = cgroup, 10 threads" "${cgroup} us" "-" "info"
    say "$(grep '^armed' <<<"$out")"
}

# ---- 4. mmap interposition and the memory capture ----

# Instructions of the main thread inside pairs() (callgrind --toggle-collect):
# the cost the interposition puts on the service's own thread, without the
# agent's start, which the sqlite row measures.
mmap_instructions() {
    local mode=$1 fill=$2 dir env=env
    dir=$(mktemp -d "$OUT/cg.XXXXXX")
    [[ $mode == ours ]] && env="env HOLMES_INHERIT=1 LD_PRELOAD=$LIBHOLMES HOLMES_CONFIG=$SRC/bench/mmap.ini"
    $env valgrind --tool=callgrind --toggle-collect=pairs --callgrind-out-file="$dir/cg.%p" \
        "$BUILD/bench/plain_mmap_pairs" "$CG_MMAP_PAIRS" "$fill" >>"$LOG" 2>&1
    cat "$dir"/cg.* | awk '/^totals:/ { s += $2 } END { print s }'
}

bench_mmap() {
    say "== 4a. mmap interposition: ${MMAP_PAIRS} mmap/munmap pairs of 4..64 KiB (sampling at 512 KiB, bench/mmap.ini)"
    local bin=$BUILD/bench/plain_mmap_pairs nc=() oc=() r line fill
    for ((r = 0; r < REPS; r++)); do
        line=$("$bin" "$MMAP_PAIRS" touch | tail -1); say "none $line"; nc+=("$(awk '{ print $9 }' <<<"$line")")
        line=$(env LD_PRELOAD="$LIBHOLMES" HOLMES_CONFIG="$SRC/bench/mmap.ini" "$bin" "$MMAP_PAIRS" touch | tail -1)
        say "ours $line"; oc+=("$(awk '{ print $9 }' <<<"$line")")
    done
    local mnc moc
    mnc=$(median "${nc[@]}"); moc=$(median "${oc[@]}")
    say "mmap pairs CPU time: none $mnc s, holmes $moc s ($(pct "$moc" "$mnc")); none's spread $(spread "${nc[@]}")"
    row "mmap pairs (touch): CPU time vs none" "$(pct "$moc" "$mnc") (noise $(spread "${nc[@]}"))" "-" "info"
    for fill in touch fill; do
        local cn co
        cn=$(mmap_instructions none "$fill"); co=$(mmap_instructions ours "$fill")
        say "mmap pairs ($fill) instructions of the service's thread: none $cn, holmes $co ($(ratio "$co" "$cn")x," \
            "$(calc "($co - $cn) / $CG_MMAP_PAIRS") per pair)"
        row "mmap pairs ($fill): instructions vs none" "$(ratio "$co" "$cn")x ($(calc "($co - $cn) / $CG_MMAP_PAIRS") per pair)" \
            "<= 1.05x" "$(verdict "$co / $cn <= 1.05")"
    done
}

bench_memory_capture() {
    say "== 4b. a memory capture of a process with ${MAPPINGS} mappings"
    local line
    line=$("$BUILD/bench/bench_memory_capture" "$MAPPINGS" | head -1)
    say "$line"
    row "memory capture, ${MAPPINGS} mappings" "$(sed -E 's/.*(wall [0-9.]+ ms), (cpu [0-9.]+ ms), (peak_bytes [0-9]+).*(VmHWM growth [0-9]+ KiB).*/\1, \2, \3, \4/' <<<"$line")" \
        "bounded (64 KiB + 24 B per mapping)" "info"
}

summary() {
    say ""
    say "== summary ($(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs, $(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo), reps $REPS)"
    {
        printf 'benchmark\tfigure\tgoal\tverdict\n'
        cat "$TABLE"
    } | column -t -s $'\t' | tee -a "$LOG"
    say "log and profiles: $OUT"
}

# ---- 5. fork() beside no agent, idle and while tables are built ----

bench_fork() {
    say "== 5. fork(): time in the agent's prepare handlers and the whole call, libLLVM loaded"
    local out
    out=$("$BUILD/bench/bench_fork" "$((QUICK ? 300 : 1000))" 2>>"$LOG") || { say "bench_fork: skipped"; return; }
    say "$out"
    local p99
    p99=$(awk '$1 == "building" && $3 == "handlers" { print $8 }' <<<"$out")
    row "fork: agent prepare handlers while tables build, p99" "${p99} us" "< 1000 us" \
        "$(verdict "$p99 < 1000")"
}

build
bench_tick
bench_tick_whole
bench_idle
bench_cpu
bench_heap_micro
bench_sqlite
bench_heap_gib
bench_fork
bench_mmap
bench_memory_capture
summary
