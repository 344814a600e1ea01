// The CPU attention forward for a few queries against a long KV cache (decoding): flash-decoding.
//
// With one new token per sequence there are too few queries to share work over, and the pass is
// bound by reading the cache. The keys are split into fixed chunks; a work item is one (batch, kv
// head, chunk) and handles every query of the heads that share the kv head (grouped-query
// attention reads each key and value once for the whole group). An item leaves, per query, a
// partial result: its max score m, sum l of exp2(s - m), and O = sum exp2(s - m) v. A second pass
// merges the chunks of each query in order,
//   M = max m_c,  L = sum l_c exp2(m_c - M),  O = sum O_c exp2(m_c - M) / L,  lse = (M + log2 L) ln 2,
// so the result depends on the chunk size, which is fixed, and not on the thread count.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>

#include "kern/core/threading.hpp"
#include "kern/cpu/attention/tiles.hpp"
#include "kern/cpu/gemm/workspace.hpp"
#include "kern/ops/attention.hpp"

namespace kern::cpu::detail {

template <class Arch, class T> struct attention_decode_pass {
  using batch = fbatch<Arch>;
  static constexpr index_t lanes = lanes_of<Arch>;
  static constexpr index_t chunk = 256; // keys per work item (a multiple of every vector width)

  static constexpr index_t row_block = 4; // query rows whose sums share the loads of a value row (1 and 2 as well)

  const ops::attention_forward_params<T>& p;
  index_t d, dp, seq_q, seq_kv, group, rows, padded_rows, chunks;
  float q_factor;

  explicit attention_decode_pass(const ops::attention_forward_params<T>& params)
      : p(params), d(params.head_dim()), dp(round_up(params.head_dim(), lanes)), seq_q(params.seq_q()),
        seq_kv(params.seq_kv()), group(params.heads_q() / params.heads_kv()), rows(group * params.seq_q()),
        padded_rows(group * params.seq_q() <= 2 ? group * params.seq_q() : round_up(group * params.seq_q(), row_block)),
        chunks(std::max<index_t>(1, (params.seq_kv() + chunk - 1) / chunk)),
        q_factor(ops::attention_scale(params) * log2_e) {}

  // A partial result: m, l, then dp values of O.
  index_t partial_floats() const { return round_up(dp + 2, lanes); }

  // Row r of the group: query i = r % seq_q of query head h * group + r / seq_q.
  index_t head_of_row(index_t h, index_t r) const { return h * group + r / seq_q; }

  void item(index_t b, index_t h, index_t c, float* partial, float* q_rows, float* scores) const {
    constexpr float minus_inf = -std::numeric_limits<float>::infinity();
    const index_t k0 = c * chunk, n = std::min(seq_kv, k0 + chunk) - k0;
    for (index_t r = 0; r < rows; ++r) { // the queries, scaled, widened, zero-padded to dp
      const T* src = head_of(p.q, b, head_of_row(h, r)).row(r % seq_q);
      float* dst = q_rows + r * dp;
      for_each_batch<Arch>(d, [&](index_t j, index_t valid) {
        (load_float_n<Arch>(src + j, valid) * batch(q_factor)).store_aligned(dst + j);
      });
    }
    // Scores, key by key: each key row is read once for every query of the group; a row's keys
    // outside its mask are -inf.
    const head_rows<const T> k = head_of(p.k, b, h), v = head_of(p.v, b, h);
    std::fill(scores, scores + padded_rows * chunk, minus_inf);
    alignas(64) float key[ops::attention_max_head_dim];
    for (index_t j = 0; j < n; ++j) {
      const T* k_row = k.row(k0 + j);
      for_each_batch<Arch>(
          d, [&](index_t e, index_t valid) { load_float_n<Arch>(k_row + e, valid).store_aligned(key + e); });
      for (index_t r = 0; r < rows; ++r) {
        const ops::key_range seen = ops::visible_keys(r % seq_q, seq_q, seq_kv, p.causal, p.window);
        if (k0 + j < seen.first || k0 + j >= seen.last) {
          continue;
        }
        const float* q = q_rows + r * dp;
        batch sum(0.0f);
        for (index_t e = 0; e < dp; e += lanes) {
          sum = xsimd::fma(batch::load_aligned(key + e), batch::load_aligned(q + e), sum);
        }
        scores[r * chunk + j] = reduce_sum<Arch>(sum);
      }
    }
    // Softmax within the chunk, vectorized over keys: m, then exp2(s - m) and their sum l (the
    // padding rows come out all zero).
    for (index_t r = 0; r < padded_rows; ++r) {
      float* s = scores + r * chunk;
      batch m_vec(minus_inf);
      for (index_t j = 0; j < chunk; j += lanes) {
        m_vec = xsimd::max(m_vec, batch::load_aligned(s + j));
      }
      const float m = reduce_max<Arch>(m_vec);
      const batch m_use(m == minus_inf ? 0.0f : m);
      batch l(0.0f);
      for (index_t j = 0; j < chunk; j += lanes) {
        const batch prob = xsimd::exp2(batch::load_aligned(s + j) - m_use);
        prob.store_aligned(s + j);
        l += prob;
      }
      float* out = partial + r * partial_floats();
      out[0] = m;
      out[1] = reduce_sum<Arch>(l);
    }
    if (padded_rows == 1) {
      weighted_values<1>(v, k0, n, scores, partial);
    } else if (padded_rows == 2) {
      weighted_values<2>(v, k0, n, scores, partial);
    } else {
      weighted_values<row_block>(v, k0, n, scores, partial);
    }
  }

  // O = sum p v: Rows rows and one vector of head dims at a time, the sums in registers, over
  // groups of 16 value rows that stay in L1 while every vector of head dims passes over them.
  template <index_t Rows>
  void weighted_values(head_rows<const T> v, index_t k0, index_t n, const float* scores, float* partial) const {
    constexpr index_t key_group = 16;
    for (index_t r0 = 0; r0 < padded_rows; r0 += Rows) {
      for (index_t j0 = 0; j0 < n; j0 += key_group) {
        const index_t group_keys = std::min(key_group, n - j0);
        for (index_t e = 0; e < dp; e += lanes) {
          const index_t valid = std::min(lanes, d - e);
          batch acc[Rows];
          for (index_t r = 0; r < Rows; ++r) {
            acc[r] = j0 == 0 ? batch(0.0f) : batch::load_unaligned(partial + (r0 + r) * partial_floats() + 2 + e);
          }
          for (index_t j = j0; j < j0 + group_keys; ++j) {
            const batch value = load_float_n<Arch>(v.row(k0 + j) + e, valid);
            for (index_t r = 0; r < Rows; ++r) {
              acc[r] = xsimd::fma(batch(scores[(r0 + r) * chunk + j]), value, acc[r]);
            }
          }
          for (index_t r = 0; r < Rows; ++r) {
            acc[r].store_unaligned(partial + (r0 + r) * partial_floats() + 2 + e);
          }
        }
      }
    }
  }

  // Merges the chunks of row r of (b, kv head h) into O and lse.
  void merge(index_t b, index_t h, index_t r, const float* partials) const {
    const index_t stride = padded_rows * partial_floats(); // from one chunk's row r to the next's
    float m = -std::numeric_limits<float>::infinity();
    for (index_t c = 0; c < chunks; ++c) {
      const float mc = partials[c * stride];
      m = (mc > m || std::isnan(mc)) ? mc : m;
    }
    const float m_use = m == -std::numeric_limits<float>::infinity() ? 0.0f : m;
    float l = 0.0f;
    alignas(64) float o[ops::attention_max_head_dim + 64] = {};
    for (index_t c = 0; c < chunks; ++c) {
      const float* part = partials + c * stride;
      const float weight = std::exp2(part[0] - m_use);
      l += part[1] * weight;
      for (index_t j = 0; j < dp; j += lanes) {
        xsimd::fma(batch(weight), batch::load_unaligned(part + 2 + j), batch::load_aligned(o + j)).store_aligned(o + j);
      }
    }
    const index_t hq = head_of_row(h, r), i = r % seq_q;
    T* out = head_of(p.o, b, hq).row(i);
    const float inverse = l == 0.0f ? 0.0f : 1.0f / l;
    for (index_t j = 0; j < d; ++j) {
      out[j] = T(o[j] * inverse);
    }
    if (p.lse != nullptr) {
      p.lse[(b * p.heads_q() + hq) * seq_q + i] =
          l == 0.0f ? -std::numeric_limits<float>::infinity() : (m + std::log2(l)) * ln_2;
    }
  }

  void run(const context& ctx) const {
    const index_t items = p.batch() * p.heads_kv() * chunks;
    // partials[item][row]: an item's rows together, the chunks of one (b, h) consecutive.
    float* partials =
        thread_workspace<Arch, 2, float>(static_cast<std::size_t>(items * padded_rows * partial_floats()));
    parallel_for(ctx, items, [&](index_t begin, index_t end) {
      float* q_rows = thread_workspace<Arch, 3, float>(static_cast<std::size_t>(rows * dp + padded_rows * chunk));
      float* scores = q_rows + rows * dp;
      for (index_t it = begin; it < end; ++it) {
        const index_t c = it % chunks, head = it / chunks;
        item(head / p.heads_kv(), head % p.heads_kv(), c, partials + it * padded_rows * partial_floats(), q_rows,
             scores);
      }
    });
    const index_t outputs = p.batch() * p.heads_kv() * rows;
    parallel_for(ctx, outputs, [&](index_t begin, index_t end) {
      for (index_t at = begin; at < end; ++at) {
        const index_t r = at % rows, head = at / rows;
        merge(head / p.heads_kv(), head % p.heads_kv(), r,
              partials + head * chunks * padded_rows * partial_floats() + r * partial_floats());
      }
    });
  }
};

template <class Arch, class T>
void attention_decode_run(const context& ctx, const ops::attention_forward_params<T>& p) {
  attention_decode_pass<Arch, T>(p).run(ctx);
}

} // namespace kern::cpu::detail
