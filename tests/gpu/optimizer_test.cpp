// kern::gpu::adamw_step (one tensor, and many in one launch) and global_grad_norm against the
// float64 references of the CPU test (support/optimizer_reference.hpp), with its error measures and
// tolerances, and AdamW bit for bit against a scalar fp32 model of the CPU kernel's operations.
//
// The tensors of a step lie in arenas, one per buffer, as a training loop keeps them, with canaries
// between neighbours (a write outside a tensor changes one). Their offsets cycle through the three
// layouts the kernel tells apart: every pointer 16-byte aligned (the vector path), every pointer
// misaligned, and fp32 buffers aligned with the bf16 copy misaligned (both the scalar path). The
// bf16 copy starts as NaN and must equal bf16(param) bit for bit; where there is none it must stay NaN.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <limits>
#include <random>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "kern/gpu/optimizer.hpp"
#include "support/gpu_test.hpp"
#include "support/kernel_test.hpp"
#include "support/optimizer_reference.hpp"

namespace {

using kern::bf16;
using kern::index_t;
using kern::gpu::device_buffer;
using kern::ops::adamw_multi_params;
using kern::ops::adamw_params;
using kern::ops::adamw_tensor;
using kern::ops::gradient_span;
using namespace kern::test;

constexpr float inf_f = std::numeric_limits<float>::infinity();
constexpr float canary = 12345.0f; // no step of these inputs produces it

std::size_t at(index_t i) { return static_cast<std::size_t>(i); }

// Where each tensor of a list starts in its arena: after a canary gap, at a multiple of 8 elements
// plus a shift of 0 (all aligned), 1 (all misaligned) or 4 (fp32 aligned, bf16 misaligned).
struct arena_layout {
  std::vector<index_t> counts, offsets;
  std::size_t size = 0;

  explicit arena_layout(std::vector<index_t> tensor_counts) : counts(std::move(tensor_counts)) {
    constexpr index_t shifts[] = {0, 1, 4};
    index_t end = 0;
    for (std::size_t i = 0; i < counts.size(); ++i) {
      const index_t offset = (end + 1 + 7) / 8 * 8 + shifts[i % 3];
      offsets.push_back(offset);
      end = offset + counts[i];
    }
    size = at(end + 1);
  }

  // Tensor i's elements of an arena.
  template <class T> std::vector<T> slice(const std::vector<T>& arena, std::size_t i) const {
    const auto begin = arena.begin() + offsets[i];
    return {begin, begin + counts[i]};
  }

  // Whether every element outside the tensors holds `expected`, bit for bit.
  template <class T> bool gaps_hold(const std::vector<T>& arena, T expected) const {
    std::vector<bool> inside(arena.size(), false);
    for (std::size_t i = 0; i < counts.size(); ++i) {
      for (index_t j = 0; j < counts[i]; ++j) {
        inside[at(offsets[i] + j)] = true;
      }
    }
    for (std::size_t k = 0; k < arena.size(); ++k) {
      if (!inside[k] && bits_of(arena[k]) != bits_of(expected)) {
        return false;
      }
    }
    return true;
  }
};

// n random values at each tensor's place in an arena, canaries elsewhere.
std::vector<float> random_arena(const arena_layout& layout, std::mt19937& rng, float lo = -1.0f, float hi = 1.0f) {
  std::vector<float> arena(layout.size, canary);
  for (std::size_t i = 0; i < layout.counts.size(); ++i) {
    const std::vector<float> values = random_values<float>(rng, layout.counts[i], lo, hi);
    std::copy(values.begin(), values.end(), arena.begin() + layout.offsets[i]);
  }
  return arena;
}

// ---------------------------------------------------------------------------------------------
// AdamW

// The CPU kernel's operations in its order, one element at a time in fp32 (the host compiler
// targets no FMA instruction here, so nothing is fused behind the explicit std::fma).
struct adamw_model {
  float step_size, inv_sqrt_correction2, decay, one_minus_beta1, one_minus_beta2, beta2, epsilon, grad_scale;

  explicit adamw_model(const adamw_params& p)
      : step_size(static_cast<float>(static_cast<double>(p.lr) /
                                     (1.0 - std::pow(static_cast<double>(p.beta1), static_cast<double>(p.step))))),
        inv_sqrt_correction2(static_cast<float>(
            1.0 / std::sqrt(1.0 - std::pow(static_cast<double>(p.beta2), static_cast<double>(p.step))))),
        decay(static_cast<float>(1.0 - static_cast<double>(p.lr) * static_cast<double>(p.weight_decay))),
        one_minus_beta1(static_cast<float>(1.0 - static_cast<double>(p.beta1))),
        one_minus_beta2(static_cast<float>(1.0 - static_cast<double>(p.beta2))), beta2(p.beta2), epsilon(p.epsilon),
        grad_scale(p.grad_scale) {}

