#!/bin/bash
# Fuzzes the INI parser for 20 seconds with libFuzzer, ASan and UBSan, seeded
# with every fixture. Any crash, leak or undefined behaviour fails the test and
# leaves the input that caused it in the log.
set -euo pipefail

SRC=${HOLMES_SRC:-$(cd "$(dirname "$0")/../.." && pwd)}
TIME=${HOLMES_FUZZ_SECONDS:-20}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

clang -std=gnu11 -g -O1 -D_GNU_SOURCE -DHOLMES_NO_INTERPOSE \
    -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
    -I"$SRC" -I"$SRC/include" \
    "$SRC/tests/fuzz/fuzz_config.c" "$SRC"/rules/*.c "$SRC"/agent/base/*.c \
    -lpthread -lm -o "$tmp/fuzz_config"

mkdir "$tmp/corpus"
cp "$SRC"/tests/fixtures/ini/good/*.ini "$SRC"/tests/fixtures/ini/bad/*.ini "$tmp/corpus/"

# A dictionary of the file's words (section names, keys, units, values)
# lets the fuzzer reach past "unknown key" quickly.
{
    for w in '[agent]' '[heap]' '[reporter.file]' '[reporter.pyroscope]' '[rule.' ' = ' \
        '${' '}' ' ; ' KiB MiB GiB KB MB GB ms auto off none SIGUSR2 http:// https://; do
        printf '"%s"\n' "$w"
    done
    grep -o '{HOLMES_SEC_[A-Z]*, "[a-z_]*"' "$SRC"/rules/keys.c | sed 's/.*, //'
} >"$tmp/ini.dict"

export HOSTNAME=${HOSTNAME:-fuzz-host}
if ! "$tmp/fuzz_config" -max_total_time="$TIME" -max_len=12000 -timeout=10 \
    -rss_limit_mb=2048 -dict="$tmp/ini.dict" -artifact_prefix="$tmp/" -print_final_stats=1 \
    "$tmp/corpus" >"$tmp/log" 2>&1; then
    tail -n 60 "$tmp/log"
    for crash in "$tmp"/crash-* "$tmp"/leak-* "$tmp"/timeout-* "$tmp"/oom-*; do
        [ -e "$crash" ] || continue
        echo "--- $crash (base64):"
        base64 "$crash"
    done
    echo "FAIL: the config fuzzer found a crash"
    exit 1
fi
grep -E '^stat::number_of_executed_units|^Done' "$tmp/log" || true
echo "PASS: fuzz_config ran ${TIME}s without a crash"
