// CPU activations (GELU, SiLU, SwiGLU) and bias ops. Parameters and semantics: kern/ops/activation.hpp;
// algorithm and measurements: docs/kernels/activation.md.
//
// All of them are memory-bound: one pass over the data, fp32 batches, the matrix split across
// threads by element count (so that a single long row is split too).
#pragma once

#include <type_traits>

#include "kern/core/threading.hpp"
#include "kern/cpu/gemm/workspace.hpp"
#include "kern/cpu/isa.hpp"
#include "kern/cpu/simd.hpp"
#include "kern/ops/activation.hpp"

namespace kern::cpu::detail {

// Below this many elements per thread, another thread costs more than it saves.
inline constexpr index_t elementwise_per_thread = index_t{1} << 15;

// Calls body(i, j0, j1) for row pieces covering [0, rows) x [0, cols), each thread taking an equal
// share of the elements in row-major order.
template <class Body> void parallel_elements(const context& ctx, index_t rows, index_t cols, Body&& body) {
  const index_t total = rows * cols;
  if (total == 0) {
    return;
  }
  const index_t useful = (total + elementwise_per_thread - 1) / elementwise_per_thread;
  const int threads = useful < ctx.threads() ? static_cast<int>(useful) : ctx.threads();
  parallel_for(context(threads), total, [&](index_t begin, index_t end) {
    for (index_t i = begin / cols; i * cols < end; ++i) {
      const index_t j0 = begin > i * cols ? begin - i * cols : 0;
      const index_t j1 = end < (i + 1) * cols ? end - i * cols : cols;
      body(i, j0, j1);
    }
  });
}

// sigmoid(x) and 1 - sigmoid(x) from t = exp(-|x|) in (0, 1]: no overflow, no cancellation.
template <class V> struct sigmoid_parts {
  V s;
  V one_minus_s;
};
template <class V> sigmoid_parts<V> sigmoid_of(V x) {
  const V t = xsimd::exp(-xsimd::abs(x));
  const V r = V(1.0f) / (V(1.0f) + t);
  const V tr = t * r;
  const auto non_negative = x >= V(0.0f);
  return {xsimd::select(non_negative, r, tr), xsimd::select(non_negative, tr, r)};
}

template <class V> V silu(V x) { return x * sigmoid_of(x).s; }

// silu'(x) = s (1 + x (1 - s)).
template <class V> V silu_derivative(V x) {
  const sigmoid_parts<V> sig = sigmoid_of(x);
  return sig.s * (V(1.0f) + x * sig.one_minus_s);
}

// gelu(x) = x s with s = sigmoid(2u), u = sqrt(2/pi) (x + 0.044715 x^3) (simd.hpp's gelu_tanh), so
// gelu'(x) = s + 2 x s (1 - s) u'(x). With t = exp(-2|u|): s (1 - s) = t / (1 + t)^2, which neither
// overflows nor cancels. Where t is 0 (|u| beyond ~44, or infinite x) the second term is 0 and is
// dropped, so that x = +-Inf gives 1 and 0 rather than Inf * 0.
template <class V> V gelu_tanh_derivative(V x) {
  constexpr float k0 = 0.7978845608028654f, k1 = 0.044715f;
  const V x2 = x * x;
  const V u = V(k0) * (x + V(k1) * x2 * x);
  const V du = V(k0) * (V(1.0f) + V(3.0f * k1) * x2);
  const V t = xsimd::exp(V(-2.0f) * xsimd::abs(u));
  const V r = V(1.0f) / (V(1.0f) + t);
  const V s = xsimd::select(u >= V(0.0f), r, t * r);
  const V slope = s + V(2.0f) * x * (t * r * r) * du;
  return xsimd::select(t == V(0.0f), s, slope);
}

template <class Arch, class T, class F>
void activation_forward_with(const context& ctx, matrix_view<const T> x, matrix_view<T> y, F f) {
  parallel_elements(ctx, x.rows, x.cols, [&](index_t i, index_t j0, index_t j1) {
    const T* in = x.row(i) + j0;
    T* out = y.row(i) + j0;
    for_each_batch<Arch>(j1 - j0, [&](index_t j, index_t valid) {
      store_from_float_n<Arch>(out + j, f(load_float_n<Arch>(in + j, valid)), valid);
    });
  });
}

template <class Arch, class T, class F>
void activation_backward_with(const context& ctx, const ops::activation_backward_params<T>& p, F derivative) {
  parallel_elements(ctx, p.x.rows, p.x.cols, [&](index_t i, index_t j0, index_t j1) {
    const T* x = p.x.row(i) + j0;
    const T* dy = p.dy.row(i) + j0;
    T* dx = p.dx.row(i) + j0;
    for_each_batch<Arch>(j1 - j0, [&](index_t j, index_t valid) {
      const fbatch<Arch> g = load_float_n<Arch>(dy + j, valid);
      store_from_float_n<Arch>(dx + j, derivative(load_float_n<Arch>(x + j, valid)) * g, valid);
    });
  });
}

template <class Arch, class T>
void activation_forward_run(const context& ctx, const ops::activation_forward_params<T>& p) {
  if (p.kind == ops::activation::gelu_tanh) {
    activation_forward_with<Arch>(ctx, p.x, p.y, [](fbatch<Arch> v) { return gelu_tanh(v); });
  } else {
    activation_forward_with<Arch>(ctx, p.x, p.y, [](fbatch<Arch> v) { return silu(v); });
  }
}

template <class Arch, class T>
void activation_backward_run(const context& ctx, const ops::activation_backward_params<T>& p) {
  if (p.kind == ops::activation::gelu_tanh) {
    activation_backward_with<Arch>(ctx, p, [](fbatch<Arch> v) { return gelu_tanh_derivative(v); });
  } else {
    activation_backward_with<Arch>(ctx, p, [](fbatch<Arch> v) { return silu_derivative(v); });
  }
}

template <class Arch, class T> void swiglu_forward_run(const context& ctx, const ops::swiglu_forward_params<T>& p) {
  parallel_elements(ctx, p.gate.rows, p.gate.cols, [&](index_t i, index_t j0, index_t j1) {
    const T* gate = p.gate.row(i) + j0;
    const T* up = p.up.row(i) + j0;
    T* y = p.y.row(i) + j0;
    for_each_batch<Arch>(j1 - j0, [&](index_t j, index_t valid) {
      const fbatch<Arch> g = load_float_n<Arch>(gate + j, valid);
      const fbatch<Arch> u = load_float_n<Arch>(up + j, valid);
      store_from_float_n<Arch>(y + j, silu(g) * u, valid);
    });
  });
}

template <class Arch, class T> void swiglu_backward_run(const context& ctx, const ops::swiglu_backward_params<T>& p) {
  parallel_elements(ctx, p.gate.rows, p.gate.cols, [&](index_t i, index_t j0, index_t j1) {
    const T* gate = p.gate.row(i) + j0;
    const T* up = p.up.row(i) + j0;
    const T* dy = p.dy.row(i) + j0;
    T* dgate = p.dgate.row(i) + j0;
    T* dup = p.dup.row(i) + j0;
    for_each_batch<Arch>(j1 - j0, [&](index_t j, index_t valid) {
      const fbatch<Arch> g = load_float_n<Arch>(gate + j, valid);
      const fbatch<Arch> u = load_float_n<Arch>(up + j, valid);
      const fbatch<Arch> d = load_float_n<Arch>(dy + j, valid);
      const sigmoid_parts<fbatch<Arch>> sig = sigmoid_of(g);
      const fbatch<Arch> silu_g = g * sig.s;
      // All inputs are loaded before either store: an output may be one of the inputs.
      store_from_float_n<Arch>(dgate + j, d * u * (sig.s * (fbatch<Arch>(1.0f) + g * sig.one_minus_s)), valid);
      store_from_float_n<Arch>(dup + j, d * silu_g, valid);
    });
  });
}

template <class Arch, class T> void bias_add_run(const context& ctx, const ops::bias_add_params<T>& p) {
  parallel_elements(ctx, p.x.rows, p.x.cols, [&](index_t i, index_t j0, index_t j1) {
    T* x = p.x.row(i) + j0;
    const float* bias = p.bias + j0;
    for_each_batch<Arch>(j1 - j0, [&](index_t j, index_t valid) {
      const fbatch<Arch> b = load_float_n<Arch>(bias + j, valid);
      store_from_float_n<Arch>(x + j, load_float_n<Arch>(x + j, valid) + b, valid);
    });
  });
}

// Rows summed per block before the block joins dbias: short sums in fp32 keep the rounding error
// near that of a pairwise sum.
inline constexpr index_t bias_grad_block_rows = 64;
// Columns are handed to threads in whole cache lines of fp32 (no false sharing on dbias).
inline constexpr index_t bias_grad_column_unit = 16;

// dbias[j] += sum_i dy[i][j]. Each thread owns a slice of the columns and walks every row in order,
// so each dbias[j] sees the same additions in the same order for any thread count: the same bits.
template <class Arch, class T> void bias_grad_run(const context& ctx, const ops::bias_grad_params<T>& p) {
  const index_t rows = p.dy.rows, cols = p.dy.cols;
  if (rows == 0 || cols == 0) {
    return;
  }
  const index_t units = (cols + bias_grad_column_unit - 1) / bias_grad_column_unit;
  const index_t useful = (rows * cols + elementwise_per_thread - 1) / elementwise_per_thread;
  const index_t cap = useful < units ? useful : units;
  const int threads = cap < ctx.threads() ? static_cast<int>(cap) : ctx.threads();
  parallel_for(context(threads), units, [&](index_t unit_begin, index_t unit_end) {
    const index_t c0 = unit_begin * bias_grad_column_unit;
    const index_t c1 = unit_end * bias_grad_column_unit < cols ? unit_end * bias_grad_column_unit : cols;
    const index_t width = c1 - c0;
    float* block_sum = thread_workspace<Arch, 0, float>(static_cast<std::size_t>(width));
    float* dbias = p.dbias + c0;
    for (index_t r0 = 0; r0 < rows; r0 += bias_grad_block_rows) {
      const index_t r1 = r0 + bias_grad_block_rows < rows ? r0 + bias_grad_block_rows : rows;
      const T* first = p.dy.row(r0) + c0;
      for_each_batch<Arch>(width, [&](index_t j, index_t valid) {
        store_from_float_n<Arch>(block_sum + j, load_float_n<Arch>(first + j, valid), valid);
      });
      for (index_t r = r0 + 1; r < r1; ++r) {
        const T* row = p.dy.row(r) + c0;
        for_each_batch<Arch>(width, [&](index_t j, index_t valid) {
          const fbatch<Arch> sum = load_float_n<Arch>(block_sum + j, valid) + load_float_n<Arch>(row + j, valid);
          store_from_float_n<Arch>(block_sum + j, sum, valid);
        });
      }
      for_each_batch<Arch>(width, [&](index_t j, index_t valid) {
        const fbatch<Arch> sum = load_float_n<Arch>(dbias + j, valid) + load_float_n<Arch>(block_sum + j, valid);
        store_from_float_n<Arch>(dbias + j, sum, valid);
      });
    }
  });
}

} // namespace kern::cpu::detail

