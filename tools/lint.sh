#!/usr/bin/env bash
# Runs clang-tidy (.clang-tidy) over the tests and examples, which include every kern header, one
# file per core at a time. The clang static analyzer (clang-analyzer-*) doubles the time of a file,
# so by default it runs only on the example programs (the model, tokenizer, checkpoint and sampler
# code, and the kernels they call); --all runs it on every file.
# Usage: tools/lint.sh [--all] [build-dir]   (a configured build with compile_commands.json;
# default build/release)
set -euo pipefail
cd "$(dirname "$0")/.."
analyze_all=0
if [ "${1:-}" = --all ]; then
  analyze_all=1
  shift
fi
build=${1:-build/release}
[ -f "$build/compile_commands.json" ] || { echo "lint: $build/compile_commands.json not found: configure first" >&2; exit 2; }
files=$(git ls-files 'tests/*.cpp' 'examples/*.cpp' | grep -v -e '^tests/consumer/' -e '^tests/cross/')
# Each file's findings are printed whole; xargs exits non-zero when any file had one.
lint_one='set -f
case "$1" in
  examples/*) checks= ;;
  *) [ "$2" = 1 ] && checks= || checks=--checks=-clang-analyzer-* ;;
esac
out=$(clang-tidy --quiet $checks -p "$0" "$1" 2>/dev/null) || status=1
if printf "%s\n" "$out" | grep -q -E "(warning|error):"; then printf "%s\n" "$out"; exit 1; fi
exit ${status:-0}'
if printf '%s\n' $files | xargs -P "$(nproc)" -I {} sh -c "$lint_one" "$build" {} "$analyze_all"; then
  echo "clang-tidy: $(echo "$files" | wc -l) files clean"
else
  exit 1
fi
