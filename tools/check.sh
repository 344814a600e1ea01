#!/usr/bin/env bash
# kern's test command: installs what is missing, then configures, builds and runs the tests of the
# release build and of the sanitizer build (AddressSanitizer + UndefinedBehaviorSanitizer).
# Exits non-zero on any failure. Usage: tools/check.sh [preset ...]   (default: release debug-asan)
set -euo pipefail
cd "$(dirname "$0")/.."

tools/setup-deps.sh

presets=("$@")
[ ${#presets[@]} -gt 0 ] || presets=(release debug-asan)
jobs=$(nproc)
# Tests run in parallel and each may start OpenMP threads: idle threads must sleep, not spin, or
# two tests on two cores slow each other down many times over.
export OMP_WAIT_POLICY=passive
status=0
summary=""
for preset in "${presets[@]}"; do
  echo "== $preset: configure, build, test" >&2
  cmake --preset "$preset" >/dev/null
  cmake --build --preset "$preset" -j "$jobs"
  log=$(mktemp)
  if ctest --preset "$preset" -j "$jobs" 2>&1 | tee "$log"; then
    result=passed
  else
    result=FAILED
    status=1
  fi
  summary+="$preset: $result — $(grep -E 'tests passed|tests failed' "$log" | tail -n 1)"$'\n'
  rm -f "$log"
done
echo
echo "== summary"
printf '%s' "$summary"
exit $status