// NOLINTBEGIN(bugprone-macro-parentheses): EXTERN and the types are declaration parts, not expressions
#define KERN_CPU_ACTIVATION_RUNS(ARCH, EXTERN, T)                                                                      \
  EXTERN template void kern::cpu::detail::activation_forward_run<ARCH, T>(                                             \
      const ::kern::cpu::context&, const ::kern::ops::activation_forward_params<T>&);                                  \
  EXTERN template void kern::cpu::detail::activation_backward_run<ARCH, T>(                                            \
      const ::kern::cpu::context&, const ::kern::ops::activation_backward_params<T>&);                                 \
  EXTERN template void kern::cpu::detail::swiglu_forward_run<ARCH, T>(const ::kern::cpu::context&,                     \
                                                                      const ::kern::ops::swiglu_forward_params<T>&);   \
  EXTERN template void kern::cpu::detail::swiglu_backward_run<ARCH, T>(const ::kern::cpu::context&,                    \
                                                                       const ::kern::ops::swiglu_backward_params<T>&); \
  EXTERN template void kern::cpu::detail::bias_add_run<ARCH, T>(const ::kern::cpu::context&,                           \
                                                                const ::kern::ops::bias_add_params<T>&);               \
  EXTERN template void kern::cpu::detail::bias_grad_run<ARCH, T>(const ::kern::cpu::context&,                          \
                                                                 const ::kern::ops::bias_grad_params<T>&);
