// Optimizer steps over fp32 master weights, and the global gradient norm that clipping needs.
//
// adamw_params: one torch.optim.AdamW step (amsgrad = false, maximize = false), element by element:
//   g  = grad_scale * grad
//   p  = p * (1 - lr * weight_decay)                       (decoupled decay, on the pre-update p)
//   m  = m + (1 - beta1) * (g - m)                         (= beta1 m + (1 - beta1) g, as torch's lerp)
//   v  = beta2 * v + (1 - beta2) * g * g
//   p  = p - lr / (1 - beta1^step) * m / (sqrt(v) / sqrt(1 - beta2^step) + epsilon)
//   param_bf16 = bf16(p)                                   (optional, rounded to nearest even)
//
// sgd_params: one torch.optim.SGD step (maximize = false), element by element:
//   g  = grad_scale * grad
//   g  = g + weight_decay * p                              (coupled decay; skipped when weight_decay = 0)
//   if momentum != 0:
//     b = first_step ? g : momentum * b + (1 - dampening) * g
//     g = nesterov ? g + momentum * b : b
//   p  = p - lr * g
//
// adamw_multi_params: one AdamW step of a list of tensors (adamw_tensor: the buffers of one) that
// share the hyperparameters, as torch's foreach / fused AdamW: every tensor gets the update above.
// grad_scale_factor, when set, points to a float that the kernel reads where it runs (on a GPU, a
// device float such as the clip factor the global norm wrote) and multiplies into grad_scale, so
// that clipping needs no trip through the host.
//
// gradient_span: one gradient tensor, flattened; the global norm runs over a list of them.
// clip_factor: torch.nn.utils.clip_grad_norm_'s coefficient min(1, max_norm / (norm + 1e-6)).
//
// grad_scale multiplies the gradient before anything else: the clip factor, 1 / accumulation steps,
// or a loss-scale inverse. It is not validated: like a gradient, a NaN or Inf there propagates into
// the parameters (IEEE), and the caller that wants to skip a bad step checks the norm first.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "kern/core/dtype.hpp"
#include "kern/core/error.hpp"
#include "kern/core/view.hpp"

namespace kern::ops {

struct adamw_params {
  float* param = nullptr; // fp32 master weights, updated in place
  const float* grad = nullptr;
  float* m = nullptr;         // first moment, updated
  float* v = nullptr;         // second moment, updated
  bf16* param_bf16 = nullptr; // optional: a bf16 copy of the updated params written in the same pass
  index_t count = 0;
  float lr = 1e-3f, beta1 = 0.9f, beta2 = 0.999f, epsilon = 1e-8f, weight_decay = 0.0f;
  index_t step = 1;        // 1-based, for the bias corrections 1 - beta^step
  float grad_scale = 1.0f; // multiplies grad first (the clip factor, or 1 / accumulation steps)
};

struct sgd_params {
  float* param = nullptr;
  const float* grad = nullptr;
  float* momentum_buffer = nullptr; // required iff momentum != 0 (not touched when momentum = 0)
  index_t count = 0;
  float lr = 1e-2f, momentum = 0.0f, dampening = 0.0f, weight_decay = 0.0f;
  bool nesterov = false;
  bool first_step = false; // PyTorch: the buffer starts as the (decayed) gradient itself on the first step
  float grad_scale = 1.0f;
};

struct gradient_span {
  const float* data = nullptr;
  index_t count = 0;
};

// One tensor of a multi-tensor AdamW step: adamw_params' buffers.
struct adamw_tensor {
  float* param = nullptr;
  const float* grad = nullptr;
  float* m = nullptr;
  float* v = nullptr;
  bf16* param_bf16 = nullptr; // optional
  index_t count = 0;
};

struct adamw_multi_params {
  std::span<const adamw_tensor> tensors;
  float lr = 1e-3f, beta1 = 0.9f, beta2 = 0.999f, epsilon = 1e-8f, weight_decay = 0.0f;
  index_t step = 1;
  float grad_scale = 1.0f;
  const float* grad_scale_factor = nullptr; // optional: read by the kernel, multiplies grad_scale
};

namespace detail {

inline void require_finite_non_negative(std::string_view op, std::string_view arg, float value) {
  require(std::isfinite(value) && value >= 0.0f, op, arg, " = ", value, " must be finite and not negative");
}

inline void require_beta(std::string_view op, std::string_view arg, float value) {
  require(value >= 0.0f && value < 1.0f, op, arg, " = ", value, " must be in [0, 1)");
}

// One buffer of an optimizer step, as bytes [begin, end).
struct state_buffer {
  std::string_view name;
  const void* begin;
  const void* end;
};

template <class T> state_buffer buffer_of(std::string_view name, const T* data, index_t count) {
  return {name, data, data + (data != nullptr ? count : 0)};
}

// Every buffer of one step is read and written element by element in place: none may overlap another.
inline void require_state_disjoint(std::string_view op, std::initializer_list<state_buffer> buffers) {
  for (auto a = buffers.begin(); a != buffers.end(); ++a) {
    for (auto b = a + 1; b != buffers.end(); ++b) {
      require_disjoint(op, a->name, a->begin, a->end, b->name, b->begin, b->end);
    }
  }
}

// One buffer of a list of tensors, as bytes [begin, end); tensor < 0 for a buffer of the whole list.
struct listed_buffer {
  std::string_view name;
  std::ptrdiff_t tensor;
  const std::byte* begin;
  const std::byte* end;
  std::size_t position = 0; // in the list as given, to name two overlapping buffers in that order

