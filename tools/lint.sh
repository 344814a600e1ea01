#!/usr/bin/env bash
# Runs clang-tidy (.clang-tidy) over the tests and examples, which include every kern header.
# Usage: tools/lint.sh [build-dir]   (a configured build with compile_commands.json; default build/release)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build/release}
[ -f "$build/compile_commands.json" ] || { echo "lint: $build/compile_commands.json not found: configure first" >&2; exit 2; }
files=$(git ls-files 'tests/*.cpp' 'examples/*.cpp' | grep -v -e '^tests/consumer/' -e '^tests/cross/')
out=$(mktemp)
status=0
for f in $files; do
  clang-tidy --quiet -p "$build" "$f" >"$out" 2>/dev/null || status=1
  if grep -q -E "(warning|error):" "$out"; then
    cat "$out"
    status=1
  fi
done
rm -f "$out"
[ $status -eq 0 ] && echo "clang-tidy: $(echo "$files" | wc -l) files clean"
exit $status
