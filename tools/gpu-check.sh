#!/usr/bin/env bash
# kern on a machine with an NVIDIA GPU, in one call: builds the CUDA backend for the GPU it finds,
# runs the GPU tests on it, runs the GPU benchmarks, and prints a short table last. With $OUT set,
# the benchmark JSON, the table and the logs are written there.
#
# Usage: tools/gpu-check.sh [benchmark filter regex]      (default: every GPU benchmark)
# Needs: nvcc (PATH or /usr/local/cuda/bin), nvidia-smi, and kern's build dependencies
# (tools/setup-deps.sh installs them where apt-get can reach a mirror).
set -euo pipefail
cd "$(dirname "$0")/.."
filter=${1:-.}
out=${OUT:-$(mktemp -d)}
mkdir -p "$out"
start=$(date +%s)
step() { echo "== [$(($(date +%s) - start)) s] $*" >&2; }

nvcc=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
[ -x "$nvcc" ] || { echo "gpu-check: nvcc not found (PATH, /usr/local/cuda/bin)" >&2; exit 1; }
command -v nvidia-smi >/dev/null || { echo "gpu-check: nvidia-smi not found: no NVIDIA driver here" >&2; exit 1; }
nvidia-smi --query-gpu=name,compute_cap,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
capability=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -n 1 | tr -d ' .')
# Hopper's architecture-specific features (sm_90a) are what kern's sm_90 code paths target.
arch=$capability
[ "$capability" = 90 ] && arch=90a

tools/setup-deps.sh || echo "gpu-check: could not install dependencies; continuing with what is here" >&2

build=build/gpu-check
jobs=$(nproc)
step "configure (CUDA architecture $arch)"
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DKERN_ENABLE_CUDA=ON -DKERN_BUILD_EXAMPLES=OFF \
  -DCMAKE_CUDA_COMPILER="$nvcc" -DCMAKE_CUDA_ARCHITECTURES="$arch" >"$out/configure.log"
step "build the GPU tests and benchmarks"
cmake --build "$build" -j "$jobs" --target kern_cuda_tests kern_bench_gpu >"$out/build.log" 2>&1 ||
  { tail -n 50 "$out/build.log"; exit 1; }

step "GPU tests"
tests_status=0
ctest --test-dir "$build" -R '/cuda$' -j 4 --output-on-failure >"$out/tests.log" 2>&1 || tests_status=1
tail -n 5 "$out/tests.log"

step "GPU benchmarks"
"$build/bench/kern_bench_gpu" --benchmark_filter="$filter" --benchmark_min_time=0.05 \
  --benchmark_out="$out/gpu_bench.json" --benchmark_out_format=json >"$out/bench.log" 2>&1 ||
  { tail -n 20 "$out/bench.log"; exit 1; }

step "summary"
/usr/bin/python3 - "$out/gpu_bench.json" <<'PY' | tee "$out/summary.txt"
import json, sys
run = json.load(open(sys.argv[1]))
context = run["context"]
print(f"device: {context.get('kern_gpu', '?')}; copy bandwidth {float(context.get('copy_GBps', 0)):.0f} GB/s")
print(f"{'benchmark':58} {'time us':>10} {'GB/s':>8} {'of copy':>8}")
for b in run["benchmarks"]:
    name = b["name"].removesuffix("/manual_time")
    print(f"{name:58} {b['real_time']:10.1f} {b.get('GBps', 0):8.0f} {100 * b.get('peak_frac', 0):7.0f}%")
PY
echo "tests: $([ $tests_status -eq 0 ] && echo passed || echo FAILED) ($(grep -E 'tests passed|tests failed' "$out/tests.log" | tail -n 1))"
echo "files: $out"
exit $tests_status
