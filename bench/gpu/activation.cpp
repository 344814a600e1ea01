// kern::gpu's activations and bias ops on GPT-2 and Llama MLP shapes: GELU and SiLU forward and
// backward on the 4x-wide hidden layer (16384 tokens x 3072), SwiGLU on gate and up as the halves of
// one fused 8192 x (2 x 4096) projection, bias add and bias gradient on 16384 x 768 and x 3072.
// GB/s count the least traffic each op needs: every input element read once, every output element
// written once (the bias and its gradient once per column).
#include <cstddef>
#include <string>

#include "gpu/gpu_bench.hpp"
#include "kern/gpu/activation.hpp"

namespace {

using kern::bf16;
using kern::index_t;
using kern::ops::activation;

template <class T> kern::gpu::device_buffer<T> matrix(index_t rows, index_t cols) {
  return kern::bench::device_filled<T>(static_cast<std::size_t>(rows * cols), -3.0f, 3.0f);
}

template <class T> void activation_forward(benchmark::State& state, activation kind, index_t rows, index_t cols) {
  const auto x = matrix<T>(rows, cols);
  const auto y = matrix<T>(rows, cols);
  const kern::ops::activation_forward_params<T> p{kind, {x.data(), rows, cols}, {y.data(), rows, cols}};
  kern::bench::time_on_gpu(state, 2.0 * static_cast<double>(rows * cols * index_t{sizeof(T)}),
                           [&](kern::gpu::stream_t s) { kern::gpu::activation_forward(p, s); });
}

template <class T> void activation_backward(benchmark::State& state, activation kind, index_t rows, index_t cols) {
  const auto x = matrix<T>(rows, cols);
  const auto dy = matrix<T>(rows, cols);
  const auto dx = matrix<T>(rows, cols);
  const kern::ops::activation_backward_params<T> p{
      kind, {x.data(), rows, cols}, {dy.data(), rows, cols}, {dx.data(), rows, cols}};
  kern::bench::time_on_gpu(state, 3.0 * static_cast<double>(rows * cols * index_t{sizeof(T)}),
                           [&](kern::gpu::stream_t s) { kern::gpu::activation_backward(p, s); });
}

// gate | up: the two halves of one rows x 2 * hidden matrix, as a fused projection writes them.
template <class T> void swiglu_forward(benchmark::State& state, index_t rows, index_t hidden) {
  const auto fused = matrix<T>(rows, 2 * hidden);
  const auto y = matrix<T>(rows, hidden);
  const kern::ops::swiglu_forward_params<T> p{{fused.data(), rows, hidden, 2 * hidden},
                                              {fused.data() + hidden, rows, hidden, 2 * hidden},
                                              {y.data(), rows, hidden}};
  kern::bench::time_on_gpu(state, 3.0 * static_cast<double>(rows * hidden * index_t{sizeof(T)}),
                           [&](kern::gpu::stream_t s) { kern::gpu::swiglu_forward(p, s); });
}

template <class T> void swiglu_backward(benchmark::State& state, index_t rows, index_t hidden) {
  const auto fused = matrix<T>(rows, 2 * hidden);
  const auto dy = matrix<T>(rows, hidden);
  const auto dfused = matrix<T>(rows, 2 * hidden);
  const kern::ops::swiglu_backward_params<T> p{{fused.data(), rows, hidden, 2 * hidden},
                                               {fused.data() + hidden, rows, hidden, 2 * hidden},
                                               {dy.data(), rows, hidden},
                                               {dfused.data(), rows, hidden, 2 * hidden},
                                               {dfused.data() + hidden, rows, hidden, 2 * hidden}};
  kern::bench::time_on_gpu(state, 5.0 * static_cast<double>(rows * hidden * index_t{sizeof(T)}),
                           [&](kern::gpu::stream_t s) { kern::gpu::swiglu_backward(p, s); });
}

template <class T> void bias_add(benchmark::State& state, index_t rows, index_t cols) {
  const auto x = matrix<T>(rows, cols);
  const auto bias = kern::bench::device_filled<float>(static_cast<std::size_t>(cols));
  const kern::ops::bias_add_params<T> p{{x.data(), rows, cols}, bias.data()};
  const double bytes = 2.0 * static_cast<double>(rows * cols * index_t{sizeof(T)}) + 4.0 * static_cast<double>(cols);
  kern::bench::time_on_gpu(state, bytes, [&](kern::gpu::stream_t s) { kern::gpu::bias_add(p, s); });
}

template <class T> void bias_grad(benchmark::State& state, index_t rows, index_t cols) {
  const auto dy = matrix<T>(rows, cols);
  const auto dbias = kern::bench::device_filled<float>(static_cast<std::size_t>(cols));
  const kern::ops::bias_grad_params<T> p{{dy.data(), rows, cols}, dbias.data()};
  kern::gpu::device_buffer<std::byte> workspace(kern::gpu::bias_grad_workspace_bytes(p));
  const double bytes = static_cast<double>(rows * cols * index_t{sizeof(T)}) + 8.0 * static_cast<double>(cols);
  kern::bench::time_on_gpu(state, bytes, [&](kern::gpu::stream_t s) { kern::gpu::bias_grad(p, workspace.data(), s); });
}

template <class Run> void add(const std::string& family, const std::string& dtype, const std::string& shape, Run run) {
  kern::bench::add_gpu_benchmark(family, dtype, shape, run);
}

std::string shape_name(index_t rows, index_t cols) { return std::to_string(rows) + "x" + std::to_string(cols); }

template <class T> void register_type(const std::string& dtype) {
  constexpr index_t tokens = 16384, hidden = 3072, channels = 768, llama_tokens = 8192, llama_hidden = 4096;
  for (activation kind : {activation::gelu_tanh, activation::silu}) {
    const std::string name = kind == activation::gelu_tanh ? "gelu" : "silu";
    add(name + "_forward", dtype, shape_name(tokens, hidden),
        [=](benchmark::State& s) { activation_forward<T>(s, kind, tokens, hidden); });
    add(name + "_backward", dtype, shape_name(tokens, hidden),
        [=](benchmark::State& s) { activation_backward<T>(s, kind, tokens, hidden); });
  }
  add("swiglu_forward", dtype, shape_name(llama_tokens, llama_hidden),
      [=](benchmark::State& s) { swiglu_forward<T>(s, llama_tokens, llama_hidden); });
  add("swiglu_backward", dtype, shape_name(llama_tokens, llama_hidden),
      [=](benchmark::State& s) { swiglu_backward<T>(s, llama_tokens, llama_hidden); });
  for (index_t cols : {channels, hidden}) {
    add("bias_add", dtype, shape_name(tokens, cols), [=](benchmark::State& s) { bias_add<T>(s, tokens, cols); });
    add("bias_grad", dtype, shape_name(tokens, cols), [=](benchmark::State& s) { bias_grad<T>(s, tokens, cols); });
  }
}

[[maybe_unused]] const bool registered = [] {
  register_type<float>("f32");
  register_type<bf16>("bf16");
  return true;
}();

} // namespace
