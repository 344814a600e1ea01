// norm: LayerNorm and RMSNorm over the last dimension of a rows x dim matrix, forward and backward,
// with the residual add before the norm fused into the forward.
//
// Forward, per row (dim values):
//   h      = x + residual             (residual optional: h is then written to residual_out, rounded
//                                       to T, and that stored h is what gets normalized)
//   layernorm: mean = sum(h) / dim, rstd = 1 / sqrt(sum((h - mean)^2) / dim + epsilon)
//              y = (h - mean) * rstd * weight + bias      (bias optional)
//   rmsnorm:   rstd = 1 / sqrt(sum(h^2) / dim + epsilon)
//              y = h * rstd * weight
// mean (layernorm) and rstd are saved per row for the backward when the pointers are given.
//
// Backward, per row, with xhat = (x - mean) * rstd (layernorm) or x * rstd (rmsnorm) and
// g = dy * weight:
//   layernorm: dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
//   rmsnorm:   dx = rstd * (g - xhat * mean(g * xhat))
//   dweight += sum over rows of dy * xhat;  dbias += sum over rows of dy   (both optional)
// dx is written, or added to with accumulate_dx (the residual stream's gradient).
//
// Activations (x, residual, y, dy, dx) are T (f32 or bf16); weight, bias, mean, rstd and the
// parameter gradients are fp32. The math is fp32 throughout.
#pragma once

#include <cmath>
#include <cstdint>
#include <string_view>

#include "kern/core/dtype.hpp"
#include "kern/core/error.hpp"
#include "kern/core/view.hpp"
#include "kern/ops/gemm.hpp"

