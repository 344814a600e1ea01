// kern::cpu::embedding_forward / embedding_backward against plain scalar loops (what an engine writes
// without kern), in GB/s of the minimum traffic (out or dout once, each looked-up table row read, or
// read and written for the gradients), and as a fraction of the triad bandwidth. Shape: GPT-2 small
// (vocab 50304, dim 768, 1024 positions) at batch 8 x seq 1024, and a batch of one short sequence.
#include <cstddef>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "bench_common.hpp"
#include "kern/cpu.hpp"

namespace {

using kern::index_t;
using namespace kern::bench;

constexpr index_t vocab = 50304, dim = 768, positions = 1024;

struct problem {
  std::vector<std::int32_t> tokens;
  std::vector<float> wte, wpe;
  explicit problem(index_t rows)
      : tokens(static_cast<std::size_t>(rows)), wte(vocab * dim, 0.01f), wpe(positions * dim, 0.02f) {
    std::mt19937 rng(42);
    std::uniform_int_distribution<std::int32_t> pick(0, vocab - 1);
    for (auto& t : tokens) {
      t = pick(rng);
    }
  }
};

template <class T> void forward(benchmark::State& state, bool kern_impl, index_t batch, index_t seq) {
  const index_t rows = batch * seq;
  problem pr(rows);
  kern::aligned_buffer<T> out(static_cast<std::size_t>(rows * dim));
  kern::ops::embedding_forward_params<T> p;
  p.tokens = pr.tokens.data();
  p.batch = batch;
  p.seq = seq;
  p.token_table = {pr.wte.data(), vocab, dim};
  p.position_table = {pr.wpe.data(), positions, dim};
  p.out = {out.data(), rows, dim};
  const kern::cpu::context ctx(threads_of(state));
  for (auto _ : state) {
    if (kern_impl) {
      kern::cpu::embedding_forward(ctx, p);
    } else {
      for (index_t r = 0; r < rows; ++r) {
        const float* token = pr.wte.data() + pr.tokens[static_cast<std::size_t>(r)] * dim;
        const float* position = pr.wpe.data() + (r % seq) * dim;
        for (index_t j = 0; j < dim; ++j) {
          out[static_cast<std::size_t>(r * dim + j)] = T(token[j] + position[j]);
        }
      }
    }
    benchmark::ClobberMemory();
  }
  report_bytes(state, static_cast<double>(rows * dim) * (sizeof(T) + sizeof(float)) +
                          static_cast<double>(seq * dim) * sizeof(float));
}

template <class T> void backward(benchmark::State& state, bool kern_impl, index_t batch, index_t seq) {
  const index_t rows = batch * seq;
  problem pr(rows);
  kern::aligned_buffer<T> dout(static_cast<std::size_t>(rows * dim));
  for (std::size_t i = 0; i < dout.size(); ++i) {
    dout[i] = T(1e-3f * static_cast<float>(i % 7));
  }
  std::vector<float>& dwte = pr.wte;
  std::vector<float>& dwpe = pr.wpe;
  kern::ops::embedding_backward_params<T> p;
  p.tokens = pr.tokens.data();
  p.batch = batch;
  p.seq = seq;
  p.dout = {dout.data(), rows, dim};
  p.token_grad = {dwte.data(), vocab, dim};
  p.position_grad = {dwpe.data(), positions, dim};
  const kern::cpu::context ctx(threads_of(state));
  for (auto _ : state) {
    if (kern_impl) {
      kern::cpu::embedding_backward(ctx, p);
    } else {
      for (index_t r = 0; r < rows; ++r) {
        float* token = dwte.data() + pr.tokens[static_cast<std::size_t>(r)] * dim;
        float* position = dwpe.data() + (r % seq) * dim;
        for (index_t j = 0; j < dim; ++j) {
          const float g = static_cast<float>(dout[static_cast<std::size_t>(r * dim + j)]);
          token[j] += g;
          position[j] += g;
        }
      }
    }
    benchmark::ClobberMemory();
  }
  // dout once; each token's gradient row and each position's read and written.
  report_bytes(state, static_cast<double>(rows * dim) * (sizeof(T) + 2 * sizeof(float)) +
                          2.0 * static_cast<double>(seq * dim) * sizeof(float));
}

template <class T> void add_type(const char* dtype) {
  for (const auto& [batch, seq] : {std::pair<index_t, index_t>{8, 1024}, std::pair<index_t, index_t>{1, 256}}) {
    const std::string shape = std::to_string(batch) + "x" + std::to_string(seq) + "x" + std::to_string(dim) + "_vocab" +
                              std::to_string(vocab);
    add("embedding_fwd", "kern", dtype, shape, [=](benchmark::State& s) { forward<T>(s, true, batch, seq); });
    add("embedding_fwd", "scalar", dtype, shape, [=](benchmark::State& s) { forward<T>(s, false, batch, seq); }, {1});
    add("embedding_bwd", "kern", dtype, shape, [=](benchmark::State& s) { backward<T>(s, true, batch, seq); });
    add("embedding_bwd", "scalar", dtype, shape, [=](benchmark::State& s) { backward<T>(s, false, batch, seq); }, {1});
  }
}

const bool registered = [] {
  add_type<float>("f32");
  add_type<kern::bf16>("bf16");
  return true;
}();

} // namespace
