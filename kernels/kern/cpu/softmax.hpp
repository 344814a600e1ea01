// CPU softmax and cross-entropy entry points. Parameters and semantics: kern/ops/softmax.hpp;
// algorithm and measurements: docs/kernels/softmax.md.
//
//   kern::cpu::softmax_forward(ctx, params)    y = softmax(scale * x) per row
//   kern::cpu::softmax_backward(ctx, params)   dx = y * (dy - sum(dy * y)) per row
//   kern::cpu::cross_entropy(ctx, params)      per-row losses, the reduced loss, and the gradient
//                                              written over the logits
//
// Each row is read from memory once and written once: the max, the sum of exponentials and the
// output pass all run while the row sits in L1/L2 (a 50304-wide fp32 vocabulary row is 200 KB).
// The exponentials are computed once per element: kept in the fp32 output row (or, for bf16, in a
// per-thread fp32 row) between the sum and the normalization. Rows are split across threads; a
// row's result, and the reduced loss (summed in row order), do not depend on the thread count.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "kern/core/threading.hpp"
#include "kern/cpu/gemm/workspace.hpp"
#include "kern/cpu/isa.hpp"
#include "kern/cpu/norm/row_reduce.hpp"
#include "kern/cpu/simd.hpp"
#include "kern/ops/softmax.hpp"

// The entries each ISA translation unit instantiates (kern_enable_isa_dispatch), and that every
// other translation unit of a dispatching target declares extern; EXTERN is `extern` or empty.
// NOLINTBEGIN(bugprone-macro-parentheses): EXTERN and the types are declaration parts, not expressions
#define KERN_CPU_SOFTMAX_RUN(ARCH, EXTERN, T)                                                                          \
  EXTERN template void kern::cpu::detail::softmax_forward_run<ARCH, T>(const ::kern::cpu::context&,                    \
                                                                       const ::kern::ops::softmax_forward_params<T>&); \
  EXTERN template void kern::cpu::detail::softmax_backward_run<ARCH, T>(                                               \
      const ::kern::cpu::context&, const ::kern::ops::softmax_backward_params<T>&);                                    \
  EXTERN template ::kern::ops::cross_entropy_result kern::cpu::detail::cross_entropy_run<ARCH, T>(                     \
      const ::kern::cpu::context&, const ::kern::ops::cross_entropy_params<T>&, ::kern::index_t);
#define KERN_CPU_SOFTMAX_INSTANCES(ARCH, EXTERN)                                                                       \
  KERN_CPU_SOFTMAX_RUN(ARCH, EXTERN, float)                                                                            \
  KERN_CPU_SOFTMAX_RUN(ARCH, EXTERN, ::kern::bf16)
// NOLINTEND(bugprone-macro-parentheses)

