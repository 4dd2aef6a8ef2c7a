#!/usr/bin/env bash
# Installs a build into a temporary prefix and builds a program outside the
# tree against it twice: with pkg-config and with CMake's find_package.
# Usage: tests/package/check_install.sh BUILD_DIR
set -euo pipefail
build=$1
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
prefix=$tmp/prefix
cmake --install "$build" --prefix "$prefix" >/dev/null
libdir=$(dirname "$(find "$prefix" -name libholmes.so | head -1)")

# nm -D: only holmes_* and the families agent/exports.map names (malloc, C++
# new/delete, the allocators' pointer APIs, mmap) leave the library. The map
# is the one list: every name it gives outside holmes_* is allowed, no other.
allowed=$(sed -e 's|/\*.*\*/||g' "$here/../../agent/exports.map" | tr ' ;' '\n\n' |
  grep -E '^[A-Za-z_][A-Za-z0-9_]*$' | grep -vE '^(global|local)$' | sort -u)
bad=$(nm -D --defined-only "$libdir/libholmes.so" | awk '{print $3}' |
  grep -vE '^holmes_' | grep -vxF -f <(echo "$allowed") |
  grep -vE '^(_init|_fini|HOLMES_|GLIBC_|LIBHOLMES)' || true)
if [[ -n $bad ]]; then
  echo "check_install: libholmes.so exports names agent/exports.map does not give:" >&2; echo "$bad" >&2; exit 1
fi

# pkg-config
export PKG_CONFIG_PATH=$libdir/pkgconfig
gcc -o "$tmp/consumer_pc" "$here/consumer/consumer.c" $(pkg-config --cflags --libs holmes)
LD_LIBRARY_PATH=$libdir "$tmp/consumer_pc" | grep -q "holmes $(pkg-config --modversion holmes) ok"

# find_package(holmes)
cmake -S "$here/consumer" -B "$tmp/cm" -DCMAKE_PREFIX_PATH="$prefix" >/dev/null
cmake --build "$tmp/cm" >/dev/null
LD_LIBRARY_PATH=$libdir "$tmp/cm/consumer" | grep -q "ok"
echo "check_install: pkg-config and find_package builds run; exports are holmes_* and the families agent/exports.map names"
