// The CPU attention backward pass: FlashAttention-2's, with the probabilities recomputed from the
// saved log-sum-exp.
//
// For a block of NR queries and each block of keys it sees (scores held transposed, see tiles.hpp):
//   P^T  = exp2(K Q'^T - lse log2 e)         (Q' = Q scale log2 e: P in natural units)
//   dP^T = V dO^T
//   dS^T = P^T (dP^T - D),  D = rowsum(dO o O)
//   dQ  += dS K,   dK += dS^T Q,   dV += P^T dO   (dQ and dK times scale at the end)
//
// Threading without atomics: a task is one (batch, kv head) and runs on one thread, over the
// query heads that share the kv head, their query blocks, and the key blocks each sees, in that
// order. dK and dV of the kv head are fp32 accumulators of the task, dQ one query block's; every
// sum is taken in a fixed order, so the bits do not depend on the thread count.
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

template <class Arch, class T> struct attention_backward_pass {
  using tiles = attention_tiles<Arch>;
  using kernel = typename tiles::kernel;
  using batch = fbatch<Arch>;
  static constexpr index_t lanes = tiles::lanes;
  static constexpr index_t queries = tiles::queries;
  static constexpr index_t mr = tiles::mr;
  static constexpr index_t step = tiles::dim_step;

  const ops::attention_backward_params<T>& p;
  index_t d, dp, seq_q, seq_kv, group;
  float scale, q_factor;

  explicit attention_backward_pass(const ops::attention_backward_params<T>& params)
      : p(params), d(params.head_dim()), dp(tiles::padded_dim(params.head_dim())), seq_q(params.seq_q()),
        seq_kv(params.seq_kv()), group(params.heads_kv() > 0 ? params.heads_q() / params.heads_kv() : 0),
        scale(ops::attention_scale(params)), q_factor(ops::attention_scale(params) * log2_e) {}

  // Per-thread scratch, each piece 64-byte aligned.
  struct buffers {
    float *key_panels, *value_panels, *key_rows, *dk, *dv;                     // the kv head's
    float *q_panel, *do_panel, *q_rows, *do_rows, *s, *ds, *dq, *lse2, *delta; // a query block's
  };

  index_t carve(buffers* out, float* base) const {
    index_t offset = 0;
    const auto take = [&](float*& ptr, index_t floats) {
      if (out != nullptr) {
        ptr = base + offset;
      }
      offset += round_up(floats, 16);
    };
    buffers unused{};
    buffers& b = out != nullptr ? *out : unused;
    const index_t panels = round_up(seq_kv, mr) * d;
    take(b.key_panels, panels);
    take(b.value_panels, panels);
    take(b.key_rows, seq_kv * dp);
    take(b.dk, seq_kv * dp);
    take(b.dv, seq_kv * dp);
    take(b.q_panel, d * queries);
    take(b.do_panel, d * queries);
    take(b.q_rows, queries * dp);
    take(b.do_rows, queries * dp);
    take(b.s, tiles::key_block * queries);
    take(b.ds, tiles::key_block * queries);
    take(b.dq, queries * dp);
    take(b.lse2, queries);
    take(b.delta, queries);
    return offset;
  }

  // dst rows [0, rows) += the first `rows` rows of an mr x step tile (row stride ld).
  static void add_tile(float* dst, index_t ld, const float* tile, index_t rows) {
    for (index_t i = 0; i < rows; ++i) {
      for (index_t v = 0; v < step; v += lanes) {
        (batch::load_aligned(dst + i * ld + v) + batch::load_aligned(tile + i * step + v))
            .store_aligned(dst + i * ld + v);
      }
    }
  }

  void query_block(const buffers& w, index_t b, index_t hq, index_t q0) const {
    const index_t count = std::min(queries, seq_q - q0);
    const head_rows<const T> q = head_of(p.q, b, hq), d_o = head_of(p.d_o, b, hq), o = head_of(p.o, b, hq);
    tiles::pack_query_panel(q, q0, count, d, q_factor, w.q_panel);
    tiles::pack_query_panel(d_o, q0, count, d, 1.0f, w.do_panel);
    tiles::copy_rows(head_rows<const T>{q.row(q0), q.ld}, count, d, w.q_rows);
    tiles::copy_rows(head_rows<const T>{d_o.row(q0), d_o.ld}, count, d, w.do_rows);
    std::fill(w.q_rows + count * dp, w.q_rows + queries * dp, 0.0f);
    std::fill(w.do_rows + count * dp, w.do_rows + queries * dp, 0.0f);
    std::fill(w.dq, w.dq + queries * dp, 0.0f);
    const float* lse = p.lse + (b * p.heads_q() + hq) * seq_q + q0;
    for (index_t i = 0; i < queries; ++i) {
      w.lse2[i] = i < count ? lse[i] * log2_e : 0.0f;
      w.delta[i] = 0.0f;
    }
    for (index_t i = 0; i < count; ++i) { // D = rowsum(dO o O)
      const T* o_row = o.row(q0 + i);
      const float* do_row = w.do_rows + i * dp;
      batch sum(0.0f);
      for_each_batch<Arch>(d, [&](index_t j, index_t valid) {
        sum = xsimd::fma(load_float_n<Arch>(o_row + j, valid), batch::load_aligned(do_row + j), sum);
      });
      w.delta[i] = reduce_sum<Arch>(sum);
    }

    const ops::key_range first_query = ops::visible_keys(q0, seq_q, seq_kv, p.causal, p.window);
    const ops::key_range last_query = ops::visible_keys(q0 + count - 1, seq_q, seq_kv, p.causal, p.window);
    const ops::key_range keys = tiles::block_keys(q0, count, seq_q, seq_kv, p.causal, p.window);
    alignas(64) float tile[mr * step];
    for (index_t k0 = keys.first / mr * mr; k0 < keys.last; k0 += tiles::key_block) {
      const index_t n = std::min(tiles::key_block, keys.last - k0);
      tiles::scores(w.key_panels + k0 * d, n, d, w.q_panel, w.s);
      if (tiles::block_needs_mask(k0, n, first_query, last_query)) {
        tiles::mask_scores(w.s, k0, n, q0, count, seq_q, seq_kv, p.causal, p.window);
      }
      tiles::scores(w.value_panels + k0 * d, n, d, w.do_panel, w.ds); // dP^T
      for (index_t j = 0; j < n; ++j) {
        float* s_row = w.s + j * queries;
        float* ds_row = w.ds + j * queries;
        for (index_t v = 0; v < queries; v += lanes) {
          const batch prob = xsimd::exp2(batch::load_aligned(s_row + v) - batch::load_aligned(w.lse2 + v));
          prob.store_aligned(s_row + v);
          (prob * (batch::load_aligned(ds_row + v) - batch::load_aligned(w.delta + v))).store_aligned(ds_row + v);
        }
      }
      // dQ (queries x d) += dS K: dS(q, key) = dS^T[key][q].
      for (index_t i = 0; i < queries; i += mr) {
        for (index_t c = 0; c < dp; c += step) {
          kernel::template run<float, 1, queries>(n, w.ds + i, w.key_rows + k0 * dp + c, dp, tile);
          add_tile(w.dq + i * dp + c, dp, tile, mr);
        }
      }
      // dV (keys x d) += P^T dO and dK += dS^T Q, over the block's real queries.
      for (index_t j = 0; j < n; j += mr) {
        const index_t rows = std::min(mr, n - j);
        for (index_t c = 0; c < dp; c += step) {
          kernel::template run<float, queries, 1>(count, w.s + j * queries, w.do_rows + c, dp, tile);
          add_tile(w.dv + (k0 + j) * dp + c, dp, tile, rows);
          kernel::template run<float, queries, 1>(count, w.ds + j * queries, w.q_rows + c, dp, tile);
          add_tile(w.dk + (k0 + j) * dp + c, dp, tile, rows);
        }
      }
    }
    const head_rows<T> dq = head_of(p.dq, b, hq);
    for (index_t i = 0; i < count; ++i) {
      store_row(dq.row(q0 + i), w.dq + i * dp, scale);
    }
  }

  void store_row(T* out, const float* acc, float factor) const {
    for_each_batch<Arch>(d, [&](index_t j, index_t valid) {
      store_from_float_n<Arch>(out + j, batch::load_aligned(acc + j) * batch(factor), valid);
    });
  }

  void kv_head(const buffers& w, index_t b, index_t h) const {
    const head_rows<const T> k = head_of(p.k, b, h), v = head_of(p.v, b, h);
    tiles::pack_key_panels(k, seq_kv, d, w.key_panels);
    tiles::pack_key_panels(v, seq_kv, d, w.value_panels);
    tiles::copy_rows(k, seq_kv, d, w.key_rows);
    std::fill(w.dk, w.dk + seq_kv * dp, 0.0f);
    std::fill(w.dv, w.dv + seq_kv * dp, 0.0f);
    for (index_t g = 0; g < group; ++g) {
      for (index_t q0 = 0; q0 < seq_q; q0 += queries) {
        query_block(w, b, h * group + g, q0);
      }
    }
    const head_rows<T> dk = head_of(p.dk, b, h), dv = head_of(p.dv, b, h);
    for (index_t j = 0; j < seq_kv; ++j) {
      store_row(dk.row(j), w.dk + j * dp, scale);
      store_row(dv.row(j), w.dv + j * dp, 1.0f);
    }
  }

  void run(const context& ctx) const {
    const index_t tasks = p.batch() * p.heads_kv();
    if (tasks == 0) {
      return;
    }
    std::atomic<index_t> next{0};
    parallel_region(context(static_cast<int>(std::min<index_t>(ctx.threads(), tasks))), [&](int, int) {
      float* base = thread_workspace<Arch, 1, float>(static_cast<std::size_t>(carve(nullptr, nullptr)));
      buffers w{};
      carve(&w, base);
      for (index_t task = next.fetch_add(1); task < tasks; task = next.fetch_add(1)) {
        kv_head(w, task / p.heads_kv(), task % p.heads_kv());
      }
    });
  }
};

template <class Arch, class T>
void attention_backward_run(const context& ctx, const ops::attention_backward_params<T>& p) {
  attention_backward_pass<Arch, T>(p).run(ctx);
}

} // namespace kern::cpu::detail
