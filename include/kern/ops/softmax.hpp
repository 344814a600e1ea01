// softmax over the rows of a matrix, its backward, and the cross-entropy loss fused with its
// gradient.
//
//   softmax_forward:  y[i, :] = softmax(scale * x[i, :]), computed as exp(s - max(s)) / sum(exp(s - max(s)))
//   softmax_backward: dx[i, :] = y[i, :] * (dy[i, :] - sum_j(dy[i, j] * y[i, j]))
//   cross_entropy:    loss_i = logsumexp(logits[i, 0:vocab]) - logits[i, target_i]
//                     reduced = sum_i loss_i (sum) or that sum / counted rows (mean, as PyTorch)
//                     logits[i, j] := d(reduced)/d(logits[i, j]) * grad_scale
//                               = (softmax_j - [j == target_i]) * grad_scale (/ counted rows for mean)
//
// Rows whose target is ignore_index count neither in the loss nor in the mean's denominator; their
// loss is 0 and their gradient row is 0. Columns from vocab on (a padded vocabulary) take no part
// in the softmax and get gradient 0. A mean over zero counted rows is 0 / 0 = NaN, as in PyTorch.
// NaN and Inf are not clamped: a row whose logits hold NaN or are all -inf has a NaN loss, which
// reaches the reduced loss, and is counted in nonfinite_rows.
#pragma once

#include <cstdint>
#include <string_view>

#include "kern/core/dtype.hpp"
#include "kern/core/error.hpp"
#include "kern/core/view.hpp"
#include "kern/ops/gemm.hpp"

namespace kern::ops {

template <element_type T> struct softmax_forward_params {
  matrix_view<const T> x;
  matrix_view<T> y; // may be x (in place)
  float scale = 1.0f;
};

template <element_type T> struct softmax_backward_params {
  matrix_view<const T> y;
  matrix_view<const T> dy;
  matrix_view<T> dx; // may be dy (in place)
};

enum class loss_reduction : std::uint8_t { mean, sum };

template <element_type T> struct cross_entropy_params {
  matrix_view<T> logits;                 // N x V; overwritten with the gradient when write_gradient
  const std::int32_t* targets = nullptr; // N class ids in [0, vocab), or ignore_index
  float* losses = nullptr;               // N per-row losses (0 for ignored rows), optional
  index_t vocab = -1;                    // classes that exist (<= logits.cols); -1: logits.cols
  std::int32_t ignore_index = -100;
  loss_reduction reduction = loss_reduction::mean;
  bool write_gradient = true;
  float grad_scale = 1.0f; // e.g. 1 / gradient-accumulation steps

  index_t classes() const noexcept { return vocab == -1 ? logits.cols : vocab; }
};

struct cross_entropy_result {
  double loss = 0;            // the reduced loss
  index_t counted_rows = 0;   // rows whose target is not ignore_index
  index_t nonfinite_rows = 0; // counted rows whose loss is NaN or Inf
};

template <element_type T> void validate(std::string_view op, const softmax_forward_params<T>& p) {
  detail::require_matrix(op, "x", p.x);
  detail::require_matrix(op, "y", p.y);
  require(p.y.rows == p.x.rows && p.y.cols == p.x.cols, op, "y is ", p.y.rows, " x ", p.y.cols, " but x is ", p.x.rows,
          " x ", p.x.cols);
  const bool in_place = static_cast<const void*>(p.y.data) == static_cast<const void*>(p.x.data) && p.y.ld == p.x.ld;
  if (!in_place) {
    detail::require_disjoint_views(op, "y", p.y, "x", p.x);
  }
}

template <element_type T> void validate(std::string_view op, const softmax_backward_params<T>& p) {
  detail::require_matrix(op, "y", p.y);
  detail::require_matrix(op, "dy", p.dy);
  detail::require_matrix(op, "dx", p.dx);
  require(p.dy.rows == p.y.rows && p.dy.cols == p.y.cols, op, "dy is ", p.dy.rows, " x ", p.dy.cols, " but y is ",
          p.y.rows, " x ", p.y.cols);
  require(p.dx.rows == p.y.rows && p.dx.cols == p.y.cols, op, "dx is ", p.dx.rows, " x ", p.dx.cols, " but y is ",
          p.y.rows, " x ", p.y.cols);
  const bool in_place =
      static_cast<const void*>(p.dx.data) == static_cast<const void*>(p.dy.data) && p.dx.ld == p.dy.ld;
  if (!in_place) {
    detail::require_disjoint_views(op, "dx", p.dx, "dy", p.dy);
  }
  detail::require_disjoint_views(op, "dx", p.dx, "y", p.y);
}

// Every check but that of the target values: all a caller whose targets live in device memory can
// make on the host (the GPU kernels report bad targets in their result instead).
template <element_type T> void validate_except_target_values(std::string_view op, const cross_entropy_params<T>& p) {
  detail::require_matrix(op, "logits", p.logits);
  const index_t rows = p.logits.rows, vocab = p.classes();
  require(p.vocab >= -1, op, "vocab = ", p.vocab, " must be -1 (logits.cols) or a class count");
  require(vocab <= p.logits.cols, op, "vocab = ", vocab, " exceeds logits.cols = ", p.logits.cols);
  require(p.reduction == loss_reduction::mean || p.reduction == loss_reduction::sum, op,
          "reduction = ", static_cast<int>(p.reduction), " is not a loss_reduction");
  require_not_null(op, "targets", p.targets, rows);
  if (rows > 0) {
    const void* logits_end = p.logits.end();
    require_disjoint(op, "logits", p.logits.data, logits_end, "targets", p.targets, p.targets + rows);
    if (p.losses != nullptr) {
      require_disjoint(op, "logits", p.logits.data, logits_end, "losses", p.losses, p.losses + rows);
      require_disjoint(op, "losses", p.losses, p.losses + rows, "targets", p.targets, p.targets + rows);
    }
  }
}

// The target values (read on the host): each in [0, vocab) or ignore_index.
template <element_type T> void validate_target_values(std::string_view op, const cross_entropy_params<T>& p) {
  const index_t rows = p.logits.rows, vocab = p.classes();
  for (index_t i = 0; i < rows; ++i) {
    const std::int32_t target = p.targets[i];
    require(target == p.ignore_index || (target >= 0 && target < vocab), op, "targets[", i, "] = ", target,
            " is outside [0, vocab = ", vocab, ") and is not ignore_index = ", p.ignore_index);
  }
}

// Checks every target before the kernel touches the logits, so that nothing is lost on failure.
template <element_type T> void validate(std::string_view op, const cross_entropy_params<T>& p) {
  validate_except_target_values(op, p);
  validate_target_values(op, p);
}

// The rows whose target is not ignore_index: the denominator of the mean reduction.
template <element_type T> index_t counted_rows(const cross_entropy_params<T>& p) {
  index_t counted = 0;
  for (index_t i = 0; i < p.logits.rows; ++i) {
    counted += p.targets[i] != p.ignore_index ? 1 : 0;
  }
  return counted;
}

} // namespace kern::ops
