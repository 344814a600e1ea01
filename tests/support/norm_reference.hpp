// The float64 reference of the norm ops (kern/ops/norm.hpp), and the checks of what a kernel wrote
// against it, shared by the CPU and GPU tests (which differ only in how they run the kernels).
#pragma once

#include <cmath>
#include <cstddef>
#include <random>
#include <vector>

#include "kern/core/view.hpp"
#include "kern/ops/norm.hpp"
#include "support/kernel_test.hpp"

namespace kern::test {

struct reference_forward {
  std::vector<double> y, mean, rstd;
};

// h: rows x dim, row-major.
inline reference_forward norm_reference(ops::norm_kind kind, const std::vector<double>& h, index_t rows, index_t dim,
                                        const std::vector<double>& weight, const std::vector<double>* bias,
                                        double epsilon) {
  reference_forward out;
  for (index_t i = 0; i < rows; ++i) {
    const double* row = h.data() + i * dim;
    double mean = 0.0;
    if (kind == ops::norm_kind::layernorm) {
      for (index_t j = 0; j < dim; ++j) {
        mean += row[j];
      }
      mean /= static_cast<double>(dim);
    }
    double square = 0.0;
    for (index_t j = 0; j < dim; ++j) {
      square += (row[j] - mean) * (row[j] - mean);
    }
    const double rstd = 1.0 / std::sqrt(square / static_cast<double>(dim) + epsilon);
    for (index_t j = 0; j < dim; ++j) {
      const double b = bias != nullptr ? (*bias)[static_cast<std::size_t>(j)] : 0.0;
      out.y.push_back((row[j] - mean) * rstd * weight[static_cast<std::size_t>(j)] + b);
    }
    out.mean.push_back(mean);
    out.rstd.push_back(rstd);
  }
  return out;
}

struct reference_backward {
  std::vector<double> dx, dweight, dbias;
  // rstd * (|g| + |mean(g)| + |xhat mean(g xhat)|): the size of the terms each dx sums. dx cancels
  // (to exactly 0 for a 1-wide LayerNorm), so an error is measured against this, not against dx.
  std::vector<double> dx_scale;
};

// The analytic gradient, from the saved mean and rstd.
inline reference_backward norm_backward_reference(ops::norm_kind kind, const std::vector<double>& x,
                                                  const std::vector<double>& dy, index_t rows, index_t dim,
                                                  const std::vector<double>& weight, const std::vector<double>& mean,
                                                  const std::vector<double>& rstd) {
  reference_backward out;
  out.dweight.assign(static_cast<std::size_t>(dim), 0.0);
  out.dbias.assign(static_cast<std::size_t>(dim), 0.0);
  const auto n = static_cast<double>(dim);
  for (index_t i = 0; i < rows; ++i) {
    const double m = kind == ops::norm_kind::layernorm ? mean[static_cast<std::size_t>(i)] : 0.0;
    const double r = rstd[static_cast<std::size_t>(i)];
    double g_mean = 0.0, g_xhat_mean = 0.0;
    for (index_t j = 0; j < dim; ++j) {
      const auto k = static_cast<std::size_t>(i * dim + j);
      const double xhat = (x[k] - m) * r;
      const double g = dy[k] * weight[static_cast<std::size_t>(j)];
      g_mean += g / n;
      g_xhat_mean += g * xhat / n;
      out.dweight[static_cast<std::size_t>(j)] += dy[k] * xhat;
      out.dbias[static_cast<std::size_t>(j)] += dy[k];
    }
    if (kind == ops::norm_kind::rmsnorm) {
      g_mean = 0.0;
    }
    for (index_t j = 0; j < dim; ++j) {
      const auto k = static_cast<std::size_t>(i * dim + j);
      const double xhat = (x[k] - m) * r;
      const double g = dy[k] * weight[static_cast<std::size_t>(j)];
      out.dx.push_back(r * (g - g_mean - xhat * g_xhat_mean));
      out.dx_scale.push_back(r * (std::abs(g) + std::abs(g_mean) + std::abs(xhat * g_xhat_mean)));
    }
  }
  return out;
}

// What a norm forward wrote against the reference: y, mean (LayerNorm) and rstd of the rows of x,
// plus `residual` where it is not null, in which case residual_out must hold x + residual computed
// in fp32 and stored as T, bit for bit. The padding of the outputs must still hold the sentinel.
template <class T>
void expect_forward_matches_reference(ops::norm_kind kind, const host_matrix<T>& x, const host_matrix<T>* residual,
                                      const host_matrix<T>& residual_out, const std::vector<float>& weight,
                                      const std::vector<float>* bias, const host_matrix<T>& y,
                                      const std::vector<float>& mean, const std::vector<float>& rstd) {
  const index_t rows = x.rows, dim = x.cols;
  std::vector<double> h = widen(x.values());
  if (residual != nullptr) {
    for (index_t i = 0; i < rows; ++i) {
      for (index_t j = 0; j < dim; ++j) {
        const T stored(static_cast<float>(x.at(i, j)) + static_cast<float>(residual->at(i, j)));
        ASSERT_EQ(bits_of(residual_out.at(i, j)), bits_of(stored)) << "residual_out (" << i << ", " << j << ")";
        h[static_cast<std::size_t>(i * dim + j)] = static_cast<float>(stored);
      }
    }
    EXPECT_TRUE(residual_out.padding_is(sentinel)) << "residual_out padding written";
  }
  const std::vector<double> bias64 = bias != nullptr ? widen(*bias) : std::vector<double>{};
  const reference_forward ref =
      norm_reference(kind, h, rows, dim, widen(weight), bias != nullptr ? &bias64 : nullptr, 1e-5);
  EXPECT_LE(relative_error(y.values(), ref.y), output_tolerance<T>());
  EXPECT_TRUE(y.padding_is(sentinel)) << "y padding written";
  EXPECT_LE(relative_error(rstd, ref.rstd), 2e-6);
  if (kind == ops::norm_kind::layernorm) {
    // A row's mean may cancel to near zero: its error is measured against the size of the values
    // it averages (their root mean square), not against the mean itself.
    std::vector<double> row_scale(static_cast<std::size_t>(rows));
    for (index_t i = 0; i < rows; ++i) {
      double sum = 0.0;
      for (index_t j = 0; j < dim; ++j) {
        sum += h[static_cast<std::size_t>(i * dim + j)] * h[static_cast<std::size_t>(i * dim + j)];
      }
      row_scale[static_cast<std::size_t>(i)] = std::sqrt(sum / static_cast<double>(dim));
    }
    EXPECT_LE(scaled_error(mean, ref.mean, row_scale), 2e-6);
  }
}

// The inputs of a norm backward and the gradients' values before it (dx_before is read only with
// accumulate_dx), and what the kernel wrote: dx, and dweight and dbias (LayerNorm only; RMSNorm
// must leave dbias as it was) accumulated into their values before.
template <class T> struct norm_backward_check {
  ops::norm_kind kind;
  const host_matrix<T>& x;
  const host_matrix<T>& dy;
  const std::vector<float>& weight;
  const std::vector<float>& mean;
  const std::vector<float>& rstd;
  bool accumulate_dx;
  const std::vector<double>& dx_before;
  const std::vector<float>& dweight_before;
  const std::vector<float>& dbias_before;
};

template <class T> void expect_backward_matches_reference(const norm_backward_check<T>& c, const host_matrix<T>& dx,
                                                          const std::vector<float>& dweight,
                                                          const std::vector<float>& dbias) {
  reference_backward ref = norm_backward_reference(c.kind, widen(c.x.values()), widen(c.dy.values()), c.x.rows,
                                                   c.x.cols, widen(c.weight), widen(c.mean), widen(c.rstd));
  std::vector<double> dx_ref = ref.dx, dx_scale = ref.dx_scale;
  if (c.accumulate_dx) {
    for (std::size_t k = 0; k < dx_ref.size(); ++k) {
      dx_ref[k] += c.dx_before[k];
      dx_scale[k] += std::abs(c.dx_before[k]);
    }
  }
  // The accumulated gradients may cancel (a starting value against the new sum): their error is
  // measured against the size of the two parts, which is what fp32 rounding scales with.
  std::vector<double> dweight_scale(ref.dweight.size()), dbias_scale(ref.dbias.size());
  for (std::size_t j = 0; j < ref.dweight.size(); ++j) {
    dweight_scale[j] = std::abs(ref.dweight[j]) + std::abs(c.dweight_before[j]);
    dbias_scale[j] = std::abs(ref.dbias[j]) + std::abs(c.dbias_before[j]);
    ref.dweight[j] += c.dweight_before[j];
    ref.dbias[j] += c.dbias_before[j];
  }
  EXPECT_LE(scaled_error(dx.values(), dx_ref, dx_scale), gradient_tolerance<T>());
  EXPECT_TRUE(dx.padding_is(sentinel)) << "dx padding written";
  EXPECT_LE(scaled_error(dweight, ref.dweight, dweight_scale), 1e-5);
  if (c.kind == ops::norm_kind::layernorm) {
    EXPECT_LE(scaled_error(dbias, ref.dbias, dbias_scale), 1e-5);
  } else {
    EXPECT_EQ(dbias, c.dbias_before);
  }
}

// A check of the backward against central finite differences of the float64 forward, on the loss
// L = sum(w * y) of y = norm(x (+ residual)) with weight (and bias): the case, and its inputs drawn
// from one generator.
struct norm_fd_case {
  ops::norm_kind kind;
  index_t rows, dim;
  bool bias, residual;
};

struct norm_fd_inputs {
  std::vector<float> x, residual, weight, bias;
  std::vector<double> w;

