#!/usr/bin/env bash
# Compiles one GPU test source with a vendor compiler, device code included, and fails on any
# warning or register spill. Usage: compile_check.sh nvcc|hipcc COMPILER SOURCE INCLUDE_DIR...
# Exits 77 (a skip for ctest) when COMPILER is empty or missing.
set -uo pipefail
kind=$1 compiler=$2 source=$3
shift 3
if [ -z "$compiler" ] || [ ! -x "$compiler" ] || [[ "$compiler" == *NOTFOUND ]]; then
  echo "$kind is not installed here: the $kind compile check of $(basename "$source") is skipped"
  exit 77
fi
includes=()
for dir in "$@"; do includes+=(-I "$dir"); done
case "$kind" in
nvcc)
  # sm_80 (A100) and sm_90a (H100/H200, with its architecture-specific features); ptxas prints
  # each kernel's registers, shared memory and spills (-v), and spills are errors.
  output=$("$compiler" -std=c++20 -x cu --expt-relaxed-constexpr \
    -gencode=arch=compute_80,code=sm_80 -gencode=arch=compute_90a,code=sm_90a \
    -Werror all-warnings -Xcompiler=-Wall,-Wextra,-Werror -Xptxas=-v,-warn-spills,-Werror \
    "${includes[@]}" -c "$source" -o /dev/null 2>&1)
  status=$?
  ;;
hipcc)
  # Every CDNA target this toolchain knows (gfx941/942 are newer than its LLVM).
  # It reads compile-only GoogleTest and Google Benchmark headers (hip_compile_only/ says why).
  output=$("$compiler" -std=c++20 -x hip --offload-arch=gfx90a --offload-arch=gfx940 \
    -I "$(dirname "$0")/hip_compile_only" -Rpass-analysis=kernel-resource-usage \
    -Wall -Wextra -Werror "${includes[@]}" -c "$source" -o /dev/null 2>&1)
  status=$?
  ;;
*)
  echo "compile_check.sh: unknown compiler kind '$kind'" >&2
  exit 2
  ;;
esac
# Per kernel: registers, shared memory and spills (ptxas -v; the AMD resource-usage remarks).
echo "$output" | grep -Ev '^ptxas info +: (Compile time|Function properties|Compiling entry)|remark: +(Occupancy|LDS Size|ScratchSize|Dynamic Stack|SGPRs:|AGPRs)' || true
if [ $status -ne 0 ]; then
  echo "FAILED: $kind could not compile $(basename "$source") (status $status)"
  exit 1
fi
if echo "$output" | grep -Eq '[1-9][0-9]* bytes spill (stores|loads)|GPRs Spill: [1-9]'; then
  echo "FAILED: a kernel of $(basename "$source") spills registers"
  exit 1
fi
kernels=$(echo "$output" | grep -Ec 'Function properties|Function Name:' || true)
echo "$kind compiled $(basename "$source"): ${kernels} kernel/function builds checked (all targets), no spills"