  std::uintptr_t first_byte() const { return reinterpret_cast<std::uintptr_t>(begin); }
  std::uintptr_t last_byte_end() const { return reinterpret_cast<std::uintptr_t>(end); }
  std::string label() const {
    return tensor < 0 ? std::string(name) : "tensors[" + std::to_string(tensor) + "]." + std::string(name);
  }
};

template <class T> listed_buffer listed(std::string_view name, std::ptrdiff_t tensor, const T* data, index_t count) {
  const auto* begin = reinterpret_cast<const std::byte*>(data);
  return {name, tensor, begin, begin + (data != nullptr ? count : 0) * static_cast<index_t>(sizeof(T))};
}

// No two of the buffers may overlap. Sorted by address, a buffer overlaps an earlier one exactly when
// it starts before the furthest end seen so far, so that one pass finds an overlap among any number.
inline void require_listed_disjoint(std::string_view op, std::vector<listed_buffer> buffers) {
  for (std::size_t i = 0; i < buffers.size(); ++i) {
    buffers[i].position = i;
  }
  std::erase_if(buffers, [](const listed_buffer& b) { return b.begin == b.end; });
  std::sort(buffers.begin(), buffers.end(),
            [](const listed_buffer& a, const listed_buffer& b) { return a.first_byte() < b.first_byte(); });
  const listed_buffer* furthest = nullptr;
  for (const listed_buffer& b : buffers) {
    if (furthest != nullptr && b.first_byte() < furthest->last_byte_end()) {
      const listed_buffer& first = furthest->position < b.position ? *furthest : b;
      const listed_buffer& second = furthest->position < b.position ? b : *furthest;
      require_disjoint(op, first.label(), first.begin, first.end, second.label(), second.begin, second.end);
    }
    if (furthest == nullptr || b.last_byte_end() > furthest->last_byte_end()) {
      furthest = &b;
    }
  }
}

} // namespace detail

inline void validate(std::string_view op, const adamw_params& p) {
  require_non_negative(op, "count", p.count);
  require_not_null(op, "param", p.param, p.count);
  require_not_null(op, "grad", p.grad, p.count);
  require_not_null(op, "m", p.m, p.count);
  require_not_null(op, "v", p.v, p.count);
  detail::require_finite_non_negative(op, "lr", p.lr);
  detail::require_beta(op, "beta1", p.beta1);
  detail::require_beta(op, "beta2", p.beta2);
  detail::require_finite_non_negative(op, "epsilon", p.epsilon);
  detail::require_finite_non_negative(op, "weight_decay", p.weight_decay);
  require(p.step >= 1, op, "step = ", p.step, " must be at least 1 (steps count from 1)");
  detail::require_state_disjoint(op, {detail::buffer_of("param", p.param, p.count),
                                      detail::buffer_of("m", p.m, p.count), detail::buffer_of("v", p.v, p.count),
                                      detail::buffer_of("param_bf16", p.param_bf16, p.count),
                                      detail::buffer_of("grad", p.grad, p.count)});
}

// The hyperparameters as for one tensor, then every tensor's count and pointers; no buffer of any
// tensor may overlap another buffer of any tensor (they are updated concurrently).
inline void validate(std::string_view op, const adamw_multi_params& p) {
  adamw_params hyperparameters;
  hyperparameters.lr = p.lr;
  hyperparameters.beta1 = p.beta1;
  hyperparameters.beta2 = p.beta2;
  hyperparameters.epsilon = p.epsilon;
  hyperparameters.weight_decay = p.weight_decay;
  hyperparameters.step = p.step;
  validate(op, hyperparameters);
  std::vector<detail::listed_buffer> buffers{detail::listed("grad_scale_factor", -1, p.grad_scale_factor, 1)};
  buffers.reserve(5 * p.tensors.size() + 1);
  for (std::size_t i = 0; i < p.tensors.size(); ++i) {
    const adamw_tensor& t = p.tensors[i];
    require(t.count >= 0, op, "tensors[", i, "].count = ", t.count, " must not be negative");
    const auto require_buffer = [&](std::string_view name, const void* data) {
      require(data != nullptr || t.count == 0, op, "tensors[", i, "].", name, " is null but holds ", t.count,
              " elements");
    };
    require_buffer("param", t.param);
    require_buffer("grad", t.grad);
    require_buffer("m", t.m);
    require_buffer("v", t.v);
    const auto tensor = static_cast<std::ptrdiff_t>(i);
    buffers.push_back(detail::listed("param", tensor, t.param, t.count));
    buffers.push_back(detail::listed("m", tensor, t.m, t.count));
    buffers.push_back(detail::listed("v", tensor, t.v, t.count));
    buffers.push_back(detail::listed("param_bf16", tensor, t.param_bf16, t.count));
    buffers.push_back(detail::listed("grad", tensor, t.grad, t.count));
  }
  detail::require_listed_disjoint(op, std::move(buffers));
}

inline void validate(std::string_view op, const sgd_params& p) {
  require_non_negative(op, "count", p.count);
  require_not_null(op, "param", p.param, p.count);
  require_not_null(op, "grad", p.grad, p.count);
  detail::require_finite_non_negative(op, "lr", p.lr);
  detail::require_finite_non_negative(op, "momentum", p.momentum);
  require(std::isfinite(p.dampening), op, "dampening = ", p.dampening, " must be finite");
  detail::require_finite_non_negative(op, "weight_decay", p.weight_decay);
  require(!p.nesterov || (p.momentum > 0.0f && p.dampening == 0.0f), op,
          "nesterov needs momentum > 0 and dampening = 0 (momentum = ", p.momentum, ", dampening = ", p.dampening, ")");
  const bool uses_buffer = p.momentum != 0.0f;
  require(!uses_buffer || p.momentum_buffer != nullptr || p.count == 0, op,
          "momentum_buffer is null but momentum = ", p.momentum, " needs one of ", p.count, " elements");
  detail::require_state_disjoint(
      op, {detail::buffer_of("param", p.param, p.count),
           detail::buffer_of("momentum_buffer", uses_buffer ? p.momentum_buffer : nullptr, p.count),
           detail::buffer_of("grad", p.grad, p.count)});
}

inline void validate(std::string_view op, std::span<const gradient_span> grads) {
  for (std::size_t i = 0; i < grads.size(); ++i) {
    require(grads[i].count >= 0, op, "grads[", i, "].count = ", grads[i].count, " must not be negative");
    require(grads[i].data != nullptr || grads[i].count == 0, op, "grads[", i, "].data is null but holds ",
            grads[i].count, " elements");
  }
}

// min(1, max_norm / (norm + 1e-6)), computed in double and rounded once; a NaN norm gives NaN (so
// that the scaled gradients are NaN, as in PyTorch) and an infinite one 0.
inline float clip_factor(std::string_view op, double norm, float max_norm) {
  require(max_norm > 0.0f, op, "max_norm = ", max_norm, " must be positive");
  require(!(norm < 0.0), op, "norm = ", norm, " must not be negative");
  const double factor = static_cast<double>(max_norm) / (norm + 1e-6);
  return static_cast<float>(factor < 1.0 || std::isnan(factor) ? factor : 1.0);
}

} // namespace kern::ops
