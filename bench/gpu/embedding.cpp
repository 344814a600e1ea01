// kern::gpu::embedding_forward / embedding_backward on GPT-2's shapes: batch 8 x seq 1024 tokens,
// dim 768, vocabulary 50304, learned positions. Token ids follow a Zipf law (rank k drawn with
// probability ~ 1/k, as words in text), so that the backward's runs of one id are as uneven as in
// real batches. GB/s count the least traffic: forward, the distinct token rows and the position
// rows read once and the output written once; backward, dout read once and the distinct token
// gradient rows and the position gradient rows read and written once.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "gpu/gpu_bench.hpp"
#include "kern/gpu/embedding.hpp"

namespace {

using kern::bf16;
using kern::index_t;

constexpr index_t batch = 8, seq = 1024, dim = 768, vocab = 50304, rows = batch * seq;

std::vector<std::int32_t> zipf_tokens() {
  std::mt19937 rng(2024);
  std::uniform_real_distribution<double> uniform(0.0, 1.0);
  std::vector<std::int32_t> tokens(static_cast<std::size_t>(rows));
  for (auto& t : tokens) {
    const double rank = std::floor(std::exp(uniform(rng) * std::log(static_cast<double>(vocab))));
    t = static_cast<std::int32_t>(rank) - 1;
  }
  return tokens;
}

struct token_ids {
  std::vector<std::int32_t> host = zipf_tokens();
  kern::gpu::device_buffer<std::int32_t> device{host.size()};
  double distinct = static_cast<double>(std::set<std::int32_t>(host.begin(), host.end()).size());
  token_ids() {
    kern::gpu::copy(device.data(), host.data(), host.size(), nullptr);
    kern::gpu::synchronize(nullptr);
  }
};

const token_ids& tokens() {
  static const token_ids ids;
  return ids;
}

template <class T> void forward(benchmark::State& state) {
  const auto wte = kern::bench::device_filled<float>(static_cast<std::size_t>(vocab * dim));
  const auto wpe = kern::bench::device_filled<float>(static_cast<std::size_t>(seq * dim));
  kern::gpu::device_buffer<T> out(static_cast<std::size_t>(rows * dim));
  kern::ops::embedding_forward_params<T> p;
  p.tokens = tokens().device.data();
  p.batch = batch;
  p.seq = seq;
  p.token_table = {wte.data(), vocab, dim};
  p.position_table = {wpe.data(), seq, dim};
  p.out = {out.data(), rows, dim};
  const double bytes = (tokens().distinct + seq) * dim * sizeof(float) + static_cast<double>(rows * dim) * sizeof(T);
  kern::bench::time_on_gpu(state, bytes, [&](kern::gpu::stream_t s) { kern::gpu::embedding_forward(p, nullptr, s); });
}

template <class T> void backward(benchmark::State& state) {
  const auto dout = kern::bench::device_filled<T>(static_cast<std::size_t>(rows * dim));
  auto token_grad = kern::bench::device_filled<float>(static_cast<std::size_t>(vocab * dim));
  auto position_grad = kern::bench::device_filled<float>(static_cast<std::size_t>(seq * dim));
  kern::ops::embedding_backward_params<T> p;
  p.tokens = tokens().device.data();
  p.batch = batch;
  p.seq = seq;
  p.dout = {dout.data(), rows, dim};
  p.token_grad = {token_grad.data(), vocab, dim};
  p.position_grad = {position_grad.data(), seq, dim};
  kern::gpu::device_buffer<std::byte> workspace(kern::gpu::embedding_backward_workspace_bytes(p));
  const double bytes =
      static_cast<double>(rows * dim) * sizeof(T) + 2.0 * (tokens().distinct + seq) * dim * sizeof(float);
  kern::bench::time_on_gpu(
      state, bytes, [&](kern::gpu::stream_t s) { kern::gpu::embedding_backward(p, workspace.data(), nullptr, s); });
}

template <class Run> void add(const std::string& family, const std::string& dtype, Run run) {
  const std::string shape = std::to_string(batch) + "x" + std::to_string(seq) + "_dim" + std::to_string(dim) +
                            "_vocab" + std::to_string(vocab);
  kern::bench::add_gpu_benchmark(family, dtype, shape, run);
}

[[maybe_unused]] const bool registered = [] {
  add("embedding_forward", "f32", forward<float>);
  add("embedding_forward", "bf16", forward<bf16>);
  add("embedding_backward", "f32", backward<float>);
  add("embedding_backward", "bf16", backward<bf16>);
  return true;
}();

} // namespace
