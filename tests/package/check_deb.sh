#!/usr/bin/env bash
# Makes the Debian package of a build (cpack -G DEB), installs it with dpkg
# into a scratch root, and builds and runs a program outside the tree against
# what dpkg installed: with pkg-config and with CMake's find_package. Checks
# the package's contents and Depends, and that the man page, `holmes --help`
# and the README name the same commands.
# Usage: tests/package/check_deb.sh BUILD_DIR      (exit 77: cannot run here)
set -euo pipefail
build=$(cd "$1" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/../.." && pwd)
for tool in cpack dpkg dpkg-deb dpkg-shlibdeps pkg-config gcc; do
  command -v "$tool" >/dev/null || { echo "SKIP: $tool is missing (scripts/deps.sh test)"; exit 77; }
done
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "check_deb: $*" >&2; exit 1; }

# ---- the package ----
version=$(sed -n 's/^CMAKE_PROJECT_VERSION:STATIC=//p' "$build/CMakeCache.txt")
(cd "$build" && cpack -G DEB -B "$tmp/pkg" >"$tmp/cpack.log" 2>&1) ||
  { cat "$tmp/cpack.log" >&2; fail "cpack -G DEB failed"; }
deb=$tmp/pkg/holmes-c_${version}_amd64.deb
[[ -f $deb ]] || fail "no $(basename "$deb") in: $(ls "$tmp/pkg")"
depends=$(dpkg-deb -f "$deb" Depends)
for lib in libc6 libprotobuf-c1 zlib1g libelf1 libproc2-0; do
  [[ $depends == *"$lib "* || $depends == *"$lib," || $depends == *"$lib" ]] ||
    fail "Depends lacks $lib: $depends"
done
[[ $depends != *libcurl* ]] || fail "libcurl is loaded on demand, not a dependency: $depends"

# ---- dpkg into a scratch root ----
# --root: files under ROOT and the package database in ROOT/var/lib/dpkg.
# Depends are satisfied by the host, not by the empty scratch database; the
# maintainer scripts (no-ops: ldconfig runs from a trigger) run unchrooted.
root=$tmp/root
mkdir -p "$root/var/lib/dpkg/info" "$root/var/lib/dpkg/updates" "$root/var/lib/dpkg/triggers"
touch "$root/var/lib/dpkg/status" "$root/var/lib/dpkg/available"
force=(--force-depends --force-script-chrootless)
[[ $(id -u) -eq 0 ]] || force+=(--force-not-root)
dpkg --root="$root" --log="$tmp/dpkg.log" "${force[@]}" -i "$deb" >"$tmp/dpkg.out" 2>&1 ||
  { cat "$tmp/dpkg.out" >&2; fail "dpkg -i failed"; }
dpkg --root="$root" -s holmes-c | grep -q '^Status: install ok installed' ||
  fail "dpkg does not list holmes-c as installed in $root"
usr=$root/usr
for f in bin/holmes include/holmes/holmes.h lib/libholmes.so lib/libholmes.a \
  lib/pkgconfig/holmes.pc lib/cmake/holmes/holmesConfig.cmake share/man/man1/holmes.1; do
  [[ -e $usr/$f ]] || fail "the package does not install /usr/$f"
done
libdir=$(dirname "$(find "$usr" -name libholmes.so | head -1)")

# ---- a program outside the tree, built against the installed package ----
export PKG_CONFIG_PATH=$libdir/pkgconfig
gcc -o "$tmp/consumer_pc" "$here/consumer/consumer.c" $(pkg-config --cflags --libs holmes)
LD_LIBRARY_PATH=$libdir "$tmp/consumer_pc" | grep -q "holmes $version ok" ||
  fail "the pkg-config build does not run"
cmake -S "$here/consumer" -B "$tmp/cm" -DCMAKE_PREFIX_PATH="$usr" >/dev/null
cmake --build "$tmp/cm" >/dev/null
LD_LIBRARY_PATH=$libdir "$tmp/cm/consumer" | grep -q "ok" || fail "the find_package build does not run"

# ---- the tool, its --help, its man page and the README ----
"$usr/bin/holmes" version | grep -qx "holmes $version" || fail "holmes version is not $version"
help=$("$usr/bin/holmes" --help)
# The page's text without troff's font changes and with its minus signs as '-'.
man=$(sed -e 's/\\f[BIRP]//g' -e 's/\\-/-/g' "$usr/share/man/man1/holmes.1")
commands=$(sed -n 's/^  holmes \([a-z]*\).*/\1/p' <<<"$help")
[[ -n $commands ]] || fail "holmes --help lists no commands"
for cmd in $commands; do
  usage=$(sed -n "s/^  holmes \($cmd\( [^ ].*[^ ]\)\{0,1\}\)  .*/\1/p; s/^  holmes \($cmd\)\$/\1/p" <<<"$help" | head -1)
  usage=${usage:-$cmd}
  grep -qF "holmes $usage" <<<"$man" || fail "the man page lacks 'holmes $usage' (from --help)"
  grep -qF "holmes $cmd" "$src/README.md" || fail "README.md does not mention 'holmes $cmd'"
done
grep -qF "$version" <<<"$man" || fail "the man page is not of version $version"
echo "check_deb: $(basename "$deb") installs with dpkg; pkg-config and find_package builds run;" \
  "--help, man page and README agree on: $(echo $commands)"
