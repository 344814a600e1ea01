// kern::gpu::softmax_forward / softmax_backward on attention scores (16384 rows x 1024, 8192 x
// 4096) and a vocabulary (8192 x 50304), and kern::gpu::cross_entropy on the language-model logits
// of GPT-2 (8192 tokens x 50304 padded columns, 50257 classes) and Llama 2 (8192 x 32000), with the
// gradient written over the logits. GB/s count the least traffic each op needs: every input element
// read once, every output element written once (cross-entropy: the logits read and the gradient
// written, the targets and the per-row losses).
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "gpu/gpu_bench.hpp"
#include "kern/gpu/softmax.hpp"

namespace {

using kern::bf16;
using kern::index_t;

template <class T> kern::gpu::device_buffer<T> matrix(index_t rows, index_t cols) {
  return kern::bench::device_filled<T>(static_cast<std::size_t>(rows * cols), -4.0f, 4.0f);
}

template <class T> double matrix_bytes(index_t rows, index_t cols) {
  return static_cast<double>(rows * cols) * sizeof(T);
}

template <class T> void softmax_forward(benchmark::State& state, index_t rows, index_t cols) {
  const auto x = matrix<T>(rows, cols);
  const auto y = matrix<T>(rows, cols);
  const kern::ops::softmax_forward_params<T> p{{x.data(), rows, cols}, {y.data(), rows, cols}, 0.125f};
  kern::bench::time_on_gpu(state, 2 * matrix_bytes<T>(rows, cols),
                           [&](kern::gpu::stream_t s) { kern::gpu::softmax_forward(p, s); });
}

template <class T> void softmax_backward(benchmark::State& state, index_t rows, index_t cols) {
  const auto y = matrix<T>(rows, cols);
  const auto dy = matrix<T>(rows, cols);
  const auto dx = matrix<T>(rows, cols);
  const kern::ops::softmax_backward_params<T> p{
      {y.data(), rows, cols}, {dy.data(), rows, cols}, {dx.data(), rows, cols}};
  kern::bench::time_on_gpu(state, 3 * matrix_bytes<T>(rows, cols),
                           [&](kern::gpu::stream_t s) { kern::gpu::softmax_backward(p, s); });
}

// Each call overwrites the logits with the gradient, which the next call reads as logits: the
// values drift, the traffic does not.
template <class T> void cross_entropy(benchmark::State& state, index_t rows, index_t cols, index_t vocab) {
  const auto logits = matrix<T>(rows, cols);
  std::vector<std::int32_t> targets(static_cast<std::size_t>(rows));
  for (std::size_t i = 0; i < targets.size(); ++i) {
    targets[i] = static_cast<std::int32_t>((i * 7919) % static_cast<std::size_t>(vocab));
  }
  kern::gpu::device_buffer<std::int32_t> targets_d(targets.size());
  kern::gpu::copy(targets_d.data(), targets.data(), targets.size(), nullptr);
  kern::gpu::synchronize(nullptr);
  kern::gpu::device_buffer<float> losses(static_cast<std::size_t>(rows));
  kern::gpu::device_buffer<kern::gpu::cross_entropy_device_result> result(1);
  kern::ops::cross_entropy_params<T> p;
  p.logits = {logits.data(), rows, cols};
  p.targets = targets_d.data();
  p.losses = losses.data();
  p.vocab = vocab;
  kern::gpu::device_buffer<std::byte> workspace(kern::gpu::cross_entropy_workspace_bytes(p));
  const double bytes = 2 * matrix_bytes<T>(rows, cols) + static_cast<double>(rows) * 8;
  kern::bench::time_on_gpu(
      state, bytes, [&](kern::gpu::stream_t s) { kern::gpu::cross_entropy(p, result.data(), workspace.data(), s); });
}

template <class Run> void add(const std::string& family, const std::string& dtype, const std::string& shape, Run run) {
  kern::bench::add_gpu_benchmark(family, dtype, shape, run);
}

std::string shape_name(index_t rows, index_t cols) { return std::to_string(rows) + "x" + std::to_string(cols); }

template <class T> void register_type(const std::string& dtype) {
  const index_t softmax_shapes[][2] = {{16384, 1024}, {8192, 4096}, {8192, 50304}};
  for (const auto& shape : softmax_shapes) {
    const index_t rows = shape[0], cols = shape[1];
    add("softmax_forward", dtype, shape_name(rows, cols),
        [=](benchmark::State& s) { softmax_forward<T>(s, rows, cols); });
    add("softmax_backward", dtype, shape_name(rows, cols),
        [=](benchmark::State& s) { softmax_backward<T>(s, rows, cols); });
  }
  const index_t vocabularies[][3] = {{8192, 50304, 50257}, {8192, 32000, 32000}};
  for (const auto& v : vocabularies) {
    const index_t rows = v[0], cols = v[1], vocab = v[2];
    add("cross_entropy", dtype, shape_name(rows, cols) + "_vocab" + std::to_string(vocab),
        [=](benchmark::State& s) { cross_entropy<T>(s, rows, cols, vocab); });
  }
}

[[maybe_unused]] const bool registered = [] {
  register_type<float>("f32");
  register_type<bf16>("bf16");
  return true;
}();

} // namespace
