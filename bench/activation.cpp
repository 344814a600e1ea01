// kern::cpu activations (GELU, SiLU, SwiGLU) and bias ops against plain scalar loops (what an engine
// writes without kern), in GB/s of the bytes each op must read and write, and as a fraction of the
// triad bandwidth. Shapes: transformer MLP activations far larger than the caches (16384 x 3072,
// 4096 x 3072) and one that fits in L2 (64 x 3072 f32 is 768 KiB).
#include <cmath>
#include <cstddef>
#include <string>
#include <vector>

#include "bench_common.hpp"
#include "kern/cpu.hpp"

namespace {

using kern::index_t;
using kern::matrix_view;
using kern::ops::activation;
using namespace kern::bench;

template <class T> struct matrix {
  kern::aligned_buffer<T> data;
  index_t rows, cols;
  matrix(index_t rows_, index_t cols_, float scale)
      : data(static_cast<std::size_t>(rows_ * cols_)), rows(rows_), cols(cols_) {
    for (std::size_t i = 0; i < data.size(); ++i) {
      data[i] = T(scale * static_cast<float>(static_cast<int>(i % 1999) - 999) / 999.0f);
    }
  }
  matrix_view<T> view() { return {data.data(), rows, cols}; }
  matrix_view<const T> cview() const { return {data.data(), rows, cols}; }
  T* begin() { return data.data(); }
  std::size_t size() const { return data.size(); }
};

std::string shape_name(index_t rows, index_t cols) { return std::to_string(rows) + "x" + std::to_string(cols); }
template <class T> const char* dtype_name() { return std::is_same_v<T, float> ? "f32" : "bf16"; }

// The scalar peers: the textbook formulas, one element at a time.
float gelu_scalar(float x) { return 0.5f * x * (1.0f + std::tanh(0.7978845608f * (x + 0.044715f * x * x * x))); }
float gelu_derivative_scalar(float x) {
  const float th = std::tanh(0.7978845608f * (x + 0.044715f * x * x * x));
  return 0.5f * (1.0f + th) + 0.5f * x * (1.0f - th * th) * 0.7978845608f * (1.0f + 0.134145f * x * x);
}
float sigmoid_scalar(float x) { return 1.0f / (1.0f + std::exp(-x)); }
float silu_scalar(float x) { return x * sigmoid_scalar(x); }
float silu_derivative_scalar(float x) {
  const float s = sigmoid_scalar(x);
  return s * (1.0f + x * (1.0f - s));
}

template <class T>
void activation_fwd(benchmark::State& state, activation kind, bool kern_impl, index_t rows, index_t cols) {
  matrix<T> x(rows, cols, 4.0f), y(rows, cols, 0.0f);
  const kern::cpu::context ctx(threads_of(state));
  for (auto _ : state) {
    if (kern_impl) {
      kern::cpu::activation_forward(ctx, kern::ops::activation_forward_params<T>{kind, x.cview(), y.view()});
    } else {
      for (std::size_t i = 0; i < x.size(); ++i) {
        const float v = static_cast<float>(x.data[i]);
        y.data[i] = T(kind == activation::gelu_tanh ? gelu_scalar(v) : silu_scalar(v));
      }
    }
    benchmark::ClobberMemory();
  }
  report_bytes(state, 2.0 * static_cast<double>(x.size() * sizeof(T)));
}

template <class T>
void activation_bwd(benchmark::State& state, activation kind, bool kern_impl, index_t rows, index_t cols) {
  matrix<T> x(rows, cols, 4.0f), dy(rows, cols, 1.0f), dx(rows, cols, 0.0f);
  const kern::cpu::context ctx(threads_of(state));
  for (auto _ : state) {
    if (kern_impl) {
      kern::cpu::activation_backward(ctx,
                                     kern::ops::activation_backward_params<T>{kind, x.cview(), dy.cview(), dx.view()});
    } else {
      for (std::size_t i = 0; i < x.size(); ++i) {
        const float v = static_cast<float>(x.data[i]);
        const float d = kind == activation::gelu_tanh ? gelu_derivative_scalar(v) : silu_derivative_scalar(v);
        dx.data[i] = T(d * static_cast<float>(dy.data[i]));
      }
    }
    benchmark::ClobberMemory();
  }
  report_bytes(state, 3.0 * static_cast<double>(x.size() * sizeof(T)));
}

template <class T> void swiglu_fwd(benchmark::State& state, bool kern_impl, index_t rows, index_t cols) {
  matrix<T> gate(rows, cols, 4.0f), up(rows, cols, 1.0f), y(rows, cols, 0.0f);
  const kern::cpu::context ctx(threads_of(state));
  for (auto _ : state) {
    if (kern_impl) {
      kern::cpu::swiglu_forward(ctx, kern::ops::swiglu_forward_params<T>{gate.cview(), up.cview(), y.view()});
    } else {
      for (std::size_t i = 0; i < y.size(); ++i) {
        y.data[i] = T(silu_scalar(static_cast<float>(gate.data[i])) * static_cast<float>(up.data[i]));
      }
    }
    benchmark::ClobberMemory();
  }
  report_bytes(state, 3.0 * static_cast<double>(y.size() * sizeof(T)));
}

template <class T> void swiglu_bwd(benchmark::State& state, bool kern_impl, index_t rows, index_t cols) {
  matrix<T> gate(rows, cols, 4.0f), up(rows, cols, 1.0f), dy(rows, cols, 1.0f), dgate(rows, cols, 0.0f),
      dup(rows, cols, 0.0f);
  const kern::cpu::context ctx(threads_of(state));
  for (auto _ : state) {
    if (kern_impl) {
      kern::cpu::swiglu_backward(
          ctx, kern::ops::swiglu_backward_params<T>{gate.cview(), up.cview(), dy.cview(), dgate.view(), dup.view()});
    } else {
      for (std::size_t i = 0; i < dy.size(); ++i) {
        const float g = static_cast<float>(gate.data[i]), u = static_cast<float>(up.data[i]);
        const float d = static_cast<float>(dy.data[i]);
        dgate.data[i] = T(d * u * silu_derivative_scalar(g));
        dup.data[i] = T(d * silu_scalar(g));
      }
    }
    benchmark::ClobberMemory();
  }
  report_bytes(state, 5.0 * static_cast<double>(dy.size() * sizeof(T)));
}

template <class T> void bias_add(benchmark::State& state, bool kern_impl, index_t rows, index_t cols) {
  matrix<T> x(rows, cols, 1.0f);
  std::vector<float> bias(static_cast<std::size_t>(cols), 0.0f);
  const kern::cpu::context ctx(threads_of(state));
  for (auto _ : state) {
    if (kern_impl) {
      kern::cpu::bias_add(ctx, kern::ops::bias_add_params<T>{x.view(), bias.data()});
    } else {
      for (index_t i = 0; i < rows; ++i) {
        for (index_t j = 0; j < cols; ++j) {
          T& v = x.data[static_cast<std::size_t>(i * cols + j)];
          v = T(static_cast<float>(v) + bias[static_cast<std::size_t>(j)]);
        }
      }
    }
    benchmark::ClobberMemory();
  }
  report_bytes(state, 2.0 * static_cast<double>(x.size() * sizeof(T)));
}

template <class T> void bias_grad(benchmark::State& state, bool kern_impl, index_t rows, index_t cols) {
  matrix<T> dy(rows, cols, 1.0f);
  std::vector<float> dbias(static_cast<std::size_t>(cols), 0.0f);
  const kern::cpu::context ctx(threads_of(state));
  for (auto _ : state) {
    if (kern_impl) {
      kern::cpu::bias_grad(ctx, kern::ops::bias_grad_params<T>{dy.cview(), dbias.data()});
    } else {
      for (index_t i = 0; i < rows; ++i) {
        for (index_t j = 0; j < cols; ++j) {
          dbias[static_cast<std::size_t>(j)] += static_cast<float>(dy.data[static_cast<std::size_t>(i * cols + j)]);
        }
      }
    }
    benchmark::ClobberMemory();
  }
  report_bytes(state, static_cast<double>(dy.size() * sizeof(T)));
}

// Registers kern (every thread count) and the scalar loop (one thread) for one op, dtype and shape.
template <class Fn> void add_pair(const std::string& family, const char* dtype, index_t rows, index_t cols, Fn fn) {
  const std::string shape = shape_name(rows, cols);
  add(family, "kern", dtype, shape, [=](benchmark::State& s) { fn(s, true, rows, cols); });
  add(family, "scalar", dtype, shape, [=](benchmark::State& s) { fn(s, false, rows, cols); }, {1});
}

template <class T> void add_type() {
  const char* dtype = dtype_name<T>();
  for (index_t rows : {index_t{16384}, index_t{4096}, index_t{64}}) {
    const index_t cols = 3072;
    for (activation kind : {activation::gelu_tanh, activation::silu}) {
      const std::string name = kind == activation::gelu_tanh ? "gelu" : "silu";
      add_pair(name + "_fwd", dtype, rows, cols,
               [kind](benchmark::State& s, bool k, index_t r, index_t c) { activation_fwd<T>(s, kind, k, r, c); });
      add_pair(name + "_bwd", dtype, rows, cols,
               [kind](benchmark::State& s, bool k, index_t r, index_t c) { activation_bwd<T>(s, kind, k, r, c); });
    }
    add_pair("swiglu_fwd", dtype, rows, cols, swiglu_fwd<T>);
    add_pair("swiglu_bwd", dtype, rows, cols, swiglu_bwd<T>);
  }
  for (index_t rows : {index_t{16384}, index_t{256}}) {
    add_pair("bias_add", dtype, rows, 768, bias_add<T>);
    add_pair("bias_grad", dtype, rows, 768, bias_grad<T>);
  }
}

const bool registered = [] {
  add_type<float>();
  add_type<kern::bf16>();
  return true;
}();

} // namespace
