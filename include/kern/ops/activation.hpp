// Element-wise activations and the bias ops around a linear layer, on row-major matrices.
//
//   activation_forward    y = f(x),                      f = GELU (tanh approximation) or SiLU
//   activation_backward   dx = f'(x) * dy
//   swiglu_forward        y = silu(gate) * up
//   swiglu_backward       dgate = dy * up * silu'(gate),  dup = dy * silu(gate)
//   bias_add              x[i][j] += bias[j]
//   bias_grad             dbias[j] += sum_i dy[i][j]      (accumulated, deterministic)
//
// GELU(x) = 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))), as GPT-2; SiLU(x) = x sigmoid(x).
// Activations are stored as T (f32 or bf16) and computed in fp32; bias and dbias are fp32 (master
// weights and their gradients).
//
// Aliasing: an output may be exactly one of the inputs (same data and ld: in place, every element
// is read before it is written); otherwise outputs share no element with the inputs or with each
// other. gate and up may interleave, e.g. the two halves of one N x 2H matrix through views with
// ld = 2H, and so may dgate and dup.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "kern/core/dtype.hpp"
#include "kern/core/error.hpp"
#include "kern/core/view.hpp"
#include "kern/ops/gemm.hpp"

namespace kern::ops {

enum class activation : std::uint8_t { gelu_tanh, silu };

template <element_type T> struct activation_forward_params {
  activation kind = activation::gelu_tanh;
  matrix_view<const T> x;
  matrix_view<T> y; // may be x
};

template <element_type T> struct activation_backward_params {
  activation kind = activation::gelu_tanh;
  matrix_view<const T> x;  // the forward input
  matrix_view<const T> dy; // the gradient of the forward output
  matrix_view<T> dx;       // f'(x) * dy, overwritten; may be dy
};

template <element_type T> struct swiglu_forward_params {
  matrix_view<const T> gate;
  matrix_view<const T> up;
  matrix_view<T> y;
};

template <element_type T> struct swiglu_backward_params {
  matrix_view<const T> gate;
  matrix_view<const T> up;
  matrix_view<const T> dy;
  matrix_view<T> dgate; // overwritten
  matrix_view<T> dup;   // overwritten
};

template <element_type T> struct bias_add_params {
  matrix_view<T> x;
  const float* bias = nullptr; // x.cols values
};

template <element_type T> struct bias_grad_params {
  matrix_view<const T> dy;
  float* dbias = nullptr; // dy.cols values, accumulated (+=)
};

namespace detail {

// True when matrices a and b (of the same element type) have an element in common. Exact for views
// with the same ld (interleaved halves of one matrix do not overlap); otherwise compares the byte
// ranges, which may report an overlap that is not there.
template <class T, class U> bool views_share_elements(matrix_view<T> a, matrix_view<U> b) {
  if (a.empty() || b.empty()) {
    return false;
  }
  const auto* a_begin = reinterpret_cast<const unsigned char*>(a.data);
  const auto* b_begin = reinterpret_cast<const unsigned char*>(b.data);
  const auto* a_end = reinterpret_cast<const unsigned char*>(a.end());
  const auto* b_end = reinterpret_cast<const unsigned char*>(b.end());
  if (a_end <= b_begin || b_end <= a_begin) {
    return false;
  }
  constexpr auto size = static_cast<std::ptrdiff_t>(sizeof(T));
  if (a.ld != b.ld || size != static_cast<std::ptrdiff_t>(sizeof(U))) {
    return true;
  }
  if (b_begin < a_begin) {
    return views_share_elements(b, a);
  }
  const std::ptrdiff_t bytes = b_begin - a_begin;
  if (bytes % size != 0) {
    return true;
  }
  // b(i, j) is a's element at row i + shift_rows and column j + shift_cols (carrying into the next
  // row once the column passes ld).
  const index_t offset = bytes / size;
  const index_t shift_rows = offset / a.ld, shift_cols = offset % a.ld;
  const auto meets = [&](index_t row0, index_t col0, index_t cols) {
    const bool rows_meet = row0 < a.rows && row0 + b.rows > 0;
    const bool cols_meet = cols > 0 && col0 < a.cols && col0 + cols > 0;
    return rows_meet && cols_meet;
  };
  const index_t before_wrap = b.cols < a.ld - shift_cols ? b.cols : a.ld - shift_cols;
  return meets(shift_rows, shift_cols, before_wrap) || meets(shift_rows + 1, 0, b.cols - before_wrap);
}

template <class T, class U> bool same_view(matrix_view<T> a, matrix_view<U> b) {
  return static_cast<const void*>(a.data) == static_cast<const void*>(b.data) && a.ld == b.ld;
}

// The element-wise rule: out is exactly `in` (in place) or shares no element with it.
template <class T, class U> void require_in_place_or_apart(std::string_view op, std::string_view out_name,
                                                           matrix_view<T> out, std::string_view in_name,
                                                           matrix_view<U> in) {
  require(same_view(out, in) || !views_share_elements(out, in), op, out_name, " overlaps ", in_name,
          " (an output must be exactly an input, or apart from it)");
}

template <class T, class U> void require_same_shape(std::string_view op, std::string_view a_name, matrix_view<T> a,
                                                    std::string_view b_name, matrix_view<U> b) {
  require(a.rows == b.rows && a.cols == b.cols, op, b_name, " is ", b.rows, " x ", b.cols, " but ", a_name, " is ",
          a.rows, " x ", a.cols);
}

inline void require_activation(std::string_view op, activation kind) {
  require(kind == activation::gelu_tanh || kind == activation::silu, op, "kind = ", static_cast<int>(kind),
          " is not an activation (gelu_tanh, silu)");
}

} // namespace detail

template <element_type T> void validate(std::string_view op, const activation_forward_params<T>& p) {
  detail::require_activation(op, p.kind);
  detail::require_matrix(op, "x", p.x);
  detail::require_matrix(op, "y", p.y);
  detail::require_same_shape(op, "x", p.x, "y", p.y);
  detail::require_in_place_or_apart(op, "y", p.y, "x", p.x);
}

template <element_type T> void validate(std::string_view op, const activation_backward_params<T>& p) {
  detail::require_activation(op, p.kind);
  detail::require_matrix(op, "x", p.x);
  detail::require_matrix(op, "dy", p.dy);
  detail::require_matrix(op, "dx", p.dx);
  detail::require_same_shape(op, "x", p.x, "dy", p.dy);
  detail::require_same_shape(op, "x", p.x, "dx", p.dx);
  detail::require_in_place_or_apart(op, "dx", p.dx, "x", p.x);
  detail::require_in_place_or_apart(op, "dx", p.dx, "dy", p.dy);
}

template <element_type T> void validate(std::string_view op, const swiglu_forward_params<T>& p) {
  detail::require_matrix(op, "gate", p.gate);
  detail::require_matrix(op, "up", p.up);
  detail::require_matrix(op, "y", p.y);
  detail::require_same_shape(op, "gate", p.gate, "up", p.up);
  detail::require_same_shape(op, "gate", p.gate, "y", p.y);
  detail::require_in_place_or_apart(op, "y", p.y, "gate", p.gate);
  detail::require_in_place_or_apart(op, "y", p.y, "up", p.up);
}

template <element_type T> void validate(std::string_view op, const swiglu_backward_params<T>& p) {
  detail::require_matrix(op, "gate", p.gate);
  detail::require_matrix(op, "up", p.up);
  detail::require_matrix(op, "dy", p.dy);
  detail::require_matrix(op, "dgate", p.dgate);
  detail::require_matrix(op, "dup", p.dup);
  detail::require_same_shape(op, "gate", p.gate, "up", p.up);
  detail::require_same_shape(op, "gate", p.gate, "dy", p.dy);
  detail::require_same_shape(op, "gate", p.gate, "dgate", p.dgate);
  detail::require_same_shape(op, "gate", p.gate, "dup", p.dup);
  require(!detail::views_share_elements(p.dgate, p.dup), op, "dgate overlaps dup");
  detail::require_in_place_or_apart(op, "dgate", p.dgate, "gate", p.gate);
  detail::require_in_place_or_apart(op, "dgate", p.dgate, "up", p.up);
  detail::require_in_place_or_apart(op, "dgate", p.dgate, "dy", p.dy);
  detail::require_in_place_or_apart(op, "dup", p.dup, "gate", p.gate);
  detail::require_in_place_or_apart(op, "dup", p.dup, "up", p.up);
  detail::require_in_place_or_apart(op, "dup", p.dup, "dy", p.dy);
}

template <element_type T> void validate(std::string_view op, const bias_add_params<T>& p) {
  detail::require_matrix(op, "x", p.x);
  require_not_null(op, "bias", p.bias, p.x.cols);
  if (!p.x.empty()) {
    require_disjoint(op, "x", p.x.data, p.x.end(), "bias", p.bias, p.bias + p.x.cols);
  }
}

template <element_type T> void validate(std::string_view op, const bias_grad_params<T>& p) {
  detail::require_matrix(op, "dy", p.dy);
  require_not_null(op, "dbias", p.dbias, p.dy.cols);
  if (!p.dy.empty()) {
    require_disjoint(op, "dbias", p.dbias, p.dbias + p.dy.cols, "dy", p.dy.data, p.dy.end());
  }
}

} // namespace kern::ops
