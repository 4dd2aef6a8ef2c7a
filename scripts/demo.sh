#!/usr/bin/env bash
# The demo: installs what is missing, builds, and runs examples/cpu_spike with
# the agent inside. The service idles, one code path goes hot, the rule
# fires, and the dump's event and top functions are printed.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash scripts/deps.sh build
echo "== building (first time: about a minute)"
bash scripts/build.sh "$root/build/release" -DCMAKE_BUILD_TYPE=RelWithDebInfo
bin=$root/build/release

out=$root/holmes-dumps
rm -rf "$out"
mkdir -p "$out"
cd "$root"
echo "== running examples/cpu_spike: 6 s of light traffic, then a 6 s CPU storm"
"$bin/examples/cpu_spike" examples/cpu_spike.ini 6 6

event=$(ls "$out"/*.json 2>/dev/null | head -1 || true)
if [[ -z $event ]]; then
  echo "demo: no event was written to $out" >&2
  exit 1
fi
echo
echo "== the event: $event"
cat "$event"
profile=$(ls "$out"/*.cpu.pb.gz 2>/dev/null | head -1 || true)
if [[ -z $profile ]]; then
  echo "demo: the event has no CPU profile beside it" >&2
  exit 1
fi
echo
echo "== top functions of $(basename "$profile")"
"$bin/holmes" report "$profile" --top 10
echo
echo "Flame graph (open in a browser): ${profile%.pb.gz}.svg"
echo "Interactive: go tool pprof -http=:8080 $profile"