  norm_fd_inputs(std::mt19937& rng, const norm_fd_case& c)
      : x(random_values<float>(rng, c.rows * c.dim, -2.0f, 3.0f)),
        residual(random_values<float>(rng, c.rows * c.dim, -1.0f, 1.0f)),
        weight(random_values<float>(rng, c.dim, 0.5f, 1.5f)), bias(random_values<float>(rng, c.dim, -1.0f, 1.0f)),
        w(widen(random_values<float>(rng, c.rows * c.dim, -1.0f, 1.0f))) {}
};

// The gradients the kernels gave (the backward run with dy = w on the forward's h = x (+ residual),
// mean and rstd, with dweight and dbias starting at zero) against the finite differences of L: dx
// through the residual and through x, dweight, and dbias where there is a bias. dx's error is
// measured against the size of its terms in the analytic float64 gradient at the kernels' h, mean
// and rstd.
inline void expect_gradients_match_finite_differences(const norm_fd_case& c, const norm_fd_inputs& in,
                                                      const std::vector<float>& h, const std::vector<float>& mean,
                                                      const std::vector<float>& rstd, const std::vector<float>& dx,
                                                      const std::vector<float>& dweight,
                                                      const std::vector<float>& dbias) {
  std::vector<double> x64 = widen(in.x), r64 = widen(in.residual), weight64 = widen(in.weight), bias64 = widen(in.bias);
  const auto loss = [&] {
    std::vector<double> h64 = x64;
    if (c.residual) {
      for (std::size_t k = 0; k < h64.size(); ++k) {
        h64[k] += r64[k];
      }
    }
    const reference_forward out =
        norm_reference(c.kind, h64, c.rows, c.dim, weight64, c.bias ? &bias64 : nullptr, 1e-5);
    double sum = 0.0;
    for (std::size_t k = 0; k < out.y.size(); ++k) {
      sum += in.w[k] * out.y[k];
    }
    return sum;
  };
  const std::vector<double> dx_scale =
      norm_backward_reference(c.kind, widen(h), in.w, c.rows, c.dim, weight64, widen(mean), widen(rstd)).dx_scale;
  EXPECT_LE(scaled_error(dx, numeric_gradient(c.residual ? r64 : x64, loss), dx_scale), 1e-5) << "dx";
  if (c.residual) {
    EXPECT_LE(scaled_error(dx, numeric_gradient(x64, loss), dx_scale), 1e-5) << "dx (through x)";
  }
  EXPECT_LE(relative_error(dweight, numeric_gradient(weight64, loss)), 1e-5) << "dweight";
  if (c.bias) {
    EXPECT_LE(relative_error(dbias, numeric_gradient(bias64, loss)), 1e-5) << "dbias";
  }
}

} // namespace kern::test
