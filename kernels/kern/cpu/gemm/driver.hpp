// The CPU GEMM driver: BLIS's loops around the micro-kernel, for one ISA (Arch).
//
//   for jc in N by NC:                 pack op(B)[:, jc..] (all of K) once, threads share it
//     parallel over (ic in M by MC) x (a share of the NR panels):
//       for pc in K by KC:             pack op(A)[ic.., pc..] into this thread's MC x KC block
//         for jr over NR panels:       the kc x NR B micro-panel stays in L1
//           for ir over MR panels:     micro-kernel, then the tile's epilogue
//
// With one MC block of rows (small M), the panels are split among threads instead, so that two
// threads help even for 256-token shapes. fp32 partial sums carry between K blocks in C itself (f32
// output) or in a per-thread fp32 block (bf16 output, rounded once at the end).
#pragma once

#include <algorithm>

#include "kern/core/memory.hpp"
#include "kern/core/threading.hpp"
#include "kern/cpu/gemm/blocking.hpp"
#include "kern/cpu/gemm/gemv.hpp"
#include "kern/cpu/gemm/microkernel.hpp"
#include "kern/cpu/gemm/pack.hpp"
#include "kern/cpu/gemm/workspace.hpp"
#include "kern/ops/gemm.hpp"

namespace kern::cpu::detail {

// The shared packed-B buffer lives with the calling thread.
template <class Arch> float* shared_b_workspace(std::size_t floats) { return thread_workspace<Arch, 0>(floats); }

template <class Arch, bool RoundToBf16, class TA, class TB, class TC>
void gemm_blocked(const context& ctx, const ops::gemm_params<TA, TB, TC>& p) {
  using blk = gemm_blocking<Arch>;
  constexpr int MR = blk::mr, NR = blk::nr;
  const index_t M = p.m(), N = p.n(), K = p.k();
  const op_view<TA> a{p.a.data, p.a.ld, p.trans_a == ops::transpose::trans};
  const op_view<TB> b{p.b.data, p.b.ld, p.trans_b == ops::transpose::trans};
  // Partial sums of earlier K blocks go to C itself when C is f32, unless C is also the residual
  // and there are several K blocks (the residual must still be the original C at the last block).
  const bool partial_in_c =
      std::is_same_v<TC, float> && !(p.residual.data == p.c.data && p.residual.data != nullptr && K > blk::kc);

  const index_t k_blocks = (K + blk::kc - 1) / blk::kc;
  const index_t ic_blocks = (M + blk::mc - 1) / blk::mc;
  const int threads = effective_threads(ctx);

  for (index_t jc = 0; jc < N; jc += blk::nc) {
    const index_t nc = std::min<index_t>(blk::nc, N - jc);
    const index_t panels = (nc + NR - 1) / NR;
    // Packed B: for each K block, its panels one after another (kc x NR floats each).
    float* packed_b = shared_b_workspace<Arch>(static_cast<std::size_t>(K * panels * NR));
    parallel_for(context(threads), k_blocks * panels, [&](index_t begin, index_t end) {
      for (index_t job = begin; job < end; ++job) {
        const index_t kb = job / panels, panel = job % panels;
        const index_t pc = kb * blk::kc, kc = std::min<index_t>(blk::kc, K - pc);
        pack_b_panel<Arch, NR, RoundToBf16>(b, pc, kc, jc + panel * NR, nc - panel * NR,
                                            packed_b + pc * panels * NR + panel * kc * NR);
      }
    });

    // Work items: an MC block of rows and a contiguous share of the panels.
    const index_t splits = std::clamp<index_t>((threads + ic_blocks - 1) / ic_blocks, 1, panels);
    const index_t items = ic_blocks * splits;
    parallel_region(context(static_cast<int>(std::min<index_t>(threads, items))), [&](int thread, int thread_count) {
      float* packed_a = thread_workspace<Arch, 1>(static_cast<std::size_t>(blk::mc) * blk::kc);
      alignas(64) float tile[MR * NR];
      for (index_t item = thread; item < items; item += thread_count) {
        const index_t ic = (item / splits) * blk::mc, mc = std::min<index_t>(blk::mc, M - ic);
        const range share = split_evenly(panels, static_cast<int>(splits), static_cast<int>(item % splits));
        const index_t j0 = share.begin * NR, j1 = std::min<index_t>(nc, share.end * NR);
        if (j0 >= j1) {
          continue;
        }
        // Otherwise: fp32 partial sums for this item's rows and columns.
        float* partial = nullptr;
        index_t ld_partial = 0;
        if (!partial_in_c) {
          ld_partial = j1 - j0;
          partial = thread_workspace<Arch, 2>(static_cast<std::size_t>(mc * ld_partial));
        }
        for (index_t pc = 0; pc < K; pc += blk::kc) {
          const index_t kc = std::min<index_t>(blk::kc, K - pc);
          pack_a<Arch, MR, RoundToBf16>(a, ic, mc, pc, kc, packed_a);
          const float* b_block = packed_b + pc * panels * NR;
          for (index_t jr = j0; jr < j1; jr += NR) {
            const index_t nr = std::min<index_t>(NR, j1 - jr);
            const float* b_panel = b_block + (jr / NR) * kc * NR;
            for (index_t ir = 0; ir < mc; ir += MR) {
              microkernel<Arch, MR, blk::nr_vectors>(kc, packed_a + (ir / MR) * kc * MR, b_panel, tile);
              const index_t row = ic + ir, col = jc + jr;
              tile_target<TC> t{p.alpha,
                                p.beta,
                                pc == 0,
                                pc + kc == K,
                                nullptr,
                                0,
                                p.c.data + row * p.c.ld + col,
                                p.c.ld,
                                p.bias ? p.bias + col : nullptr,
                                p.gelu,
                                p.residual.data ? p.residual.data + row * p.residual.ld + col : nullptr,
                                p.residual.ld};
              if (partial_in_c) {
                t.partial = reinterpret_cast<float*>(t.c); // TC is float here
                t.ld_partial = t.ldc;
              } else {
                t.partial = partial + ir * ld_partial + (jr - j0);
                t.ld_partial = ld_partial;
              }
              write_tile<Arch, NR>(tile, std::min<index_t>(MR, mc - ir), nr, t);
            }
          }
        }
      }
    });
  }
}

// C = epilogue(beta * C) when there is no product to add (K = 0 or alpha = 0).
template <class Arch, class TA, class TB, class TC> void gemm_epilogue_only(const ops::gemm_params<TA, TB, TC>& p) {
  using blk = gemm_blocking<Arch>;
  alignas(64) float zeros[blk::mr * blk::nr] = {};
  for (index_t i = 0; i < p.m(); i += blk::mr) {
    for (index_t j = 0; j < p.n(); j += blk::nr) {
      const tile_target<TC> t{0.0f,
                              p.beta,
                              true,
                              true,
                              nullptr,
                              0,
                              p.c.data + i * p.c.ld + j,
                              p.c.ld,
                              p.bias ? p.bias + j : nullptr,
                              p.gelu,
                              p.residual.data ? p.residual.data + i * p.residual.ld + j : nullptr,
                              p.residual.ld};
      write_tile<Arch, blk::nr>(zeros, std::min<index_t>(blk::mr, p.m() - i), std::min<index_t>(blk::nr, p.n() - j), t);
    }
  }
}

// The ISA-specific entry: everything after validation.
template <class Arch, class TA, class TB, class TC>
void gemm_run(const context& ctx, const ops::gemm_params<TA, TB, TC>& p) {
  if (p.m() == 0 || p.n() == 0) {
    return;
  }
  const bool round = p.compute == ops::gemm_compute::bf16;
  if (p.k() == 0 || p.alpha == 0.0f) {
    gemm_epilogue_only<Arch>(p);
  } else if (p.m() <= gemv_max_rows) {
    round ? gemv_run<Arch, true>(ctx, p) : gemv_run<Arch, false>(ctx, p);
  } else {
    round ? gemm_blocked<Arch, true>(ctx, p) : gemm_blocked<Arch, false>(ctx, p);
  }
}

} // namespace kern::cpu::detail