namespace kern::cpu::detail {

inline constexpr int softmax_workspace_slot = 17; // apart from the GEMM's and the norm's slots

// exp(x - max) for the n > 0 values of one row, stored in e (fp32), and their sum.
template <class Arch, class T> float exp_row(const T* x, float scale, float max, index_t n, float* e) {
  const fbatch<Arch> s(scale), m(max);
  return row_sum<Arch>(n, [&](index_t i, index_t valid) {
    const fbatch<Arch> v = xsimd::exp(xsimd::fms(load_float_n<Arch>(x + i, valid), s, m));
    store_from_float_n<Arch>(e + i, v, valid);
    return v;
  });
}

template <class Arch, class T> float row_max_scaled(const T* x, float scale, index_t n) {
  const fbatch<Arch> s(scale);
  return row_max<Arch>(n, [&](index_t i, index_t valid) { return load_float_n<Arch>(x + i, valid) * s; });
}

template <class Arch, class T> void softmax_forward_run(const context& ctx, const ops::softmax_forward_params<T>& p) {
  const index_t rows = p.x.rows, n = p.x.cols;
  if (rows == 0 || n == 0) {
    return;
  }
  parallel_for(context_for_elements(ctx, rows * n), rows, [&](index_t begin, index_t end) {
    // fp32 output rows hold the exponentials between the passes; bf16 ones take a per-thread fp32 row.
    float* scratch = std::is_same_v<T, float>
                         ? nullptr
                         : thread_workspace<Arch, softmax_workspace_slot, float>(static_cast<std::size_t>(n));
    for (index_t r = begin; r < end; ++r) {
      const T* x = p.x.row(r);
      T* y = p.y.row(r);
      float* e = scratch;
      if constexpr (std::is_same_v<T, float>) {
        e = y; // y may be x: each element is read before it is overwritten
      }
      const float max = row_max_scaled<Arch>(x, p.scale, n);
      const fbatch<Arch> inverse_sum(1.0f / exp_row<Arch>(x, p.scale, max, n, e));
      for_each_batch<Arch>(n, [&](index_t i, index_t valid) {
        store_from_float_n<Arch>(y + i, load_float_n<Arch>(e + i, valid) * inverse_sum, valid);
      });
    }
  });
}

template <class Arch, class T> void softmax_backward_run(const context& ctx, const ops::softmax_backward_params<T>& p) {
  using batch = fbatch<Arch>;
  const index_t rows = p.y.rows, n = p.y.cols;
  if (rows == 0 || n == 0) {
    return;
  }
  parallel_for(context_for_elements(ctx, rows * n), rows, [&](index_t begin, index_t end) {
    for (index_t r = begin; r < end; ++r) {
      const T* y = p.y.row(r);
      const T* dy = p.dy.row(r);
      T* dx = p.dx.row(r);
      const batch dot(row_sum<Arch>(n, [&](index_t i, index_t valid) {
        return load_float_n<Arch>(dy + i, valid) * load_float_n<Arch>(y + i, valid);
      }));
      for_each_batch<Arch>(n, [&](index_t i, index_t valid) {
        const batch out = load_float_n<Arch>(y + i, valid) * (load_float_n<Arch>(dy + i, valid) - dot);
        store_from_float_n<Arch>(dx + i, out, valid);
      });
    }
  });
}

// The loss of one row, and (with write_gradient) its gradient over the row: max, sum of
// exponentials (kept in e), then (e / sum - onehot) * gradient_scale. The loss is summed as
// (max - picked) + log(sum), two terms that are never negative: no cancellation.
template <class Arch, class T> float cross_entropy_row(const ops::cross_entropy_params<T>& p, T* row,
                                                       std::int32_t target, float gradient_scale, float* e) {
  const index_t vocab = p.classes();
  const auto picked = static_cast<float>(row[target]);
  const float max = row_max_scaled<Arch>(row, 1.0f, vocab);
  if (!p.write_gradient) {
    const fbatch<Arch> m(max);
    const float sum = row_sum<Arch>(
        vocab, [&](index_t i, index_t valid) { return xsimd::exp(load_float_n<Arch>(row + i, valid) - m); });
    return (max - picked) + std::log(sum);
  }
  const float sum = exp_row<Arch>(row, 1.0f, max, vocab, e);
  const float inverse_sum = 1.0f / sum;
  const float target_exp = e[target];
  const fbatch<Arch> factor(inverse_sum * gradient_scale);
  for_each_batch<Arch>(vocab, [&](index_t i, index_t valid) {
    store_from_float_n<Arch>(row + i, load_float_n<Arch>(e + i, valid) * factor, valid);
  });
  row[target] = T((target_exp * inverse_sum - 1.0f) * gradient_scale);
  std::fill(row + vocab, row + p.logits.cols, T(0.0f));
  return (max - picked) + std::log(sum);
}

template <class Arch, class T> ops::cross_entropy_result
cross_entropy_run(const context& ctx, const ops::cross_entropy_params<T>& p, index_t counted) {
  const index_t rows = p.logits.rows, cols = p.logits.cols, vocab = p.classes();
  ops::cross_entropy_result result;
  result.counted_rows = counted;
  if (rows == 0) {
    result.loss = p.reduction == ops::loss_reduction::mean ? std::numeric_limits<double>::quiet_NaN() : 0.0;
    return result;
  }
  const bool mean = p.reduction == ops::loss_reduction::mean;
  const float gradient_scale = mean && counted > 0 ? p.grad_scale / static_cast<float>(counted) : p.grad_scale;
  float* losses = p.losses != nullptr
                      ? p.losses
                      : thread_workspace<Arch, softmax_workspace_slot + 1, float>(static_cast<std::size_t>(rows));
  parallel_for(context_for_elements(ctx, rows * cols), rows, [&](index_t begin, index_t end) {
    float* scratch = std::is_same_v<T, float> || !p.write_gradient
                         ? nullptr
                         : thread_workspace<Arch, softmax_workspace_slot, float>(static_cast<std::size_t>(vocab));
    for (index_t r = begin; r < end; ++r) {
      T* row = p.logits.row(r);
      const std::int32_t target = p.targets[r];
      if (target == p.ignore_index) {
        losses[r] = 0.0f;
        if (p.write_gradient) {
          std::fill(row, row + cols, T(0.0f));
        }
        continue;
      }
      float* e = scratch;
      if constexpr (std::is_same_v<T, float>) {
        e = row; // the exponentials overwrite the logits they come from, then become the gradient
      }
      losses[r] = cross_entropy_row<Arch>(p, row, target, gradient_scale, e);
    }
  });
  double total = 0.0;
  for (index_t r = 0; r < rows; ++r) {
    if (p.targets[r] != p.ignore_index) {
      total += static_cast<double>(losses[r]);
      result.nonfinite_rows += std::isfinite(losses[r]) ? 0 : 1;
    }
  }
  result.loss =
      mean ? (counted > 0 ? total / static_cast<double>(counted) : std::numeric_limits<double>::quiet_NaN()) : total;
  return result;
}

} // namespace kern::cpu::detail

KERN_CPU_EXTERN_INSTANCES(KERN_CPU_SOFTMAX_INSTANCES)

namespace kern::cpu {

template <element_type T> void softmax_forward(const context& ctx, const ops::softmax_forward_params<T>& params) {
  ops::validate("kern::cpu::softmax_forward", params);
  detail::dispatch([&](auto arch) { detail::softmax_forward_run<decltype(arch), T>(ctx, params); });
}

template <element_type T> void softmax_backward(const context& ctx, const ops::softmax_backward_params<T>& params) {
  ops::validate("kern::cpu::softmax_backward", params);
  detail::dispatch([&](auto arch) { detail::softmax_backward_run<decltype(arch), T>(ctx, params); });
}

template <element_type T>
ops::cross_entropy_result cross_entropy(const context& ctx, const ops::cross_entropy_params<T>& params) {
  ops::validate("kern::cpu::cross_entropy", params);
  const index_t counted = ops::counted_rows(params);
  return detail::dispatch(
      [&](auto arch) { return detail::cross_entropy_run<decltype(arch), T>(ctx, params, counted); });
}

} // namespace kern::cpu
