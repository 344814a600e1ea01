// gemm: C = epilogue(alpha * op(A) * op(B) + beta * C), row-major matrices with leading dimensions.
//
//   op(A) is M x K: A itself (a.rows = M, a.cols = K) or, with trans_a, A's transpose (A is K x M).
//   op(B) is K x N: likewise with trans_b.
//   C is M x N.
//
// The epilogue runs while the C tile is in registers, in this order:
//   t = alpha * op(A) op(B) + beta * C      (beta = 0 never reads C: NaN there is overwritten)
//   t = t + bias[j]                          (bias: one value per output column, optional)
//   t = gelu(t)                              (tanh approximation, optional)
//   C = t + residual(i, j)                   (residual: an M x N matrix, optional)
//
// Element types (A, B, C): (f32, f32, f32); (bf16, bf16, f32) and (bf16, bf16, bf16) with fp32
// accumulation; and (f32, f32, f32) with compute = bf16, which rounds A and B to bf16 while packing
// them and accumulates in fp32, as oneDNN's bf16 fpmath mode and PyTorch's autocast do.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "kern/core/dtype.hpp"
#include "kern/core/error.hpp"
#include "kern/core/view.hpp"

namespace kern::ops {

enum class transpose : std::uint8_t { none, trans };

enum class gemm_compute : std::uint8_t {
  native, // in the input type's precision (fp32 products for f32 inputs, exact products for bf16)
  bf16,   // f32 inputs rounded to bf16 while packing, fp32 accumulation
};

constexpr std::string_view name(gemm_compute compute) { return compute == gemm_compute::bf16 ? "bf16" : "native"; }

template <element_type TA, element_type TB, element_type TC> struct gemm_params {
  matrix_view<const TA> a;
  matrix_view<const TB> b;
  matrix_view<TC> c;
  transpose trans_a = transpose::none;
  transpose trans_b = transpose::none;
  float alpha = 1.0f;
  float beta = 0.0f;
  const TC* bias = nullptr;         // N values, or null
  bool gelu = false;                // GELU (tanh approximation) after the bias
  matrix_view<const TC> residual{}; // M x N added last, or empty (data == nullptr)
  gemm_compute compute = gemm_compute::native;

  index_t m() const noexcept { return c.rows; }
  index_t n() const noexcept { return c.cols; }
  index_t k() const noexcept { return trans_a == transpose::none ? a.cols : a.rows; }
};

template <element_type TA, element_type TB, element_type TC> constexpr bool gemm_types_supported() {
  constexpr dtype a = dtype_of_v<TA>, b = dtype_of_v<TB>, c = dtype_of_v<TC>;
  return (a == dtype::f32 && b == dtype::f32 && c == dtype::f32) ||
         (a == dtype::bf16 && b == dtype::bf16 && (c == dtype::f32 || c == dtype::bf16));
}

namespace detail {
template <class T> void require_matrix(std::string_view op, std::string_view name, matrix_view<T> x) {
  require(x.rows >= 0 && x.cols >= 0, op, name, " is ", x.rows, " x ", x.cols, ": sizes must not be negative");
  require_leading_dimension(op, std::string(name) + ".ld", x.ld, x.cols);
  require_not_null(op, std::string(name) + ".data", x.data, x.size());
}
template <class T, class U> void require_disjoint_views(std::string_view op, std::string_view out_name,
                                                        matrix_view<T> out, std::string_view in_name,
                                                        matrix_view<U> in) {
  if (out.empty() || in.empty()) {
    return;
  }
  require_disjoint(op, out_name, out.data, out.end(), in_name, in.data, in.end());
}
} // namespace detail

template <element_type TA, element_type TB, element_type TC>
void validate(std::string_view op, const gemm_params<TA, TB, TC>& p) {
  require(gemm_types_supported<TA, TB, TC>(), op, "unsupported types A = ", name(dtype_of_v<TA>),
          ", B = ", name(dtype_of_v<TB>), ", C = ", name(dtype_of_v<TC>),
          " (supported: f32 f32 f32, bf16 bf16 f32, bf16 bf16 bf16)");
  require(p.compute == gemm_compute::native || dtype_of_v<TA> == dtype::f32, op,
          "compute = bf16 applies to f32 inputs only (A is ", name(dtype_of_v<TA>), ")");
  detail::require_matrix(op, "a", p.a);
  detail::require_matrix(op, "b", p.b);
  detail::require_matrix(op, "c", p.c);
  const bool ta = p.trans_a == transpose::trans, tb = p.trans_b == transpose::trans;
  const index_t a_rows = ta ? p.a.cols : p.a.rows; // M as A gives it
  const index_t b_rows = tb ? p.b.cols : p.b.rows; // K as B gives it
  const index_t b_cols = tb ? p.b.rows : p.b.cols; // N as B gives it
  require(a_rows == p.m(), op, "op(A) has ", a_rows, " rows but C has ", p.m());
  require(b_rows == p.k(), op, "op(A) is ", p.m(), " x ", p.k(), " but op(B) has ", b_rows, " rows");
  require(b_cols == p.n(), op, "op(B) has ", b_cols, " columns but C has ", p.n());
  require_not_null(op, "bias", p.bias, p.bias ? p.n() : 0);
  if (p.residual.data != nullptr) {
    detail::require_matrix(op, "residual", p.residual);
    require(p.residual.rows == p.m() && p.residual.cols == p.n(), op, "residual is ", p.residual.rows, " x ",
            p.residual.cols, " but C is ", p.m(), " x ", p.n());
    // The residual may be C itself (each element is read before it is written), or apart from it.
    const bool same_as_c = p.residual.data == p.c.data && p.residual.ld == p.c.ld;
    if (!same_as_c) {
      detail::require_disjoint_views(op, "c", p.c, "residual", p.residual);
    }
  }
  detail::require_disjoint_views(op, "c", p.c, "a", p.a);
  detail::require_disjoint_views(op, "c", p.c, "b", p.b);
  if (p.bias != nullptr && !p.c.empty()) {
    require_disjoint(op, "c", p.c.data, p.c.end(), "bias", p.bias, p.bias + p.n());
  }
}

} // namespace kern::ops
