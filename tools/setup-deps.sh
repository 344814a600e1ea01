#!/usr/bin/env bash
# Installs what kern's build, tests, benchmarks and plots need, with apt-get.
# Idempotent: prints nothing and changes nothing when everything is already there.
set -euo pipefail

packages=(
  cmake g++ make ccache                       # build
  libxsimd-dev                                # CPU SIMD backend
  libomp-dev                                  # OpenMP for clang users (g++ brings libgomp)
  libgtest-dev libgmock-dev libbenchmark-dev  # tests and benchmarks
  libopenblas-dev libdnnl-dev ocl-icd-opencl-dev libeigen3-dev  # benchmark peers
  clang-format clang-tidy                     # style checks
  g++-aarch64-linux-gnu qemu-user             # the NEON path, cross-compiled and emulated
  python3-matplotlib python3-numpy            # tools/bench_report.py, tools/plot_loss.py
  fortunes                                    # the demo's corpus (tools/demo.sh)
  hipcc                                       # the HIP compile checks (AMD CDNA targets)
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
  echo "setup-deps: apt-get is not available; install these by hand: ${missing[*]}" >&2
  exit 1
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo="sudo -n"
  else
    echo "setup-deps: not root; install these by hand (as root): apt-get install ${missing[*]}" >&2
    exit 1
  fi
fi

echo "setup-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq >/dev/null
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