namespace kern::ops {

enum class norm_kind : std::uint8_t { layernorm, rmsnorm };

template <element_type T> struct norm_forward_params {
  norm_kind kind = norm_kind::layernorm;
  matrix_view<const T> x;          // rows x dim
  matrix_view<const T> residual{}; // optional: the normalized input is h = x + residual ...
  matrix_view<T> residual_out{};   // ... written here (required iff residual is given; may be x or residual)
  const float* weight = nullptr;   // dim values (gamma), required
  const float* bias = nullptr;     // dim values (beta), layernorm only, optional
  matrix_view<T> y;                // rows x dim; may be x or residual (in place)
  float* mean = nullptr;           // rows values saved for backward (layernorm only), optional
  float* rstd = nullptr;           // rows values saved for backward, optional
  float epsilon = 1e-5f;
};

template <element_type T> struct norm_backward_params {
  norm_kind kind = norm_kind::layernorm;
  matrix_view<const T> x; // the normalized input (h of the forward)
  matrix_view<const T> dy;
  const float* weight = nullptr; // dim values, required
  const float* mean = nullptr;   // rows values from the forward; layernorm only, required there
  const float* rstd = nullptr;   // rows values from the forward, required
  matrix_view<T> dx;             // written, or added to with accumulate_dx; may be dy when not accumulating
  bool accumulate_dx = false;
  float* dweight = nullptr; // dim values, accumulated (+=), optional
  float* dbias = nullptr;   // dim values, accumulated (+=), layernorm only, optional
};

// Argument checks of the norm ops.
namespace norm_detail {

// A named byte range of one argument, for the overlap checks.
struct named_range {
  std::string_view name;
  const void* begin;
  const void* end;
};

template <class T> named_range range_of(std::string_view name, matrix_view<T> m) { return {name, m.data, m.end()}; }
inline named_range range_of(std::string_view name, const float* p, index_t n) {
  return {name, p, p == nullptr ? p : p + n};
}

inline void require_apart(std::string_view op, const named_range& out, const named_range& in) {
  require_disjoint(op, out.name, out.begin, out.end, in.name, in.begin, in.end);
}

// An output may be exactly an input (same data and ld: the kernel reads each element before it
// writes it), or apart from it; a partial overlap is an error.
template <class T, class U> void require_same_or_apart(std::string_view op, std::string_view out_name,
                                                       matrix_view<T> out, std::string_view in_name,
                                                       matrix_view<U> in) {
  const bool same = static_cast<const void*>(out.data) == static_cast<const void*>(in.data) && out.ld == in.ld;
  if (!same) {
    detail::require_disjoint_views(op, out_name, out, in_name, in);
  }
}

template <class T, class U> void require_same_shape(std::string_view op, std::string_view name, matrix_view<T> m,
                                                    std::string_view like_name, matrix_view<U> like) {
  require(m.rows == like.rows && m.cols == like.cols, op, name, " is ", m.rows, " x ", m.cols, " but ", like_name,
          " is ", like.rows, " x ", like.cols);
}

inline void require_norm_kind(std::string_view op, norm_kind kind) {
  require(kind == norm_kind::layernorm || kind == norm_kind::rmsnorm, op, "kind = ", static_cast<int>(kind),
          " is not a norm_kind");
}

} // namespace norm_detail

template <element_type T> void validate(std::string_view op, const norm_forward_params<T>& p) {
  norm_detail::require_norm_kind(op, p.kind);
  detail::require_matrix(op, "x", p.x);
  detail::require_matrix(op, "y", p.y);
  norm_detail::require_same_shape(op, "y", p.y, "x", p.x);
  const index_t rows = p.x.rows, dim = p.x.cols;
  const bool layernorm = p.kind == norm_kind::layernorm;
  require(p.epsilon > 0.0f && std::isfinite(p.epsilon), op, "epsilon = ", p.epsilon, " must be positive and finite");
  require_not_null(op, "weight", p.weight, dim);
  require(layernorm || p.bias == nullptr, op, "bias applies to layernorm only");
  require(layernorm || p.mean == nullptr, op, "mean applies to layernorm only (rmsnorm saves rstd alone)");
  const bool fused = p.residual.data != nullptr;
  if (fused) {
    detail::require_matrix(op, "residual", p.residual);
    norm_detail::require_same_shape(op, "residual", p.residual, "x", p.x);
    require(p.residual_out.data != nullptr || p.x.empty(), op, "residual is given but residual_out is null");
    if (p.residual_out.data != nullptr) {
      detail::require_matrix(op, "residual_out", p.residual_out);
      norm_detail::require_same_shape(op, "residual_out", p.residual_out, "x", p.x);
    }
  } else {
    require(p.residual_out.data == nullptr, op, "residual_out is given but residual is not");
  }
  if (p.x.empty()) {
    return;
  }
  norm_detail::require_same_or_apart(op, "y", p.y, "x", p.x);
  if (fused) {
    norm_detail::require_same_or_apart(op, "y", p.y, "residual", p.residual);
    norm_detail::require_same_or_apart(op, "residual_out", p.residual_out, "x", p.x);
    norm_detail::require_same_or_apart(op, "residual_out", p.residual_out, "residual", p.residual);
    detail::require_disjoint_views(op, "y", p.y, "residual_out", p.residual_out);
  }
  using norm_detail::range_of;
  const norm_detail::named_range vectors_in[] = {range_of("weight", p.weight, dim), range_of("bias", p.bias, dim)};
  const norm_detail::named_range stats_out[] = {range_of("mean", p.mean, rows), range_of("rstd", p.rstd, rows)};
  const norm_detail::named_range rows_in[] = {range_of("x", p.x), range_of("residual", p.residual)};
  const norm_detail::named_range rows_out[] = {range_of("y", p.y), range_of("residual_out", p.residual_out)};
  for (const auto& out : rows_out) {
    for (const auto& in : vectors_in) {
      norm_detail::require_apart(op, out, in);
    }
    for (const auto& stats : stats_out) {
      norm_detail::require_apart(op, stats, out);
    }
  }
  for (const auto& stats : stats_out) {
    for (const auto& in : vectors_in) {
      norm_detail::require_apart(op, stats, in);
    }
    for (const auto& in : rows_in) {
      norm_detail::require_apart(op, stats, in);
    }
  }
  norm_detail::require_apart(op, stats_out[0], stats_out[1]);
}

template <element_type T> void validate(std::string_view op, const norm_backward_params<T>& p) {
  norm_detail::require_norm_kind(op, p.kind);
  detail::require_matrix(op, "x", p.x);
  detail::require_matrix(op, "dy", p.dy);
  detail::require_matrix(op, "dx", p.dx);
  norm_detail::require_same_shape(op, "dy", p.dy, "x", p.x);
  norm_detail::require_same_shape(op, "dx", p.dx, "x", p.x);
  const index_t rows = p.x.rows, dim = p.x.cols;
  const bool layernorm = p.kind == norm_kind::layernorm;
  require_not_null(op, "weight", p.weight, dim);
  require_not_null(op, "rstd", p.rstd, rows);
  if (layernorm) {
    require_not_null(op, "mean", p.mean, rows);
  } else {
    require(p.mean == nullptr, op, "mean applies to layernorm only (rmsnorm saves rstd alone)");
    require(p.dbias == nullptr, op, "dbias applies to layernorm only");
  }
  if (p.x.empty()) {
    return;
  }
  detail::require_disjoint_views(op, "dx", p.dx, "x", p.x);
  if (p.accumulate_dx) {
    detail::require_disjoint_views(op, "dx", p.dx, "dy", p.dy);
  } else {
    norm_detail::require_same_or_apart(op, "dx", p.dx, "dy", p.dy);
  }
  using norm_detail::range_of;
  const norm_detail::named_range inputs[] = {range_of("x", p.x), range_of("dy", p.dy),
                                             range_of("weight", p.weight, dim), range_of("mean", p.mean, rows),
                                             range_of("rstd", p.rstd, rows)};
  const norm_detail::named_range outputs[] = {range_of("dx", p.dx), range_of("dweight", p.dweight, dim),
                                              range_of("dbias", p.dbias, dim)};
  for (const auto& out : outputs) {
    for (const auto& in : inputs) {
      if (out.name != "dx" || (in.name != "x" && in.name != "dy")) { // dx against x and dy: checked above
        norm_detail::require_apart(op, out, in);
      }
    }
  }
  norm_detail::require_apart(op, outputs[0], outputs[1]);
  norm_detail::require_apart(op, outputs[0], outputs[2]);
  norm_detail::require_apart(op, outputs[1], outputs[2]);
}

} // namespace kern::ops
