#!/usr/bin/env bash
# What a new thread costs with holmes, side by side in one run: threads
# created and joined one by one (bench/thread_create.h), bare; with
# libholmes.so preloaded and no capture; with holmes linked calling libc's
# pthread_create past the interposer (direct) and through it with no
# capture (idle: the hot path), during a CPU capture and with the CPU
# history on (the start routine wrapped: the thread's timer armed and
# deleted). Prints instructions per thread (callgrind, whole run with N
# threads less a run with none, identical from run to run; not for preload,
# whose binding valgrind's own preloads move past libholmes) and wall time
# per thread (median of interleaved runs), with their ratios to direct.
#
#   bench/birth.sh [--reps N]
# Environment: HOLMES_BUILD (default: build-bench beside the sources).
set -euo pipefail

SRC=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${HOLMES_BUILD:-$SRC/build-bench}
REPS=5
[[ ${1:-} == --reps ]] && REPS=$2
N=10000 CG_N=2000
OUT=$(mktemp -d /tmp/holmes-birth-bench.XXXXXX)
LOG=$OUT/log.txt

[[ -f $BUILD/CMakeCache.txt ]] || cmake -S "$SRC" -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo >>"$LOG"
cmake --build "$BUILD" -j2 --target holmes plain_thread_create bench_birth >>"$LOG"
PLAIN=$BUILD/bench/plain_thread_create
LINKED=$BUILD/bench/bench_birth
MODES="bare preload direct idle capture history"

# The command line of one mode for n threads.
cmd() {
    case $1 in
    bare) echo "$PLAIN $2" ;;
    preload) echo "env HOLMES_INHERIT=1 LD_PRELOAD=$BUILD/libholmes.so $PLAIN $2" ;;
    direct) echo "$LINKED $2 direct" ;;
    idle) echo "$LINKED $2 idle" ;;
    capture) echo "$LINKED $2 capture" ;;
    history) echo "$LINKED $2 history" ;;
    esac
}
instructions() {
    local dir=$OUT/cg-$RANDOM
    mkdir -p "$dir"
    valgrind --tool=callgrind --trace-children=yes --callgrind-out-file="$dir/cg.%p" $(cmd "$1" "$2") >>"$LOG" 2>&1
    cat "$dir"/cg.* | awk '/^summary:/ { s += $2 } END { print s }'
}
median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

declare -A ins wall
ins[preload]=0
for m in ${MODES/preload/}; do
    ins[$m]=$(( ($(instructions "$m" "$CG_N") - $(instructions "$m" 0)) / CG_N ))
done
for r in $(seq "$REPS"); do
    for m in $MODES; do
        $(cmd "$m" "$N") 2>>"$LOG" </dev/null | awk '{ print $4 }' >>"$OUT/wall-$m"
    done
done
for m in $MODES; do wall[$m]=$(median <"$OUT/wall-$m"); done

printf '%-9s %14s %8s %14s %8s\n' mode "instr/thread" "- direct" "wall ns/thread" "/ direct"
for m in $MODES; do
    printf '%-9s %14d %8d %14.0f %8.3f\n' "$m" "${ins[$m]}" $((ins[$m] - ins[direct])) \
        "${wall[$m]}" "$(awk -v a="${wall[$m]}" -v b="${wall[direct]}" 'BEGIN { print a / b }')"
done
echo "(preload: instructions not measured; bare vs preload wall: the interposer in a program built without holmes)"
echo "($N threads per timed run, $REPS runs each interleaved; $CG_N under callgrind; log in $LOG)"
