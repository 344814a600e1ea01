// kern::cpu activations (GELU, SiLU, SwiGLU) and bias ops against float64 references.
//
// Inputs are random (fresh seed per case, in the trace; KERN_TEST_SEED replays), in strided views
// whose padding holds NaN, so that a kernel mixing padding into a result fails; outputs are poisoned
// with NaN and their padding holds a sentinel that must survive. Backward passes are checked against
// central finite differences of the float64 forward on small shapes, and against the analytic
// float64 derivative on the rest.
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "kern/cpu.hpp"
#include "support/activation_reference.hpp"
#include "support/kernel_test.hpp"

namespace {

using kern::bf16;
using kern::index_t;
using kern::matrix_view;
using kern::ops::activation;
using namespace kern::test;

struct shape {
  index_t rows, cols;
};
constexpr shape shapes[] = {{1, 1}, {1, 17}, {3, 16}, {7, 33}, {13, 131}, {64, 500}, {2, 40000}};

// ---------------------------------------------------------------------------------------------
// activation_forward / activation_backward

template <class T> void check_activation(activation kind, shape s, index_t pad, int threads, bool in_place) {
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(testing::Message() << kind_name(kind) << " " << type_name<T>() << " " << s.rows << "x" << s.cols
                                  << " ld+" << pad << " threads " << threads << (in_place ? " in place" : "")
                                  << " seed " << seed);
  std::mt19937 rng(seed);
  const index_t ld = s.cols + pad;
  const kern::cpu::context ctx(threads);

  host_matrix<T> x = random_matrix<T>(rng, s.rows, s.cols, ld, -6.0f, 6.0f);
  const std::vector<double> xs = widen(x.values());
  std::vector<double> y_ref(xs.size()), dx_ref(xs.size()), dx_scale(xs.size());
  host_matrix<T> dy = random_matrix<T>(rng, s.rows, s.cols, ld, -1.0f, 1.0f);
  const std::vector<double> dys = widen(dy.values());
  for (std::size_t k = 0; k < xs.size(); ++k) {
    y_ref[k] = activation_ref(kind, xs[k]);
    dx_ref[k] = activation_derivative_ref(kind, xs[k]) * dys[k];
    dx_scale[k] = activation_derivative_scale(kind, xs[k]) * std::abs(dys[k]);
  }

  host_matrix<T> y = poisoned_matrix<T>(s.rows, s.cols, ld);
  host_matrix<T> dx = poisoned_matrix<T>(s.rows, s.cols, ld);
  host_matrix<T> x_in_place = x;
  if (in_place) {
    kern::cpu::activation_forward(ctx,
                                  kern::ops::activation_forward_params<T>{kind, x_in_place.cview(), x_in_place.view()});
    EXPECT_LT(relative_error(x_in_place.values(), y_ref), output_tolerance<T>());
    kern::cpu::activation_backward(ctx,
                                   kern::ops::activation_backward_params<T>{kind, x.cview(), dy.cview(), dy.view()});
    EXPECT_LT(scaled_error(dy.values(), dx_ref, dx_scale), output_tolerance<T>());
  } else {
    kern::cpu::activation_forward(ctx, kern::ops::activation_forward_params<T>{kind, x.cview(), y.view()});
    EXPECT_LT(relative_error(y.values(), y_ref), output_tolerance<T>());
    EXPECT_TRUE(y.padding_is(sentinel)) << "wrote into y's padding";
    kern::cpu::activation_backward(ctx,
                                   kern::ops::activation_backward_params<T>{kind, x.cview(), dy.cview(), dx.view()});
    EXPECT_LT(scaled_error(dx.values(), dx_ref, dx_scale), output_tolerance<T>());
    EXPECT_TRUE(dx.padding_is(sentinel)) << "wrote into dx's padding";
  }
}

template <class T> void check_activation_shapes() {
  for (activation kind : {activation::gelu_tanh, activation::silu}) {
    for (const shape& s : shapes) {
      for (index_t pad : {0, 5}) {
        for (int threads : {1, 2}) {
          check_activation<T>(kind, s, pad, threads, false);
        }
      }
      check_activation<T>(kind, s, 3, 2, true);
    }
  }
}

TEST(CpuActivation, MatchesReferenceF32) { check_activation_shapes<float>(); }
TEST(CpuActivation, MatchesReferenceBf16) { check_activation_shapes<bf16>(); }

TEST(CpuActivation, BackwardMatchesFiniteDifferences) {
  for (activation kind : {activation::gelu_tanh, activation::silu}) {
    const std::uint32_t seed = fresh_seed();
    SCOPED_TRACE(testing::Message() << kind_name(kind) << " seed " << seed);
    std::mt19937 rng(seed);
    const index_t rows = 3, cols = 19;
    host_matrix<float> x = random_matrix<float>(rng, rows, cols, cols, -5.0f, 5.0f);
    host_matrix<float> w = random_matrix<float>(rng, rows, cols, cols, -1.0f, 1.0f);
    const std::vector<double> ws = widen(w.values());
    const auto loss = [&](const std::vector<double>& xs) {
      double l = 0.0;
      for (std::size_t k = 0; k < xs.size(); ++k) {
        l += ws[k] * activation_ref(kind, xs[k]);
      }
      return l;
    };
    const std::vector<double> xs = widen(x.values());
    std::vector<double> numeric(xs.size());
    for (std::size_t k = 0; k < xs.size(); ++k) {
      numeric[k] = central_difference(loss, xs, k);
    }
    host_matrix<float> dx = poisoned_matrix<float>(rows, cols, cols);
    kern::cpu::activation_backward(kern::cpu::context(1),
                                   kern::ops::activation_backward_params<float>{kind, x.cview(), w.cview(), dx.view()});
    EXPECT_LT(relative_error(dx.values(), numeric), 1e-6);
  }
}

// Finite inputs of any size give finite, accurate values and derivatives (no exp overflow, no
// cancellation in 1 - sigmoid, no Inf * 0).
TEST(CpuActivation, LargeInputsStayAccurate) {
  const std::vector<float> inputs = {-3e38f, -1e20f, -1e10f, -1e3f, -90.0f, -30.0f, -9.0f, -1e-30f, 0.0f,
                                     1e-30f, 9.0f,   30.0f,  90.0f, 1e3f,   1e10f,  1e20f, 3e38f};
  const auto n = static_cast<index_t>(inputs.size());
  for (activation kind : {activation::gelu_tanh, activation::silu}) {
    SCOPED_TRACE(kind_name(kind));
    const std::vector<float> ones(inputs.size(), 1.0f);
    std::vector<float> y(inputs.size()), dx(inputs.size());
    kern::cpu::activation_forward(kern::cpu::context(1), kern::ops::activation_forward_params<float>{
                                                             kind, {inputs.data(), 1, n}, {y.data(), 1, n}});
    kern::cpu::activation_backward(kern::cpu::context(1),
                                   kern::ops::activation_backward_params<float>{
                                       kind, {inputs.data(), 1, n}, {ones.data(), 1, n}, {dx.data(), 1, n}});
    for (std::size_t k = 0; k < inputs.size(); ++k) {
      const double x = inputs[k];
      const double y_ref = activation_ref(kind, x), d_ref = activation_derivative_ref(kind, x);
      EXPECT_TRUE(std::isfinite(y[k]) && std::isfinite(dx[k])) << "x = " << x << ": y = " << y[k] << ", dx = " << dx[k];
      EXPECT_NEAR(y[k], y_ref, 1e-6 * std::abs(y_ref) + 1e-30) << "x = " << x;
      EXPECT_NEAR(dx[k], d_ref, 1e-5 * std::abs(d_ref) + 1e-6) << "x = " << x;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// swiglu_forward / swiglu_backward, with gate and up the two halves of one N x 2H matrix.

template <class T> void check_swiglu(shape s, int threads) {
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(testing::Message() << "swiglu " << type_name<T>() << " " << s.rows << "x" << s.cols << " threads "
                                  << threads << " seed " << seed);
  std::mt19937 rng(seed);
  const index_t h = s.cols;
  const kern::cpu::context ctx(threads);
  // [gate | up] as one N x 2H matrix (how a fused gate-up projection writes them), plus padding.
  host_matrix<T> fused = random_matrix<T>(rng, s.rows, 2 * h, 2 * h + 3, -5.0f, 5.0f);
  const matrix_view<const T> gate{fused.data.data(), s.rows, h, fused.ld};
  const matrix_view<const T> up{fused.data.data() + h, s.rows, h, fused.ld};
  host_matrix<T> dy = random_matrix<T>(rng, s.rows, h, h + 1, -1.0f, 1.0f);

  std::vector<double> y_ref, dgate_ref, dgate_scale, dup_ref;
  for (index_t i = 0; i < s.rows; ++i) {
    for (index_t j = 0; j < h; ++j) {
      const double g = static_cast<float>(gate(i, j)), u = static_cast<float>(up(i, j));
      const double d = static_cast<float>(dy.at(i, j));
      y_ref.push_back(silu_ref(g) * u);
      dgate_ref.push_back(d * u * silu_derivative_ref(g));
      dgate_scale.push_back(std::abs(d * u) * activation_derivative_scale(activation::silu, g));
      dup_ref.push_back(d * silu_ref(g));
    }
  }

  host_matrix<T> y = poisoned_matrix<T>(s.rows, h, h + 2);
  kern::cpu::swiglu_forward(ctx, kern::ops::swiglu_forward_params<T>{gate, up, y.view()});
  EXPECT_LT(relative_error(y.values(), y_ref), output_tolerance<T>());
  EXPECT_TRUE(y.padding_is(sentinel));

  // The gradients land in the halves of one N x 2H matrix too.
  host_matrix<T> dfused = poisoned_matrix<T>(s.rows, 2 * h, 2 * h + 1);
  const matrix_view<T> dgate{dfused.data.data(), s.rows, h, dfused.ld};
  const matrix_view<T> dup{dfused.data.data() + h, s.rows, h, dfused.ld};
  kern::cpu::swiglu_backward(ctx, kern::ops::swiglu_backward_params<T>{gate, up, dy.cview(), dgate, dup});
  std::vector<T> dgate_out, dup_out;
  for (index_t i = 0; i < s.rows; ++i) {
    for (index_t j = 0; j < h; ++j) {
      dgate_out.push_back(dgate(i, j));
      dup_out.push_back(dup(i, j));
    }
  }
  EXPECT_LT(scaled_error(dgate_out, dgate_ref, dgate_scale), output_tolerance<T>());
  EXPECT_LT(relative_error(dup_out, dup_ref), output_tolerance<T>());
  EXPECT_TRUE(dfused.padding_is(sentinel));

  // In place: the gradients overwrite gate and up.
  kern::cpu::swiglu_backward(ctx, kern::ops::swiglu_backward_params<T>{gate,
                                                                       up,
                                                                       dy.cview(),
                                                                       {fused.data.data(), s.rows, h, fused.ld},
                                                                       {fused.data.data() + h, s.rows, h, fused.ld}});
  EXPECT_TRUE(same_bits(fused.values(), dfused.values())) << "in-place gradients differ";
}

TEST(CpuSwiglu, MatchesReference) {
  for (const shape& s : shapes) {
    for (int threads : {1, 2}) {
      check_swiglu<float>(s, threads);
      check_swiglu<bf16>(s, threads);
    }
  }
}

TEST(CpuSwiglu, BackwardMatchesFiniteDifferences) {
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  const index_t rows = 2, cols = 21;
  host_matrix<float> gate = random_matrix<float>(rng, rows, cols, cols, -5.0f, 5.0f);
  host_matrix<float> up = random_matrix<float>(rng, rows, cols, cols, -2.0f, 2.0f);
  host_matrix<float> w = random_matrix<float>(rng, rows, cols, cols, -1.0f, 1.0f);
  const std::vector<double> ws = widen(w.values());
  // Both inputs in one vector: gate values, then up values.
  std::vector<double> inputs = widen(gate.values());
  const std::vector<double> ups = widen(up.values());
  inputs.insert(inputs.end(), ups.begin(), ups.end());
  const std::size_t n = ws.size();
  const auto loss = [&](const std::vector<double>& in) {
    double l = 0.0;
    for (std::size_t k = 0; k < n; ++k) {
      l += ws[k] * silu_ref(in[k]) * in[n + k];
    }
    return l;
  };
  std::vector<double> numeric_gate(n), numeric_up(n);
  for (std::size_t k = 0; k < n; ++k) {
    numeric_gate[k] = central_difference(loss, inputs, k);
    numeric_up[k] = central_difference(loss, inputs, n + k);
  }
  host_matrix<float> dgate = poisoned_matrix<float>(rows, cols, cols);
  host_matrix<float> dup = poisoned_matrix<float>(rows, cols, cols);
  kern::cpu::swiglu_backward(kern::cpu::context(1), kern::ops::swiglu_backward_params<float>{
                                                        gate.cview(), up.cview(), w.cview(), dgate.view(), dup.view()});
  EXPECT_LT(relative_error(dgate.values(), numeric_gate), 1e-6);
  EXPECT_LT(relative_error(dup.values(), numeric_up), 1e-6);
}

// ---------------------------------------------------------------------------------------------
// bias_add / bias_grad

template <class T> void check_bias(shape s, index_t pad, int threads) {
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(testing::Message() << "bias " << type_name<T>() << " " << s.rows << "x" << s.cols << " ld+" << pad
                                  << " threads " << threads << " seed " << seed);
  std::mt19937 rng(seed);
  const index_t ld = s.cols + pad;
  const kern::cpu::context ctx(threads);
  host_matrix<T> x = random_matrix<T>(rng, s.rows, s.cols, ld, -1.0f, 1.0f);
  x.set_padding(sentinel);
  const std::vector<float> bias = random_values<float>(rng, s.cols);
  std::vector<double> add_ref = widen(x.values());
  for (std::size_t k = 0; k < add_ref.size(); ++k) {
    add_ref[k] += bias[k % static_cast<std::size_t>(s.cols)];
  }
  kern::cpu::bias_add(ctx, kern::ops::bias_add_params<T>{x.view(), bias.data()});
  EXPECT_LT(relative_error(x.values(), add_ref), output_tolerance<T>());
  EXPECT_TRUE(x.padding_is(sentinel)) << "wrote into x's padding";

  // bias_grad accumulates onto what dbias holds.
  host_matrix<T> dy = random_matrix<T>(rng, s.rows, s.cols, ld, -1.0f, 1.0f);
  std::vector<float> dbias = random_values<float>(rng, s.cols);
  std::vector<double> grad_ref = widen(dbias);
  std::vector<double> term_size(grad_ref.size()); // sum of |terms| per column: what fp32 rounding scales with
  for (index_t j = 0; j < s.cols; ++j) {
    term_size[static_cast<std::size_t>(j)] = std::abs(grad_ref[static_cast<std::size_t>(j)]);
  }
  for (index_t i = 0; i < s.rows; ++i) {
    for (index_t j = 0; j < s.cols; ++j) {
      grad_ref[static_cast<std::size_t>(j)] += static_cast<float>(dy.at(i, j));
      term_size[static_cast<std::size_t>(j)] += std::abs(static_cast<float>(dy.at(i, j)));
    }
  }
  kern::cpu::bias_grad(ctx, kern::ops::bias_grad_params<T>{dy.cview(), dbias.data()});
  // fp32 sums of up to 40000 random-signed rows cancel: the error is measured against the size of
  // the terms, as fp32 rounding accumulates with it, not against the (smaller) sum.
  EXPECT_LT(scaled_error(dbias, grad_ref, term_size), 2e-6);
}

TEST(CpuBias, MatchesReference) {
  for (const shape& s : {shape{1, 1}, shape{1, 17}, shape{5, 16}, shape{40000, 3}, shape{300, 131}, shape{97, 771}}) {
    for (index_t pad : {0, 7}) {
      for (int threads : {1, 2}) {
        check_bias<float>(s, pad, threads);
        check_bias<bf16>(s, pad, threads);
      }
    }
  }
}

// bias_grad is the gradient of bias_add: dL/dbias for L = sum(w * (x + bias)).
TEST(CpuBias, GradMatchesFiniteDifferences) {
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  const index_t rows = 5, cols = 19;
  host_matrix<float> x = random_matrix<float>(rng, rows, cols, cols, -1.0f, 1.0f);
  host_matrix<float> w = random_matrix<float>(rng, rows, cols, cols, -1.0f, 1.0f);
  const std::vector<double> xs = widen(x.values()), ws = widen(w.values());
  const auto loss = [&](const std::vector<double>& bias) {
    double l = 0.0;
    for (std::size_t k = 0; k < xs.size(); ++k) {
      l += ws[k] * (xs[k] + bias[k % static_cast<std::size_t>(cols)]);
    }
    return l;
  };
  const std::vector<double> bias = widen(random_values<float>(rng, cols));
  std::vector<double> numeric(static_cast<std::size_t>(cols));
  for (std::size_t j = 0; j < numeric.size(); ++j) {
    numeric[j] = central_difference(loss, bias, j);
  }
  std::vector<float> dbias(static_cast<std::size_t>(cols), 0.0f);
  kern::cpu::bias_grad(kern::cpu::context(1), kern::ops::bias_grad_params<float>{w.cview(), dbias.data()});
  EXPECT_LT(relative_error(dbias, numeric), 1e-6);
}

// ---------------------------------------------------------------------------------------------
// Determinism, NaN, bad arguments

TEST(CpuActivation, DeterministicAcrossRunsAndThreadCounts) {
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  const index_t rows = 1000, cols = 203;
  host_matrix<float> dy = random_matrix<float>(rng, rows, cols, cols + 1, -1.0f, 1.0f);
  host_matrix<bf16> x = random_matrix<bf16>(rng, rows, cols, cols, -4.0f, 4.0f);
  std::vector<std::vector<float>> dbias;
  std::vector<std::vector<bf16>> y;
  for (int threads : {1, 2, 2}) {
    const kern::cpu::context ctx(threads);
    dbias.emplace_back(static_cast<std::size_t>(cols), 0.5f);
    kern::cpu::bias_grad(ctx, kern::ops::bias_grad_params<float>{dy.cview(), dbias.back().data()});
    host_matrix<bf16> out = poisoned_matrix<bf16>(rows, cols, cols);
    kern::cpu::activation_forward(
        ctx, kern::ops::activation_forward_params<bf16>{activation::gelu_tanh, x.cview(), out.view()});
    y.push_back(out.values());
  }
  for (std::size_t run = 1; run < dbias.size(); ++run) {
    EXPECT_TRUE(same_bits(dbias[0], dbias[run])) << "bias_grad run " << run;
    EXPECT_TRUE(same_bits(y[0], y[run])) << "activation_forward run " << run;
  }
}

TEST(CpuActivation, NanPropagates) {
  const index_t n = 37;
  std::vector<float> x(static_cast<std::size_t>(n), 0.5f), dy(static_cast<std::size_t>(n), 1.0f);
  x[3] = nan_value;
  dy[20] = nan_value;
  for (activation kind : {activation::gelu_tanh, activation::silu}) {
    SCOPED_TRACE(kind_name(kind));
    std::vector<float> y(x.size()), dx(x.size());
    kern::cpu::activation_forward(
        kern::cpu::context(1), kern::ops::activation_forward_params<float>{kind, {x.data(), 1, n}, {y.data(), 1, n}});
    kern::cpu::activation_backward(
        kern::cpu::context(1),
        kern::ops::activation_backward_params<float>{kind, {x.data(), 1, n}, {dy.data(), 1, n}, {dx.data(), 1, n}});
    for (std::size_t k = 0; k < x.size(); ++k) {
      EXPECT_EQ(std::isnan(y[k]), k == 3) << k;
      EXPECT_EQ(std::isnan(dx[k]), k == 3 || k == 20) << k;
    }
  }
  std::vector<float> dbias(4, 0.0f);
  kern::cpu::bias_grad(kern::cpu::context(1), kern::ops::bias_grad_params<float>{{x.data(), 9, 4}, dbias.data()});
  for (std::size_t j = 0; j < dbias.size(); ++j) {
    EXPECT_EQ(std::isnan(dbias[j]), j == 3) << j; // x[3] is in column 3
  }
}

TEST(CpuActivation, RejectsBadArguments) {
  const kern::cpu::context ctx(1);
  std::vector<float> a(64, 1.0f), b(64, 1.0f), c(64, 1.0f);
  using fwd = kern::ops::activation_forward_params<float>;
  using bwd = kern::ops::activation_backward_params<float>;
  using swi = kern::ops::swiglu_backward_params<float>;
  expect_error(
      [&] {
        kern::cpu::activation_forward(ctx, fwd{activation::silu, {a.data(), 4, 4}, {b.data(), 4, 3}});
      },
      "y is 4 x 3");
  expect_error(
      [&] {
        kern::cpu::activation_forward(ctx, fwd{activation::silu, {a.data(), -1, 4}, {b.data(), -1, 4}});
      },
      "x is -1 x 4");
  expect_error(
      [&] {
        kern::cpu::activation_forward(ctx, fwd{activation::silu, {nullptr, 2, 4}, {b.data(), 2, 4}});
      },
      "x.data is null");
  expect_error(
      [&] {
        kern::cpu::activation_forward(ctx, fwd{activation::silu, {a.data(), 2, 4, 3}, {b.data(), 2, 4}});
      },
      "x.ld = 3");
  expect_error(
      [&] {
        kern::cpu::activation_forward(ctx, fwd{activation(7), {a.data(), 2, 4}, {b.data(), 2, 4}});
      },
      "kind = 7");
  // y shifted by one element against x: neither in place nor apart.
  expect_error(
      [&] {
        kern::cpu::activation_forward(ctx, fwd{activation::silu, {a.data(), 4, 4}, {a.data() + 1, 4, 4}});
      },
      "y overlaps x");
  expect_error(
      [&] {
        kern::cpu::activation_backward(
            ctx, bwd{activation::gelu_tanh, {a.data(), 4, 4}, {b.data(), 4, 4}, {b.data() + 4, 4, 4}});
      },
      "dx overlaps dy");
  expect_error(
      [&] {
        kern::cpu::swiglu_backward(ctx, swi{{a.data(), 2, 8, 16},
                                            {a.data() + 8, 2, 8, 16},
                                            {b.data(), 2, 8},
                                            {c.data(), 2, 8, 16},
                                            {c.data() + 7, 2, 8, 16}});
      },
      "dgate overlaps dup");
  expect_error(
      [&] {
        kern::cpu::bias_add(ctx, kern::ops::bias_add_params<float>{{a.data(), 2, 4}, nullptr});
      },
      "bias is null");
  expect_error(
      [&] {
        kern::cpu::bias_add(ctx, kern::ops::bias_add_params<float>{{a.data(), 2, 4}, a.data() + 2});
      },
      "x overlaps bias");
  expect_error(
      [&] {
        kern::cpu::bias_grad(ctx, kern::ops::bias_grad_params<float>{{a.data(), 2, 4}, a.data()});
      },
      "dbias overlaps dy");
  // Halves of one matrix are apart; empty matrices are no-ops even with null pointers.
  EXPECT_NO_THROW(kern::cpu::swiglu_backward(ctx, swi{{a.data(), 2, 8, 16},
                                                      {a.data() + 8, 2, 8, 16},
                                                      {b.data(), 2, 8},
                                                      {c.data(), 2, 8, 16},
                                                      {c.data() + 8, 2, 8, 16}}));
  EXPECT_NO_THROW(kern::cpu::activation_forward(ctx, fwd{activation::silu, {nullptr, 0, 4, 4}, {nullptr, 0, 4, 4}}));
  EXPECT_NO_THROW(kern::cpu::bias_grad(ctx, kern::ops::bias_grad_params<float>{{nullptr, 0, 0, 1}, nullptr}));
}

} // namespace