  void update(float grad, float& param, float& m, float& v) const {
    const float g = grad * grad_scale;
    m = std::fma(one_minus_beta1, g - m, m);
    v = std::fma(one_minus_beta2 * g, g, beta2 * v);
    const float denominator = std::fma(std::sqrt(v), inv_sqrt_correction2, epsilon);
    param = std::fma(-step_size, m / denominator, param * decay);
  }
};

struct adamw_config {
  const char* name;
  float beta1, beta2, epsilon, weight_decay, grad_scale;
};
constexpr adamw_config adamw_configs[] = {
    {"torch defaults", 0.9f, 0.999f, 1e-8f, 0.0f, 1.0f},
    {"decay + grad scale", 0.8f, 0.95f, 1e-6f, 0.1f, 0.3f},
};

enum class copies { none, all, every_other };
const char* name_of(copies c) {
  return c == copies::none ? "no bf16 copy" : c == copies::all ? "bf16 copies" : "some bf16 copies";
}

// The state of a list of tensors on the host and in device arenas.
struct adamw_arenas {
  arena_layout layout;
  std::vector<float> param, m, v, grad;
  device_buffer<float> param_d, grad_d, m_d, v_d;
  device_buffer<bf16> copy_d;

  adamw_arenas(std::vector<index_t> counts, std::mt19937& rng)
      : layout(std::move(counts)), param(random_arena(layout, rng)), m(random_arena(layout, rng, -0.1f, 0.1f)),
        v(random_arena(layout, rng, 0.0f, 0.01f)), grad(random_arena(layout, rng)), param_d(to_device(param)),
        grad_d(to_device(grad)), m_d(to_device(m)), v_d(to_device(v)), copy_d(layout.size) {}

  // A fresh optimizer state (m = v = 0), as before the first step.
  void reset_moments() {
    for (std::size_t i = 0; i < layout.counts.size(); ++i) {
      std::fill_n(m.begin() + layout.offsets[i], layout.counts[i], 0.0f);
      std::fill_n(v.begin() + layout.offsets[i], layout.counts[i], 0.0f);
    }
    m_d = to_device(m);
    v_d = to_device(v);
  }

  void new_gradients(std::mt19937& rng) {
    grad = random_arena(layout, rng);
    grad_d = to_device(grad);
  }

  // NaN where the tensors' copies go, the canary between them.
  void poison_copies() {
    std::vector<bf16> copy(layout.size, bf16(canary));
    for (std::size_t i = 0; i < layout.counts.size(); ++i) {
      std::fill_n(copy.begin() + layout.offsets[i], layout.counts[i], bf16(nan_value));
    }
    copy_d = to_device(copy);
  }

