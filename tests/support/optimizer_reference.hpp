// The float64 references of the optimizer tests (CPU and GPU) and their error measures.
//
// A step's reference starts from the kernel's own fp32 inputs, so that the errors measured are
// those of the step itself, not of fp32 state drifting from a float64 trajectory. The parameter
// check compares the *update* (the parameters themselves are much larger than their change), with
// an allowance for the rounding of the parameters (see update_error).
#pragma once

#include <cmath>
#include <cstddef>
#include <limits>
#include <vector>

#include "kern/ops/optimizer.hpp"

namespace kern::test {

// How far a step's new parameters are from the reference, as a fraction of what is allowed:
// `tolerance` times the size of the change's terms (change_scale), plus two units in the last place
// of each parameter for the roundings no fp32 step avoids (the decayed and the updated value). At
// most 1 passes; infinite when an output is NaN or Inf where the reference is finite.
inline double update_error(const std::vector<float>& after, const std::vector<double>& ref,
                           const std::vector<double>& change_scale, double tolerance) {
  constexpr float inf = std::numeric_limits<float>::infinity();
  double diff = 0.0, allowed = 0.0;
  for (std::size_t i = 0; i < ref.size(); ++i) {
    const double out = after[i];
    if (!std::isfinite(out) && std::isfinite(ref[i])) {
      return std::numeric_limits<double>::infinity();
    }
    const auto magnitude = static_cast<float>(std::abs(ref[i]));
    const double ulp = std::nextafter(magnitude, inf) - magnitude;
    diff += (out - ref[i]) * (out - ref[i]);
    allowed += tolerance * tolerance * change_scale[i] * change_scale[i] + 4.0 * ulp * ulp;
  }
  return std::sqrt(diff / allowed);
}

// A reference AdamW step: the new values, and the magnitudes of the terms behind m and behind the
// parameter change (the scales of scaled_error and update_error).
struct adamw_reference {
  std::vector<double> param, m, v, m_scale, change_scale;
};

// One step in float64 from the given fp32 state, the formulas of torch.optim.AdamW; p gives the
// hyperparameters and the count (its pointers are not read).
inline adamw_reference adamw_reference_step(const ops::adamw_params& p, const std::vector<float>& param,
                                            const std::vector<float>& grad, const std::vector<float>& m,
                                            const std::vector<float>& v) {
  const double lr = p.lr, beta1 = p.beta1, beta2 = p.beta2, eps = p.epsilon, wd = p.weight_decay;
  const double correction1 = 1.0 - std::pow(beta1, static_cast<double>(p.step));
  const double correction2 = 1.0 - std::pow(beta2, static_cast<double>(p.step));
  const auto count = static_cast<std::size_t>(p.count);
  const std::vector<double> zeros(count);
  adamw_reference ref{zeros, zeros, zeros, zeros, zeros};
  for (std::size_t i = 0; i < count; ++i) {
    const double g = static_cast<double>(p.grad_scale) * grad[i];
    ref.m[i] = beta1 * m[i] + (1.0 - beta1) * g;
    ref.v[i] = beta2 * v[i] + (1.0 - beta2) * g * g;
    const double denominator = std::sqrt(ref.v[i] / correction2) + eps;
    ref.param[i] = param[i] * (1.0 - lr * wd) - lr / correction1 * ref.m[i] / denominator;
    ref.m_scale[i] = beta1 * std::abs(m[i]) + (1.0 - beta1) * std::abs(g);
    ref.change_scale[i] = lr * wd * std::abs(param[i]) + lr / correction1 * ref.m_scale[i] / denominator;
  }
  return ref;
}

// The L2 norm of all the tensors together in float64, summed with Kahan compensation so that its
// own error is negligible.
inline double reference_norm(const std::vector<std::vector<float>>& tensors) {
  double sum = 0.0, compensation = 0.0;
  for (const std::vector<float>& t : tensors) {
    for (float x : t) {
      const double term = static_cast<double>(x) * x - compensation;
      const double next = sum + term;
      compensation = (next - sum) - term;
      sum = next;
    }
  }
  return std::sqrt(sum);
}

} // namespace kern::test
