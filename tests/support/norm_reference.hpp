// The float64 reference of the norm ops (kern/ops/norm.hpp), shared by the CPU and GPU tests.
#pragma once

#include <cmath>
#include <cstddef>
#include <vector>

#include "kern/core/view.hpp"
#include "kern/ops/norm.hpp"

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

} // namespace kern::test
