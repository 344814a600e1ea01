#!/usr/bin/env bash
# Runs clang-tidy (.clang-tidy) over the tests and examples, which include every kern header, one
# file per core at a time. Usage: tools/lint.sh [build-dir]   (a configured build with
# compile_commands.json; default build/release)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build/release}
[ -f "$build/compile_commands.json" ] || { echo "lint: $build/compile_commands.json not found: configure first" >&2; exit 2; }
files=$(git ls-files 'tests/*.cpp' 'examples/*.cpp' | grep -v -e '^tests/consumer/' -e '^tests/cross/')
# Each file's findings are printed whole; xargs exits non-zero when any file had one.
lint_one='out=$(clang-tidy --quiet -p "$0" "$1" 2>/dev/null) || status=1
if printf "%s\n" "$out" | grep -q -E "(warning|error):"; then printf "%s\n" "$out"; exit 1; fi
exit ${status:-0}'
if printf '%s\n' $files | xargs -P "$(nproc)" -n 1 sh -c "$lint_one" "$build"; then
  echo "clang-tidy: $(echo "$files" | wc -l) files clean"
else
  exit 1
fi
