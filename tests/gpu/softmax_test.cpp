// kern::gpu::softmax_forward / softmax_backward / cross_entropy against the float64 reference, in
// every GPU compilation mode (the CPU execution mode at warp size 32 and 64, CUDA, HIP).
//
// The cases of the CPU test (shapes with 1, primes, non-multiples of the vector width, strided rows,
// the GPT-2 vocabulary: 50304 columns, 50257 classes), in f32, bf16 and f16, the cases of each
// shape spread over three memory layouts: the CPU test's padding, rows padded to a multiple of 16
// bytes (16-byte access where the row length allows it), and a buffer one element off 16-byte
// alignment (single-value access).
// Rows longer than a block holds take several tiles. Outputs start as NaN; the ld padding of inputs
// holds NaN and that of outputs a sentinel. Backward passes also against central finite differences
// of the float64 forward. Cross-entropy: PyTorch's mean, ignored rows, non-finite rows, targets
// outside the vocabulary (reported in the device-side result, never read out of bounds), the
// reduced loss computed on the device without a host synchronization; then bad arguments, NaN
// propagation and determinism.
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "kern/gpu/softmax.hpp"
#include "support/gpu_test.hpp"
#include "support/kernel_test.hpp"
#include "support/softmax_reference.hpp"

namespace {

using kern::bf16;
using kern::f16;
using kern::index_t;
using kern::ops::loss_reduction;
using namespace kern::test;
namespace gpu = kern::gpu;

constexpr float inf_value = std::numeric_limits<float>::infinity();

// ---------------------------------------------------------------------------------------------
// Softmax forward and backward.

struct softmax_case {
  index_t rows, cols, pad;
  float scale;
  bool in_place;
  memory_layout memory;
};

template <class T> void check_softmax_forward(const softmax_case& c) {
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(testing::Message() << "softmax " << c.rows << " x " << c.cols << " " << name(c.memory) << " scale "
                                  << c.scale << " in place " << c.in_place << " " << type_name<T>() << " seed "
                                  << seed);
  std::mt19937 rng(seed);
  const index_t ld = leading_dimension<T>(c.memory, c.cols, c.pad);
  const index_t offset = c.memory == memory_layout::misaligned ? 1 : 0;
  host_matrix<T> x(c.rows, c.cols, ld, c.in_place ? sentinel : nan_value, 0.0f);
  x.fill_random(rng, -4.0f, 4.0f);
  const std::vector<double> ref = softmax_reference(widen(x.values()), c.rows, c.cols, c.scale);
  host_matrix<T> y(c.rows, c.cols, ld, sentinel, nan_value);
  const device_matrix<T> x_d(x, offset), y_d(y, offset);
  const device_matrix<T>& out_d = c.in_place ? x_d : y_d;
  gpu::softmax_forward(kern::ops::softmax_forward_params<T>{x_d.cview(), out_d.view(), c.scale}, nullptr);
  y = out_d.read();
  EXPECT_LE(relative_error(y.values(), ref), output_tolerance<T>());
  EXPECT_TRUE(y.padding_is(sentinel)) << "padding written";
}

template <class T> void check_softmax_backward(const softmax_case& c) {
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(testing::Message() << "softmax backward " << c.rows << " x " << c.cols << " " << name(c.memory)
                                  << " in place " << c.in_place << " " << type_name<T>() << " seed " << seed);
  std::mt19937 rng(seed);
  const index_t ld = leading_dimension<T>(c.memory, c.cols, c.pad);
  const index_t offset = c.memory == memory_layout::misaligned ? 1 : 0;
  softmax_backward_inputs<T> in(rng, c.rows, c.cols, ld, c.in_place);
  host_matrix<T> dx(c.rows, c.cols, ld, sentinel, nan_value);
  const device_matrix<T> y_d(in.y, offset), dy_d(in.dy, offset), dx_d(dx, offset);
  const device_matrix<T>& out_d = c.in_place ? dy_d : dx_d;
  gpu::softmax_backward(kern::ops::softmax_backward_params<T>{y_d.cview(), dy_d.cview(), out_d.view()}, nullptr);
  dx = out_d.read();
  EXPECT_LE(relative_error(dx.values(), in.dx), gradient_tolerance<T>());
  EXPECT_TRUE(dx.padding_is(sentinel)) << "padding written";
}

template <class T> void softmax_sweep() {
  const index_t shapes[][2] = {{1, 1}, {1, 7}, {3, 16}, {5, 31}, {7, 100}, {4, 1000}, {2, 4099}, {40, 257}};
  layout_cycle layouts;
  for (const auto& shape : shapes) {
    for (bool in_place : {false, true}) {
      const index_t pad = shape[1] % 2 == 1 ? 3 : 0;
      for (float scale : {1.0f, 0.125f, -2.0f}) {
        check_softmax_forward<T>({shape[0], shape[1], pad, scale, in_place, layouts.next()});
      }
      check_softmax_backward<T>({shape[0], shape[1], pad, 1.0f, in_place, layouts.next()});
    }
  }
}

TEST(GpuSoftmax, F32) {
  KERN_REQUIRE_GPU();
  softmax_sweep<float>();
}
TEST(GpuSoftmax, Bf16) {
  KERN_REQUIRE_GPU();
  softmax_sweep<bf16>();
}
TEST(GpuSoftmax, F16) {
  KERN_REQUIRE_GPU();
  softmax_sweep<f16>();
}

// Rows beyond a block's registers (above 8192 f32 or 16384 16-bit values with 16-byte access, 8192
// with single values) in several tiles: a running maximum and sum, then a second read.
TEST(GpuSoftmax, LongRows) {
  KERN_REQUIRE_GPU();
  for (bool in_place : {false, true}) {
    check_softmax_forward<float>({2, 20000, 0, 0.5f, in_place, memory_layout::vector_rows});
    check_softmax_forward<bf16>({1, 50304, 0, 1.0f, in_place, memory_layout::vector_rows});
    check_softmax_forward<f16>({2, 10007, 0, -1.0f, in_place, memory_layout::misaligned});
    check_softmax_backward<float>({2, 20000, 0, 1.0f, in_place, memory_layout::vector_rows});
    check_softmax_backward<bf16>({2, 20011, 0, 1.0f, in_place, memory_layout::misaligned});
  }
}

// d/dx of L = sum(w * softmax(x)): the kernels' forward then backward (dy = w) against central
// differences of the float64 forward.
TEST(GpuSoftmax, BackwardMatchesFiniteDifferences) {
  KERN_REQUIRE_GPU();
  for (const auto& shape : {std::pair<index_t, index_t>{1, 1}, {1, 2}, {3, 5}, {2, 19}, {4, 40}}) {
    const std::uint32_t seed = fresh_seed();
    const index_t rows = shape.first, cols = shape.second, n = rows * cols;
    SCOPED_TRACE(testing::Message() << rows << " x " << cols << " seed " << seed);
    std::mt19937 rng(seed);
    const std::vector<float> x = random_values<float>(rng, n, -3.0f, 3.0f);
    const std::vector<float> w = random_values<float>(rng, n);
    const auto x_d = to_device(x), w_d = to_device(w);
    gpu::device_buffer<float> y_d(x.size()), dx_d(x.size());
    gpu::softmax_forward(kern::ops::softmax_forward_params<float>{{x_d.data(), rows, cols}, {y_d.data(), rows, cols}},
                         nullptr);
    gpu::softmax_backward(kern::ops::softmax_backward_params<float>{{y_d.data(), rows, cols},
                                                                    {w_d.data(), rows, cols},
                                                                    {dx_d.data(), rows, cols}},
                          nullptr);
    const std::vector<float> y = to_host(y_d), dx = to_host(dx_d);
    expect_softmax_gradient_matches_finite_differences(x, w, y, dx, rows, cols);
  }
}

TEST(GpuSoftmax, NonFiniteInputs) {
  KERN_REQUIRE_GPU();
  const float ninf = -inf_value;
  // Row 0: some -inf (masked) entries get 0; row 1: NaN spreads over the row; row 2: all -inf is
  // 0/0 = NaN (as PyTorch); row 3: finite.
  const std::vector<float> x = {0.0f, ninf, 1.0f, ninf, 0.5f, nan_value, 0.5f, 0.5f,
                                ninf, ninf, ninf, ninf, 1.f,  2.f,       3.f,  4.f};
  const auto x_d = to_device(x), y_d = to_device(std::vector<float>(x.size(), sentinel));
  gpu::softmax_forward(kern::ops::softmax_forward_params<float>{{x_d.data(), 4, 4}, {y_d.data(), 4, 4}}, nullptr);
  const std::vector<float> y = to_host(y_d);
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
  std::vector<float> dy(x.size(), 0.5f);
  dy[13] = nan_value;
  const auto dy_d = to_device(dy), quarter_d = to_device(std::vector<float>(x.size(), 0.25f));
  gpu::device_buffer<float> dx_d(x.size());
  gpu::softmax_backward(
      kern::ops::softmax_backward_params<float>{{quarter_d.data(), 4, 4}, {dy_d.data(), 4, 4}, {dx_d.data(), 4, 4}},
      nullptr);
  const std::vector<float> dx = to_host(dx_d);
  EXPECT_TRUE(std::isfinite(dx[0]));
  EXPECT_TRUE(std::isnan(dx[12]));
}

// ---------------------------------------------------------------------------------------------
// Cross-entropy.

// The device result, copied back.
gpu::cross_entropy_device_result result_of(const gpu::device_buffer<gpu::cross_entropy_device_result>& result) {
  return to_host(result)[0];
}

// Runs cross_entropy with a workspace of the size it asks for; returns its result.
template <class T> gpu::cross_entropy_device_result run_cross_entropy(const kern::ops::cross_entropy_params<T>& p) {
  gpu::device_buffer<gpu::cross_entropy_device_result> result(1);
  gpu::device_buffer<std::byte> workspace(gpu::cross_entropy_workspace_bytes(p));
  gpu::cross_entropy(p, result.data(), workspace.data(), nullptr);
  return result_of(result);
}

struct ce_case {
  index_t rows, cols, vocab, pad;
  loss_reduction reduction;
  bool write_gradient, with_losses;
  float grad_scale;
  memory_layout memory;
};

template <class T> void check_cross_entropy(const ce_case& c) {
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(testing::Message() << "cross_entropy " << c.rows << " x " << c.cols << " vocab " << c.vocab << " "
                                  << name(c.memory) << (c.reduction == loss_reduction::mean ? " mean" : " sum")
                                  << " gradient " << c.write_gradient << " losses " << c.with_losses << " scale "
                                  << c.grad_scale << " " << type_name<T>() << " seed " << seed);
  std::mt19937 rng(seed);
  const index_t ld = leading_dimension<T>(c.memory, c.cols, c.pad);
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
  const device_matrix<T> logits_d(logits, c.memory == memory_layout::misaligned ? 1 : 0);
  const auto targets_d = to_device(targets);
  const auto losses_d = to_device(std::vector<float>(static_cast<std::size_t>(c.rows), nan_value));
  kern::ops::cross_entropy_params<T> p;
  p.logits = logits_d.view();
  p.targets = targets_d.data();
  p.losses = c.with_losses ? losses_d.data() : nullptr;
  p.vocab = c.vocab == c.cols ? -1 : c.vocab;
  p.reduction = c.reduction;
  p.write_gradient = c.write_gradient;
  p.grad_scale = c.grad_scale;
  const gpu::cross_entropy_device_result result = run_cross_entropy(p);
  logits = logits_d.read();
  const std::vector<float> losses = to_host(losses_d);

  const ce_reference ref =
      cross_entropy_reference(logits64, c.rows, c.cols, c.vocab, targets, -100, c.reduction, c.grad_scale);
  EXPECT_EQ(result.counted_rows, ref.counted);
  EXPECT_EQ(result.nonfinite_rows, 0);
  EXPECT_EQ(result.bad_target_rows, 0);
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
  layout_cycle layouts;
  for (const auto& shape : shapes) {
    const index_t pad = shape[0] % 2 == 1 ? 3 : 0;
    for (loss_reduction reduction : {loss_reduction::mean, loss_reduction::sum}) {
      check_cross_entropy<T>({shape[0], shape[1], shape[2], pad, reduction, true, true, 0.5f, layouts.next()});
      check_cross_entropy<T>({shape[0], shape[1], shape[2], pad, reduction, false, true, 1.0f, layouts.next()});
    }
    check_cross_entropy<T>(
        {shape[0], shape[1], shape[2], pad, loss_reduction::mean, true, false, 1.0f, layouts.next()});
  }
}

TEST(GpuCrossEntropy, F32) {
  KERN_REQUIRE_GPU();
  cross_entropy_sweep<float>();
}
TEST(GpuCrossEntropy, Bf16) {
  KERN_REQUIRE_GPU();
  cross_entropy_sweep<bf16>();
}
TEST(GpuCrossEntropy, F16) {
  KERN_REQUIRE_GPU();
  cross_entropy_sweep<f16>();
}

// The GPT-2 padded vocabulary (16-byte access over the padded rows), and rows of several tiles
// with single-value access.
TEST(GpuCrossEntropy, Gpt2Vocabulary) {
  KERN_REQUIRE_GPU();
  check_cross_entropy<float>({64, 50304, 50257, 0, loss_reduction::mean, true, true, 1.0f, memory_layout::vector_rows});
  check_cross_entropy<bf16>({64, 50304, 50257, 0, loss_reduction::mean, true, false, 1.0f, memory_layout::vector_rows});
  check_cross_entropy<f16>({7, 50304, 50257, 0, loss_reduction::sum, false, true, 1.0f, memory_layout::misaligned});
  check_cross_entropy<bf16>({7, 20011, 20011, 0, loss_reduction::mean, true, true, 0.5f, memory_layout::misaligned});
}

// The gradient written over the logits against central differences of the float64 mean loss, with
// ignored rows and a padded vocabulary.
TEST(GpuCrossEntropy, GradientMatchesFiniteDifferences) {
  KERN_REQUIRE_GPU();
  for (const auto& shape : {std::pair<index_t, index_t>{1, 1}, {1, 3}, {4, 5}, {6, 19}}) {
    const std::uint32_t seed = fresh_seed();
    const index_t rows = shape.first, vocab = shape.second, cols = vocab + 2;
    SCOPED_TRACE(testing::Message() << rows << " x " << vocab << " seed " << seed);
    std::mt19937 rng(seed);
    const std::vector<float> logits = random_values<float>(rng, rows * cols, -3.0f, 3.0f);
    std::vector<double> logits64 = widen(logits);
    std::vector<std::int32_t> targets(static_cast<std::size_t>(rows));
    std::uniform_int_distribution<std::int32_t> klass(0, static_cast<std::int32_t>(vocab) - 1);
    for (std::size_t i = 0; i < targets.size(); ++i) {
      targets[i] = i == 2 ? -100 : klass(rng);
    }
    const auto logits_d = to_device(logits);
    const auto targets_d = to_device(targets);
    kern::ops::cross_entropy_params<float> p;
    p.logits = {logits_d.data(), rows, cols};
    p.targets = targets_d.data();
    p.vocab = vocab;
    run_cross_entropy(p);
    const std::vector<double> numeric = numeric_gradient(logits64, [&] {
      return cross_entropy_reference(logits64, rows, cols, vocab, targets, -100, loss_reduction::mean, 1.0).loss;
    });
    EXPECT_LE(relative_error(to_host(logits_d), numeric), 1e-5);
  }
}

// PyTorch's mean: over the rows that are not ignored. Hand-computed values.
TEST(GpuCrossEntropy, MeanOverCountedRowsAsPyTorch) {
  KERN_REQUIRE_GPU();
  const std::vector<float> logits = {0.0f, 0.0f, 0.0f, 0.0f,  // target 0: ln 2 (two classes, then padding)
                                     5.0f, 1.0f, 2.0f, 9.0f,  // ignored
                                     0.0f, 0.0f, 0.0f, 7.0f}; // target 1: ln 2
  const auto logits_d = to_device(logits), losses_d = to_device(std::vector<float>(3, nan_value));
  const auto targets_d = to_device(std::vector<std::int32_t>{0, -1, 1});
  kern::ops::cross_entropy_params<float> p;
  p.logits = {logits_d.data(), 3, 4};
  p.targets = targets_d.data();
  p.losses = losses_d.data();
  p.vocab = 2;
  p.ignore_index = -1;
  const auto result = run_cross_entropy(p);
  EXPECT_EQ(result.counted_rows, 2);
  EXPECT_NEAR(result.loss, std::log(2.0), 1e-7);
  const std::vector<float> losses = to_host(losses_d), out = to_host(logits_d);
  EXPECT_NEAR(losses[0], std::log(2.0f), 1e-7f);
  EXPECT_EQ(losses[1], 0.0f);
  const std::vector<float> gradient = {-0.25f, 0.25f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.25f, -0.25f, 0.0f, 0.0f};
  for (std::size_t k = 0; k < gradient.size(); ++k) {
    EXPECT_NEAR(out[k], gradient[k], 1e-7f) << k;
  }
  // Every row ignored: a mean over no rows is NaN (as PyTorch), a sum is 0; no gradient anywhere.
  const auto none_d = to_device(std::vector<std::int32_t>{-1, -1, -1});
  p.targets = none_d.data();
  const auto mean_of_none = run_cross_entropy(p);
  EXPECT_TRUE(std::isnan(mean_of_none.loss));
  EXPECT_EQ(mean_of_none.counted_rows, 0);
  p.reduction = loss_reduction::sum;
  EXPECT_EQ(run_cross_entropy(p).loss, 0.0);
  const std::vector<float> zeroed = to_host(logits_d);
  EXPECT_TRUE(std::all_of(zeroed.begin(), zeroed.end(), [](float v) { return v == 0.0f; }));
}

// Non-finite rows are not hidden: counted, and their loss reaches the reduced loss.
TEST(GpuCrossEntropy, NonFiniteRowsPropagate) {
  KERN_REQUIRE_GPU();
  const float ninf = -inf_value;
  const std::vector<float> logits = {ninf, ninf,      ninf,  // all -inf: NaN
                                     1.0f, nan_value, 2.0f,  // NaN: NaN
                                     ninf, 1.0f,      2.0f,  // the target at -inf: +inf
                                     1.0f, 2.0f,      3.0f}; // finite
  const auto logits_d = to_device(logits), losses_d = to_device(std::vector<float>(4, 0.0f));
  const auto targets_d = to_device(std::vector<std::int32_t>{0, 2, 0, 1});
  kern::ops::cross_entropy_params<float> p;
  p.logits = {logits_d.data(), 4, 3};
  p.targets = targets_d.data();
  p.losses = losses_d.data();
  p.reduction = loss_reduction::sum;
  const auto result = run_cross_entropy(p);
  EXPECT_EQ(result.nonfinite_rows, 3);
  EXPECT_EQ(result.bad_target_rows, 0);
  EXPECT_TRUE(std::isnan(result.loss));
  const std::vector<float> losses = to_host(losses_d), gradient = to_host(logits_d);
  EXPECT_TRUE(std::isnan(losses[0]));
  EXPECT_TRUE(std::isnan(losses[1]));
  EXPECT_EQ(losses[2], inf_value);
  EXPECT_TRUE(std::isfinite(losses[3]));
  EXPECT_TRUE(std::isnan(gradient[4])); // the NaN row's gradient
  EXPECT_EQ(gradient[6], -1.0f);        // softmax of -inf is 0: the target's gradient is 0 - 1
  EXPECT_TRUE(std::isfinite(gradient[9]) && std::isfinite(gradient[10]) && std::isfinite(gradient[11]));
}

// Targets the host cannot check (they live in device memory): a target outside [0, vocab) gives
// its row a NaN loss and a NaN gradient over the classes, is counted in the result, and is never
// used as an index. The other rows are as usual. Short rows and rows of several tiles.
TEST(GpuCrossEntropy, BadTargetsAreReportedNotRead) {
  KERN_REQUIRE_GPU();
  for (const auto& [vocab, cols] : {std::pair<index_t, index_t>{8, 10}, {20000, 20008}}) {
    SCOPED_TRACE(testing::Message() << "vocab " << vocab);
    const index_t rows = 5;
    std::vector<float> logits(static_cast<std::size_t>(rows * cols), 1.5f);
    const auto logits_d = to_device(logits), losses_d = to_device(std::vector<float>(rows, 0.0f));
    const std::vector<std::int32_t> targets = {0, static_cast<std::int32_t>(vocab), -100, -5,
                                               static_cast<std::int32_t>(cols) + 1000000};
    const auto targets_d = to_device(targets);
    kern::ops::cross_entropy_params<float> p;
    p.logits = {logits_d.data(), rows, cols};
    p.targets = targets_d.data();
    p.losses = losses_d.data();
    p.vocab = vocab;
    const auto result = run_cross_entropy(p);
    EXPECT_EQ(result.counted_rows, 4);
    EXPECT_EQ(result.bad_target_rows, 3);
    EXPECT_EQ(result.nonfinite_rows, 3);
    EXPECT_TRUE(std::isnan(result.loss));
    const std::vector<float> losses = to_host(losses_d), gradient = to_host(logits_d);
    EXPECT_NEAR(losses[0], std::log(static_cast<double>(vocab)), 1e-5);
    EXPECT_EQ(losses[2], 0.0f);
    for (index_t i : {1, 3, 4}) {
      EXPECT_TRUE(std::isnan(losses[static_cast<std::size_t>(i)])) << "row " << i;
      for (index_t j = 0; j < cols; ++j) {
        const float g = gradient[static_cast<std::size_t>(i * cols + j)];
        ASSERT_TRUE(j < vocab ? std::isnan(g) : g == 0.0f) << "(" << i << ", " << j << ")";
      }
    }
    EXPECT_NEAR(gradient[0], (1.0 / static_cast<double>(vocab) - 1.0) / 4.0, 1e-6); // mean over 4 counted rows
  }
}

// Same bits on every call: per-row work is independent of scheduling and the reduced loss is
// summed in a fixed order.
template <class T> void check_ce_determinism() {
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(testing::Message() << type_name<T>() << " seed " << seed);
  std::mt19937 rng(seed);
  const index_t rows = 7, cols = 5003;
  const std::vector<T> logits = random_values<T>(rng, rows * cols, -5.0f, 5.0f);
  std::vector<std::int32_t> targets(static_cast<std::size_t>(rows));
  for (std::size_t i = 0; i < targets.size(); ++i) {
    targets[i] = static_cast<std::int32_t>((i * 7919) % 5000);
  }
  const auto targets_d = to_device(targets);
  const auto run = [&](std::vector<T>& out) {
    const auto logits_d = to_device(logits);
    kern::ops::cross_entropy_params<T> p;
    p.logits = {logits_d.data(), rows, cols};
    p.targets = targets_d.data();
    p.vocab = 5000;
    const double loss = run_cross_entropy(p).loss;
    out = to_host(logits_d);
    return loss;
  };
  std::vector<T> a, b;
  const double loss_a = run(a), loss_b = run(b);
  EXPECT_EQ(std::bit_cast<std::uint64_t>(loss_a), std::bit_cast<std::uint64_t>(loss_b));
  EXPECT_TRUE(same_bits(a, b));
}

TEST(GpuCrossEntropy, DeterministicAcrossCalls) {
  KERN_REQUIRE_GPU();
  check_ce_determinism<float>();
  check_ce_determinism<bf16>();
}

TEST(GpuCrossEntropy, RejectsBadArguments) {
  KERN_REQUIRE_GPU();
  const auto logits_d = to_device(std::vector<float>(40, 1.5f)); // 4 x 10
  const auto targets_d = to_device(std::vector<std::int32_t>{0, 9, -100, 7});
  gpu::device_buffer<gpu::cross_entropy_device_result> result(1);
  gpu::device_buffer<std::byte> workspace(64);
  const std::string op = KERN_GPU_OP("cross_entropy");
  kern::ops::cross_entropy_params<float> p;
  p.logits = {logits_d.data(), 4, 10};
  p.targets = targets_d.data();
  p.vocab = 8;
  gpu::cross_entropy_device_result* result_pointer = result.data();
  void* workspace_pointer = workspace.data();
  const auto error = [&] {
    return error_of([&] { gpu::cross_entropy(p, result_pointer, workspace_pointer, nullptr); });
  };
  p.vocab = 11;
  EXPECT_EQ(error(), op + ": vocab = 11 exceeds logits.cols = 10");
  p.vocab = -2;
  EXPECT_NE(error().find("vocab = -2"), std::string::npos);
  p.vocab = 8;
  p.targets = nullptr;
  EXPECT_EQ(error(), op + ": targets is null but holds 4 elements");
  p.targets = targets_d.data();
  p.losses = logits_d.data() + 5;
  EXPECT_NE(error().find("logits overlaps losses"), std::string::npos);
  p.losses = nullptr;
  p.reduction = static_cast<loss_reduction>(9);
  EXPECT_EQ(error(), op + ": reduction = 9 is not a loss_reduction");
  p.reduction = loss_reduction::mean;
  p.logits.ld = 5;
  EXPECT_NE(error().find("logits.ld = 5"), std::string::npos);
  p.logits.ld = 10;
  result_pointer = nullptr;
  EXPECT_EQ(error(), op + ": result is null");
  result_pointer = result.data();
  workspace_pointer = nullptr;
  EXPECT_EQ(error(), op + ": workspace is null but 16 bytes are needed (cross_entropy_workspace_bytes)");
  workspace_pointer = workspace.data();
  // Target values are not checked on the host (they are device memory): targets[1] = 9 is past
  // vocab = 8, which the result reports.
  EXPECT_EQ(error(), "(no error)");
  const auto reported = result_of(result);
  EXPECT_EQ(reported.bad_target_rows, 1);
  EXPECT_EQ(reported.counted_rows, 3);
}

TEST(GpuSoftmax, RejectsBadArguments) {
  KERN_REQUIRE_GPU();
  const auto x = to_device(std::vector<float>(64, 1.0f)), y = to_device(std::vector<float>(64, 0.0f));
  const std::string forward_op = KERN_GPU_OP("softmax_forward"), backward_op = KERN_GPU_OP("softmax_backward");
  const auto forward = [&](kern::ops::softmax_forward_params<float> p) {
    return error_of([&] { gpu::softmax_forward(p, nullptr); });
  };
  EXPECT_EQ(forward({{x.data(), 8, 8}, {y.data(), 8, 7}}), forward_op + ": y is 8 x 7 but x is 8 x 8");
  EXPECT_NE(forward({{x.data(), 4, 8}, {x.data() + 3, 4, 8}}).find("y overlaps x"), std::string::npos);
  EXPECT_EQ(forward({{x.data(), 8, 8}, {x.data(), 8, 8}}), "(no error)"); // in place
  EXPECT_EQ(forward({{nullptr, 2, 8}, {y.data(), 2, 8}}), forward_op + ": x.data is null but holds 16 elements");
  EXPECT_EQ(forward({{nullptr, 0, 8}, {nullptr, 0, 8}}), "(no error)"); // empty: nothing to launch
  const auto backward = [&](kern::ops::softmax_backward_params<float> p) {
    return error_of([&] { gpu::softmax_backward(p, nullptr); });
  };
  EXPECT_EQ(backward({{x.data(), 4, 8}, {y.data(), 4, 8}, {y.data(), 4, 8}}), "(no error)"); // dx over dy
  EXPECT_NE(backward({{x.data(), 4, 8}, {y.data(), 4, 8}, {x.data(), 4, 8}}).find("dx overlaps y"), std::string::npos);
  EXPECT_EQ(backward({{x.data(), 4, 8}, {y.data(), 3, 8}, {y.data() + 32, 4, 8}}),
            backward_op + ": dy is 3 x 8 but y is 4 x 8");
}

} // namespace
