// The CPU GEMM for M <= 4 (decode: a few tokens against a weight matrix). Memory-bound: every
// element of B is read once, straight from its storage, without packing, in fp32 or bf16.
//
//   op(B) = B (K x N):   threads split the columns; each keeps M x chunk partial sums in L1 and
//                        streams B row by row (contiguous chunk-wide reads), broadcasting A.
//   op(B) = B^T (B is N x K): threads split the rows of B; each output is M dot products over a
//                        contiguous row of B.
#pragma once

#include <algorithm>

#include <xsimd/xsimd.hpp>

#include "kern/core/threading.hpp"
#include "kern/cpu/gemm/microkernel.hpp"
#include "kern/cpu/gemm/pack.hpp"
#include "kern/cpu/gemm/workspace.hpp"
#include "kern/ops/gemm.hpp"

namespace kern::cpu::detail {

inline constexpr index_t gemv_max_rows = 4;

// Applies alpha, beta and the epilogue to M rows of raw sums (row stride Chunk) at columns j0...
template <class Arch, index_t Chunk, class TA, class TB, class TC>
void finish_rows(const ops::gemm_params<TA, TB, TC>& p, const float* sums, index_t M, index_t j0, index_t width) {
  const tile_target<TC> t{p.alpha,
                          p.beta,
                          true,
                          true,
                          nullptr,
                          0,
                          p.c.data + j0,
                          p.c.ld,
                          p.bias ? p.bias + j0 : nullptr,
                          p.gelu,
                          p.residual.data ? p.residual.data + j0 : nullptr,
                          p.residual.ld};
  write_tile<Arch, static_cast<int>(Chunk)>(sums, M, width, t);
}

template <class Arch, bool RoundToBf16, class TA, class TB, class TC>
void gemv_rows_of_b(const context& ctx, const ops::gemm_params<TA, TB, TC>& p, const float* a_rows) {
  using batch = xsimd::batch<float, Arch>;
  constexpr index_t lanes = static_cast<index_t>(batch::size);
  constexpr index_t chunk = 512; // 4 x 512 x 4 = 8 KiB of partial sums in L1
  const index_t M = p.m(), N = p.n(), K = p.k();
  const index_t chunks = (N + chunk - 1) / chunk;
  parallel_for(ctx, chunks, [&](index_t begin, index_t end) {
    alignas(64) float sums[gemv_max_rows * chunk];
    for (index_t c = begin; c < end; ++c) {
      const index_t j0 = c * chunk, width = std::min(chunk, N - j0);
      const index_t full = width - width % lanes;
      std::fill(sums, sums + M * chunk, 0.0f);
      for (index_t k = 0; k < K; ++k) {
        const TB* b_row = p.b.data + k * p.b.ld + j0;
        for (index_t j = 0; j < full; j += lanes) {
          batch bv = load_float<Arch>(b_row + j);
          if constexpr (RoundToBf16) {
            alignas(64) float rounded[lanes];
            bv.store_aligned(rounded);
            for (float& x : rounded) {
              x = packed_value<true>(x);
            }
            bv = batch::load_aligned(rounded);
          }
          for (index_t m = 0; m < M; ++m) {
            float* s = sums + m * chunk + j;
            xsimd::fma(batch(a_rows[m * K + k]), bv, batch::load_aligned(s)).store_aligned(s);
          }
        }
        for (index_t j = full; j < width; ++j) {
          const float bv = packed_value<RoundToBf16>(b_row[j]);
          for (index_t m = 0; m < M; ++m) {
            sums[m * chunk + j] += a_rows[m * K + k] * bv;
          }
        }
      }
      finish_rows<Arch, chunk>(p, sums, M, j0, width);
    }
  });
}

template <class Arch, bool RoundToBf16, class TA, class TB, class TC>
void gemv_dot_rows(const context& ctx, const ops::gemm_params<TA, TB, TC>& p, const float* a_rows) {
  using batch = xsimd::batch<float, Arch>;
  constexpr index_t lanes = static_cast<index_t>(batch::size);
  constexpr index_t chunk = 64;
  const index_t M = p.m(), N = p.n(), K = p.k();
  const index_t full = K - K % lanes;
  const index_t chunks = (N + chunk - 1) / chunk;
  parallel_for(ctx, chunks, [&](index_t begin, index_t end) {
    alignas(64) float sums[gemv_max_rows * chunk];
    for (index_t c = begin; c < end; ++c) {
      const index_t j0 = c * chunk, width = std::min(chunk, N - j0);
      for (index_t j = 0; j < width; ++j) {
        const TB* b_row = p.b.data + (j0 + j) * p.b.ld;
        batch acc[gemv_max_rows] = {batch(0.0f), batch(0.0f), batch(0.0f), batch(0.0f)};
        for (index_t k = 0; k < full; k += lanes) {
          batch bv = load_float<Arch>(b_row + k);
          if constexpr (RoundToBf16) {
            alignas(64) float rounded[lanes];
            bv.store_aligned(rounded);
            for (float& x : rounded) {
              x = packed_value<true>(x);
            }
            bv = batch::load_aligned(rounded);
          }
          for (index_t m = 0; m < M; ++m) {
            acc[m] = xsimd::fma(batch::load_unaligned(a_rows + m * K + k), bv, acc[m]);
          }
        }
        for (index_t m = 0; m < M; ++m) {
          float total = xsimd::hadd(acc[m]);
          for (index_t k = full; k < K; ++k) {
            total += a_rows[m * K + k] * packed_value<RoundToBf16>(b_row[k]);
          }
          sums[m * chunk + j] = total;
        }
      }
      finish_rows<Arch, chunk>(p, sums, M, j0, width);
    }
  });
}

template <class Arch, bool RoundToBf16, class TA, class TB, class TC>
void gemv_run(const context& ctx, const ops::gemm_params<TA, TB, TC>& p) {
  // op(A) as M contiguous fp32 rows, converted once.
  const index_t M = p.m(), K = p.k();
  float* a_rows = thread_workspace<Arch, 3>(static_cast<std::size_t>(M * K));
  const op_view<TA> a{p.a.data, p.a.ld, p.trans_a == ops::transpose::trans};
  for (index_t m = 0; m < M; ++m) {
    for (index_t k = 0; k < K; ++k) {
      const TA x = a.transposed ? a.data[k * a.ld + m] : a.data[m * a.ld + k];
      a_rows[m * K + k] = packed_value<RoundToBf16>(x);
    }
  }
  if (p.trans_b == ops::transpose::none) {
    gemv_rows_of_b<Arch, RoundToBf16>(ctx, p, a_rows);
  } else {
    gemv_dot_rows<Arch, RoundToBf16>(ctx, p, a_rows);
  }
}

} // namespace kern::cpu::detail
