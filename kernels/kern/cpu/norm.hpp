// CPU LayerNorm / RMSNorm entry points. Parameters and semantics: kern/ops/norm.hpp; algorithm and
// measurements: docs/kernels/norm.md.
//
//   kern::cpu::norm_forward(ctx, params)    y = norm(x [+ residual]) * weight [+ bias]
//   kern::cpu::norm_backward(ctx, params)   dx (= or +=), dweight +=, dbias +=
//
// Each row is read from memory once: its passes (residual add, mean, variance, output) run while
// the row sits in L1/L2. Rows are split across threads; a row's result does not depend on the
// thread that computes it. The parameter gradients are summed per fixed block of rows and those
// partial sums are added in block order, so they too are the same bits for any thread count.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>

#include "kern/core/threading.hpp"
#include "kern/cpu/gemm/workspace.hpp"
#include "kern/cpu/isa.hpp"
#include "kern/cpu/norm/row_reduce.hpp"
#include "kern/cpu/simd.hpp"
#include "kern/ops/norm.hpp"

// The entries each ISA translation unit instantiates (kern_enable_isa_dispatch), and that every
// other translation unit of a dispatching target declares extern; EXTERN is `extern` or empty.
// NOLINTBEGIN(bugprone-macro-parentheses): EXTERN and the types are declaration parts, not expressions
#define KERN_CPU_NORM_RUN(ARCH, EXTERN, T)                                                                             \
  EXTERN template void kern::cpu::detail::norm_forward_run<ARCH, T>(const ::kern::cpu::context&,                       \
                                                                    const ::kern::ops::norm_forward_params<T>&);       \
  EXTERN template void kern::cpu::detail::norm_backward_run<ARCH, T>(const ::kern::cpu::context&,                      \
                                                                     const ::kern::ops::norm_backward_params<T>&);
#define KERN_CPU_NORM_INSTANCES(ARCH, EXTERN)                                                                          \
  KERN_CPU_NORM_RUN(ARCH, EXTERN, float)                                                                               \
  KERN_CPU_NORM_RUN(ARCH, EXTERN, ::kern::bf16)
// NOLINTEND(bugprone-macro-parentheses)