#define KERN_CPU_ACTIVATION_INSTANCES(ARCH, EXTERN)                                                                    \
  KERN_CPU_ACTIVATION_RUNS(ARCH, EXTERN, float)                                                                        \
  KERN_CPU_ACTIVATION_RUNS(ARCH, EXTERN, ::kern::bf16)
// NOLINTEND(bugprone-macro-parentheses)
KERN_CPU_EXTERN_INSTANCES(KERN_CPU_ACTIVATION_INSTANCES)

namespace kern::cpu {

namespace detail {
template <class T> inline constexpr bool cpu_activation_type = std::is_same_v<T, float> || std::is_same_v<T, bf16>;
} // namespace detail

template <element_type T> void activation_forward(const context& ctx, const ops::activation_forward_params<T>& p) {
  static_assert(detail::cpu_activation_type<T>, "kern::cpu activations store f32 or bf16");
  ops::validate("kern::cpu::activation_forward", p);
  detail::dispatch([&](auto arch) { detail::activation_forward_run<decltype(arch), T>(ctx, p); });
}

template <element_type T> void activation_backward(const context& ctx, const ops::activation_backward_params<T>& p) {
  static_assert(detail::cpu_activation_type<T>, "kern::cpu activations store f32 or bf16");
  ops::validate("kern::cpu::activation_backward", p);
  detail::dispatch([&](auto arch) { detail::activation_backward_run<decltype(arch), T>(ctx, p); });
}

template <element_type T> void swiglu_forward(const context& ctx, const ops::swiglu_forward_params<T>& p) {
  static_assert(detail::cpu_activation_type<T>, "kern::cpu activations store f32 or bf16");
  ops::validate("kern::cpu::swiglu_forward", p);
  detail::dispatch([&](auto arch) { detail::swiglu_forward_run<decltype(arch), T>(ctx, p); });
}

template <element_type T> void swiglu_backward(const context& ctx, const ops::swiglu_backward_params<T>& p) {
  static_assert(detail::cpu_activation_type<T>, "kern::cpu activations store f32 or bf16");
  ops::validate("kern::cpu::swiglu_backward", p);
  detail::dispatch([&](auto arch) { detail::swiglu_backward_run<decltype(arch), T>(ctx, p); });
}

template <element_type T> void bias_add(const context& ctx, const ops::bias_add_params<T>& p) {
  static_assert(detail::cpu_activation_type<T>, "kern::cpu activations store f32 or bf16");
  ops::validate("kern::cpu::bias_add", p);
  detail::dispatch([&](auto arch) { detail::bias_add_run<decltype(arch), T>(ctx, p); });
}

template <element_type T> void bias_grad(const context& ctx, const ops::bias_grad_params<T>& p) {
  static_assert(detail::cpu_activation_type<T>, "kern::cpu activations store f32 or bf16");
  ops::validate("kern::cpu::bias_grad", p);
  detail::dispatch([&](auto arch) { detail::bias_grad_run<decltype(arch), T>(ctx, p); });
}

} // namespace kern::cpu
