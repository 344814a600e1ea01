// The kernels the model is assembled from, behind one type: the model is a template on it, so a GPU
// backend (the same operations with the same parameter structs, on device memory and a stream)
// plugs in without a second model.
#pragma once

#include <span>

#include "kern/cpu.hpp"

namespace kern::examples {

struct cpu_backend {
  using context = cpu::context;

  template <class... P> static void gemm(const context& c, const P&... p) { cpu::gemm(c, p...); }
  template <class P> static void norm_forward(const context& c, const P& p) { cpu::norm_forward(c, p); }
  template <class P> static void norm_backward(const context& c, const P& p) { cpu::norm_backward(c, p); }
  template <class P> static auto cross_entropy(const context& c, const P& p) { return cpu::cross_entropy(c, p); }
  template <class P> static void activation_forward(const context& c, const P& p) { cpu::activation_forward(c, p); }
  template <class P> static void activation_backward(const context& c, const P& p) { cpu::activation_backward(c, p); }
  template <class P> static void swiglu_forward(const context& c, const P& p) { cpu::swiglu_forward(c, p); }
  template <class P> static void swiglu_backward(const context& c, const P& p) { cpu::swiglu_backward(c, p); }
  template <class P> static void bias_grad(const context& c, const P& p) { cpu::bias_grad(c, p); }
  template <class P> static void rope_forward(const context& c, const P& p) { cpu::rope_forward(c, p); }
  template <class P> static void rope_backward(const context& c, const P& p) { cpu::rope_backward(c, p); }
  template <class P> static void embedding_forward(const context& c, const P& p) { cpu::embedding_forward(c, p); }
  template <class P> static void embedding_backward(const context& c, const P& p) { cpu::embedding_backward(c, p); }
  template <class P> static void attention_forward(const context& c, const P& p) { cpu::attention_forward(c, p); }
  template <class P> static void attention_backward(const context& c, const P& p) { cpu::attention_backward(c, p); }
  template <class P> static void attention_decode(const context& c, const P& p) { cpu::attention_decode(c, p); }
  static void adamw_step(const context& c, const ops::adamw_params& p) { cpu::adamw_step(c, p); }
  static double global_grad_norm(const context& c, std::span<const ops::gradient_span> g) {
    return cpu::global_grad_norm(c, g);
  }
};

} // namespace kern::examples
