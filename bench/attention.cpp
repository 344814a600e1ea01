// kern's attention kernels in GFLOP/s and as a fraction of the FMA peak, against "materialized"
// attention: what an engine without a fused kernel computes from kern's own GEMM and softmax, one
// (batch, head) at a time with its seq x seq score matrix in memory:
//   forward   S = Q K^T (gemm), the causal mask (-inf above the diagonal), P = softmax(scale S)
//             (softmax_forward), O = P V (gemm);
//   backward  P recomputed as above, dV = P^T dO and dP = dO V^T (gemm), dS = softmax_backward(P, dP),
//             dQ = scale dS K and dK = scale dS^T Q (gemm).
// The materialized impl runs the (batch, head) pairs in parallel, each thread with its own score
// buffers (allocated before the timed loop) and single-threaded GEMM and softmax calls.
//
// Names: attention_fwd or attention_bwd / kern or materialized / dtype /
// b<batch>_h<heads>_s<seq>_d<head_dim>[_causal] / threads:N, e.g.
// attention_fwd/kern/f32/b4_h12_s1024_d64_causal/threads:2. Tensors are [batch, seq, heads, head_dim].
// GFLOPS counts the products the result needs, as FlashAttention does: forward 4 batch heads seq^2
// head_dim (Q K^T and P V), half of it with the causal mask; backward 2.5 times the forward (S
// recomputed, dV, dP, dQ, dK). Both impls are credited the same count (the materialized one also
// computes the masked half).
//
// gemm/kern/f32/2048x2048x2048 is the yardstick: the attention kernels aim at 70% of kern's own GEMM rate.
//
// attention_decode: a sampler's step, one query per sequence against a KV cache, by
// attention_decode (flash-decoding: the keys split among the threads) and by attention_forward (the
// queries split among the threads: one sequence and few heads leave threads idle), in GB/s of the
// K and V bytes read.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <limits>
#include <string>
#include <vector>

#include "bench_common.hpp"
#include "kern/cpu.hpp"

namespace {

using kern::index_t;
using kern::ops::transpose;
using namespace kern::bench;

struct shape {
  index_t batch = 1, heads = 12, seq = 1024, head_dim = 64;
  bool causal = false;

