#!/usr/bin/env bash
# Installs the Debian 12 packages holmes-c needs that are missing.
# Usage: scripts/deps.sh [build|test|bench]   (each set includes the ones before it)
set -euo pipefail
want=${1:-build}
build_pkgs=(build-essential cmake pkg-config libcurl4-openssl-dev
  libprotobuf-c-dev protobuf-c-compiler zlib1g-dev libelf-dev libproc2-dev golang-go)
test_pkgs=(python3 clang libclang-rt-14-dev binutils procps chromium memcached libmemcached-tools nginx-light
  libxml2-utils strace libc6-dbg libpython3.11
  redis-server redis-tools wrk apache2-utils libjemalloc-dev libgoogle-perftools-dev
  libtcmalloc-minimal4 libmimalloc-dev python3-protobuf stress-ng dpkg-dev
  protobuf-compiler python3-yaml)
bench_pkgs=(valgrind google-perftools libgoogle-perftools-dev heaptrack sqlite3 linux-perf)
pkgs=("${build_pkgs[@]}")
[[ $want == test || $want == bench ]] && pkgs+=("${test_pkgs[@]}")
[[ $want == bench ]] && pkgs+=("${bench_pkgs[@]}")

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "holmes: installing ${missing[*]}" >&2
  SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO=sudo
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
