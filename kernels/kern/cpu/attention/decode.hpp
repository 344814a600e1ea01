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
  static constexpr index_t chunk = 256; // keys per work item

  const ops::attention_forward_params<T>& p;
  index_t d, dp, seq_q, seq_kv, group, rows, chunks;
  float q_factor;

  explicit attention_decode_pass(const ops::attention_forward_params<T>& params)
      : p(params), d(params.head_dim()), dp(round_up(params.head_dim(), lanes)), seq_q(params.seq_q()),
        seq_kv(params.seq_kv()), group(params.heads_q() / params.heads_kv()), rows(group * params.seq_q()),
        chunks(std::max<index_t>(1, (params.seq_kv() + chunk - 1) / chunk)),
        q_factor(ops::attention_scale(params) * log2_e) {}

  // A partial result: m, l, then dp values of O.
  index_t partial_floats() const { return round_up(dp + 2, lanes); }

  // Row r of the group: query i = r % seq_q of query head h * group + r / seq_q.
  index_t head_of_row(index_t h, index_t r) const { return h * group + r / seq_q; }

  void item(index_t b, index_t h, index_t c, float* partial, float* q_rows, float* scores) const {
    constexpr float minus_inf = -std::numeric_limits<float>::infinity();
    const index_t k0 = c * chunk, k1 = std::min(seq_kv, k0 + chunk);
    for (index_t r = 0; r < rows; ++r) { // the queries, scaled, widened, zero-padded to dp
      const T* src = head_of(p.q, b, head_of_row(h, r)).row(r % seq_q);
      float* dst = q_rows + r * dp;
      for_each_batch<Arch>(d, [&](index_t j, index_t valid) {
        (load_float_n<Arch>(src + j, valid) * batch(q_factor)).store_aligned(dst + j);
      });
    }
    // Scores, key by key: each key row is read once for every query of the group.
    const head_rows<const T> k = head_of(p.k, b, h), v = head_of(p.v, b, h);
    for (index_t key = k0; key < k1; ++key) {
      const T* k_row = k.row(key);
      for (index_t r = 0; r < rows; ++r) {
        const ops::key_range seen = ops::visible_keys(r % seq_q, seq_q, seq_kv, p.causal, p.window);
        float score = minus_inf;
        if (key >= seen.first && key < seen.last) {
          batch sum(0.0f);
          const float* q = q_rows + r * dp;
          for_each_batch<Arch>(d, [&](index_t j, index_t valid) {
            sum = xsimd::fma(load_float_n<Arch>(k_row + j, valid), batch::load_aligned(q + j), sum);
          });
          score = reduce_sum<Arch>(sum);
        }
        scores[r * chunk + (key - k0)] = score;
      }
    }
    // Softmax within the chunk, then O = sum p v, value row by value row.
    for (index_t r = 0; r < rows; ++r) {
      float* s = scores + r * chunk;
      float m = minus_inf;
      for (index_t j = 0; j < k1 - k0; ++j) {
        m = (s[j] > m || std::isnan(s[j])) ? s[j] : m;
      }
      const float m_use = m == minus_inf ? 0.0f : m;
      float l = 0.0f;
      for (index_t j = 0; j < k1 - k0; ++j) {
        s[j] = std::exp2(s[j] - m_use);
        l += s[j];
      }
      float* out = partial + r * partial_floats();
      out[0] = m;
      out[1] = l;
      std::fill(out + 2, out + 2 + dp, 0.0f);
    }
    for (index_t key = k0; key < k1; ++key) {
      const T* v_row = v.row(key);
      for_each_batch<Arch>(d, [&](index_t j, index_t valid) {
        const batch value = load_float_n<Arch>(v_row + j, valid);
        for (index_t r = 0; r < rows; ++r) {
          float* o = partial + r * partial_floats() + 2 + j;
          xsimd::fma(batch(scores[r * chunk + (key - k0)]), value, batch::load_unaligned(o)).store_unaligned(o);
        }
      });
    }
  }

  // Merges the chunks of row r of (b, kv head h) into O and lse.
  void merge(index_t b, index_t h, index_t r, const float* partials) const {
    const index_t stride = rows * partial_floats(); // from one chunk's row r to the next's
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
    float* partials = thread_workspace<Arch, 2, float>(static_cast<std::size_t>(items * rows * partial_floats()));
    parallel_for(ctx, items, [&](index_t begin, index_t end) {
      float* q_rows = thread_workspace<Arch, 3, float>(static_cast<std::size_t>(rows * dp + rows * chunk));
      float* scores = q_rows + rows * dp;
      for (index_t it = begin; it < end; ++it) {
        const index_t c = it % chunks, head = it / chunks;
        item(head / p.heads_kv(), head % p.heads_kv(), c, partials + it * rows * partial_floats(), q_rows, scores);
      }
    });
    const index_t outputs = p.batch() * p.heads_kv() * rows;
    parallel_for(ctx, outputs, [&](index_t begin, index_t end) {
      for (index_t at = begin; at < end; ++at) {
        const index_t r = at % rows, head = at / rows;
        merge(head / p.heads_kv(), head % p.heads_kv(), r,
              partials + head * chunks * rows * partial_floats() + r * partial_floats());
      }
    });
  }
};

template <class Arch, class T>
void attention_decode_run(const context& ctx, const ops::attention_forward_params<T>& p) {
  attention_decode_pass<Arch, T>(p).run(ctx);
}

} // namespace kern::cpu::detail
