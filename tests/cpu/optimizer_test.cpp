// kern::cpu::adamw_step, sgd_step, global_grad_norm and clip_factor against float64 references
// (AdamW's and the norm's in support/optimizer_reference.hpp, shared with the GPU test).
//
// The steps are checked one at a time: each step's reference starts from the kernel's own fp32
// inputs, so that the errors measured are those of the step itself, not of fp32 state drifting
// from a float64 trajectory. Errors are measured against the magnitudes of the terms each result
// sums (see scaled_error), which a result that cancels to near zero does not hide; the parameter
// check compares the *update* (the parameters themselves are much larger than their change), with
// an allowance for the rounding of the parameters (see update_error).
// Every output buffer has a canary one past its end; the bf16 copy is poisoned with NaN and must
// equal bf16(param) bit for bit. The ISA path is chosen by KERN_ISA (CMake runs this binary once
// per ISA); the log names it.
#include <bit>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "kern/cpu.hpp"
#include "support/kernel_test.hpp"
#include "support/optimizer_reference.hpp"

namespace {

using kern::bf16;
using kern::index_t;
using kern::ops::adamw_params;
using kern::ops::gradient_span;
using kern::ops::sgd_params;
using namespace kern::test;

constexpr float inf_f = std::numeric_limits<float>::infinity();
constexpr float canary = 12345.0f; // no step of these inputs produces it
constexpr index_t sizes[] = {1, 7, 17, 31, 257, 1000, (index_t{1} << 20) + 3};

std::size_t at(index_t i) { return static_cast<std::size_t>(i); }

// A buffer of count values followed by the canary.
std::vector<float> with_canary(std::vector<float> values) {
  values.push_back(canary);
  return values;
}

// ---------------------------------------------------------------------------------------------
// AdamW

struct adamw_config {
  const char* name;
  float beta1, beta2, epsilon, weight_decay, grad_scale;
};
constexpr adamw_config adamw_configs[] = {
    {"torch defaults", 0.9f, 0.999f, 1e-8f, 0.0f, 1.0f},
    {"decay + grad scale", 0.8f, 0.95f, 1e-6f, 0.1f, 0.25f},
};

void check_adamw(const adamw_config& config, index_t count, int threads, bool bf16_copy) {
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(testing::Message() << config.name << ", count " << count << ", threads " << threads
                                  << (bf16_copy ? ", bf16 copy" : "") << ", seed " << seed);
  std::mt19937 rng(seed);
  std::vector<float> param = with_canary(random_values<float>(rng, count));
  std::vector<float> m = with_canary(std::vector<float>(at(count), 0.0f));
  std::vector<float> v = with_canary(std::vector<float>(at(count), 0.0f));
  adamw_params p;
  p.count = count;
  p.lr = 0.05f; // large enough that the update, not the rounding of the parameters, is what is measured
  p.beta1 = config.beta1;
  p.beta2 = config.beta2;
  p.epsilon = config.epsilon;
  p.weight_decay = config.weight_decay;
  p.grad_scale = config.grad_scale;
  // Three steps from a fresh state, then two as if resumed late in training.
  for (index_t step : {1, 2, 3, 1000, 1001}) {
    SCOPED_TRACE(testing::Message() << "step " << step);
    const std::vector<float> grad = random_values<float>(rng, count);
    std::vector<bf16> copy = poisoned<bf16>(count + 1);
    copy.back() = bf16(canary);
    p.step = step;
    p.param = param.data();
    p.grad = grad.data();
    p.m = m.data();
    p.v = v.data();
    p.param_bf16 = bf16_copy ? copy.data() : nullptr;
    const adamw_reference expected = adamw_reference_step(p, param, grad, m, v);
    kern::cpu::adamw_step(kern::cpu::context(threads), p);

    EXPECT_LE(update_error(param, expected.param, expected.change_scale, 1e-5), 1.0);
    EXPECT_LT(scaled_error(m, expected.m, expected.m_scale), 5e-6);
    EXPECT_LT(relative_error(v, expected.v), 5e-6);
    EXPECT_EQ(param.back(), canary);
    EXPECT_EQ(m.back(), canary);
    EXPECT_EQ(v.back(), canary);
    if (bf16_copy) {
      for (index_t i = 0; i < count; ++i) {
        ASSERT_EQ(copy[at(i)].bits, bf16(param[at(i)]).bits) << "bf16 copy, element " << i;
      }
    }
    EXPECT_EQ(copy.back().bits, bf16(canary).bits);
  }
}

TEST(CpuOptimizer, AdamwMatchesFloat64Reference) {
  for (const adamw_config& config : adamw_configs) {
    for (index_t count : sizes) {
      for (int threads : {1, 2}) {
        for (bool bf16_copy : {false, true}) {
          check_adamw(config, count, threads, bf16_copy);
        }
      }
    }
  }
}

// A non-zero state, as the kernel sees it every step after the first.
struct adamw_buffers {
  std::vector<float> param, grad, m, v;
  std::vector<bf16> copy;
  adamw_buffers(index_t count, std::uint32_t seed) {
    std::mt19937 rng(seed);
    param = random_values<float>(rng, count);
    grad = random_values<float>(rng, count);
    m = random_values<float>(rng, count, -0.1f, 0.1f);
    v = random_values<float>(rng, count, 0.0f, 0.01f);
    copy = poisoned<bf16>(count);
  }
  adamw_params params(index_t step) {
    adamw_params p;
    p.param = param.data();
    p.grad = grad.data();
    p.m = m.data();
    p.v = v.data();
    p.param_bf16 = copy.data();
    p.count = static_cast<index_t>(param.size());
    p.weight_decay = 0.01f;
    p.step = step;
    return p;
  }
};

TEST(CpuOptimizer, AdamwSameBitsForAnyThreadCount) {
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(testing::Message() << "seed " << seed);
  const index_t count = (index_t{1} << 20) + 3;
  adamw_buffers one(count, seed), two(count, seed);
  kern::cpu::adamw_step(kern::cpu::context(1), one.params(7));
  kern::cpu::adamw_step(kern::cpu::context(2), two.params(7));
  EXPECT_EQ(bits_of(one.param), bits_of(two.param));
  EXPECT_EQ(bits_of(one.m), bits_of(two.m));
  EXPECT_EQ(bits_of(one.v), bits_of(two.v));
  EXPECT_EQ(bits_of(one.copy), bits_of(two.copy));
}

TEST(CpuOptimizer, AdamwNanAndInfGradientsPropagate) {
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(testing::Message() << "seed " << seed);
  const index_t count = 41;
  adamw_buffers b(count, seed);
  b.grad[3] = nan_value;
  b.grad[20] = inf_f;
  b.grad[40] = -inf_f; // in the tail batch
  kern::cpu::adamw_step(kern::cpu::context(1), b.params(1));
  for (std::size_t i : {3U, 20U, 40U}) {
    EXPECT_TRUE(std::isnan(b.param[i])) << "param " << i << " = " << b.param[i];
    EXPECT_TRUE(std::isnan(static_cast<float>(b.copy[i]))) << "bf16 copy " << i;
  }
  EXPECT_TRUE(std::isnan(b.m[3]) && std::isnan(b.v[3]));
  EXPECT_EQ(b.m[20], inf_f);
  EXPECT_EQ(b.v[20], inf_f);
  EXPECT_EQ(b.m[40], -inf_f);
  for (std::size_t i = 0; i < at(count); ++i) {
    if (i != 3 && i != 20 && i != 40) {
      EXPECT_TRUE(std::isfinite(b.param[i])) << "a non-finite gradient leaked into element " << i;
    }
  }
}

TEST(CpuOptimizer, AdamwEmptyIsANoOp) {
  adamw_params p; // count 0, null pointers
  EXPECT_NO_THROW(kern::cpu::adamw_step(kern::cpu::context(2), p));
}

TEST(CpuOptimizer, AdamwRejectsBadArguments) {
  const index_t count = 16;
  adamw_buffers b(count, 1);
  const auto message = [&](const std::function<void(adamw_params&)>& edit) {
    adamw_params p = b.params(1);
    edit(p);
    return error_of([&] { kern::cpu::adamw_step(kern::cpu::context(1), p); });
  };
  const std::string op = "kern::cpu::adamw_step: ";
  EXPECT_EQ(message([](adamw_params& p) { p.count = -1; }), op + "count = -1 must not be negative");
  EXPECT_EQ(message([](adamw_params& p) { p.param = nullptr; }), op + "param is null but holds 16 elements");
  EXPECT_EQ(message([](adamw_params& p) { p.grad = nullptr; }), op + "grad is null but holds 16 elements");
  EXPECT_EQ(message([](adamw_params& p) { p.m = nullptr; }), op + "m is null but holds 16 elements");
  EXPECT_EQ(message([](adamw_params& p) { p.v = nullptr; }), op + "v is null but holds 16 elements");
  EXPECT_EQ(message([](adamw_params& p) { p.lr = -0.5f; }), op + "lr = -0.5 must be finite and not negative");
  EXPECT_EQ(message([](adamw_params& p) { p.lr = inf_f; }), op + "lr = inf must be finite and not negative");
  EXPECT_EQ(message([](adamw_params& p) { p.lr = nan_value; }), op + "lr = nan must be finite and not negative");
  EXPECT_EQ(message([](adamw_params& p) { p.beta1 = 1.0f; }), op + "beta1 = 1 must be in [0, 1)");
  EXPECT_EQ(message([](adamw_params& p) { p.beta1 = -0.5f; }), op + "beta1 = -0.5 must be in [0, 1)");
  EXPECT_EQ(message([](adamw_params& p) { p.beta2 = nan_value; }), op + "beta2 = nan must be in [0, 1)");
  EXPECT_EQ(message([](adamw_params& p) { p.epsilon = -1.0f; }), op + "epsilon = -1 must be finite and not negative");
  EXPECT_EQ(message([](adamw_params& p) { p.weight_decay = -0.5f; }),
            op + "weight_decay = -0.5 must be finite and not negative");
  EXPECT_EQ(message([](adamw_params& p) { p.step = 0; }), op + "step = 0 must be at least 1 (steps count from 1)");
  EXPECT_EQ(message([&](adamw_params& p) { p.grad = b.param.data(); }).find(op + "param overlaps grad"), 0U);
  EXPECT_EQ(message([&](adamw_params& p) { p.v = b.m.data() + 8; }).find(op + "m overlaps v"), 0U);
  EXPECT_EQ(message([&](adamw_params& p) {
              p.param_bf16 = reinterpret_cast<bf16*>(b.param.data() + 15);
            }).find(op + "param overlaps param_bf16"),
            0U);
  EXPECT_EQ(message([&](adamw_params& p) { p.grad = b.v.data(); }).find(op + "v overlaps grad"), 0U);
  // What is valid: no bf16 copy, zero epsilon and betas, a huge step.
  EXPECT_EQ(message([](adamw_params& p) { p.param_bf16 = nullptr; }), "(no error)");
  EXPECT_EQ(message([](adamw_params& p) {
              p.beta1 = 0.0f;
              p.beta2 = 0.0f;
              p.epsilon = 0.0f;
              p.step = index_t{1} << 40;
            }),
            "(no error)");
}

// ---------------------------------------------------------------------------------------------
// SGD

struct sgd_reference {
  std::vector<double> param, buffer, buffer_scale, change_scale;
};

// One step in float64 from the given fp32 state, the formulas of torch.optim.SGD.
sgd_reference sgd_reference_step(const sgd_params& p, const std::vector<float>& param, const std::vector<float>& grad,
                                 const std::vector<float>& buffer) {
  const double lr = p.lr, momentum = p.momentum, dampening = p.dampening, wd = p.weight_decay;
  const std::vector<double> zeros(at(p.count));
  sgd_reference ref{zeros, zeros, zeros, zeros};
  for (std::size_t i = 0; i < at(p.count); ++i) {
    double g = static_cast<double>(p.grad_scale) * grad[i];
    double g_scale = std::abs(g);
    if (wd != 0.0) {
      g += wd * param[i];
      g_scale += wd * std::abs(param[i]);
    }
    if (momentum != 0.0) {
      ref.buffer[i] = p.first_step ? g : momentum * buffer[i] + (1.0 - dampening) * g;
      ref.buffer_scale[i] =
          p.first_step ? g_scale : momentum * std::abs(buffer[i]) + std::abs(1.0 - dampening) * g_scale;
      g = p.nesterov ? g + momentum * ref.buffer[i] : ref.buffer[i];
      g_scale = p.nesterov ? g_scale + momentum * ref.buffer_scale[i] : ref.buffer_scale[i];
    }
    ref.param[i] = param[i] - lr * g;
    ref.change_scale[i] = lr * g_scale;
  }
  return ref;
}

struct sgd_config {
  const char* name;
  float momentum, dampening, weight_decay, grad_scale;
  bool nesterov;
};
constexpr sgd_config sgd_configs[] = {
    {"plain", 0.0f, 0.0f, 0.0f, 1.0f, false},
    {"weight decay, no momentum", 0.0f, 0.0f, 0.05f, 0.5f, false},
    {"momentum", 0.9f, 0.0f, 0.0f, 1.0f, false},
    {"nesterov + weight decay", 0.9f, 0.0f, 0.01f, 1.0f, true},
    {"dampening + weight decay + grad scale", 0.5f, 0.3f, 0.05f, 0.5f, false},
};

void check_sgd(const sgd_config& config, index_t count, int threads) {
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(testing::Message() << config.name << ", count " << count << ", threads " << threads << ", seed "
                                  << seed);
  std::mt19937 rng(seed);
  std::vector<float> param = with_canary(random_values<float>(rng, count));
  // NaN: the first step must not read the buffer, and without momentum no step may touch it.
  std::vector<float> buffer = with_canary(poisoned<float>(count));
  const bool uses_buffer = config.momentum != 0.0f;
  sgd_params p;
  p.count = count;
  p.lr = 0.1f;
  p.momentum = config.momentum;
  p.dampening = config.dampening;
  p.weight_decay = config.weight_decay;
  p.grad_scale = config.grad_scale;
  p.nesterov = config.nesterov;
  for (int step = 1; step <= 4; ++step) {
    SCOPED_TRACE(testing::Message() << "step " << step);
    const std::vector<float> grad = random_values<float>(rng, count);
    p.param = param.data();
    p.grad = grad.data();
    p.momentum_buffer = buffer.data();
    p.first_step = step == 1;
    const sgd_reference expected = sgd_reference_step(p, param, grad, buffer);
    kern::cpu::sgd_step(kern::cpu::context(threads), p);

    EXPECT_LE(update_error(param, expected.param, expected.change_scale, 1e-5), 1.0);
    if (uses_buffer) {
      EXPECT_LT(scaled_error(buffer, expected.buffer, expected.buffer_scale), 5e-6);
    } else {
      for (index_t i = 0; i < count; ++i) {
        ASSERT_TRUE(std::isnan(buffer[at(i)])) << "momentum = 0 wrote the buffer, element " << i;
      }
    }
    EXPECT_EQ(param.back(), canary);
    EXPECT_EQ(buffer.back(), canary);
  }
}

TEST(CpuOptimizer, SgdMatchesFloat64Reference) {
  for (const sgd_config& config : sgd_configs) {
    for (index_t count : sizes) {
      for (int threads : {1, 2}) {
        check_sgd(config, count, threads);
      }
    }
  }
}

TEST(CpuOptimizer, SgdWithoutMomentumNeedsNoBuffer) {
  std::vector<float> param{1.0f, 2.0f, 3.0f};
  const std::vector<float> grad{1.0f, -1.0f, 0.5f};
  sgd_params p;
  p.param = param.data();
  p.grad = grad.data();
  p.count = 3;
  p.lr = 0.5f;
  kern::cpu::sgd_step(kern::cpu::context(1), p);
  EXPECT_EQ(param, (std::vector<float>{0.5f, 2.5f, 2.75f})); // exact in binary
}

TEST(CpuOptimizer, SgdSameBitsForAnyThreadCount) {
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(testing::Message() << "seed " << seed);
  const index_t count = (index_t{1} << 20) + 3;
  std::mt19937 rng(seed);
  const std::vector<float> param = random_values<float>(rng, count);
  const std::vector<float> grad = random_values<float>(rng, count);
  const std::vector<float> buffer = random_values<float>(rng, count);
  std::vector<std::uint32_t> results[2][2];
  for (int threads : {1, 2}) {
    std::vector<float> p_out = param, b_out = buffer;
    sgd_params p;
    p.param = p_out.data();
    p.grad = grad.data();
    p.momentum_buffer = b_out.data();
    p.count = count;
    p.momentum = 0.9f;
    p.dampening = 0.1f;
    p.weight_decay = 0.01f;
    kern::cpu::sgd_step(kern::cpu::context(threads), p);
    results[threads - 1][0] = bits_of(p_out);
    results[threads - 1][1] = bits_of(b_out);
  }
  EXPECT_EQ(results[0][0], results[1][0]);
  EXPECT_EQ(results[0][1], results[1][1]);
}

TEST(CpuOptimizer, SgdNanAndInfPropagate) {
  std::vector<float> param{1.0f, 2.0f, inf_f, 4.0f, 5.0f};
  const std::vector<float> grad{nan_value, inf_f, 1.0f, 1.0f, 1.0f};
  std::vector<float> buffer(5, 0.0f);
  sgd_params p;
  p.param = param.data();
  p.grad = grad.data();
  p.momentum_buffer = buffer.data();
  p.count = 5;
  p.momentum = 0.9f;
  kern::cpu::sgd_step(kern::cpu::context(1), p);
  EXPECT_TRUE(std::isnan(param[0]) && std::isnan(buffer[0]));
  EXPECT_EQ(param[1], -inf_f);
  EXPECT_EQ(buffer[1], inf_f);
  EXPECT_EQ(param[2], inf_f); // weight_decay = 0: no 0 * Inf term turns it into NaN
  EXPECT_TRUE(std::isfinite(param[3]) && std::isfinite(param[4]));
  p.weight_decay = 0.1f; // now the coupled decay term is Inf, and Inf - Inf is NaN
  kern::cpu::sgd_step(kern::cpu::context(1), p);
  EXPECT_TRUE(std::isnan(param[1]) && std::isnan(param[2]));
}

TEST(CpuOptimizer, SgdRejectsBadArguments) {
  std::vector<float> param(16, 1.0f), grad(16, 1.0f), buffer(16, 0.0f);
  const auto message = [&](const std::function<void(sgd_params&)>& edit) {
    sgd_params p;
    p.param = param.data();
    p.grad = grad.data();
    p.momentum_buffer = buffer.data();
    p.count = 16;
    p.momentum = 0.9f;
    edit(p);
    return error_of([&] { kern::cpu::sgd_step(kern::cpu::context(1), p); });
  };
  const std::string op = "kern::cpu::sgd_step: ";
  EXPECT_EQ(message([](sgd_params& p) { p.count = -3; }), op + "count = -3 must not be negative");
  EXPECT_EQ(message([](sgd_params& p) { p.param = nullptr; }), op + "param is null but holds 16 elements");
  EXPECT_EQ(message([](sgd_params& p) { p.grad = nullptr; }), op + "grad is null but holds 16 elements");
  EXPECT_EQ(message([](sgd_params& p) { p.momentum_buffer = nullptr; }),
            op + "momentum_buffer is null but momentum = 0.9 needs one of 16 elements");
  EXPECT_EQ(message([](sgd_params& p) { p.lr = inf_f; }), op + "lr = inf must be finite and not negative");
  EXPECT_EQ(message([](sgd_params& p) { p.momentum = -0.5f; }), op + "momentum = -0.5 must be finite and not negative");
  EXPECT_EQ(message([](sgd_params& p) { p.dampening = nan_value; }), op + "dampening = nan must be finite");
  EXPECT_EQ(message([](sgd_params& p) { p.weight_decay = -1.0f; }),
            op + "weight_decay = -1 must be finite and not negative");
  EXPECT_EQ(message([](sgd_params& p) {
              p.nesterov = true;
              p.dampening = 0.5f;
            }),
            op + "nesterov needs momentum > 0 and dampening = 0 (momentum = 0.9, dampening = 0.5)");
  EXPECT_EQ(message([](sgd_params& p) {
              p.nesterov = true;
              p.momentum = 0.0f;
            }),
            op + "nesterov needs momentum > 0 and dampening = 0 (momentum = 0, dampening = 0)");
  EXPECT_EQ(message([&](sgd_params& p) { p.grad = param.data() + 4; }).find(op + "param overlaps grad"), 0U);
  EXPECT_EQ(
      message([&](sgd_params& p) { p.momentum_buffer = param.data(); }).find(op + "param overlaps momentum_buffer"),
      0U);
  // Without momentum the buffer is not used: null or anywhere is fine.
  EXPECT_EQ(message([](sgd_params& p) {
              p.momentum = 0.0f;
              p.momentum_buffer = nullptr;
            }),
            "(no error)");
  EXPECT_EQ(message([&](sgd_params& p) {
              p.momentum = 0.0f;
              p.momentum_buffer = param.data();
            }),
            "(no error)");
}

// ---------------------------------------------------------------------------------------------
// Global gradient norm and clip factor

// Gradients of the given sizes, uniform in [-1, 1), and the spans over them.
struct gradient_set {
  std::vector<std::vector<float>> tensors;
  std::vector<gradient_span> spans;
  gradient_set(std::initializer_list<index_t> counts, std::uint32_t seed) {
    std::mt19937 rng(seed);
    for (index_t count : counts) {
      tensors.push_back(random_values<float>(rng, count));
    }
    for (const std::vector<float>& t : tensors) {
      spans.push_back({t.data(), static_cast<index_t>(t.size())});
    }
  }
};

TEST(CpuOptimizer, GradNormMatchesFloat64Reference) {
  // Sizes with tails and empty tensors, around and across the fixed blocking (2^15-element parts).
  const std::initializer_list<index_t> layouts[] = {
      {1},
      {3, 0, 5},
      {17, 1000, 31, 0, 768},
      {(index_t{1} << 15) - 1, 2, (index_t{1} << 15) + 1},
      {768, (index_t{1} << 20) + 3, 0, 7, 50257, 1},
  };
  for (const auto& counts : layouts) {
    for (int threads : {1, 2}) {
      const std::uint32_t seed = fresh_seed();
      SCOPED_TRACE(testing::Message() << "tensors " << counts.size() << ", first " << *counts.begin() << ", threads "
                                      << threads << ", seed " << seed);
      const gradient_set g(counts, seed);
      const double ref = reference_norm(g.tensors);
      const double norm = kern::cpu::global_grad_norm(kern::cpu::context(threads), g.spans);
      // Accumulation in double: float squares or float sums would be off by ~1e-8 to 1e-10.
      EXPECT_NEAR(norm, ref, 1e-12 * ref);
    }
  }
}

TEST(CpuOptimizer, GradNormExactOnSmallInputs) {
  const std::vector<float> one{-3.5f};
  const std::vector<float> pair{3.0f, 4.0f};
  const std::vector<gradient_span> single{{one.data(), 1}};
  const std::vector<gradient_span> split{{pair.data(), 1}, {nullptr, 0}, {pair.data() + 1, 1}};
  const kern::cpu::context ctx(2);
  EXPECT_EQ(kern::cpu::global_grad_norm(ctx, single), 3.5);
  EXPECT_EQ(kern::cpu::global_grad_norm(ctx, split), 5.0);
  EXPECT_EQ(kern::cpu::global_grad_norm(ctx, {}), 0.0);
  // Squares beyond the float range: accumulated in double, they do not overflow.
  const std::vector<float> huge{std::ldexp(3.0f, 100), std::ldexp(-4.0f, 100)};
  const std::vector<gradient_span> big{{huge.data(), 2}};
  EXPECT_EQ(kern::cpu::global_grad_norm(ctx, big), std::ldexp(5.0, 100));
}

TEST(CpuOptimizer, GradNormSameBitsForAnyThreadCount) {
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(testing::Message() << "seed " << seed);
  const gradient_set g({100, (index_t{1} << 20) + 3, 7, 1 << 18}, seed);
  const double one = kern::cpu::global_grad_norm(kern::cpu::context(1), g.spans);
  for (int threads : {2, 3, 4}) {
    const double norm = kern::cpu::global_grad_norm(kern::cpu::context(threads), g.spans);
    EXPECT_EQ(std::bit_cast<std::uint64_t>(norm), std::bit_cast<std::uint64_t>(one)) << threads << " threads";
  }
}

TEST(CpuOptimizer, GradNormNanAndInfPropagate) {
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(testing::Message() << "seed " << seed);
  gradient_set g({1000, 70000, 5}, seed);
  const kern::cpu::context ctx(2);
  g.tensors[1][69999] = -inf_f;
  EXPECT_EQ(kern::cpu::global_grad_norm(ctx, g.spans), std::numeric_limits<double>::infinity());
  g.tensors[2][4] = nan_value;
  EXPECT_TRUE(std::isnan(kern::cpu::global_grad_norm(ctx, g.spans)));
}

TEST(CpuOptimizer, GradNormRejectsBadSpans) {
  const std::vector<float> x(4, 1.0f);
  const kern::cpu::context ctx(1);
  const std::vector<gradient_span> negative{{x.data(), 4}, {x.data(), -2}};
  const std::vector<gradient_span> null{{x.data(), 4}, {x.data(), 4}, {nullptr, 3}};
  EXPECT_EQ(error_of([&] { kern::cpu::global_grad_norm(ctx, negative); }),
            "kern::cpu::global_grad_norm: grads[1].count = -2 must not be negative");
  EXPECT_EQ(error_of([&] { kern::cpu::global_grad_norm(ctx, null); }),
            "kern::cpu::global_grad_norm: grads[2].data is null but holds 3 elements");
}

TEST(CpuOptimizer, ClipFactorMatchesTorchClipGradNorm) {
  EXPECT_EQ(kern::cpu::clip_factor(0.0, 1.0f), 1.0f);
  EXPECT_EQ(kern::cpu::clip_factor(0.5, 1.0f), 1.0f);
  EXPECT_EQ(kern::cpu::clip_factor(4.0, 1.0f), static_cast<float>(1.0 / (4.0 + 1e-6)));
  EXPECT_EQ(kern::cpu::clip_factor(10.0, 2.5f), static_cast<float>(2.5 / (10.0 + 1e-6)));
  EXPECT_EQ(kern::cpu::clip_factor(std::numeric_limits<double>::infinity(), 1.0f), 0.0f);
  EXPECT_TRUE(std::isnan(kern::cpu::clip_factor(std::numeric_limits<double>::quiet_NaN(), 1.0f)));
  EXPECT_EQ(kern::cpu::clip_factor(1e9, inf_f), 1.0f); // max_norm = Inf: no clipping
}

TEST(CpuOptimizer, ClipFactorRejectsBadArguments) {
  EXPECT_EQ(error_of([] { kern::cpu::clip_factor(1.0, 0.0f); }),
            "kern::cpu::clip_factor: max_norm = 0 must be positive");
  EXPECT_EQ(error_of([] { kern::cpu::clip_factor(1.0, -1.0f); }),
            "kern::cpu::clip_factor: max_norm = -1 must be positive");
  EXPECT_EQ(error_of([] { kern::cpu::clip_factor(1.0, nan_value); }),
            "kern::cpu::clip_factor: max_norm = nan must be positive");
  EXPECT_EQ(error_of([] { kern::cpu::clip_factor(-2.0, 1.0f); }),
            "kern::cpu::clip_factor: norm = -2 must not be negative");
}

} // namespace
