// kern::cpu::softmax_forward / softmax_backward / cross_entropy against a float64 reference.
//
// Every case draws fresh random inputs (the seed is in the failure message; KERN_TEST_SEED=<n>
// replays one), poisons the outputs with NaN, keeps a sentinel in the ld padding of outputs and NaN
// in that of inputs, and compares with ||out - ref|| / ||ref||. Shapes include 1, primes,
// non-multiples of the SIMD width, strided rows and the GPT-2 vocabulary (50304 columns, 50257
// classes); f32 and bf16; 1 and 2 threads. Backward passes are checked against central finite
// differences of the float64 forward on small shapes. Then PyTorch's mean, ignored rows, non-finite
// rows, bad arguments, NaN propagation and determinism.
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "kern/cpu.hpp"
#include "support/kernel_test.hpp"
#include "support/softmax_reference.hpp"

namespace {

using kern::bf16;
using kern::index_t;
using kern::ops::loss_reduction;
using namespace kern::test;

constexpr float inf_value = std::numeric_limits<float>::infinity();

// ---------------------------------------------------------------------------------------------
// Softmax forward and backward.

struct softmax_case {
  index_t rows, cols, pad;
  float scale;
  bool in_place;
  int threads;
};

template <class T> void check_softmax_forward(const softmax_case& c) {
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(testing::Message() << "softmax " << c.rows << " x " << c.cols << " ld +" << c.pad << " scale " << c.scale
                                  << " in place " << c.in_place << " threads " << c.threads << " "
                                  << kern::name(kern::dtype_of_v<T>) << " seed " << seed);
  std::mt19937 rng(seed);
  const index_t ld = c.cols + c.pad;
  host_matrix<T> x(c.rows, c.cols, ld, c.in_place ? sentinel : nan_value, 0.0f);
  x.fill_random(rng, -4.0f, 4.0f);
  const std::vector<double> ref = softmax_reference(widen(x.values()), c.rows, c.cols, c.scale);
  host_matrix<T> y(c.rows, c.cols, ld, sentinel, nan_value);
  host_matrix<T>& out = c.in_place ? x : y;
  kern::ops::softmax_forward_params<T> p{x.cview(), out.view(), c.scale};
  kern::cpu::softmax_forward(kern::cpu::context(c.threads), p);
  EXPECT_LE(relative_error(out.values(), ref), output_tolerance<T>());
  EXPECT_TRUE(out.padding_is(sentinel)) << "padding written";
}

template <class T> void check_softmax_backward(const softmax_case& c) {
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(testing::Message() << "softmax backward " << c.rows << " x " << c.cols << " ld +" << c.pad
                                  << " in place " << c.in_place << " threads " << c.threads << " "
                                  << kern::name(kern::dtype_of_v<T>) << " seed " << seed);
  std::mt19937 rng(seed);
  const index_t ld = c.cols + c.pad;
  softmax_backward_inputs<T> in(rng, c.rows, c.cols, ld, c.in_place);
  host_matrix<T> dx(c.rows, c.cols, ld, sentinel, nan_value);
  host_matrix<T>& out = c.in_place ? in.dy : dx;
  kern::ops::softmax_backward_params<T> p{in.y.cview(), in.dy.cview(), out.view()};
  kern::cpu::softmax_backward(kern::cpu::context(c.threads), p);
  EXPECT_LE(relative_error(out.values(), in.dx), gradient_tolerance<T>());
  EXPECT_TRUE(out.padding_is(sentinel)) << "padding written";
}

template <class T> void softmax_sweep() {
  const index_t shapes[][2] = {{1, 1}, {1, 7}, {3, 16}, {5, 31}, {7, 100}, {4, 1000}, {2, 4099}, {40, 257}};
  for (const auto& shape : shapes) {
    for (int threads : {1, 2}) {
      for (bool in_place : {false, true}) {
        const index_t pad = shape[1] % 2 == 1 ? 3 : 0;
        for (float scale : {1.0f, 0.125f, -2.0f}) {
          check_softmax_forward<T>({shape[0], shape[1], pad, scale, in_place, threads});
        }
        check_softmax_backward<T>({shape[0], shape[1], pad, 1.0f, in_place, threads});
      }
    }
  }
  check_softmax_forward<T>({300, 700, 1, 0.5f, false, 2}); // both threads busy
  check_softmax_backward<T>({300, 700, 1, 1.0f, false, 2});
}

TEST(CpuSoftmax, F32) { softmax_sweep<float>(); }
TEST(CpuSoftmax, Bf16) { softmax_sweep<bf16>(); }

// d/dx of L = sum(w * softmax(x)): the kernels' forward then backward (dy = w) against central
// differences of the float64 forward.
TEST(CpuSoftmax, BackwardMatchesFiniteDifferences) {
  for (const auto& shape : {std::pair<index_t, index_t>{1, 1}, {1, 2}, {3, 5}, {2, 19}, {4, 40}}) {
    const std::uint32_t seed = fresh_seed();
    const index_t rows = shape.first, cols = shape.second, n = rows * cols;
    SCOPED_TRACE(testing::Message() << rows << " x " << cols << " seed " << seed);
    std::mt19937 rng(seed);
    const std::vector<float> x = random_values<float>(rng, n, -3.0f, 3.0f);
    const std::vector<float> w = random_values<float>(rng, n);
    std::vector<float> y(x.size()), dx(x.size(), nan_value);
    const kern::cpu::context ctx(1);
    kern::cpu::softmax_forward(
        ctx, kern::ops::softmax_forward_params<float>{{x.data(), rows, cols}, {y.data(), rows, cols}});
    kern::cpu::softmax_backward(ctx, kern::ops::softmax_backward_params<float>{
                                         {y.data(), rows, cols}, {w.data(), rows, cols}, {dx.data(), rows, cols}});
    expect_softmax_gradient_matches_finite_differences(x, w, y, dx, rows, cols);
  }
}

TEST(CpuSoftmax, NonFiniteInputs) {
  const float ninf = -inf_value;
  // Row 0: some -inf (masked) entries get 0; row 1: NaN spreads over the row; row 2: all -inf is
  // 0/0 = NaN (as PyTorch); row 3: finite.
  std::vector<float> x = {0.0f, ninf, 1.0f, ninf, 0.5f, nan_value, 0.5f, 0.5f,
                          ninf, ninf, ninf, ninf, 1.f,  2.f,       3.f,  4.f};
  std::vector<float> y(x.size(), sentinel);
  kern::cpu::softmax_forward(kern::cpu::context(1),
                             kern::ops::softmax_forward_params<float>{{x.data(), 4, 4}, {y.data(), 4, 4}});
  EXPECT_EQ(y[1], 0.0f);
  EXPECT_EQ(y[3], 0.0f);
  EXPECT_NEAR(y[0] + y[2], 1.0f, 1e-6f);
  for (int j = 4; j < 12; ++j) {
    EXPECT_TRUE(std::isnan(y[static_cast<std::size_t>(j)])) << j;
  }
  for (int j = 12; j < 16; ++j) {
    EXPECT_TRUE(std::isfinite(y[static_cast<std::size_t>(j)])) << j;
  }
  // Backward: a NaN in dy reaches its row only.
  std::vector<float> dy(x.size(), 0.5f), dx(x.size());
  dy[13] = nan_value;
  std::fill(y.begin(), y.end(), 0.25f);
  kern::cpu::softmax_backward(kern::cpu::context(1), kern::ops::softmax_backward_params<float>{
                                                         {y.data(), 4, 4}, {dy.data(), 4, 4}, {dx.data(), 4, 4}});
  EXPECT_TRUE(std::isfinite(dx[0]));
  EXPECT_TRUE(std::isnan(dx[12]));
}

// ---------------------------------------------------------------------------------------------
// Cross-entropy.

struct ce_case {
  index_t rows, cols, vocab, pad;
  loss_reduction reduction;
  bool write_gradient, with_losses;
  float grad_scale;
  int threads;
};

template <class T> void check_cross_entropy(const ce_case& c) {
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(testing::Message() << "cross_entropy " << c.rows << " x " << c.cols << " vocab " << c.vocab << " ld +"
                                  << c.pad << (c.reduction == loss_reduction::mean ? " mean" : " sum") << " gradient "
                                  << c.write_gradient << " losses " << c.with_losses << " scale " << c.grad_scale
                                  << " threads " << c.threads << " " << kern::name(kern::dtype_of_v<T>) << " seed "
                                  << seed);
  std::mt19937 rng(seed);
  const index_t ld = c.cols + c.pad;
  host_matrix<T> logits(c.rows, c.cols, ld, sentinel, 0.0f);
  logits.fill_random(rng, -8.0f, 8.0f);
  const std::vector<double> logits64 = widen(logits.values());
  std::uniform_int_distribution<std::int32_t> klass(0, static_cast<std::int32_t>(c.vocab) - 1);
  std::vector<std::int32_t> targets(static_cast<std::size_t>(c.rows));
  for (std::size_t i = 0; i < targets.size(); ++i) {
    targets[i] = i % 5 == 3 ? -100 : klass(rng); // every fifth row ignored
  }
  if (c.rows > 1) {
    targets[1] = static_cast<std::int32_t>(c.vocab) - 1; // the last real class
  }
  std::vector<float> losses(static_cast<std::size_t>(c.rows), nan_value);
  kern::ops::cross_entropy_params<T> p;
  p.logits = logits.view();
  p.targets = targets.data();
  p.losses = c.with_losses ? losses.data() : nullptr;
  p.vocab = c.vocab == c.cols ? -1 : c.vocab;
  p.reduction = c.reduction;
  p.write_gradient = c.write_gradient;
  p.grad_scale = c.grad_scale;
  const kern::ops::cross_entropy_result result = kern::cpu::cross_entropy(kern::cpu::context(c.threads), p);

  const ce_reference ref =
      cross_entropy_reference(logits64, c.rows, c.cols, c.vocab, targets, -100, c.reduction, c.grad_scale);
  EXPECT_EQ(result.counted_rows, ref.counted);
  EXPECT_EQ(result.nonfinite_rows, 0);
  EXPECT_NEAR(result.loss, ref.loss, 2e-6 * ref.total_scale);
  if (c.with_losses) {
    EXPECT_LE(scaled_error(losses, ref.losses, ref.loss_scale), 2e-6);
  }
  if (c.write_gradient) {
    // Padding columns and ignored rows are exactly 0 (the reference holds exact zeros there).
    for (index_t i = 0; i < c.rows; ++i) {
      for (index_t j = 0; j < c.cols; ++j) {
        if (targets[static_cast<std::size_t>(i)] == -100 || j >= c.vocab) {
          ASSERT_EQ(bits_of(logits.at(i, j)), 0u) << "(" << i << ", " << j << ") should be +0";
        }
      }
    }
    EXPECT_LE(scaled_error(logits.values(), ref.gradient, ref.gradient_scale), output_tolerance<T>());
  } else {
    EXPECT_EQ(widen(logits.values()), logits64) << "logits changed without write_gradient";
  }
  EXPECT_TRUE(logits.padding_is(sentinel)) << "ld padding written";
}

template <class T> void cross_entropy_sweep() {
  const index_t shapes[][3] = {{1, 1, 1}, {1, 7, 7}, {2, 16, 13}, {5, 31, 31}, {13, 100, 97}, {3, 4099, 4099}};
  for (const auto& shape : shapes) {
    for (int threads : {1, 2}) {
      const index_t pad = shape[0] % 2 == 1 ? 3 : 0;
      for (loss_reduction reduction : {loss_reduction::mean, loss_reduction::sum}) {
        check_cross_entropy<T>({shape[0], shape[1], shape[2], pad, reduction, true, true, 0.5f, threads});
        check_cross_entropy<T>({shape[0], shape[1], shape[2], pad, reduction, false, threads == 1, 1.0f, threads});
      }
      check_cross_entropy<T>({shape[0], shape[1], shape[2], pad, loss_reduction::mean, true, false, 1.0f, threads});
    }
  }
  // The GPT-2 padded vocabulary.
  for (int threads : {1, 2}) {
    check_cross_entropy<T>({64, 50304, 50257, 0, loss_reduction::mean, true, true, 1.0f, threads});
  }
}

TEST(CpuCrossEntropy, F32) { cross_entropy_sweep<float>(); }
TEST(CpuCrossEntropy, Bf16) { cross_entropy_sweep<bf16>(); }

// The gradient written over the logits against central differences of the float64 mean loss, with
// ignored rows and a padded vocabulary.
TEST(CpuCrossEntropy, GradientMatchesFiniteDifferences) {
  for (const auto& shape : {std::pair<index_t, index_t>{1, 1}, {1, 3}, {4, 5}, {6, 19}}) {
    const std::uint32_t seed = fresh_seed();
    const index_t rows = shape.first, vocab = shape.second, cols = vocab + 2;
    SCOPED_TRACE(testing::Message() << rows << " x " << vocab << " seed " << seed);
    std::mt19937 rng(seed);
    std::vector<float> logits = random_values<float>(rng, rows * cols, -3.0f, 3.0f);
    std::vector<double> logits64 = widen(logits);
    std::vector<std::int32_t> targets(static_cast<std::size_t>(rows));
    std::uniform_int_distribution<std::int32_t> klass(0, static_cast<std::int32_t>(vocab) - 1);
    for (std::size_t i = 0; i < targets.size(); ++i) {
      targets[i] = i == 2 ? -100 : klass(rng);
    }
    kern::ops::cross_entropy_params<float> p;
    p.logits = {logits.data(), rows, cols};
    p.targets = targets.data();
    p.vocab = vocab;
    kern::cpu::cross_entropy(kern::cpu::context(1), p);
    const std::vector<double> numeric = numeric_gradient(logits64, [&] {
      return cross_entropy_reference(logits64, rows, cols, vocab, targets, -100, loss_reduction::mean, 1.0).loss;
    });
    EXPECT_LE(relative_error(logits, numeric), 1e-5);
  }
}

// PyTorch's mean: over the rows that are not ignored. Hand-computed values.
TEST(CpuCrossEntropy, MeanOverCountedRowsAsPyTorch) {
  std::vector<float> logits = {0.0f, 0.0f, 0.0f, 0.0f,  // target 0: ln 2 (two classes, then padding)
                               5.0f, 1.0f, 2.0f, 9.0f,  // ignored
                               0.0f, 0.0f, 0.0f, 7.0f}; // target 1: ln 2
  std::vector<std::int32_t> targets = {0, -1, 1};
  std::vector<float> losses(3, nan_value);
  kern::ops::cross_entropy_params<float> p;
  p.logits = {logits.data(), 3, 4};
  p.targets = targets.data();
  p.losses = losses.data();
  p.vocab = 2;
  p.ignore_index = -1;
  const auto result = kern::cpu::cross_entropy(kern::cpu::context(1), p);
  EXPECT_EQ(result.counted_rows, 2);
  EXPECT_NEAR(result.loss, std::log(2.0), 1e-7);
  EXPECT_NEAR(losses[0], std::log(2.0f), 1e-7f);
  EXPECT_EQ(losses[1], 0.0f);
  const std::vector<float> gradient = {-0.25f, 0.25f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.25f, -0.25f, 0.0f, 0.0f};
  for (std::size_t k = 0; k < gradient.size(); ++k) {
    EXPECT_NEAR(logits[k], gradient[k], 1e-7f) << k;
  }
  // Every row ignored: a mean over no rows is NaN (as PyTorch), a sum is 0; no gradient anywhere.
  std::vector<std::int32_t> none = {-1, -1, -1};
  p.targets = none.data();
  const auto mean_of_none = kern::cpu::cross_entropy(kern::cpu::context(1), p);
  EXPECT_TRUE(std::isnan(mean_of_none.loss));
  EXPECT_EQ(mean_of_none.counted_rows, 0);
  p.reduction = loss_reduction::sum;
  EXPECT_EQ(kern::cpu::cross_entropy(kern::cpu::context(1), p).loss, 0.0);
  EXPECT_TRUE(std::all_of(logits.begin(), logits.end(), [](float v) { return v == 0.0f; }));
}

// Non-finite rows are not hidden: counted, and their loss reaches the reduced loss.
TEST(CpuCrossEntropy, NonFiniteRowsPropagate) {
  const float ninf = -inf_value;
  std::vector<float> logits = {ninf, ninf,      ninf,  // all -inf: NaN
                               1.0f, nan_value, 2.0f,  // NaN: NaN
                               ninf, 1.0f,      2.0f,  // the target at -inf: +inf
                               1.0f, 2.0f,      3.0f}; // finite
  std::vector<std::int32_t> targets = {0, 2, 0, 1};
  std::vector<float> losses(4, 0.0f);
  kern::ops::cross_entropy_params<float> p;
  p.logits = {logits.data(), 4, 3};
  p.targets = targets.data();
  p.losses = losses.data();
  p.reduction = loss_reduction::sum;
  const auto result = kern::cpu::cross_entropy(kern::cpu::context(1), p);
  EXPECT_EQ(result.nonfinite_rows, 3);
  EXPECT_TRUE(std::isnan(result.loss));
  EXPECT_TRUE(std::isnan(losses[0]));
  EXPECT_TRUE(std::isnan(losses[1]));
  EXPECT_EQ(losses[2], inf_value);
  EXPECT_TRUE(std::isfinite(losses[3]));
  EXPECT_TRUE(std::isnan(logits[4])); // the NaN row's gradient
  EXPECT_EQ(logits[6], -1.0f);        // softmax of -inf is 0: the target's gradient is 0 - 1
  EXPECT_TRUE(std::isfinite(logits[9]) && std::isfinite(logits[10]) && std::isfinite(logits[11]));
}

// Same bits on every call and for 1 and 2 threads: per-row work is thread-independent and the
// reduced loss is summed in row order.
template <class T> void check_ce_determinism() {
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(testing::Message() << kern::name(kern::dtype_of_v<T>) << " seed " << seed);
  std::mt19937 rng(seed);
  const index_t rows = 37, cols = 5003;
  const std::vector<T> logits = random_values<T>(rng, rows * cols, -5.0f, 5.0f);
  std::vector<std::int32_t> targets(static_cast<std::size_t>(rows));
  for (std::size_t i = 0; i < targets.size(); ++i) {
    targets[i] = static_cast<std::int32_t>((i * 7919) % 5000);
  }
  const auto run = [&](int threads, std::vector<T>& out) {
    out = logits;
    kern::ops::cross_entropy_params<T> p;
    p.logits = {out.data(), rows, cols};
    p.targets = targets.data();
    p.vocab = 5000;
    return kern::cpu::cross_entropy(kern::cpu::context(threads), p).loss;
  };
  std::vector<T> a, b, single;
  const double loss_a = run(2, a), loss_b = run(2, b), loss_single = run(1, single);
  EXPECT_EQ(std::bit_cast<std::uint64_t>(loss_a), std::bit_cast<std::uint64_t>(loss_b));
  EXPECT_EQ(std::bit_cast<std::uint64_t>(loss_a), std::bit_cast<std::uint64_t>(loss_single));
  for (std::size_t k = 0; k < a.size(); ++k) {
    ASSERT_EQ(bits_of(a[k]), bits_of(b[k])) << k;
    ASSERT_EQ(bits_of(a[k]), bits_of(single[k])) << k;
  }
}

TEST(CpuCrossEntropy, DeterministicAcrossCallsAndThreadCounts) {
  check_ce_determinism<float>();
  check_ce_determinism<bf16>();
}

TEST(CpuCrossEntropy, RejectsBadTargetsBeforeTouchingTheLogits) {
  std::vector<float> logits(40, 1.5f); // 4 x 10
  std::vector<std::int32_t> targets = {0, 9, -100, 7};
  const kern::cpu::context ctx(1);
  kern::ops::cross_entropy_params<float> p;
  p.logits = {logits.data(), 4, 10};
  p.targets = targets.data();
  p.vocab = 8;
  const auto error = [&] { return error_of([&] { kern::cpu::cross_entropy(ctx, p); }); };
  EXPECT_EQ(error(),
            "kern::cpu::cross_entropy: targets[1] = 9 is outside [0, vocab = 8) and is not ignore_index = -100");
  EXPECT_TRUE(std::all_of(logits.begin(), logits.end(), [](float v) { return v == 1.5f; })) << "logits touched";
  targets[1] = -5;
  EXPECT_NE(error().find("targets[1] = -5"), std::string::npos);
  targets[1] = 1;
  p.vocab = 11;
  EXPECT_EQ(error(), "kern::cpu::cross_entropy: vocab = 11 exceeds logits.cols = 10");
  p.vocab = -2;
  EXPECT_NE(error().find("vocab = -2"), std::string::npos);
  p.vocab = 8;
  p.targets = nullptr;
  EXPECT_EQ(error(), "kern::cpu::cross_entropy: targets is null but holds 4 elements");
  p.targets = targets.data();
  p.losses = logits.data() + 5;
  EXPECT_NE(error().find("logits overlaps losses"), std::string::npos);
  p.losses = nullptr;
  p.reduction = static_cast<loss_reduction>(9);
  EXPECT_EQ(error(), "kern::cpu::cross_entropy: reduction = 9 is not a loss_reduction");
  p.reduction = loss_reduction::mean;
  p.logits.ld = 5;
  EXPECT_NE(error().find("logits.ld = 5"), std::string::npos);
  p.logits.ld = 10;
  EXPECT_EQ(error(), "(no error)");
}

TEST(CpuSoftmax, RejectsBadArguments) {
  std::vector<float> x(64, 1.0f), y(64);
  const kern::cpu::context ctx(1);
  const auto forward = [&](kern::ops::softmax_forward_params<float> p) {
    return error_of([&] { kern::cpu::softmax_forward(ctx, p); });
  };
  EXPECT_EQ(forward({{x.data(), 8, 8}, {y.data(), 8, 7}}), "kern::cpu::softmax_forward: y is 8 x 7 but x is 8 x 8");
  EXPECT_NE(forward({{x.data(), 4, 8}, {x.data() + 3, 4, 8}}).find("y overlaps x"), std::string::npos);
  EXPECT_EQ(forward({{x.data(), 8, 8}, {x.data(), 8, 8}}), "(no error)"); // in place
  EXPECT_EQ(forward({{nullptr, 2, 8}, {y.data(), 2, 8}}),
            "kern::cpu::softmax_forward: x.data is null but holds 16 elements");
  const auto backward = [&](kern::ops::softmax_backward_params<float> p) {
    return error_of([&] { kern::cpu::softmax_backward(ctx, p); });
  };
  EXPECT_EQ(backward({{x.data(), 4, 8}, {y.data(), 4, 8}, {y.data(), 4, 8}}), "(no error)"); // dx over dy
  EXPECT_NE(backward({{x.data(), 4, 8}, {y.data(), 4, 8}, {x.data(), 4, 8}}).find("dx overlaps y"), std::string::npos);
  EXPECT_EQ(backward({{x.data(), 4, 8}, {y.data(), 3, 8}, {y.data() + 32, 4, 8}}),
            "kern::cpu::softmax_backward: dy is 3 x 8 but y is 4 x 8");
}

} // namespace