  std::vector<adamw_tensor> tensors(copies with) const {
    std::vector<adamw_tensor> out;
    for (std::size_t i = 0; i < layout.counts.size(); ++i) {
      const auto offset = at(layout.offsets[i]);
      const bool copied = with == copies::all || (with == copies::every_other && i % 2 == 0);
      out.push_back({param_d.data() + offset, grad_d.data() + offset, m_d.data() + offset, v_d.data() + offset,
                     copied ? copy_d.data() + offset : nullptr, layout.counts[i]});
    }
    return out;
  }
};

adamw_params hyperparameters_of(const adamw_multi_params& p, index_t count) {
  adamw_params h;
  h.count = count;
  h.lr = p.lr;
  h.beta1 = p.beta1;
  h.beta2 = p.beta2;
  h.epsilon = p.epsilon;
  h.weight_decay = p.weight_decay;
  h.step = p.step;
  h.grad_scale = p.grad_scale;
  return h;
}

// One step through the multi-tensor entry, or through the single-tensor entry once per tensor.
void run_step(const adamw_multi_params& p, bool single_entry) {
  if (!single_entry) {
    kern::gpu::adamw_step(p, nullptr);
    return;
  }
  for (const adamw_tensor& t : p.tensors) {
    adamw_params one = hyperparameters_of(p, t.count);
    one.param = t.param;
    one.grad = t.grad;
    one.m = t.m;
    one.v = t.v;
    one.param_bf16 = t.param_bf16;
    kern::gpu::adamw_step(one, nullptr);
  }
}

// Runs the step and checks every tensor against the float64 reference and the fp32 model; the
// arenas then hold the kernel's results, the state of the next step.
void check_step(adamw_arenas& a, const adamw_multi_params& p, copies with, bool single_entry) {
  a.poison_copies();
  const std::vector<adamw_tensor> tensors = a.tensors(with);
  adamw_multi_params call = p;
  call.tensors = tensors;
  run_step(call, single_entry);
  const std::vector<float> param = to_host(a.param_d), m = to_host(a.m_d), v = to_host(a.v_d);
  const std::vector<bf16> copy = to_host(a.copy_d);

  const arena_layout& layout = a.layout;
  for (std::size_t i = 0; i < layout.counts.size(); ++i) {
    const index_t count = layout.counts[i];
    if (count == 0) {
      continue;
    }
    SCOPED_TRACE(testing::Message() << "tensor " << i << " of " << count << " elements at offset "
                                    << layout.offsets[i]);
    const adamw_params h = hyperparameters_of(p, count);
    const adamw_reference expected = adamw_reference_step(h, layout.slice(a.param, i), layout.slice(a.grad, i),
                                                          layout.slice(a.m, i), layout.slice(a.v, i));
    const std::vector<float> param_out = layout.slice(param, i), m_out = layout.slice(m, i), v_out = layout.slice(v, i);
    EXPECT_LE(update_error(param_out, expected.param, expected.change_scale, 1e-5), 1.0);
    EXPECT_LT(scaled_error(m_out, expected.m, expected.m_scale), 5e-6);
    EXPECT_LT(relative_error(v_out, expected.v), 5e-6);

    const adamw_model model(h);
    std::vector<float> param_model = layout.slice(a.param, i), m_model = layout.slice(a.m, i),
                       v_model = layout.slice(a.v, i);
    const std::vector<float> grad = layout.slice(a.grad, i);
    for (std::size_t j = 0; j < at(count); ++j) {
      model.update(grad[j], param_model[j], m_model[j], v_model[j]);
    }
    EXPECT_EQ(bits_of(param_out), bits_of(param_model));
    EXPECT_EQ(bits_of(m_out), bits_of(m_model));
    EXPECT_EQ(bits_of(v_out), bits_of(v_model));

    const std::vector<bf16> copy_out = layout.slice(copy, i);
    for (std::size_t j = 0; j < at(count); ++j) {
      if (tensors[i].param_bf16 != nullptr) {
        ASSERT_EQ(copy_out[j].bits, bf16(param_out[j]).bits) << "bf16 copy, element " << j;
      } else {
        ASSERT_TRUE(std::isnan(static_cast<float>(copy_out[j]))) << "a copy without a buffer, element " << j;
      }
    }
  }
  EXPECT_TRUE(layout.gaps_hold(param, canary));
  EXPECT_TRUE(layout.gaps_hold(m, canary));
  EXPECT_TRUE(layout.gaps_hold(v, canary));
  EXPECT_TRUE(layout.gaps_hold(copy, bf16(canary)));
  a.param = param;
  a.m = m;
  a.v = v;
}

adamw_multi_params params_of(const adamw_config& config) {
  adamw_multi_params p;
  p.lr = 0.05f; // large enough that the update, not the rounding of the parameters, is what is measured
  p.beta1 = config.beta1;
  p.beta2 = config.beta2;
  p.epsilon = config.epsilon;
  p.weight_decay = config.weight_decay;
  p.grad_scale = config.grad_scale;
  return p;
}

// Three steps from a fresh state, then two as if resumed late in training.
void check_steps(const std::vector<index_t>& counts, const adamw_config& config, copies with, bool single_entry) {
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(testing::Message() << config.name << ", " << counts.size() << " tensors, " << name_of(with)
                                  << (single_entry ? ", single-tensor entry" : "") << ", seed " << seed);
  std::mt19937 rng(seed);
  adamw_arenas a(counts, rng);
  a.reset_moments();
  adamw_multi_params p = params_of(config);
  for (index_t step : {1, 2, 3, 1000, 1001}) {
    SCOPED_TRACE(testing::Message() << "step " << step);
    p.step = step;
    a.new_gradients(rng);
    check_step(a, p, with, single_entry);
  }
}

// Empty tensors, single elements, tails of every length, tensors across the blocks' ranges (8192
// elements) and several in one block.
std::vector<index_t> mixed_sizes() {
  return {0, 1, 3, 8, 9, 17, 31, 257, 1000, 2048, 4099, 0, 5000, 8191, 8193, 1, 768, 12000, 7};
}

TEST(GpuOptimizer, AdamwManyTensorsMatchReferenceAndModel) {
  KERN_REQUIRE_GPU();
  for (const adamw_config& config : adamw_configs) {
    for (copies with : {copies::none, copies::all, copies::every_other}) {
      check_steps(mixed_sizes(), config, with, false);
    }
  }
}

TEST(GpuOptimizer, AdamwMoreTensorsThanOneLaunchHolds) {
  KERN_REQUIRE_GPU();
  const std::uint32_t sizes_seed = fresh_seed();
  SCOPED_TRACE(testing::Message() << "sizes seed " << sizes_seed);
  std::mt19937 sizes_rng(sizes_seed);
  std::vector<index_t> counts(150);
  for (index_t& count : counts) {
    count = std::uniform_int_distribution<index_t>(0, 300)(sizes_rng);
  }
  counts[70] = 9000;
  check_steps(counts, adamw_configs[1], copies::every_other, false);
}

// Each size three times, one per alignment, each tensor through the single-tensor entry.
TEST(GpuOptimizer, AdamwOneTensorMatchesReferenceAndModel) {
  KERN_REQUIRE_GPU();
  for (const adamw_config& config : adamw_configs) {
    for (index_t count : {1, 7, 17, 31, 257, 1000, 20003}) {
      for (copies with : {copies::none, copies::all}) {
        check_steps({count, count, count}, config, with, true);
      }
    }
  }
}

TEST(GpuOptimizer, AdamwSameBitsEveryRun) {
  KERN_REQUIRE_GPU();
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(testing::Message() << "seed " << seed);
  std::mt19937 rng_one(seed), rng_two(seed);
  adamw_arenas one(mixed_sizes(), rng_one), two(mixed_sizes(), rng_two);
  adamw_multi_params p = params_of(adamw_configs[1]);
  p.step = 7;
  for (adamw_arenas* a : {&one, &two}) {
    a->poison_copies();
    const std::vector<adamw_tensor> tensors = a->tensors(copies::all);
    p.tensors = tensors;
    kern::gpu::adamw_step(p, nullptr);
  }
  EXPECT_EQ(bits_of(to_host(one.param_d)), bits_of(to_host(two.param_d)));
  EXPECT_EQ(bits_of(to_host(one.m_d)), bits_of(to_host(two.m_d)));
  EXPECT_EQ(bits_of(to_host(one.v_d)), bits_of(to_host(two.v_d)));
  EXPECT_EQ(bits_of(to_host(one.copy_d)), bits_of(to_host(two.copy_d)));
}

TEST(GpuOptimizer, AdamwGradScaleFactorIsReadOnTheDevice) {
  KERN_REQUIRE_GPU();
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(testing::Message() << "seed " << seed);
  std::mt19937 rng_host(seed), rng_device(seed);
  adamw_arenas host_scaled(mixed_sizes(), rng_host), device_scaled(mixed_sizes(), rng_device);
  const device_buffer<float> factor = to_device(std::vector<float>{0.25f});
  adamw_multi_params p = params_of(adamw_configs[0]);
  p.step = 2;
  p.grad_scale = 0.125f; // = 0.5 * 0.25 exactly
  const std::vector<adamw_tensor> host_tensors = host_scaled.tensors(copies::none);
  p.tensors = host_tensors;
  kern::gpu::adamw_step(p, nullptr);
  p.grad_scale = 0.5f;
  p.grad_scale_factor = factor.data();
  const std::vector<adamw_tensor> device_tensors = device_scaled.tensors(copies::none);
  p.tensors = device_tensors;
  kern::gpu::adamw_step(p, nullptr);
  EXPECT_EQ(bits_of(to_host(host_scaled.param_d)), bits_of(to_host(device_scaled.param_d)));
  EXPECT_EQ(bits_of(to_host(host_scaled.m_d)), bits_of(to_host(device_scaled.m_d)));
}

TEST(GpuOptimizer, AdamwNanAndInfGradientsPropagate) {
  KERN_REQUIRE_GPU();
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  adamw_arenas a({41}, rng); // aligned: 40 elements as vectors, one in the tail
  const std::size_t offset = at(a.layout.offsets[0]);
  a.grad[offset + 3] = nan_value;
  a.grad[offset + 20] = inf_f;
  a.grad[offset + 40] = -inf_f;
  a.grad_d = to_device(a.grad);
  a.poison_copies();
  const std::vector<adamw_tensor> tensors = a.tensors(copies::all);
  adamw_multi_params p;
  p.weight_decay = 0.01f;
  p.tensors = tensors;
  kern::gpu::adamw_step(p, nullptr);
  const std::vector<float> param = a.layout.slice(to_host(a.param_d), 0);
  const std::vector<float> m = a.layout.slice(to_host(a.m_d), 0), v = a.layout.slice(to_host(a.v_d), 0);
  const std::vector<bf16> copy = a.layout.slice(to_host(a.copy_d), 0);
  for (std::size_t i : {3U, 20U, 40U}) {
    EXPECT_TRUE(std::isnan(param[i])) << "param " << i << " = " << param[i];
    EXPECT_TRUE(std::isnan(static_cast<float>(copy[i]))) << "bf16 copy " << i;
  }
  EXPECT_TRUE(std::isnan(m[3]) && std::isnan(v[3]));
  EXPECT_EQ(m[20], inf_f);
  EXPECT_EQ(v[20], inf_f);
  EXPECT_EQ(m[40], -inf_f);
  for (std::size_t i = 0; i < param.size(); ++i) {
    if (i != 3 && i != 20 && i != 40) {
      EXPECT_TRUE(std::isfinite(param[i])) << "a non-finite gradient leaked into element " << i;
    }
  }
}

TEST(GpuOptimizer, AdamwEmptyIsANoOp) {
  KERN_REQUIRE_GPU();
  EXPECT_NO_THROW(kern::gpu::adamw_step(adamw_params{}, nullptr)); // count 0, null pointers
  EXPECT_NO_THROW(kern::gpu::adamw_step(adamw_multi_params{}, nullptr));
  const std::vector<adamw_tensor> empty(3); // three tensors of 0 elements, null pointers
  adamw_multi_params p;
  p.tensors = empty;
  EXPECT_NO_THROW(kern::gpu::adamw_step(p, nullptr));
}

TEST(GpuOptimizer, AdamwOneTensorRejectsBadArguments) {
  KERN_REQUIRE_GPU();
  std::mt19937 rng(1);
  adamw_arenas a({16}, rng);
  const adamw_tensor t = a.tensors(copies::all)[0];
  const auto message = [&](const std::function<void(adamw_params&)>& edit) {
    adamw_params p;
    p.param = t.param;
    p.grad = t.grad;
    p.m = t.m;
    p.v = t.v;
    p.param_bf16 = t.param_bf16;
    p.count = 16;
    edit(p);
    return error_of([&] { kern::gpu::adamw_step(p, nullptr); });
  };
  const std::string op = std::string(KERN_GPU_OP("adamw_step")) + ": ";
  EXPECT_EQ(message([](adamw_params& p) { p.count = -1; }), op + "count = -1 must not be negative");
  EXPECT_EQ(message([](adamw_params& p) { p.param = nullptr; }), op + "param is null but holds 16 elements");
  EXPECT_EQ(message([](adamw_params& p) { p.grad = nullptr; }), op + "grad is null but holds 16 elements");
  EXPECT_EQ(message([](adamw_params& p) { p.m = nullptr; }), op + "m is null but holds 16 elements");
  EXPECT_EQ(message([](adamw_params& p) { p.v = nullptr; }), op + "v is null but holds 16 elements");
  EXPECT_EQ(message([](adamw_params& p) { p.lr = nan_value; }), op + "lr = nan must be finite and not negative");
  EXPECT_EQ(message([](adamw_params& p) { p.beta1 = 1.0f; }), op + "beta1 = 1 must be in [0, 1)");
  EXPECT_EQ(message([](adamw_params& p) { p.beta2 = -0.5f; }), op + "beta2 = -0.5 must be in [0, 1)");
  EXPECT_EQ(message([](adamw_params& p) { p.epsilon = inf_f; }), op + "epsilon = inf must be finite and not negative");
  EXPECT_EQ(message([](adamw_params& p) { p.weight_decay = -0.5f; }),
            op + "weight_decay = -0.5 must be finite and not negative");
  EXPECT_EQ(message([](adamw_params& p) { p.step = 0; }), op + "step = 0 must be at least 1 (steps count from 1)");
  EXPECT_EQ(message([&](adamw_params& p) { p.grad = p.param + 4; }).find(op + "param overlaps grad"), 0U);
  EXPECT_EQ(message([&](adamw_params& p) { p.v = p.m + 8; }).find(op + "m overlaps v"), 0U);
  EXPECT_EQ(message([&](adamw_params& p) {
              p.param_bf16 = reinterpret_cast<bf16*>(p.param + 15);
            }).find(op + "param overlaps param_bf16"),
            0U);
  EXPECT_EQ(message([](adamw_params& p) { p.param_bf16 = nullptr; }), "(no error)");
  EXPECT_EQ(message([](adamw_params& p) {
              p.beta1 = 0.0f;
              p.beta2 = 0.0f;
              p.epsilon = 0.0f;
              p.step = index_t{1} << 40;
            }),
            "(no error)");
}

TEST(GpuOptimizer, AdamwManyTensorsRejectsBadArguments) {
  KERN_REQUIRE_GPU();
  std::mt19937 rng(1);
  adamw_arenas a({16, 0, 24}, rng);
  const device_buffer<float> factor = to_device(std::vector<float>{1.0f});
  const auto message = [&](const std::function<void(std::vector<adamw_tensor>&, adamw_multi_params&)>& edit) {
    std::vector<adamw_tensor> tensors = a.tensors(copies::all);
    adamw_multi_params p;
    p.grad_scale_factor = factor.data();
    edit(tensors, p);
    p.tensors = tensors;
    return error_of([&] { kern::gpu::adamw_step(p, nullptr); });
  };
  using tensor_list = std::vector<adamw_tensor>;
  const std::string op = std::string(KERN_GPU_OP("adamw_step")) + ": ";
  EXPECT_EQ(message([](tensor_list& t, adamw_multi_params&) { t[2].count = -1; }),
            op + "tensors[2].count = -1 must not be negative");
  EXPECT_EQ(message([](tensor_list& t, adamw_multi_params&) { t[0].param = nullptr; }),
            op + "tensors[0].param is null but holds 16 elements");
  EXPECT_EQ(message([](tensor_list& t, adamw_multi_params&) { t[2].grad = nullptr; }),
            op + "tensors[2].grad is null but holds 24 elements");
  EXPECT_EQ(message([](tensor_list& t, adamw_multi_params&) { t[2].m = nullptr; }),
            op + "tensors[2].m is null but holds 24 elements");
  EXPECT_EQ(message([](tensor_list& t, adamw_multi_params&) { t[0].v = nullptr; }),
            op + "tensors[0].v is null but holds 16 elements");
  EXPECT_EQ(message([](tensor_list&, adamw_multi_params& p) { p.lr = -0.5f; }),
            op + "lr = -0.5 must be finite and not negative");
  EXPECT_EQ(message([](tensor_list&, adamw_multi_params& p) { p.beta2 = 1.0f; }), op + "beta2 = 1 must be in [0, 1)");
  EXPECT_EQ(message([](tensor_list&, adamw_multi_params& p) { p.step = -3; }),
            op + "step = -3 must be at least 1 (steps count from 1)");
  // Overlaps within a tensor, across tensors, and with the scale factor, named in list order.
  EXPECT_EQ(message([](tensor_list& t, adamw_multi_params&) {
              t[2].v = t[2].m + 8;
            }).find(op + "tensors[2].m overlaps tensors[2].v"),
            0U);
  EXPECT_EQ(message([](tensor_list& t, adamw_multi_params&) {
              t[2].grad = t[0].param + 8;
            }).find(op + "tensors[0].param overlaps tensors[2].grad"),
            0U);
  EXPECT_EQ(message([](tensor_list& t, adamw_multi_params&) {
              t[2].param_bf16 = reinterpret_cast<bf16*>(t[0].m + 15);
            }).find(op + "tensors[0].m overlaps tensors[2].param_bf16"),
            0U);
  EXPECT_EQ(message([](tensor_list& t, adamw_multi_params& p) {
              p.grad_scale_factor = t[2].v + 23;
            }).find(op + "grad_scale_factor overlaps tensors[2].v"),
            0U);
  // Every buffer counts, a gradient that two tensors would only read included.
  EXPECT_EQ(message([](tensor_list& t, adamw_multi_params&) {
              t[2].grad = t[0].grad;
            }).find(op + "tensors[0].grad overlaps tensors[2].grad"),
            0U);
  // What is valid: an empty tensor anywhere (null or not), a tensor without a copy, no scale factor.
  EXPECT_EQ(message([](tensor_list& t, adamw_multi_params& p) {
              t[1] = {t[0].param, t[0].grad, t[0].m, t[0].v, t[0].param_bf16, 0};
              t[0].param_bf16 = nullptr;
              p.grad_scale_factor = nullptr;
            }),
            "(no error)");
}

// ---------------------------------------------------------------------------------------------
// Global gradient norm and clip factor

// Gradients of the given sizes, uniform in [-1, 1), in a device arena laid out as AdamW's.
struct gradient_arena {
  arena_layout layout;
  std::vector<float> arena;
  device_buffer<float> device;
  std::vector<gradient_span> spans;

