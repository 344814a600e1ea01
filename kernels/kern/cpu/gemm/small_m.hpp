// The CPU GEMM for M <= 4 rows with B read straight from its storage (decode: a few tokens against
// a weight matrix, memory-bound). Each thread takes a contiguous range of columns, in runs as wide
// as the M x width fp32 sums that stay in L1 allow (24 KiB: 6144 columns for one row of A, 1536 for
// four). The kernel's accumulate_rows covers a run: rows of A stream whole rows of B across it
// (on AVX-512, one row of A goes down B in column chunks whose sums stay in registers). Nothing
// of B is packed, each element is read once. Per output element the operations are those of the
// blocked kernel with the same K blocks, so results are bit-identical to it (and to a pre-packed
// B).
#pragma once

#include <algorithm>

#include "kern/core/threading.hpp"
#include "kern/cpu/gemm/epilogue.hpp"
#include "kern/cpu/gemm/workspace.hpp"
#include "kern/ops/gemm.hpp"

namespace kern::cpu::detail {

template <class Kernel, bool Round, class TA, class TB, class TC>
void gemm_small_m(const context& ctx, const ops::gemm_params<TA, TB, TC>& p) {
  using arch = typename Kernel::arch;
  using packed = typename Kernel::packed;
  constexpr int NR = Kernel::nr;
  const index_t M = p.m(), N = p.n(), K = p.k();
  const index_t width = std::max<index_t>(NR, (6144 / M) / NR * NR); // 24 KiB of sums
  const op_view<TA> a{p.a.data, p.a.ld, p.trans_a == ops::transpose::trans};
  const op_view<TB> b{p.b.data, p.b.ld, false};
  const bool partial_in_c =
      std::is_same_v<TC, float> && !(p.residual.data == p.c.data && p.residual.data != nullptr && K > Kernel::kc);

  // Whole groups of NR columns per thread, so that only the last group of C is partial.
  const index_t groups = (N + NR - 1) / NR;
  parallel_for(ctx, groups, [&](index_t g0, index_t g1) {
    packed* packed_a = thread_workspace<arch, 1, packed>(static_cast<std::size_t>(Kernel::mr) * Kernel::kc + 64);
    float* sums = thread_workspace<arch, 4, float>(static_cast<std::size_t>(M * width));
    float* partial = thread_workspace<arch, 2, float>(partial_in_c ? 0 : static_cast<std::size_t>(M) * width);
    TB* edge = thread_workspace<arch, 5, TB>(static_cast<std::size_t>(Kernel::kc) * NR);
    for (index_t j0 = g0 * NR; j0 < std::min(N, g1 * NR); j0 += width) {
      const index_t cols = std::min({width, N - j0, g1 * NR - j0});
      const index_t full = cols - cols % NR; // streamed from B; the rest (< NR columns) via a padded copy
      for (index_t pc = 0; pc < K; pc += Kernel::kc) {
        const index_t kc = std::min<index_t>(Kernel::kc, K - pc);
        Kernel::template pack_a<Round>(a, 0, M, pc, kc, packed_a);
        const index_t padded_cols = full + (cols > full ? NR : 0);
        std::fill(sums, sums + M * padded_cols, 0.0f);
        if (full > 0) {
          Kernel::template accumulate_rows<Round>(kc, packed_a, M, p.b.data + pc * p.b.ld + j0, p.b.ld, full, sums,
                                                  padded_cols);
        }
        if (cols > full) {
          for (index_t k = 0; k < kc; ++k) {
            for (index_t j = 0; j < NR; ++j) {
              edge[k * NR + j] = j < cols - full ? b(pc + k, j0 + full + j) : TB(0.0f);
            }
          }
          Kernel::template accumulate_rows<Round>(kc, packed_a, M, edge, NR, NR, sums + full, padded_cols);
        }
        const auto t = tile_target_at(p, 0, j0, p.alpha, pc == 0, pc + kc == K, partial_in_c ? nullptr : partial, cols);
        write_tile<arch>(sums, padded_cols, M, cols, t);
      }
    }
  });
}

} // namespace kern::cpu::detail