namespace kern::cpu::detail {

struct norm_row_stats {
  float mean; // 0 for rmsnorm
  float rstd;
};

// The statistics of one row h of n > 0 values. LayerNorm takes two passes over the (cached) row,
// the mean and then the mean square deviation from it: no E[h^2] - E[h]^2 cancellation.
template <class Arch, class T>
norm_row_stats row_statistics(ops::norm_kind kind, const T* h, index_t n, float epsilon) {
  const auto count = static_cast<float>(n);
  if (kind == ops::norm_kind::rmsnorm) {
    const float square_sum = row_sum<Arch>(n, [&](index_t i, index_t valid) {
      const fbatch<Arch> v = load_float_n<Arch>(h + i, valid);
      return v * v;
    });
    return {0.0f, 1.0f / std::sqrt(square_sum / count + epsilon)};
  }
  const float mean =
      row_sum<Arch>(n, [&](index_t i, index_t valid) { return load_float_n<Arch>(h + i, valid); }) / count;
  const fbatch<Arch> center(mean);
  const float deviation_sum = row_sum<Arch>(n, [&](index_t i, index_t valid) {
    const fbatch<Arch> d = load_float_n<Arch>(h + i, valid) - center;
    return d * d;
  });
  return {mean, 1.0f / std::sqrt(deviation_sum / count + epsilon)};
}

template <class Arch, class T> void norm_forward_run(const context& ctx, const ops::norm_forward_params<T>& p) {
  using batch = fbatch<Arch>;
  const index_t rows = p.x.rows, dim = p.x.cols;
  if (rows == 0 || dim == 0) {
    return;
  }
  const bool fused = p.residual.data != nullptr;
  const bool layernorm = p.kind == ops::norm_kind::layernorm;
  parallel_for(context_for_elements(ctx, rows * dim), rows, [&](index_t begin, index_t end) {
    for (index_t r = begin; r < end; ++r) {
      const T* h = p.x.row(r);
      if (fused) { // h = x + residual, stored (rounded to T) and normalized as stored
        const T* a = p.x.row(r);
        const T* b = p.residual.row(r);
        T* out = p.residual_out.row(r);
        for_each_batch<Arch>(dim, [&](index_t i, index_t valid) {
          store_from_float_n<Arch>(out + i, load_float_n<Arch>(a + i, valid) + load_float_n<Arch>(b + i, valid), valid);
        });
        h = out;
      }
      const norm_row_stats stats = row_statistics<Arch>(p.kind, h, dim, p.epsilon);
      if (p.mean != nullptr) {
        p.mean[r] = stats.mean;
      }
      if (p.rstd != nullptr) {
        p.rstd[r] = stats.rstd;
      }
      const batch mean(stats.mean), rstd(stats.rstd);
      T* y = p.y.row(r);
      if (layernorm && p.bias != nullptr) {
        for_each_batch<Arch>(dim, [&](index_t i, index_t valid) {
          const batch xhat = (load_float_n<Arch>(h + i, valid) - mean) * rstd;
          const batch out =
              xsimd::fma(xhat, load_float_n<Arch>(p.weight + i, valid), load_float_n<Arch>(p.bias + i, valid));
          store_from_float_n<Arch>(y + i, out, valid);
        });
      } else {
        for_each_batch<Arch>(dim, [&](index_t i, index_t valid) {
          const batch xhat = (load_float_n<Arch>(h + i, valid) - mean) * rstd;
          store_from_float_n<Arch>(y + i, xhat * load_float_n<Arch>(p.weight + i, valid), valid);
        });
      }
    }
  });
}

// Rows per block of the parameter-gradient partial sums: the blocks, not the threads, fix the
// order of the sums, which is what makes dweight and dbias independent of the thread count.
inline constexpr index_t norm_gradient_block_rows = 64;
inline constexpr int norm_workspace_slot = 16; // apart from the GEMM's slots

template <class Arch, class T> void norm_backward_run(const context& ctx, const ops::norm_backward_params<T>& p) {
  using batch = fbatch<Arch>;
  const index_t rows = p.x.rows, dim = p.x.cols;
  if (rows == 0 || dim == 0) {
    return;
  }
  const bool layernorm = p.kind == ops::norm_kind::layernorm;
  const bool parameter_gradients = p.dweight != nullptr || p.dbias != nullptr;
  const index_t blocks = (rows + norm_gradient_block_rows - 1) / norm_gradient_block_rows;
  // Per block: dim partial sums of dy * xhat, then dim of dy.
  float* partials = parameter_gradients
                        ? thread_workspace<Arch, norm_workspace_slot, float>(static_cast<std::size_t>(blocks * 2 * dim))
                        : nullptr;
  const auto count = static_cast<float>(dim);
  const context run = context_for_elements(ctx, rows * dim);
  parallel_for(run, blocks, [&](index_t block_begin, index_t block_end) {
    for (index_t block = block_begin; block < block_end; ++block) {
      float* dweight_part = parameter_gradients ? partials + block * 2 * dim : nullptr;
      float* dbias_part = parameter_gradients ? dweight_part + dim : nullptr;
      if (parameter_gradients) {
        std::fill(dweight_part, dweight_part + 2 * dim, 0.0f);
      }
      const index_t row_end = std::min(rows, (block + 1) * norm_gradient_block_rows);
      for (index_t r = block * norm_gradient_block_rows; r < row_end; ++r) {
        const T* x = p.x.row(r);
        const T* dy = p.dy.row(r);
        const batch mean(layernorm ? p.mean[r] : 0.0f), rstd(p.rstd[r]);
        // Pass 1: the row sums of g = dy * weight and g * xhat, and the parameter-gradient partials.
        batch g_sum(0.0f), g_xhat_sum(0.0f);
        for_each_batch<Arch>(dim, [&](index_t i, index_t valid) {
          const batch d = load_float_n<Arch>(dy + i, valid); // 0 past the row: no term below counts there
          const batch xhat = (load_float_n<Arch>(x + i, valid) - mean) * rstd;
          const batch g = d * load_float_n<Arch>(p.weight + i, valid);
          g_sum += g;
          g_xhat_sum = xsimd::fma(g, xhat, g_xhat_sum);
          if (parameter_gradients) {
            store_from_float_n<Arch>(dweight_part + i, xsimd::fma(d, xhat, load_float_n<Arch>(dweight_part + i, valid)),
                                     valid);
            store_from_float_n<Arch>(dbias_part + i, load_float_n<Arch>(dbias_part + i, valid) + d, valid);
          }
        });
        const batch g_mean(layernorm ? reduce_sum<Arch>(g_sum) / count : 0.0f);
        const batch g_xhat_mean(reduce_sum<Arch>(g_xhat_sum) / count);
        // Pass 2: dx = rstd * (g - mean(g) - xhat * mean(g * xhat)).
        T* dx = p.dx.row(r);
        for_each_batch<Arch>(dim, [&](index_t i, index_t valid) {
          const batch xhat = (load_float_n<Arch>(x + i, valid) - mean) * rstd;
          const batch g = load_float_n<Arch>(dy + i, valid) * load_float_n<Arch>(p.weight + i, valid);
          batch out = rstd * (g - g_mean - xhat * g_xhat_mean);
          if (p.accumulate_dx) {
            out += load_float_n<Arch>(dx + i, valid);
          }
          store_from_float_n<Arch>(dx + i, out, valid);
        });
      }
    }
  });
  if (!parameter_gradients) {
    return;
  }
  // Column sums of the block partials, in block order; each thread owns a range of columns.
  parallel_for(context_for_elements(ctx, blocks * dim), dim, [&](index_t column_begin, index_t column_end) {
    const auto add_blocks = [&](float* gradient, index_t offset) {
      for_each_batch<Arch>(column_end - column_begin, [&](index_t i, index_t valid) {
        const index_t j = column_begin + i;
        batch sum(0.0f);
        for (index_t block = 0; block < blocks; ++block) {
          sum += load_float_n<Arch>(partials + block * 2 * dim + offset + j, valid);
        }
        store_from_float_n<Arch>(gradient + j, load_float_n<Arch>(gradient + j, valid) + sum, valid);
      });
    };
    if (p.dweight != nullptr) {
      add_blocks(p.dweight, 0);
    }
    if (p.dbias != nullptr) {
      add_blocks(p.dbias, dim);
    }
  });
}

} // namespace kern::cpu::detail

KERN_CPU_EXTERN_INSTANCES(KERN_CPU_NORM_INSTANCES)

namespace kern::cpu {

template <element_type T> void norm_forward(const context& ctx, const ops::norm_forward_params<T>& params) {
  ops::validate("kern::cpu::norm_forward", params);
  detail::dispatch([&](auto arch) { detail::norm_forward_run<decltype(arch), T>(ctx, params); });
}

template <element_type T> void norm_backward(const context& ctx, const ops::norm_backward_params<T>& params) {
  ops::validate("kern::cpu::norm_backward", params);
  detail::dispatch([&](auto arch) { detail::norm_backward_run<decltype(arch), T>(ctx, params); });
}

} // namespace kern::cpu
