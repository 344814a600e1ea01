// The CPU attention forward pass: FlashAttention-2 over blocks of NR queries.
//
// For one block of queries, every block of keys it sees goes through
//   S^T = K Q^T                      (scores, scale and log2(e) folded into Q)
//   m'  = max(m, max_keys S^T)       (running max per query: a vector lane)
//   P^T = exp2(S^T - m'),  l = l * exp2(m - m') + sum_keys P^T
//   O   = O * exp2(m - m') + P V
// and at the end O / l and lse = (m + log2 l) ln 2. Only the block's S^T / P^T (128 x NR) and its
// O (NR x d) exist: memory is O(seq), never O(seq^2).
//
// Threading: the tasks are (batch, kv head, query head of the group, query block), in that order,
// taken one at a time from a shared counter (causal blocks differ in cost). A thread packs the keys
// and values of a (batch, kv head) when its next task moves to another one: consecutive tasks share
// them. Each task writes its own rows of O and lse, so results do not depend on the thread count.
#pragma once

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>

#include "kern/core/threading.hpp"
#include "kern/cpu/attention/tiles.hpp"
#include "kern/cpu/gemm/workspace.hpp"
#include "kern/ops/attention.hpp"

namespace kern::cpu::detail {

template <class Arch, class T> struct attention_forward_pass {
  using tiles = attention_tiles<Arch>;
  using kernel = typename tiles::kernel;
  using batch = fbatch<Arch>;
  static constexpr index_t lanes = tiles::lanes;
  static constexpr index_t queries = tiles::queries;
  static constexpr index_t vectors = queries / lanes;

  const ops::attention_forward_params<T>& p;
  index_t d, dp, seq_q, seq_kv, group;
  float q_factor;

  explicit attention_forward_pass(const ops::attention_forward_params<T>& params)
      : p(params), d(params.head_dim()), dp(tiles::padded_dim(params.head_dim())), seq_q(params.seq_q()),
        seq_kv(params.seq_kv()), group(params.heads_q() / params.heads_kv()),
        q_factor(ops::attention_scale(params) * log2_e) {}

  // The keys and values of one (batch, kv head): key panels for S^T, value rows for P V.
  struct packed_head {
    index_t b = -1, h = -1;
    float* key_panels = nullptr;
    float* value_rows = nullptr;
  };

  void pack_head(packed_head& kv, index_t b, index_t h) const {
    if (kv.b == b && kv.h == h) {
      return;
    }
    kv.b = b;
    kv.h = h;
    tiles::pack_key_panels(head_of(p.k, b, h), seq_kv, d, kv.key_panels);
    tiles::copy_rows(head_of(p.v, b, h), seq_kv, d, kv.value_rows);
  }

  // Scratch per thread: packed keys and values, the query panel, S^T and O, each 64-byte aligned.
  struct scratch_layout {
    index_t key_panels, value_rows, q_panel, s, o, total;
  };
  scratch_layout layout() const {
    scratch_layout at{};
    index_t offset = 0;
    const auto carve = [&offset](index_t floats) {
      const index_t begin = offset;
      offset += round_up(floats, 16);
      return begin;
    };
    at.key_panels = carve(round_up(seq_kv, tiles::mr) * d);
    at.value_rows = carve(seq_kv * dp);
    at.q_panel = carve(d * queries);
    at.s = carve(tiles::key_block * queries);
    at.o = carve(queries * dp);
    at.total = offset;
    return at;
  }

  void run_block(const packed_head& kv, index_t b, index_t hq, index_t q0, float* q_panel, float* s, float* o) const {
    constexpr float minus_inf = -std::numeric_limits<float>::infinity();
    const index_t count = std::min(queries, seq_q - q0);
    tiles::pack_query_panel(head_of(p.q, b, hq), q0, count, d, q_factor, q_panel);
    std::fill(o, o + queries * dp, 0.0f);
    batch m[vectors], l[vectors];
    for (index_t v = 0; v < vectors; ++v) {
      m[v] = batch(minus_inf);
      l[v] = batch(0.0f);
    }
    const ops::key_range first_query = ops::visible_keys(q0, seq_q, seq_kv, p.causal, p.window);
    const ops::key_range last_query = ops::visible_keys(q0 + count - 1, seq_q, seq_kv, p.causal, p.window);
    const ops::key_range keys = tiles::block_keys(q0, count, seq_q, seq_kv, p.causal, p.window);
    // Blocks start on panel boundaries; keys before a query's window are masked like the others.
    for (index_t k0 = keys.first / tiles::mr * tiles::mr; k0 < keys.last; k0 += tiles::key_block) {
      const index_t n = std::min(tiles::key_block, keys.last - k0);
      tiles::scores(kv.key_panels + k0 * d, n, d, q_panel, s);
      if (tiles::block_needs_mask(k0, n, first_query, last_query)) {
        tiles::mask_scores(s, k0, n, q0, count, seq_q, seq_kv, p.causal, p.window);
      }
      update(s, n, m, l, o, kv.value_rows + k0 * dp);
    }
    store(b, hq, q0, count, m, l, o);
  }

  // The online softmax step for one block of `rows` keys, then O = O * correction + P V.
  void update(float* s, index_t rows, batch* m, batch* l, float* o, const float* values) const {
    alignas(64) float correction[queries];
    for (index_t v = 0; v < vectors; ++v) {
      batch block_max = batch::load_aligned(s + v * lanes);
      for (index_t j = 1; j < rows; ++j) {
        block_max = xsimd::max(block_max, batch::load_aligned(s + j * queries + v * lanes));
      }
      const batch m_new = xsimd::max(m[v], block_max);
      // A query that has seen no key yet keeps m = -inf; 0 stands in, so that no -inf - -inf appears.
      const batch m_use = xsimd::select(m_new == batch(-std::numeric_limits<float>::infinity()), batch(0.0f), m_new);
      const batch corr = xsimd::exp2(m[v] - m_use);
      batch sum(0.0f);
      for (index_t j = 0; j < rows; ++j) {
        float* row = s + j * queries + v * lanes;
        const batch prob = xsimd::exp2(batch::load_aligned(row) - m_use);
        prob.store_aligned(row);
        sum += prob;
      }
      l[v] = l[v] * corr + sum;
      m[v] = m_new;
      corr.store_aligned(correction + v * lanes);
    }
    // O (queries x dp) = O * correction + P V: P(q, key) = S^T[key][q], eight queries per call.
    alignas(64) float tile[tiles::mr * tiles::dim_step];
    for (index_t q = 0; q < queries; q += tiles::mr) {
      for (index_t c = 0; c < dp; c += tiles::dim_step) {
        kernel::template run<float, 1, queries>(rows, s + q, values + c, dp, tile);
        for (index_t i = 0; i < tiles::mr; ++i) {
          const batch corr(correction[q + i]);
          float* out = o + (q + i) * dp + c;
          for (index_t v = 0; v < tiles::dim_step; v += lanes) {
            xsimd::fma(batch::load_aligned(out + v), corr, batch::load_aligned(tile + i * tiles::dim_step + v))
                .store_aligned(out + v);
          }
        }
      }
    }
  }

  void store(index_t b, index_t hq, index_t q0, index_t count, const batch* m, const batch* l, const float* o) const {
    alignas(64) float max_lane[queries], sum_lane[queries];
    for (index_t v = 0; v < vectors; ++v) {
      m[v].store_aligned(max_lane + v * lanes);
      l[v].store_aligned(sum_lane + v * lanes);
    }
    const head_rows<T> out = head_of(p.o, b, hq);
    for (index_t q = 0; q < count; ++q) {
      // l = 0: the query saw no key (seq_kv = 0): a zero output and lse = -inf. NaN stays NaN.
      const float sum = sum_lane[q];
      const float inverse = sum == 0.0f ? 0.0f : 1.0f / sum;
      T* row = out.row(q0 + q);
      const float* acc = o + q * dp;
      for (index_t j = 0; j < d; ++j) {
        row[j] = T(acc[j] * inverse);
      }
      if (p.lse != nullptr) {
        const float lse = sum == 0.0f ? -std::numeric_limits<float>::infinity() : (max_lane[q] + std::log2(sum)) * ln_2;
        p.lse[(b * p.heads_q() + hq) * seq_q + q0 + q] = lse;
      }
    }
  }

  void run(const context& ctx) const {
    const index_t blocks = (seq_q + queries - 1) / queries;
    const index_t tasks = p.batch() * p.heads_q() * blocks;
    std::atomic<index_t> next{0};
    parallel_region(context(static_cast<int>(std::min<index_t>(ctx.threads(), tasks))), [&](int, int) {
      const scratch_layout at = layout();
      float* scratch = thread_workspace<Arch, 0, float>(static_cast<std::size_t>(at.total));
      packed_head kv;
      kv.key_panels = scratch + at.key_panels;
      kv.value_rows = scratch + at.value_rows;
      float* q_panel = scratch + at.q_panel;
      float* s = scratch + at.s;
      float* o = scratch + at.o;
      for (index_t task = next.fetch_add(1); task < tasks; task = next.fetch_add(1)) {
        // task = ((b * heads_kv + h_kv) * group + g) * blocks + block
        const index_t block = task % blocks;
        const index_t head = task / blocks; // b * heads_q + h_q, with h_q = h_kv * group + g
        const index_t b = head / p.heads_q();
        const index_t hq = head % p.heads_q();
        pack_head(kv, b, hq / group);
        run_block(kv, b, hq, block * queries, q_panel, s, o);
      }
    });
  }
};

template <class Arch, class T>
void attention_forward_run(const context& ctx, const ops::attention_forward_params<T>& p) {
  attention_forward_pass<Arch, T>(p).run(ctx);
}

} // namespace kern::cpu::detail
