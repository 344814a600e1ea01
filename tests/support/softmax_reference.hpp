// The float64 reference of the softmax ops (kern/ops/softmax.hpp), shared by the CPU and GPU tests.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <vector>

#include "kern/core/view.hpp"
#include "kern/ops/softmax.hpp"

namespace kern::test {

inline std::vector<double> softmax_reference(const std::vector<double>& x, index_t rows, index_t cols, double scale) {
  std::vector<double> y(x.size());
  for (index_t i = 0; i < rows; ++i) {
    const double* in = x.data() + i * cols;
    double* out = y.data() + i * cols;
    double max = -std::numeric_limits<double>::infinity();
    for (index_t j = 0; j < cols; ++j) {
      max = std::max(max, scale * in[j]);
    }
    double sum = 0.0;
    for (index_t j = 0; j < cols; ++j) {
      out[j] = std::exp(scale * in[j] - max);
      sum += out[j];
    }
    for (index_t j = 0; j < cols; ++j) {
      out[j] /= sum;
    }
  }
  return y;
}

inline std::vector<double> softmax_backward_reference(const std::vector<double>& y, const std::vector<double>& dy,
                                                      index_t rows, index_t cols) {
  std::vector<double> dx(y.size());
  for (index_t i = 0; i < rows; ++i) {
    double dot = 0.0;
    for (index_t j = 0; j < cols; ++j) {
      dot += y[static_cast<std::size_t>(i * cols + j)] * dy[static_cast<std::size_t>(i * cols + j)];
    }
    for (index_t j = 0; j < cols; ++j) {
      const auto k = static_cast<std::size_t>(i * cols + j);
      dx[k] = y[k] * (dy[k] - dot);
    }
  }
  return dx;
}

// The losses and the gradient, with the size of the terms each one sums: a loss near 0 (a target
// far above the other classes) is log(1 + tiny), whose fp32 error is a few ulp of 1, not of the
// loss; likewise softmax - 1 at such a target. Errors are measured against these sizes.
struct ce_reference {
  std::vector<double> losses, loss_scale;
  std::vector<double> gradient, gradient_scale; // rows x cols
  double loss = 0.0, total_scale = 0.0;
  index_t counted = 0;
};

// logits: rows x cols (the first vocab columns are classes).
inline ce_reference cross_entropy_reference(const std::vector<double>& logits, index_t rows, index_t cols,
                                            index_t vocab, const std::vector<std::int32_t>& targets,
                                            std::int32_t ignore_index, ops::loss_reduction reduction,
                                            double grad_scale) {
  ce_reference out;
  out.gradient.assign(logits.size(), 0.0);
  out.gradient_scale.assign(logits.size(), 0.0);
  for (std::int32_t t : targets) {
    out.counted += t != ignore_index ? 1 : 0;
  }
  const bool mean = reduction == ops::loss_reduction::mean;
  const double g = mean ? grad_scale / static_cast<double>(out.counted) : grad_scale;
  double total = 0.0;
  for (index_t i = 0; i < rows; ++i) {
    const std::int32_t t = targets[static_cast<std::size_t>(i)];
    if (t == ignore_index) {
      out.losses.push_back(0.0);
      out.loss_scale.push_back(1.0);
      continue;
    }
    const double* row = logits.data() + i * cols;
    double max = -std::numeric_limits<double>::infinity();
    for (index_t j = 0; j < vocab; ++j) {
      max = std::max(max, row[j]);
    }
    double sum = 0.0;
    for (index_t j = 0; j < vocab; ++j) {
      sum += std::exp(row[j] - max);
    }
    const double lse = max + std::log(sum);
    out.losses.push_back(lse - row[t]);
    out.loss_scale.push_back(lse - row[t] + 1.0);
    total += lse - row[t];
    out.total_scale += lse - row[t] + 1.0;
    for (index_t j = 0; j < vocab; ++j) {
      const double onehot = j == t ? 1.0 : 0.0;
      out.gradient[static_cast<std::size_t>(i * cols + j)] = (std::exp(row[j] - lse) - onehot) * g;
      out.gradient_scale[static_cast<std::size_t>(i * cols + j)] = (std::exp(row[j] - lse) + onehot) * std::abs(g);
    }
  }
  out.loss = mean ? total / static_cast<double>(out.counted) : total;
  out.total_scale = mean ? out.total_scale / static_cast<double>(out.counted) : out.total_scale;
  return out;
}

} // namespace kern::test
