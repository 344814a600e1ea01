// Register and cache blocking of the CPU GEMM, one row per ISA (BLIS's block-size table).
//
//   MR x NR   the micro-tile: MR * NR / lanes accumulator registers, plus NR / lanes for B and one
//             broadcast of A, must fit the register file (32 zmm, 16 ymm, 16 xmm).
//   KC        depth of one packed block: the kc x NR micro-panel of B is reused by every MR-row
//             micro-panel of A; a deeper block means fewer passes of partial sums over C. On AVX-512
//             384 x 32 x 4 = 48 KiB fills L1 (48 KiB here) and measured better than 192 and 256.
//   MC        rows of the packed A block, which stays in L2 (1 MiB here): MC x KC x 4 bytes.
//   NC        columns of B packed per outer iteration (K x NC x 4 bytes, shared by all threads).
#pragma once

#include <xsimd/xsimd.hpp>

#include "kern/cpu/isa.hpp"

namespace kern::cpu::detail {

template <class Arch> struct gemm_blocking {
  static constexpr int lanes = static_cast<int>(xsimd::batch<float, Arch>::size);
  static constexpr bool wide = isa_of<Arch>() >= isa::avx512;
  static constexpr int mr = wide ? 14 : 6; // 28 + 2 + 1 of 32 zmm; 12 + 2 + 1 of 16 ymm / xmm
  static constexpr int nr_vectors = 2;
  static constexpr int nr = nr_vectors * lanes;
  static constexpr int kc = wide ? 384 : 256;
  static constexpr int mc = mr * (wide ? 24 : 48); // 336 x 384 x 4 = 504 KiB of A in L2
  static constexpr int nc = 1024;
};

} // namespace kern::cpu::detail