  gradient_arena(std::vector<index_t> counts, std::uint32_t seed) : layout(std::move(counts)) {
    std::mt19937 rng(seed);
    upload(random_arena(layout, rng));
  }

  void upload(std::vector<float> values) {
    arena = std::move(values);
    device = to_device(arena);
    spans.clear();
    for (std::size_t i = 0; i < layout.counts.size(); ++i) {
      spans.push_back({device.data() + layout.offsets[i], layout.counts[i]});
    }
  }

  std::vector<std::vector<float>> tensors() const {
    std::vector<std::vector<float>> out;
    for (std::size_t i = 0; i < layout.counts.size(); ++i) {
      out.push_back(layout.slice(arena, i));
    }
    return out;
  }
};

struct norm_result {
  float norm, clip_factor;
};

// The norm and clip factor of the spans, through a workspace of exactly the size asked for.
norm_result grad_norm(std::span<const gradient_span> spans, float max_norm) {
  device_buffer<std::byte> workspace(kern::gpu::global_grad_norm_workspace_bytes(spans));
  device_buffer<float> out(2);
  kern::gpu::global_grad_norm(spans, out.data(), out.data() + 1, max_norm, {workspace.data(), workspace.size()},
                              nullptr);
  const std::vector<float> host = to_host(out);
  return {host[0], host[1]};
}

// The float norm is the float64 norm rounded once, up to the 1e-12 that the CPU test allows the
// double accumulation (and that the float rounding would hide but for near ties).
void expect_norm_near(float norm, double ref) {
  const auto rounded = static_cast<float>(ref);
  const double half_ulp = 0.5 * (std::nextafter(rounded, inf_f) - rounded);
  EXPECT_LE(std::abs(static_cast<double>(norm) - ref), half_ulp + 1e-12 * ref) << "reference " << ref;
}

TEST(GpuOptimizer, GradNormMatchesFloat64Reference) {
  KERN_REQUIRE_GPU();
  std::vector<index_t> many(200);
  std::mt19937 sizes_rng(fresh_seed());
  for (index_t& count : many) {
    count = std::uniform_int_distribution<index_t>(0, 200)(sizes_rng);
  }
  // Empty tensors, tails, tensors across the blocks' ranges (8192 elements), more than one launch holds.
  const std::vector<index_t> layouts[] = {
      {1}, {3, 0, 5}, {17, 1000, 31, 0, 768}, {8191, 2, 8193}, {768, 40003, 0, 7, 5025, 1}, many,
  };
  for (const std::vector<index_t>& counts : layouts) {
    const std::uint32_t seed = fresh_seed();
    SCOPED_TRACE(testing::Message() << "tensors " << counts.size() << ", first " << counts[0] << ", seed " << seed);
    const gradient_arena g(counts, seed);
    const double ref = reference_norm(g.tensors());
    for (const double max_norm : {ref / 3, 10 * ref}) {
      const norm_result result = grad_norm(g.spans, static_cast<float>(max_norm));
      expect_norm_near(result.norm, ref);
      const float expected_clip = kern::ops::clip_factor("", ref, static_cast<float>(max_norm));
      EXPECT_NEAR(result.clip_factor, expected_clip, 2e-7 * expected_clip) << "max_norm " << max_norm;
    }
  }
}

TEST(GpuOptimizer, GradNormExactOnSmallInputs) {
  KERN_REQUIRE_GPU();
  const device_buffer<float> one = to_device(std::vector<float>{-3.5f});
  const device_buffer<float> pair = to_device(std::vector<float>{3.0f, 4.0f});
  const std::vector<gradient_span> single{{one.data(), 1}};
  const std::vector<gradient_span> split{{pair.data(), 1}, {nullptr, 0}, {pair.data() + 1, 1}};
  EXPECT_EQ(grad_norm(single, 1.0f).norm, 3.5f);
  EXPECT_EQ(grad_norm(split, 1.0f).norm, 5.0f);
  EXPECT_EQ(grad_norm(split, 1.0f).clip_factor, static_cast<float>(1.0 / (5.0 + 1e-6)));
  const norm_result none = grad_norm({}, 1.0f); // written even without gradients
  EXPECT_EQ(none.norm, 0.0f);
  EXPECT_EQ(none.clip_factor, 1.0f);
  // Squares beyond the float range: accumulated in double, they do not overflow.
  const device_buffer<float> huge = to_device(std::vector<float>{std::ldexp(3.0f, 100), std::ldexp(-4.0f, 100)});
  const std::vector<gradient_span> big{{huge.data(), 2}};
  EXPECT_EQ(grad_norm(big, 1.0f).norm, std::ldexp(5.0f, 100));
  // And squares below it do not vanish.
  const device_buffer<float> tiny = to_device(std::vector<float>{std::ldexp(3.0f, -110), std::ldexp(-4.0f, -110)});
  const std::vector<gradient_span> small{{tiny.data(), 2}};
  EXPECT_EQ(grad_norm(small, 1.0f).norm, std::ldexp(5.0f, -110));
}

TEST(GpuOptimizer, GradNormWithoutClipFactor) {
  KERN_REQUIRE_GPU();
  const gradient_arena g({100, 9000, 7}, fresh_seed());
  device_buffer<std::byte> workspace(kern::gpu::global_grad_norm_workspace_bytes(g.spans));
  const device_buffer<float> norm = to_device(std::vector<float>{nan_value});
  kern::gpu::global_grad_norm(g.spans, norm.data(), {workspace.data(), workspace.size()}, nullptr);
  EXPECT_EQ(bits_of(to_host(norm)[0]), bits_of(grad_norm(g.spans, 1.0f).norm));
}

TEST(GpuOptimizer, GradNormSameBitsEveryRun) {
  KERN_REQUIRE_GPU();
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(testing::Message() << "seed " << seed);
  const gradient_arena g({100, 40003, 7, 20000}, seed);
  const norm_result first = grad_norm(g.spans, 1.0f), second = grad_norm(g.spans, 1.0f);
  EXPECT_EQ(bits_of(first.norm), bits_of(second.norm));
  EXPECT_EQ(bits_of(first.clip_factor), bits_of(second.clip_factor));
}

TEST(GpuOptimizer, GradNormNanAndInfPropagate) {
  KERN_REQUIRE_GPU();
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(testing::Message() << "seed " << seed);
  gradient_arena g({1000, 9000, 5}, seed);
  std::vector<float> arena = g.arena;
  arena[at(g.layout.offsets[1] + 8999)] = -inf_f;
  g.upload(arena);
  const norm_result infinite = grad_norm(g.spans, 1.0f);
  EXPECT_EQ(infinite.norm, inf_f);
  EXPECT_EQ(infinite.clip_factor, 0.0f);
  arena[at(g.layout.offsets[2] + 4)] = nan_value;
  g.upload(arena);
  const norm_result nan = grad_norm(g.spans, 1.0f);
  EXPECT_TRUE(std::isnan(nan.norm));
  EXPECT_TRUE(std::isnan(nan.clip_factor));
}

TEST(GpuOptimizer, GradNormWorkspaceDependsOnSizesOnly) {
  KERN_REQUIRE_GPU();
  const std::vector<gradient_span> nothing{{nullptr, 0}, {nullptr, 0}};
  EXPECT_EQ(kern::gpu::global_grad_norm_workspace_bytes({}), 0U);
  EXPECT_EQ(kern::gpu::global_grad_norm_workspace_bytes(nothing), 0U);
  const gradient_arena small({1, 2}, 1), large({100000}, 1);
  EXPECT_EQ(kern::gpu::global_grad_norm_workspace_bytes(small.spans), sizeof(double)); // one block
  EXPECT_GE(kern::gpu::global_grad_norm_workspace_bytes(large.spans), 100000 / 8192 * sizeof(double));
}

TEST(GpuOptimizer, GradNormRejectsBadArguments) {
  KERN_REQUIRE_GPU();
  const gradient_arena g({4, 4}, 1);
  device_buffer<std::byte> workspace(kern::gpu::global_grad_norm_workspace_bytes(g.spans) + 16);
  device_buffer<float> out(2);
  const std::span<std::byte> whole{workspace.data(), workspace.size()};
  const auto message = [&](std::vector<gradient_span> spans, float* norm, float* clip, float max_norm,
                           std::span<std::byte> space) {
    return error_of([&] { kern::gpu::global_grad_norm(spans, norm, clip, max_norm, space, nullptr); });
  };
  const std::string op = std::string(KERN_GPU_OP("global_grad_norm")) + ": ";
  float* const norm = out.data();
  float* const clip = out.data() + 1;
  EXPECT_EQ(message({g.spans[0], {g.spans[1].data, -2}}, norm, clip, 1.0f, whole),
            op + "grads[1].count = -2 must not be negative");
  EXPECT_EQ(message({g.spans[0], g.spans[1], {nullptr, 3}}, norm, clip, 1.0f, whole),
            op + "grads[2].data is null but holds 3 elements");
  EXPECT_EQ(message(g.spans, nullptr, clip, 1.0f, whole), op + "norm is null: the result needs a device float");
  EXPECT_EQ(message(g.spans, norm, nullptr, 1.0f, whole), op + "clip_factor is null: pass a device float");
  EXPECT_EQ(message(g.spans, norm, clip, 0.0f, whole), op + "max_norm = 0 must be positive");
  EXPECT_EQ(message(g.spans, norm, clip, nan_value, whole), op + "max_norm = nan must be positive");
  EXPECT_EQ(message(g.spans, norm, norm, 1.0f, whole), op + "clip_factor and norm are the same float");
  EXPECT_EQ(message(g.spans, norm, clip, 1.0f, whole.first(4)),
            op + "workspace holds 4 bytes but 8 are needed (global_grad_norm_workspace_bytes)");
  EXPECT_EQ(message(g.spans, norm, clip, 1.0f, {static_cast<std::byte*>(nullptr), 8}),
            op + "workspace is null but 8 bytes are needed");
  EXPECT_EQ(message(g.spans, norm, clip, 1.0f, whole.subspan(4)).find(op + "workspace at "), 0U);
  auto* const inside = reinterpret_cast<float*>(workspace.data());
  EXPECT_EQ(message(g.spans, inside, clip, 1.0f, whole).find(op + "norm overlaps workspace"), 0U);
  EXPECT_EQ(message(g.spans, norm, inside + 1, 1.0f, whole).find(op + "clip_factor overlaps workspace"), 0U);
  EXPECT_EQ(message(g.spans, norm, clip, 1.0f, whole), "(no error)");
  EXPECT_EQ(error_of([&] {
              kern::gpu::global_grad_norm_workspace_bytes(std::vector<gradient_span>{{nullptr, 2}});
            }),
            std::string(KERN_GPU_OP("global_grad_norm_workspace_bytes")) +
                ": grads[0].data is null but holds 2 elements");
}

} // namespace
