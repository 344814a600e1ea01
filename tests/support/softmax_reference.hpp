// The float64 reference of the softmax ops (kern/ops/softmax.hpp), and the inputs and checks built
// on it, shared by the CPU and GPU tests (which differ only in how they run the kernels).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "kern/core/view.hpp"
#include "kern/ops/softmax.hpp"
#include "support/kernel_test.hpp"

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

// The inputs of a softmax backward: y = softmax(x) of random x by the reference, stored as T, and
// random dy, rows ld apart with NaN in the padding (the sentinel in dy's where dx is written over
// dy); and the float64 dx they give.
template <class T> struct softmax_backward_inputs {
  host_matrix<T> y, dy;
  std::vector<double> dx;

  softmax_backward_inputs(std::mt19937& rng, index_t rows, index_t cols, index_t ld, bool in_place)
      : y(rows, cols, ld, nan_value, 0.0f), dy(rows, cols, ld, in_place ? sentinel : nan_value, 0.0f) {
    host_matrix<T> x(rows, cols, cols, nan_value, 0.0f);
    x.fill_random(rng, -3.0f, 3.0f);
    const std::vector<double> y64 = softmax_reference(widen(x.values()), rows, cols, 1.0);
    for (index_t i = 0; i < rows; ++i) {
      for (index_t j = 0; j < cols; ++j) {
        y.at(i, j) = T(static_cast<float>(y64[static_cast<std::size_t>(i * cols + j)]));
      }
    }
    dy.fill_random(rng, -1.0f, 1.0f);
    dx = softmax_backward_reference(widen(y.values()), widen(dy.values()), rows, cols);
  }
};

// dx of L = sum(w * softmax(x)) as the kernels gave it (y by their forward, then their backward
// with dy = w) against central differences of the float64 forward. dx = y (dy - dot) cancels: the
// error is measured against y (|dy| + |dot|).
inline void expect_softmax_gradient_matches_finite_differences(const std::vector<float>& x, const std::vector<float>& w,
                                                               const std::vector<float>& y,
                                                               const std::vector<float>& dx, index_t rows,
                                                               index_t cols) {
  std::vector<double> x64 = widen(x);
  const std::vector<double> w64 = widen(w);
  const std::vector<double> numeric = numeric_gradient(x64, [&] {
    const std::vector<double> y64 = softmax_reference(x64, rows, cols, 1.0);
    double loss = 0.0;
    for (std::size_t k = 0; k < w64.size(); ++k) {
      loss += w64[k] * y64[k];
    }
    return loss;
  });
  std::vector<double> scale;
  for (index_t i = 0; i < rows; ++i) {
    double dot = 0.0;
    for (index_t j = 0; j < cols; ++j) {
      dot +=
          static_cast<double>(y[static_cast<std::size_t>(i * cols + j)]) * w64[static_cast<std::size_t>(i * cols + j)];
    }
    for (index_t j = 0; j < cols; ++j) {
      const auto k = static_cast<std::size_t>(i * cols + j);
      scale.push_back(static_cast<double>(y[k]) * (std::abs(w64[k]) + std::abs(dot)));
    }
  }
  EXPECT_LE(scaled_error(dx, numeric, scale), 1e-5);
}

} // namespace kern::test
