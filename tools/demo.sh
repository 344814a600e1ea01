#!/usr/bin/env bash
# kern's main job. For now: build and run examples/custom_engine, a user's program calling a kern kernel.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup-deps.sh
cmake --preset release >/dev/null
cmake --build --preset release --target custom_engine -j "$(nproc)"
build/release/examples/custom_engine
