// CPU embedding lookup and its gradient. Parameters and semantics: kern/ops/embedding.hpp; algorithm
// and measurements: docs/kernels/embedding.md.
//
// Forward: rows are independent, split across threads. Backward: rows that share a token id add into
// the same gradient row, so threads split the columns instead: each owns a slice of every table row
// and walks all tokens in order. Every gradient element then sees the same additions in the same
// order for any thread count (the same bits), with no atomics and no scratch.
#pragma once

#include <type_traits>

#include "kern/core/threading.hpp"
#include "kern/cpu/isa.hpp"
#include "kern/cpu/simd.hpp"
#include "kern/ops/embedding.hpp"

namespace kern::cpu::detail {

// Below this many output elements per thread, another thread costs more than it saves.
inline constexpr index_t embedding_elements_per_thread = index_t{1} << 15;
// The backward pass hands out columns in whole cache lines of fp32 (no false sharing).
inline constexpr index_t embedding_column_unit = 16;

inline int embedding_threads(const context& ctx, index_t elements, index_t max_parts) {
  index_t useful = (elements + embedding_elements_per_thread - 1) / embedding_elements_per_thread;
  useful = useful < max_parts ? useful : max_parts;
  useful = useful < 1 ? 1 : useful;
  return useful < ctx.threads() ? static_cast<int>(useful) : ctx.threads();
}

template <class Arch, class T>
void embedding_forward_run(const context& ctx, const ops::embedding_forward_params<T>& p) {
  const index_t rows = p.rows(), dim = p.out.cols;
  if (rows == 0 || dim == 0) {
    return;
  }
  const bool has_positions = p.position_table.data != nullptr;
  parallel_for(context(embedding_threads(ctx, rows * dim, rows)), rows, [&](index_t begin, index_t end) {
    for (index_t r = begin; r < end; ++r) {
      const float* token = p.token_table.row(p.tokens[r]);
      T* out = p.out.row(r);
      if (has_positions) {
        const float* position = p.position_table.row(p.position_offset + r % p.seq);
        for_each_batch<Arch>(dim, [&](index_t j, index_t valid) {
          const fbatch<Arch> sum = load_float_n<Arch>(token + j, valid) + load_float_n<Arch>(position + j, valid);
          store_from_float_n<Arch>(out + j, sum, valid);
        });
      } else {
        for_each_batch<Arch>(dim, [&](index_t j, index_t valid) {
          store_from_float_n<Arch>(out + j, load_float_n<Arch>(token + j, valid), valid);
        });
      }
    }
  });
}

template <class Arch, class T>
void embedding_backward_run(const context& ctx, const ops::embedding_backward_params<T>& p) {
  const index_t rows = p.rows(), dim = p.dout.cols;
  if (rows == 0 || dim == 0) {
    return;
  }
  const bool has_positions = p.position_grad.data != nullptr;
  const index_t units = (dim + embedding_column_unit - 1) / embedding_column_unit;
  parallel_for(context(embedding_threads(ctx, rows * dim, units)), units, [&](index_t unit_begin, index_t unit_end) {
    const index_t c0 = unit_begin * embedding_column_unit;
    const index_t c1 = unit_end * embedding_column_unit < dim ? unit_end * embedding_column_unit : dim;
    for (index_t r = 0; r < rows; ++r) {
      const T* dout = p.dout.row(r) + c0;
      float* token = p.token_grad.row(p.tokens[r]) + c0;
      float* position = has_positions ? p.position_grad.row(p.position_offset + r % p.seq) + c0 : nullptr;
      for_each_batch<Arch>(c1 - c0, [&](index_t j, index_t valid) {
        const fbatch<Arch> g = load_float_n<Arch>(dout + j, valid);
        store_from_float_n<Arch>(token + j, load_float_n<Arch>(token + j, valid) + g, valid);
        if (has_positions) {
          store_from_float_n<Arch>(position + j, load_float_n<Arch>(position + j, valid) + g, valid);
        }
      });
    }
  });
}

} // namespace kern::cpu::detail

// NOLINTBEGIN(bugprone-macro-parentheses): EXTERN and the types are declaration parts, not expressions
#define KERN_CPU_EMBEDDING_RUNS(ARCH, EXTERN, T)                                                                       \
  EXTERN template void kern::cpu::detail::embedding_forward_run<ARCH, T>(                                              \
      const ::kern::cpu::context&, const ::kern::ops::embedding_forward_params<T>&);                                   \
  EXTERN template void kern::cpu::detail::embedding_backward_run<ARCH, T>(                                             \
      const ::kern::cpu::context&, const ::kern::ops::embedding_backward_params<T>&);
#define KERN_CPU_EMBEDDING_INSTANCES(ARCH, EXTERN)                                                                     \
  KERN_CPU_EMBEDDING_RUNS(ARCH, EXTERN, float)                                                                         \
  KERN_CPU_EMBEDDING_RUNS(ARCH, EXTERN, ::kern::bf16)
// NOLINTEND(bugprone-macro-parentheses)
KERN_CPU_EXTERN_INSTANCES(KERN_CPU_EMBEDDING_INSTANCES)

namespace kern::cpu {

template <element_type T> void embedding_forward(const context& ctx, const ops::embedding_forward_params<T>& p) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, bf16>, "kern::cpu::embedding_forward stores f32 or bf16");
  ops::validate("kern::cpu::embedding_forward", p);
  detail::dispatch([&](auto arch) { detail::embedding_forward_run<decltype(arch), T>(ctx, p); });
}

template <element_type T> void embedding_backward(const context& ctx, const ops::embedding_backward_params<T>& p) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, bf16>, "kern::cpu::embedding_backward reads f32 or bf16");
  ops::validate("kern::cpu::embedding_backward", p);
  detail::dispatch([&](auto arch) { detail::embedding_backward_run<decltype(arch), T>(ctx, p); });
}

} // namespace kern::cpu