  std::string name() const {
    return "b" + std::to_string(batch) + "_h" + std::to_string(heads) + "_s" + std::to_string(seq) + "_d" +
           std::to_string(head_dim) + (causal ? "_causal" : "");
  }
  index_t elements() const { return batch * seq * heads * head_dim; }
  kern::ops::attention_tensor<float>::extents extents() const { return {batch, seq, heads, head_dim}; }
  float scale() const { return 1.0f / std::sqrt(static_cast<float>(head_dim)); }
  double forward_flops() const {
    const double full = 4.0 * static_cast<double>(batch * heads) * static_cast<double>(seq) * static_cast<double>(seq) *
                        static_cast<double>(head_dim);
    return causal ? full / 2.0 : full;
  }
  double backward_flops() const { return 2.5 * forward_flops(); }
};

// Uniform in [-1, 1), from a fixed seed (splitmix64: fast enough for tensors of tens of MB).
template <class T> kern::aligned_buffer<T> filled(index_t n, std::uint64_t seed) {
  kern::aligned_buffer<T> buffer(static_cast<std::size_t>(n));
  std::uint64_t state = seed * 0x9E3779B97F4A7C15ULL;
  for (T& x : buffer) {
    state += 0x9E3779B97F4A7C15ULL;
    std::uint64_t z = state;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    z ^= z >> 31;
    x = kern::from_float<T>(static_cast<float>(static_cast<double>(z >> 40) * 0x1p-23 - 1.0));
  }
  return buffer;
}

// The inputs and outputs of one shape's forward and backward, filled once per benchmark run.
template <class T> struct tensors {
  kern::aligned_buffer<T> q, k, v, o, d_o, dq, dk, dv;
  kern::aligned_buffer<float> lse;

  explicit tensors(const shape& s)
      : q(filled<T>(s.elements(), 1)), k(filled<T>(s.elements(), 2)), v(filled<T>(s.elements(), 3)),
        o(filled<T>(s.elements(), 4)), d_o(filled<T>(s.elements(), 5)), dq(filled<T>(s.elements(), 6)),
        dk(filled<T>(s.elements(), 7)), dv(filled<T>(s.elements(), 8)),
        lse(static_cast<std::size_t>(s.batch * s.heads * s.seq), 0.0f) {}

  kern::ops::attention_forward_params<T> forward(const shape& s) {
    kern::ops::attention_forward_params<T> p;
    p.q = {q.data(), s.extents()};
    p.k = {k.data(), s.extents()};
    p.v = {v.data(), s.extents()};
    p.o = {o.data(), s.extents()};
    p.lse = lse.data();
    p.causal = s.causal;
    return p;
  }
  kern::ops::attention_backward_params<T> backward(const shape& s) {
    kern::ops::attention_backward_params<T> p;
    p.q = {q.data(), s.extents()};
    p.k = {k.data(), s.extents()};
    p.v = {v.data(), s.extents()};
    p.o = {o.data(), s.extents()};
    p.d_o = {d_o.data(), s.extents()};
    p.lse = lse.data();
    p.dq = {dq.data(), s.extents()};
    p.dk = {dk.data(), s.extents()};
    p.dv = {dv.data(), s.extents()};
    p.causal = s.causal;
    return p;
  }
};

// Runs call() once untimed (thread start-up, first touch of the outputs and scratch), then times it.
template <class Call> void timed_loop(benchmark::State& state, Call&& call) {
  try {
    call();
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
    return;
  }
  for (auto _ : state) {
    call();
    benchmark::ClobberMemory();
  }
}

// ---- kern

template <class T> void kern_forward(benchmark::State& state, const shape& s) {
  tensors<T> x(s);
  const kern::cpu::context ctx(threads_of(state));
  const auto p = x.forward(s);
  timed_loop(state, [&] { kern::cpu::attention_forward(ctx, p); });
  report_flops(state, s.forward_flops());
}

void kern_backward(benchmark::State& state, const shape& s) {
  tensors<float> x(s);
  const kern::cpu::context ctx(threads_of(state));
  kern::cpu::attention_forward(ctx, x.forward(s)); // the o and lse the backward reads
  const auto p = x.backward(s);
  timed_loop(state, [&] { kern::cpu::attention_backward(ctx, p); });
  report_flops(state, s.backward_flops());
}

// ---- materialized: kern's GEMM and softmax over seq x seq scores

// Head h of batch b of a [batch, seq, heads, head_dim] tensor: a seq x head_dim matrix.
template <class T> kern::matrix_view<T> head(T* x, const shape& s, index_t b, index_t h) {
  return {x + (b * s.seq * s.heads + h) * s.head_dim, s.seq, s.head_dim, s.heads * s.head_dim};
}

using gemm_params = kern::ops::gemm_params<float, float, float>;

// Each thread's seq x seq buffers: P, and dP for the backward.
struct scratch {
  std::vector<kern::aligned_buffer<float>> p, dp;
  scratch(const shape& s, int threads, bool backward) {
    const auto size = static_cast<std::size_t>(s.seq * s.seq);
    for (int t = 0; t < threads; ++t) {
      p.emplace_back(size, 0.0f);
      if (backward) {
        dp.emplace_back(size, 0.0f);
      }
    }
  }
};

// P = softmax(scale Q K^T + mask) for one (batch, head), into p.
void probabilities(const shape& s, const float* q, const float* k, index_t b, index_t h, kern::matrix_view<float> p) {
  const kern::cpu::context one(1);
  gemm_params product{.a = head(q, s, b, h), .b = head(k, s, b, h), .c = p};
  product.trans_b = transpose::trans;
  kern::cpu::gemm(one, product);
  if (s.causal) {
    for (index_t i = 0; i + 1 < s.seq; ++i) {
      std::fill(p.row(i) + i + 1, p.row(i) + s.seq, -std::numeric_limits<float>::infinity());
    }
  }
  kern::cpu::softmax_forward(one, kern::ops::softmax_forward_params<float>{p, p, s.scale()});
}

// Calls body(b, h, thread) for every (batch, head), the pairs split evenly among the threads.
template <class Body> void each_head(const kern::cpu::context& ctx, const shape& s, Body&& body) {
  kern::cpu::parallel_region(ctx, [&](int thread, int threads) {
    const kern::cpu::range mine = kern::cpu::split_evenly(s.batch * s.heads, threads, thread);
    for (index_t bh = mine.begin; bh < mine.end; ++bh) {
      body(bh / s.heads, bh % s.heads, static_cast<std::size_t>(thread));
    }
  });
}

void materialized_forward(benchmark::State& state, const shape& s) {
  tensors<float> x(s);
  const kern::cpu::context ctx(threads_of(state));
  scratch buffers(s, ctx.threads(), false);
  const kern::cpu::context one(1);
  timed_loop(state, [&] {
    each_head(ctx, s, [&](index_t b, index_t h, std::size_t thread) {
      const kern::matrix_view<float> p{buffers.p[thread].data(), s.seq, s.seq};
      probabilities(s, x.q.data(), x.k.data(), b, h, p);
      kern::cpu::gemm(one, gemm_params{.a = p, .b = head(x.v.data(), s, b, h), .c = head(x.o.data(), s, b, h)});
    });
  });
  report_flops(state, s.forward_flops());
}

void materialized_backward(benchmark::State& state, const shape& s) {
  tensors<float> x(s);
  const kern::cpu::context ctx(threads_of(state));
  scratch buffers(s, ctx.threads(), true);
  const kern::cpu::context one(1);
  timed_loop(state, [&] {
    each_head(ctx, s, [&](index_t b, index_t h, std::size_t thread) {
      const kern::matrix_view<float> p{buffers.p[thread].data(), s.seq, s.seq};
      const kern::matrix_view<float> dp{buffers.dp[thread].data(), s.seq, s.seq};
      probabilities(s, x.q.data(), x.k.data(), b, h, p);
      const auto q = head(x.q.data(), s, b, h), k = head(x.k.data(), s, b, h), v = head(x.v.data(), s, b, h);
      const auto d_o = head(x.d_o.data(), s, b, h);
      gemm_params dv{.a = p, .b = d_o, .c = head(x.dv.data(), s, b, h)}; // dV = P^T dO
      dv.trans_a = transpose::trans;
      kern::cpu::gemm(one, dv);
      gemm_params dp_product{.a = d_o, .b = v, .c = dp}; // dP = dO V^T
      dp_product.trans_b = transpose::trans;
      kern::cpu::gemm(one, dp_product);
      kern::cpu::softmax_backward(one, kern::ops::softmax_backward_params<float>{p, dp, dp}); // dS, in place
      gemm_params dq{.a = dp, .b = k, .c = head(x.dq.data(), s, b, h)};                       // dQ = scale dS K
      dq.alpha = s.scale();
      kern::cpu::gemm(one, dq);
      gemm_params dk{.a = dp, .b = q, .c = head(x.dk.data(), s, b, h)}; // dK = scale dS^T Q
      dk.trans_a = transpose::trans;
      dk.alpha = s.scale();
      kern::cpu::gemm(one, dk);
    });
  });
  report_flops(state, s.backward_flops());
}

// ---- decode: one query per sequence against a KV cache of seq_kv positions

struct decode_shape {
  index_t batch, heads_q, heads_kv, seq_kv, head_dim;

