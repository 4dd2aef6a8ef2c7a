#!/usr/bin/env bash
# The test command: installs what is missing, builds three ways (release,
# ASan+UBSan, TSan) and runs the whole suite in each, then checks the
# installed package from a program outside the tree.
#   scripts/test.sh            everything
#   scripts/test.sh quick      the release build only
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash scripts/deps.sh test || { echo "holmes: installing dependencies failed" >&2; exit 1; }

mode=${1:-full}
jobs=$(nproc)
passed=0 failed=0 skipped=0
failures=()
skips=()
why=()

run_suite() { # name, cmake args...
  local name=$1; shift
  local dir=$root/build/$name
  echo "== $name: build"
  if ! bash scripts/build.sh "$dir" "$@"; then
    failed=$((failed + 1)); failures+=("$name: build"); return
  fi
  echo "== $name: tests"
  local log=$dir/ctest.log
  (cd "$dir" && ctest --output-on-failure --timeout 600 -j"$jobs") 2>&1 | tee "$log" | grep -E '^( *[0-9]+/[0-9]+ Test|[0-9]+% tests|The following|\s+[0-9]+ - )' || true
  local p f s
  p=$(grep -cE 'Test +#[0-9]+: .* Passed' "$log")
  # A test that cannot run its checks here exits 77: ctest says ***Skipped.
  f=$(grep -E 'Test +#[0-9]+: .*(\*\*\*|Failed|Exception|Timeout)' "$log" | grep -cv '\*\*\*Skipped')
  s=$(grep -cE 'Test +#[0-9]+: .*\*\*\*Skipped' "$log")
  passed=$((passed + p)); failed=$((failed + f)); skipped=$((skipped + s))
  ((s > 0)) && skips+=("$name:" "$(skip_reasons "$dir")")
  if [[ $f -gt 0 || $p -eq 0 ]]; then
    failures+=("$name: $f failed"); [[ $p -eq 0 ]] && failed=$((failed + 1))
    grep -E 'Test +#[0-9]+: .*(\*\*\*|Failed|Exception|Timeout)' "$log" | grep -v '\*\*\*Skipped' |
      sed "s/^/   $name: /"
    why+=("$name:" "$(failure_lines "$log")")
  fi
}

# Each skipped test with the reason it printed (ctest keeps every test's output in LastTest.log).
skip_reasons() {
  awk '/^[0-9]+\/[0-9]+ Testing: /{t=$3} /^SKIPPED: /{print "   " t ": " substr($0, 10)}' \
    "$1/Testing/Temporary/LastTest.log" 2>/dev/null | sort -u
}

# The first lines that say why, so the end of a CI log is enough to start from
# (the Python tests print "CHECK FAILED", the C unit tests "file:line: CHECK failed").
failure_lines() {
  grep -E 'CHECK FAILED|CHECK failed|FAILED:|SUMMARY: |ERROR: |Assertion|Error|error:|Timeout' "$1" |
    grep -vE '^ *[0-9]+/[0-9]+ Test|^Errors while running CTest' | cut -c1-300 | head -12
}

run_suite release -DCMAKE_BUILD_TYPE=RelWithDebInfo
if [[ $mode == full ]]; then
  run_suite asan -DCMAKE_BUILD_TYPE=Debug -DHOLMES_SANITIZE=address
  run_suite tsan -DCMAKE_BUILD_TYPE=Debug -DHOLMES_SANITIZE=thread
  echo "== package: install and build a program outside the tree"
  if bash tests/package/check_install.sh "$root/build/release"; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1)); failures+=("package")
  fi
  echo "== package: cpack -G DEB, dpkg into a scratch root, build a program outside the tree"
  bash tests/package/check_deb.sh "$root/build/release"
  case $? in
    0) passed=$((passed + 1)) ;;
    77) echo "   (skipped)" ;;
    *) failed=$((failed + 1)); failures+=("package: deb") ;;
  esac
fi

echo
((${#skips[@]})) && printf '%s\n' "skipped, with the reason each test gave:" "${skips[@]}"
((${#why[@]})) && printf '%s\n' "${why[@]}"
((${#failures[@]})) && printf 'FAILED: %s\n' "${failures[@]}"
echo "holmes: $passed passed, $failed failed, $skipped skipped"
[[ $failed -eq 0 ]]
