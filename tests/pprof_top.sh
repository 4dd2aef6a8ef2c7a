#!/bin/sh
# Runs `go tool pprof` on a local profile the way a test needs it: offline,
# with a private writable HOME and Go cache, and unable to find binaries, so
# that what it prints comes from the profile alone.
#
# Usage: tests/pprof_top.sh [pprof flags...] PROFILE
#   Prints `go tool pprof -top [flags] PROFILE` on stdout (pprof's own
#   messages go to stderr) and exits with pprof's status. When the flags
#   already name an output mode (-raw, -tags, -traces, -text, -top, -list=...,
#   -peek=...), -top is not added.
#   Examples:
#     tests/pprof_top.sh -sample_index=cpu /tmp/x.cpu.pb.gz
#     tests/pprof_top.sh -raw /tmp/x.heap.pb.gz
#     tests/pprof_top.sh -tags /tmp/x.threads.pb.gz
#   Environment: GO (default: go). Exit 77 when go is not installed.
set -eu

go_bin=${GO:-go}
if ! command -v "$go_bin" >/dev/null 2>&1; then
    echo "pprof_top.sh: $go_bin not found" >&2
    exit 77
fi
if [ $# -lt 1 ]; then
    echo "usage: $0 [pprof flags...] PROFILE" >&2
    exit 2
fi

scratch=$(mktemp -d "${TMPDIR:-/tmp}/pprof_top.XXXXXX")
trap 'rm -rf "$scratch"' EXIT INT TERM
mkdir -p "$scratch/home" "$scratch/cache" "$scratch/nobin" "$scratch/tmp"

mode=-top
for arg in "$@"; do
    case $arg in
    -raw | -tags | -traces | -text | -top | -list=* | -peek=* | -disasm=*) mode= ;;
    esac
done

# HOME: pprof keeps its history and default output under it. GOCACHE/GOPATH:
# `go` insists on writable ones. GOPROXY=off, GOFLAGS=-mod=mod and
# GOTOOLCHAIN=local: nothing is ever fetched. PPROF_BINARY_PATH: an empty
# directory, so pprof cannot find a binary to symbolize with.
env HOME="$scratch/home" GOCACHE="$scratch/cache" GOPATH="$scratch/home/go" \
    GOPROXY=off GOFLAGS=-mod=mod GOTOOLCHAIN=local GO111MODULE=auto \
    PPROF_BINARY_PATH="$scratch/nobin" PPROF_TMPDIR="$scratch/tmp" \
    "$go_bin" tool pprof $mode "$@"