  std::string name() const {
    return "b" + std::to_string(batch) + "_h" + std::to_string(heads_q) + "_kv" + std::to_string(heads_kv) + "_q1_s" +
           std::to_string(seq_kv) + "_d" + std::to_string(head_dim);
  }
  double kv_bytes() const { return 2.0 * static_cast<double>(batch * seq_kv * heads_kv * head_dim) * sizeof(float); }
};

void decode(benchmark::State& state, const decode_shape& s, bool flash_decoding) {
  const auto q = filled<float>(s.batch * s.heads_q * s.head_dim, 1);
  const auto k = filled<float>(s.batch * s.seq_kv * s.heads_kv * s.head_dim, 2);
  const auto v = filled<float>(s.batch * s.seq_kv * s.heads_kv * s.head_dim, 3);
  kern::aligned_buffer<float> o(static_cast<std::size_t>(s.batch * s.heads_q * s.head_dim), 0.0f);
  kern::ops::attention_forward_params<float> p;
  p.q = {q.data(), {s.batch, 1, s.heads_q, s.head_dim}};
  p.k = {k.data(), {s.batch, s.seq_kv, s.heads_kv, s.head_dim}};
  p.v = {v.data(), {s.batch, s.seq_kv, s.heads_kv, s.head_dim}};
  p.o = {o.data(), {s.batch, 1, s.heads_q, s.head_dim}};
  p.causal = true;
  const kern::cpu::context ctx(threads_of(state));
  timed_loop(state, [&] {
    if (flash_decoding) {
      kern::cpu::attention_decode(ctx, p);
    } else {
      kern::cpu::attention_forward(ctx, p);
    }
  });
  report_bytes(state, s.kv_bytes());
}

// ---- the yardstick

void gemm_2048(benchmark::State& state) {
  constexpr index_t n = 2048;
  const auto a = filled<float>(n * n, 1), b = filled<float>(n * n, 2);
  kern::aligned_buffer<float> c(static_cast<std::size_t>(n * n), 0.0f);
  const kern::cpu::context ctx(threads_of(state));
  const gemm_params p{.a = {a.data(), n, n}, .b = {b.data(), n, n}, .c = {c.data(), n, n}};
  timed_loop(state, [&] { kern::cpu::gemm(ctx, p); });
  report_flops(state, 2.0 * n * n * n);
}

// ---- registration: for each shape, kern then materialized, so that their ratio holds on a noisy machine

// NOLINTNEXTLINE(cert-err58-cpp): Google Benchmark registers benchmarks at static initialization
const bool registered = [] {
  add("gemm", "kern", "f32", "2048x2048x2048", gemm_2048)->Unit(benchmark::kMillisecond);
  struct size {
    index_t batch, seq;
    bool backward;
  };
  for (const size z : {size{8, 256, false}, size{4, 1024, true}, size{2, 2048, false}, size{1, 4096, true}}) {
    for (index_t head_dim : {64, 128}) {
      for (bool causal : {false, true}) {
        const shape s{.batch = z.batch, .heads = 12, .seq = z.seq, .head_dim = head_dim, .causal = causal};
        const bool materialize = s.seq <= 2048; // a 64 MB score buffer per thread beyond
        add("attention_fwd", "kern", "f32", s.name(), [s](benchmark::State& st) {
          kern_forward<float>(st, s);
        })->Unit(benchmark::kMillisecond);
        if (materialize) {
          add("attention_fwd", "materialized", "f32", s.name(), [s](benchmark::State& st) {
            materialized_forward(st, s);
          })->Unit(benchmark::kMillisecond);
        }
        if (z.backward) {
          add("attention_bwd", "kern", "f32", s.name(), [s](benchmark::State& st) {
            kern_backward(st, s);
          })->Unit(benchmark::kMillisecond);
          if (materialize) {
            add("attention_bwd", "materialized", "f32", s.name(), [s](benchmark::State& st) {
              materialized_backward(st, s);
            })->Unit(benchmark::kMillisecond);
          }
        }
      }
    }
  }
  const shape gpt2{.batch = 4, .heads = 12, .seq = 1024, .head_dim = 64, .causal = true};
  add("attention_fwd", "kern", "bf16", gpt2.name(), [gpt2](benchmark::State& st) {
    kern_forward<kern::bf16>(st, gpt2);
  })->Unit(benchmark::kMillisecond);

  // A Llama-like grouped cache (32 query heads on 8 key/value heads) and GPT-2 sampling 4 sequences.
  for (const decode_shape s : {decode_shape{1, 32, 8, 4096, 128}, decode_shape{4, 12, 12, 2048, 64}}) {
    add("attention_decode", "kern", "f32", s.name(), [s](benchmark::State& st) {
      decode(st, s, true);
    })->Unit(benchmark::kMicrosecond);
    add("attention_decode", "kern_forward", "f32", s.name(), [s](benchmark::State& st) {
      decode(st, s, false);
    })->Unit(benchmark::kMicrosecond);
  }
  return true;
}();

} // namespace
