// What the CPU and GPU activation tests share: the float64 references of GELU (tanh form), SiLU and
// their derivatives, the size of the terms a derivative sums (its rounding scale), a central
// difference, and the strided input and output matrices the cases use.
#pragma once

#include <cmath>
#include <cstddef>
#include <random>
#include <vector>

#include "kern/ops/activation.hpp"
#include "support/kernel_test.hpp"

namespace kern::test {

inline constexpr double gelu_k0 = 0.7978845608028654, gelu_k1 = 0.044715;

inline double sigmoid_ref(double x) {
  return x >= 0.0 ? 1.0 / (1.0 + std::exp(-x)) : std::exp(x) / (1.0 + std::exp(x));
}
inline double gelu_u(double x) { return gelu_k0 * (x + gelu_k1 * x * x * x); }
// 0.5 x (1 + tanh(u)) written as x sigmoid(2u), the same function, which does not cancel to 0 in the
// far negative tail (where the kernel's result is tiny but not 0).
inline double gelu_ref(double x) { return x * sigmoid_ref(2.0 * gelu_u(x)); }
inline double gelu_derivative_ref(double x) {
  const double u = gelu_u(x);
  const double s = sigmoid_ref(2.0 * u), one_minus_s = sigmoid_ref(-2.0 * u);
  return s + 2.0 * x * s * one_minus_s * gelu_k0 * (1.0 + 3.0 * gelu_k1 * x * x);
}
inline double silu_ref(double x) { return x * sigmoid_ref(x); }
inline double silu_derivative_ref(double x) {
  const double s = sigmoid_ref(x);
  return s * (1.0 + x * sigmoid_ref(-x));
}
// The size of the terms that f'(x) sums (s + x s (1 - s) u'(x) for both, u = x for SiLU): the
// scale of its rounding error in fp32, which does not vanish where f'(x) crosses 0.
inline double activation_derivative_scale(ops::activation kind, double x) {
  if (kind == ops::activation::silu) {
    return sigmoid_ref(x) * (1.0 + std::abs(x) * sigmoid_ref(-x));
  }
  const double u = gelu_u(x), s = sigmoid_ref(2.0 * u);
  return s + 2.0 * std::abs(x) * s * sigmoid_ref(-2.0 * u) * gelu_k0 * (1.0 + 3.0 * gelu_k1 * x * x);
}

inline double activation_ref(ops::activation kind, double x) {
  return kind == ops::activation::gelu_tanh ? gelu_ref(x) : silu_ref(x);
}
inline double activation_derivative_ref(ops::activation kind, double x) {
  return kind == ops::activation::gelu_tanh ? gelu_derivative_ref(x) : silu_derivative_ref(x);
}
inline const char* kind_name(ops::activation kind) { return kind == ops::activation::gelu_tanh ? "gelu_tanh" : "silu"; }

// Central difference of loss(x) with respect to x[k], step h.
template <class Loss> double central_difference(Loss loss, std::vector<double> x, std::size_t k, double h = 1e-6) {
  const double x0 = x[k];
  x[k] = x0 + h;
  const double up = loss(x);
  x[k] = x0 - h;
  const double down = loss(x);
  return (up - down) / (2.0 * h);
}

// An input: random elements, NaN in the padding. The buffer holds the last row's padding too, as
// outputs' do.
template <class T>
host_matrix<T> random_matrix(std::mt19937& rng, index_t rows, index_t cols, index_t ld, float lo, float hi) {
  host_matrix<T> m(rows, cols, ld, nan_value, 0.0f, buffer_end::last_row_padding);
  m.fill_random(rng, lo, hi);
  return m;
}

// An output: NaN elements, the sentinel in the padding (the last row's included, so that a write
// past the last element shows).
template <class T> host_matrix<T> poisoned_matrix(index_t rows, index_t cols, index_t ld) {
  return host_matrix<T>(rows, cols, ld, sentinel, nan_value, buffer_end::last_row_padding);
}

} // namespace kern::test
