#!/usr/bin/env bash
# Reformats every C++ file of the project with .clang-format.
set -euo pipefail
cd "$(dirname "$0")/.."
git ls-files -co --exclude-standard '*.hpp' '*.cpp' '*.cuh' '*.cu' | xargs -r clang-format -i
