// kern::cpu's optimizer steps and global gradient norm against plain scalar loops (what an engine
// writes without kern), over GPT-2 124M's 124,439,808 parameters (far beyond the caches) and over
// 2^20 (a few times L2). GB/s count the least traffic each op needs: AdamW reads p, g, m, v and
// writes p, m, v (28 bytes a parameter, 30 with the bf16 copy); SGD with momentum reads p, g, b and
// writes p, b (20); the norm reads g (4).
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "bench_common.hpp"
#include "kern/cpu.hpp"
#include "workloads.hpp"

namespace {

using kern::bf16;
using kern::index_t;
using namespace kern::bench;

constexpr index_t gpt2_parameters = 124'439'808;
constexpr index_t l2_scale_parameters = index_t{1} << 20;

// One set of optimizer buffers, shared by every benchmark of the same size: allocating and filling
// 2 GB for each run would dominate the program's time. Values stay finite over any number of steps.
struct arena {
  index_t count;
  kern::aligned_buffer<float> param, grad, m, v;
  kern::aligned_buffer<bf16> param_bf16;
  explicit arena(index_t n)
      : count(n), param(static_cast<std::size_t>(n)), grad(static_cast<std::size_t>(n)),
        m(static_cast<std::size_t>(n), 0.0f), v(static_cast<std::size_t>(n), 0.0f),
        param_bf16(static_cast<std::size_t>(n), bf16(0.0f)) { // touched now, not in the first timed run
    for (std::size_t i = 0; i < param.size(); ++i) {
      param[i] = static_cast<float>(i % 997) * 1e-3f - 0.5f;
      grad[i] = static_cast<float>(i % 1009) * 1e-3f - 0.5f;
    }
  }
};

arena& arena_of(index_t n) {
  static std::unique_ptr<arena> current;
  if (!current || current->count != n) {
    current.reset(); // free the old set first: two 124M sets would not fit in every machine
    current = std::make_unique<arena>(n);
  }
  return *current;
}

kern::ops::adamw_params adamw_params_of(arena& a, bool bf16_copy) {
  kern::ops::adamw_params p;
  p.param = a.param.data();
  p.grad = a.grad.data();
  p.m = a.m.data();
  p.v = a.v.data();
  p.param_bf16 = bf16_copy ? a.param_bf16.data() : nullptr;
  p.count = a.count;
  p.lr = 3e-4f;
  p.weight_decay = 0.1f;
  p.step = 10;
  return p;
}

kern::ops::sgd_params sgd_params_of(arena& a) {
  kern::ops::sgd_params p;
  p.param = a.param.data();
  p.grad = a.grad.data();
  p.momentum_buffer = a.m.data();
  p.count = a.count;
  p.lr = 1e-2f;
  p.momentum = 0.9f;
  p.weight_decay = 1e-4f;
  return p;
}

double adamw_bytes(index_t n, bool bf16_copy) {
  const std::size_t per_parameter = 7 * sizeof(float) + (bf16_copy ? sizeof(bf16) : 0);
  return static_cast<double>(n) * static_cast<double>(per_parameter);
}

void kern_adamw(benchmark::State& state, index_t n, bool bf16_copy) {
  arena& a = arena_of(n);
  const kern::ops::adamw_params p = adamw_params_of(a, bf16_copy);
  const kern::cpu::context ctx(threads_of(state));
  for (auto _ : state) {
    kern::cpu::adamw_step(ctx, p);
    benchmark::ClobberMemory();
  }
  report_bytes(state, adamw_bytes(n, bf16_copy));
}

// The loop a user writes by hand from torch's formulas: one element at a time, one thread.
void scalar_adamw(benchmark::State& state, index_t n, bool bf16_copy) {
  arena& a = arena_of(n);
  const kern::ops::adamw_params p = adamw_params_of(a, bf16_copy);
  const auto step = static_cast<double>(p.step);
  const auto step_size = static_cast<float>(p.lr / (1.0 - std::pow(static_cast<double>(p.beta1), step)));
  const auto inv_sqrt_correction2 =
      static_cast<float>(1.0 / std::sqrt(1.0 - std::pow(static_cast<double>(p.beta2), step)));
  const float decay = 1.0f - p.lr * p.weight_decay;
  for (auto _ : state) {
    for (index_t i = 0; i < n; ++i) {
      const float g = p.grad[i] * p.grad_scale;
      const float m = p.m[i] + (1.0f - p.beta1) * (g - p.m[i]);
      const float v = p.beta2 * p.v[i] + (1.0f - p.beta2) * g * g;
      const float updated = p.param[i] * decay - step_size * m / (std::sqrt(v) * inv_sqrt_correction2 + p.epsilon);
      p.m[i] = m;
      p.v[i] = v;
      p.param[i] = updated;
      if (p.param_bf16 != nullptr) {
        p.param_bf16[i] = bf16(updated);
      }
    }
    benchmark::ClobberMemory();
  }
  report_bytes(state, adamw_bytes(n, bf16_copy));
}

void kern_sgd(benchmark::State& state, index_t n) {
  arena& a = arena_of(n);
  const kern::ops::sgd_params p = sgd_params_of(a);
  const kern::cpu::context ctx(threads_of(state));
  for (auto _ : state) {
    kern::cpu::sgd_step(ctx, p);
    benchmark::ClobberMemory();
  }
  report_bytes(state, static_cast<double>(n) * 5 * sizeof(float));
}

void scalar_sgd(benchmark::State& state, index_t n) {
  arena& a = arena_of(n);
  const kern::ops::sgd_params p = sgd_params_of(a);
  const float one_minus_dampening = 1.0f - p.dampening;
  for (auto _ : state) {
    for (index_t i = 0; i < n; ++i) {
      const float g = p.grad[i] * p.grad_scale + p.weight_decay * p.param[i];
      const float buffer = p.momentum * p.momentum_buffer[i] + one_minus_dampening * g;
      p.momentum_buffer[i] = buffer;
      p.param[i] -= p.lr * buffer;
    }
    benchmark::ClobberMemory();
  }
  report_bytes(state, static_cast<double>(n) * 5 * sizeof(float));
}

// GPT-2's tensors laid end to end in the arena's gradient buffer.
std::vector<kern::ops::gradient_span> gpt2_gradients(arena& a) {
  std::vector<kern::ops::gradient_span> spans;
  const float* data = a.grad.data();
  for (index_t size : gpt2_tensor_sizes()) {
    spans.push_back({data, size});
    data += size;
  }
  return spans;
}

void kern_grad_norm(benchmark::State& state) {
  arena& a = arena_of(gpt2_parameters);
  const std::vector<kern::ops::gradient_span> spans = gpt2_gradients(a);
  const kern::cpu::context ctx(threads_of(state));
  for (auto _ : state) {
    benchmark::DoNotOptimize(kern::cpu::global_grad_norm(ctx, spans));
  }
  report_bytes(state, static_cast<double>(gpt2_parameters) * sizeof(float));
}

void scalar_grad_norm(benchmark::State& state) {
  arena& a = arena_of(gpt2_parameters);
  const std::vector<kern::ops::gradient_span> spans = gpt2_gradients(a);
  for (auto _ : state) {
    double sum = 0.0;
    for (const kern::ops::gradient_span& span : spans) {
      for (index_t i = 0; i < span.count; ++i) {
        sum += static_cast<double>(span.data[i]) * span.data[i];
      }
    }
    benchmark::DoNotOptimize(std::sqrt(sum));
  }
  report_bytes(state, static_cast<double>(gpt2_parameters) * sizeof(float));
}

const bool registered = [] {
  // Grouped by size, so that the shared buffers are filled once per size.
  for (index_t n : {gpt2_parameters, l2_scale_parameters}) {
    const std::string shape = std::to_string(n);
    for (bool bf16_copy : {false, true}) {
      const char* dtype = bf16_copy ? "f32_bf16copy" : "f32";
      add("adamw", "kern", dtype, shape, [n, bf16_copy](benchmark::State& s) { kern_adamw(s, n, bf16_copy); });
      add("adamw", "scalar", dtype, shape, [n, bf16_copy](benchmark::State& s) { scalar_adamw(s, n, bf16_copy); }, {1});
    }
    if (n == gpt2_parameters) {
      add("sgd_momentum", "kern", "f32", shape, [n](benchmark::State& s) { kern_sgd(s, n); });
      add("sgd_momentum", "scalar", "f32", shape, [n](benchmark::State& s) { scalar_sgd(s, n); }, {1});
      add("grad_norm", "kern", "f32", shape, kern_grad_norm);
      add("grad_norm", "scalar", "f32", shape, scalar_grad_norm, {1});
    }
  }
  return true;
}();

} // namespace
