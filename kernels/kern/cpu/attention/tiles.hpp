// The tiles the CPU attention kernels are made of, shared by the forward and backward passes.
//
// Every product runs on the GEMM's fp32 micro-kernel (kern/cpu/gemm/kernel_f32.hpp) with MR = 8:
// a query block is NR queries (two vectors: 32 on AVX-512, 16 on AVX2, 8 on SSE2), and scores are
// held transposed, S^T[key][query], so that the softmax's per-query state (running max, sum,
// log-sum-exp) lives in vector lanes and every softmax step is a vertical vector operation:
//
//   S^T (keys x queries)  = K-panels (keys x d, packed) . Q^T-panel (d x queries, packed, scaled)
//   O   (queries x d)    += P (read from P^T with compile-time strides) . V rows (keys x d, fp32)
//
// The scale is folded into the packed Q together with log2(e), so probabilities are exp2 of
// differences; the log-sum-exp is converted back to natural units when it is stored.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>

#include <xsimd/xsimd.hpp>

#include "kern/core/view.hpp"
#include "kern/cpu/gemm/kernel_f32.hpp"
#include "kern/cpu/simd.hpp"
#include "kern/ops/attention.hpp"

namespace kern::cpu::detail {

inline constexpr float log2_e = 1.4426950408889634f;
inline constexpr float ln_2 = 0.6931471805599453f;

constexpr index_t round_up(index_t n, index_t multiple) { return (n + multiple - 1) / multiple * multiple; }

// One head of a [batch, seq, heads, head_dim] tensor: row r (a sequence position) at data + r * ld.
template <class T> struct head_rows {
  T* data;
  index_t ld;
  T* row(index_t r) const { return data + r * ld; }
};

template <class T> head_rows<T> head_of(const ops::attention_tensor<T>& x, index_t b, index_t h) {
  return {x.data + b * x.strides[0] + h * x.strides[2], x.strides[1]};
}

template <class Arch> struct attention_tiles {
  using kernel = f32_fma_kernel<Arch, 8>;
  using batch = fbatch<Arch>;
  static constexpr index_t lanes = lanes_of<Arch>;
  static constexpr index_t mr = kernel::mr;       // keys (or queries) per micro-kernel call
  static constexpr index_t queries = kernel::nr;  // queries per block: NR, two vectors
  static constexpr index_t key_block = 128;       // keys per block: S^T and P^T stay in L1
  static constexpr index_t dim_step = kernel::nr; // head dims per micro-kernel call
  static_assert(key_block % mr == 0 && key_block % queries == 0, "key blocks hold whole panels");

  // Head dims as the fp32 row buffers hold them: padded with zeros to whole micro-kernel columns.
  static constexpr index_t padded_dim(index_t d) { return round_up(d, dim_step); }

  // Rows [0, rows) of a head as 8-row micro-panels of depth d (the A operand of S^T = K Q^T):
  // panel p at dst + p * 8 * d, rows past `rows` zero.
  template <class T> static void pack_key_panels(head_rows<const T> x, index_t rows, index_t d, float* dst) {
    kernel::template pack_a<false, T>(op_view<T>{x.data, x.ld, false}, 0, rows, 0, d, dst);
  }

  // Rows [0, rows) of a head widened to fp32, `padded_dim(d)` apart, zero beyond d.
  template <class T> static void copy_rows(head_rows<const T> x, index_t rows, index_t d, float* dst) {
    const index_t ld = padded_dim(d);
    for (index_t r = 0; r < rows; ++r) {
      const T* src = x.row(r);
      float* out = dst + r * ld;
      for_each_batch<Arch>(d, [&](index_t j, index_t valid) {
        store_from_float_n<Arch>(out + j, load_float_n<Arch>(src + j, valid), valid);
      });
      std::fill(out + d, out + ld, 0.0f);
    }
  }

  // Queries [q0, q0 + count) of a head as the d x NR B panel of S^T = K Q^T, times `factor`;
  // columns past `count` zero.
  template <class T>
  static void pack_query_panel(head_rows<const T> x, index_t q0, index_t count, index_t d, float factor, float* dst) {
    kernel::template pack_b<false, T>(op_view<T>{x.data, x.ld, true}, 0, d, q0, count, dst);
    if (factor != 1.0f) {
      for (index_t i = 0; i < d * queries; i += lanes) {
        (batch::load_aligned(dst + i) * batch(factor)).store_aligned(dst + i);
      }
    }
  }

  // S^T[key][query] for the keys of a block (panels at k_panels, `keys` of them, rounded up to
  // whole panels: the padding rows are scores of zero keys, never read) against a query panel.
  static void scores(const float* k_panels, index_t keys, index_t d, const float* q_panel, float* s) {
    for (index_t p = 0; p < keys; p += mr) {
      kernel::run(d, k_panels + p * d, q_panel, queries, s + p * queries);
    }
  }

  // The keys of a block [k0, k0 + keys) that every query of the block sees, or not: a block fully
  // inside every query's visible range needs no mask.
  static bool block_needs_mask(index_t k0, index_t keys, ops::key_range first_query, ops::key_range last_query) {
    return k0 < last_query.first || k0 + keys > first_query.last;
  }

  // Sets S^T[j][q] to -inf where key k0 + j (j < rows) is not visible to query q0 + q (q < count).
  static void mask_scores(float* s, index_t k0, index_t rows, index_t q0, index_t count, index_t seq_q, index_t seq_kv,
                          bool causal, index_t window) {
    constexpr float minus_inf = -std::numeric_limits<float>::infinity();
    for (index_t q = 0; q < count; ++q) {
      const ops::key_range r = ops::visible_keys(q0 + q, seq_q, seq_kv, causal, window);
      for (index_t j = 0; j < rows; ++j) {
        const index_t key = k0 + j;
        if (key < r.first || key >= r.last) {
          s[j * queries + q] = minus_inf;
        }
      }
    }
  }

  // The keys [first, last) that some query of [q0, q0 + count) sees.
  static ops::key_range block_keys(index_t q0, index_t count, index_t seq_q, index_t seq_kv, bool causal,
                                   index_t window) {
    const ops::key_range a = ops::visible_keys(q0, seq_q, seq_kv, causal, window);
    const ops::key_range b = ops::visible_keys(q0 + count - 1, seq_q, seq_kv, causal, window);
    return {std::min(a.first, b.first), std::max(a.last, b.last)};
  }
};

} // namespace kern::cpu::detail
