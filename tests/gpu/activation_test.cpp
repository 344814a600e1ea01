// kern::gpu activations (GELU, SiLU, SwiGLU) and bias ops against the float64 references of the CPU
// tests (support/activation_reference.hpp), with the same tolerances.
//
// Every case runs in three layouts: dense, padded rows whose leading dimension keeps 16-byte groups
// (the vector path, with tails inside the rows), and a leading dimension and pointer one element off
// (the scalar path; shapes of up to 12000 values, as every GPU thread is a fiber in the CPU
// execution mode). Input padding holds NaN, output padding a sentinel that must survive, outputs
// start as NaN; fresh seed per case, in the trace (KERN_TEST_SEED replays).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include <gtest/gtest.h>

#include "kern/gpu/activation.hpp"
#include "support/activation_reference.hpp"
#include "support/gpu_test.hpp"

namespace {

using kern::bf16;
using kern::f16;
using kern::index_t;
using kern::matrix_view;
using kern::ops::activation;
using namespace kern::test;

enum class layout : std::uint8_t { dense, padded, misaligned };
constexpr layout layouts[] = {layout::dense, layout::padded, layout::misaligned};

const char* layout_name(layout l) {
  return l == layout::dense ? "dense" : l == layout::padded ? "padded" : "misaligned";
}
// padded: ld past cols, a multiple of 8 elements (16-byte groups for every storage type).
index_t ld_of(layout l, index_t cols) {
  return l == layout::dense ? cols : l == layout::padded ? (cols / 8 + 1) * 8 : cols + 5;
}
index_t shift_of(layout l) { return l == layout::misaligned ? 1 : 0; }

// Below 2^-14 f16 rounds to a fixed spacing of 2^-24 (subnormals), so an f16 output there is
// measured against 2^-14 rather than against itself; the other types keep their relative rounding.
template <class T> std::vector<double> storage_scale(std::vector<double> scale) {
  const double floor = kern::dtype_of_v<T> == kern::dtype::f16 ? 0x1p-14 : 0.0;
  for (double& s : scale) {
    s = std::max(std::abs(s), floor);
  }
  return scale;
}

struct shape {
  index_t rows, cols;
};
constexpr shape shapes[] = {{1, 1}, {1, 17}, {3, 16}, {7, 33}, {13, 131}, {64, 500}, {2, 5003}};

// ---------------------------------------------------------------------------------------------
// activation_forward / activation_backward

template <class T> void check_activation(activation kind, shape s, layout l, bool in_place) {
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(testing::Message() << kind_name(kind) << " " << type_name<T>() << " " << s.rows << "x" << s.cols << " "
                                  << layout_name(l) << (in_place ? " in place" : "") << " seed " << seed);
  std::mt19937 rng(seed);
  const index_t ld = ld_of(l, s.cols), shift = shift_of(l);
  const host_matrix<T> x = random_matrix<T>(rng, s.rows, s.cols, ld, -6.0f, 6.0f);
  const host_matrix<T> dy = random_matrix<T>(rng, s.rows, s.cols, ld, -1.0f, 1.0f);
  const std::vector<double> xs = widen(x.values()), dys = widen(dy.values());
  std::vector<double> y_ref(xs.size()), dx_ref(xs.size()), dx_scale(xs.size());
  for (std::size_t k = 0; k < xs.size(); ++k) {
    y_ref[k] = activation_ref(kind, xs[k]);
    dx_ref[k] = activation_derivative_ref(kind, xs[k]) * dys[k];
    dx_scale[k] = activation_derivative_scale(kind, xs[k]) * std::abs(dys[k]);
  }
  const device_matrix<T> d_x(x, shift), d_dy(dy, shift);
  using forward = kern::ops::activation_forward_params<T>;
  using backward = kern::ops::activation_backward_params<T>;
  if (in_place) {
    const device_matrix<T> y(x, shift);
    kern::gpu::activation_forward(forward{kind, y.cview(), y.view()}, nullptr);
    EXPECT_LT(scaled_error(y.read().values(), y_ref, storage_scale<T>(y_ref)), output_tolerance<T>());
    kern::gpu::activation_backward(backward{kind, d_x.cview(), d_dy.cview(), d_dy.view()}, nullptr);
    EXPECT_LT(scaled_error(d_dy.read().values(), dx_ref, storage_scale<T>(dx_scale)), output_tolerance<T>());
  } else {
    const device_matrix<T> y(poisoned_matrix<T>(s.rows, s.cols, ld), shift);
    const device_matrix<T> dx(poisoned_matrix<T>(s.rows, s.cols, ld), shift);
    kern::gpu::activation_forward(forward{kind, d_x.cview(), y.view()}, nullptr);
    kern::gpu::activation_backward(backward{kind, d_x.cview(), d_dy.cview(), dx.view()}, nullptr);
    const host_matrix<T> y_out = y.read(), dx_out = dx.read();
    EXPECT_LT(scaled_error(y_out.values(), y_ref, storage_scale<T>(y_ref)), output_tolerance<T>());
    EXPECT_TRUE(y_out.padding_is(sentinel)) << "wrote into y's padding";
    EXPECT_LT(scaled_error(dx_out.values(), dx_ref, storage_scale<T>(dx_scale)), output_tolerance<T>());
    EXPECT_TRUE(dx_out.padding_is(sentinel)) << "wrote into dx's padding";
  }
}

// Whether a case goes a value per thread: misaligned, or a row length that is not a whole number of
// 16-byte groups (dense rows; the up half of a fused gate | up matrix).
template <class T> bool scalar_path(layout l, index_t cols) {
  return l == layout::misaligned || (l != layout::padded && cols % kern::gpu::vector16<T>::size != 0);
}
// In the CPU execution mode every GPU thread is a fiber: the scalar path takes the smaller shapes.
template <class T> bool runs_in(layout l, shape s) { return !scalar_path<T>(l, s.cols) || s.rows * s.cols <= 12000; }

template <class T> void check_activation_shapes() {
  for (activation kind : {activation::gelu_tanh, activation::silu}) {
    for (const shape& s : shapes) {
      for (layout l : layouts) {
        if (runs_in<T>(l, s)) {
          check_activation<T>(kind, s, l, false);
        }
      }
      check_activation<T>(kind, s, layout::padded, true);
      if (runs_in<T>(layout::misaligned, s)) {
        check_activation<T>(kind, s, layout::misaligned, true);
      }
    }
  }
}

TEST(GpuActivation, MatchesReferenceF32) {
  KERN_REQUIRE_GPU();
  check_activation_shapes<float>();
}
TEST(GpuActivation, MatchesReferenceBf16) {
  KERN_REQUIRE_GPU();
  check_activation_shapes<bf16>();
}
TEST(GpuActivation, MatchesReferenceF16) {
  KERN_REQUIRE_GPU();
  check_activation_shapes<f16>();
}

TEST(GpuActivation, BackwardMatchesFiniteDifferences) {
  KERN_REQUIRE_GPU();
  for (activation kind : {activation::gelu_tanh, activation::silu}) {
    const std::uint32_t seed = fresh_seed();
    SCOPED_TRACE(testing::Message() << kind_name(kind) << " seed " << seed);
    std::mt19937 rng(seed);
    const index_t rows = 3, cols = 19;
    const host_matrix<float> x = random_matrix<float>(rng, rows, cols, cols, -5.0f, 5.0f);
    const host_matrix<float> w = random_matrix<float>(rng, rows, cols, cols, -1.0f, 1.0f);
    const std::vector<double> ws = widen(w.values()), xs = widen(x.values());
    const auto loss = [&](const std::vector<double>& in) {
      double l = 0.0;
      for (std::size_t k = 0; k < in.size(); ++k) {
        l += ws[k] * activation_ref(kind, in[k]);
      }
      return l;
    };
    std::vector<double> numeric(xs.size());
    for (std::size_t k = 0; k < xs.size(); ++k) {
      numeric[k] = central_difference(loss, xs, k);
    }
    const device_matrix<float> d_x(x, 0), d_w(w, 0), dx(poisoned_matrix<float>(rows, cols, cols), 0);
    kern::gpu::activation_backward(
        kern::ops::activation_backward_params<float>{kind, d_x.cview(), d_w.cview(), dx.view()}, nullptr);
    EXPECT_LT(relative_error(dx.read().values(), numeric), 1e-6);
  }
}

// Finite inputs of any size give finite, accurate values and derivatives (no exp overflow, no
// cancellation in 1 - sigmoid, no Inf * 0).
TEST(GpuActivation, LargeInputsStayAccurate) {
  KERN_REQUIRE_GPU();
  const std::vector<float> inputs = {-3e38f, -1e20f, -1e10f, -1e3f, -90.0f, -30.0f, -9.0f, -1e-30f, 0.0f,
                                     1e-30f, 9.0f,   30.0f,  90.0f, 1e3f,   1e10f,  1e20f, 3e38f};
  const auto n = static_cast<index_t>(inputs.size());
  const auto d_x = to_device(inputs), d_ones = to_device(std::vector<float>(inputs.size(), 1.0f));
  kern::gpu::device_buffer<float> y(inputs.size()), dx(inputs.size());
  for (activation kind : {activation::gelu_tanh, activation::silu}) {
    SCOPED_TRACE(kind_name(kind));
    kern::gpu::activation_forward(
        kern::ops::activation_forward_params<float>{kind, {d_x.data(), 1, n}, {y.data(), 1, n}}, nullptr);
    kern::gpu::activation_backward(
        kern::ops::activation_backward_params<float>{
            kind, {d_x.data(), 1, n}, {d_ones.data(), 1, n}, {dx.data(), 1, n}},
        nullptr);
    const std::vector<float> y_out = to_host(y), dx_out = to_host(dx);
    for (std::size_t k = 0; k < inputs.size(); ++k) {
      const double x = inputs[k];
      const double y_ref = activation_ref(kind, x), d_ref = activation_derivative_ref(kind, x);
      EXPECT_TRUE(std::isfinite(y_out[k]) && std::isfinite(dx_out[k]))
          << "x = " << x << ": y = " << y_out[k] << ", dx = " << dx_out[k];
      EXPECT_NEAR(y_out[k], y_ref, 1e-6 * std::abs(y_ref) + 1e-30) << "x = " << x;
      EXPECT_NEAR(dx_out[k], d_ref, 1e-5 * std::abs(d_ref) + 1e-6) << "x = " << x;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// swiglu_forward / swiglu_backward, with gate and up the two halves of one N x 2H matrix.

template <class T> void check_swiglu(shape s, layout l) {
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(testing::Message() << "swiglu " << type_name<T>() << " " << s.rows << "x" << s.cols << " "
                                  << layout_name(l) << " seed " << seed);
  std::mt19937 rng(seed);
  const index_t h = s.cols, shift = shift_of(l);
  // [gate | up] as one N x 2H matrix (how a fused gate-up projection writes them), plus padding.
  const host_matrix<T> fused = random_matrix<T>(rng, s.rows, 2 * h, ld_of(l, 2 * h), -5.0f, 5.0f);
  const host_matrix<T> dy = random_matrix<T>(rng, s.rows, h, ld_of(l, h), -1.0f, 1.0f);
  std::vector<double> y_ref, dgate_ref, dgate_scale, dup_ref;
  for (index_t i = 0; i < s.rows; ++i) {
    for (index_t j = 0; j < h; ++j) {
      const double g = static_cast<float>(fused.at(i, j)), u = static_cast<float>(fused.at(i, h + j));
      const double d = static_cast<float>(dy.at(i, j));
      y_ref.push_back(silu_ref(g) * u);
      dgate_ref.push_back(d * u * silu_derivative_ref(g));
      dgate_scale.push_back(std::abs(d * u) * activation_derivative_scale(activation::silu, g));
      dup_ref.push_back(d * silu_ref(g));
    }
  }
  const device_matrix<T> d_fused(fused, shift), d_dy(dy, shift);
  const matrix_view<const T> gate{d_fused.data(), s.rows, h, fused.ld};
  const matrix_view<const T> up{d_fused.data() + h, s.rows, h, fused.ld};

  const device_matrix<T> y(poisoned_matrix<T>(s.rows, h, ld_of(l, h)), shift);
  kern::gpu::swiglu_forward(kern::ops::swiglu_forward_params<T>{gate, up, y.view()}, nullptr);
  const host_matrix<T> y_out = y.read();
  EXPECT_LT(scaled_error(y_out.values(), y_ref, storage_scale<T>(y_ref)), output_tolerance<T>());
  EXPECT_TRUE(y_out.padding_is(sentinel));

  // The gradients land in the halves of one N x 2H matrix too.
  const device_matrix<T> dfused(poisoned_matrix<T>(s.rows, 2 * h, fused.ld), shift);
  const matrix_view<T> dgate{dfused.data(), s.rows, h, fused.ld};
  const matrix_view<T> dup{dfused.data() + h, s.rows, h, fused.ld};
  kern::gpu::swiglu_backward(kern::ops::swiglu_backward_params<T>{gate, up, d_dy.cview(), dgate, dup}, nullptr);
  const host_matrix<T> dfused_out = dfused.read();
  std::vector<T> dgate_out, dup_out;
  for (index_t i = 0; i < s.rows; ++i) {
    for (index_t j = 0; j < h; ++j) {
      dgate_out.push_back(dfused_out.at(i, j));
      dup_out.push_back(dfused_out.at(i, h + j));
    }
  }
  EXPECT_LT(scaled_error(dgate_out, dgate_ref, storage_scale<T>(dgate_scale)), output_tolerance<T>());
  EXPECT_LT(scaled_error(dup_out, dup_ref, storage_scale<T>(dup_ref)), output_tolerance<T>());
  EXPECT_TRUE(dfused_out.padding_is(sentinel));

  // In place: the gradients overwrite gate and up.
  const matrix_view<T> fused_view = d_fused.view();
  kern::gpu::swiglu_backward(kern::ops::swiglu_backward_params<T>{gate, up, d_dy.cview(),
                                                                  fused_view.block(0, 0, s.rows, h),
                                                                  fused_view.block(0, h, s.rows, h)},
                             nullptr);
  EXPECT_TRUE(same_bits(d_fused.read().values(), dfused_out.values())) << "in-place gradients differ";
}

TEST(GpuSwiglu, MatchesReference) {
  KERN_REQUIRE_GPU();
  for (const shape& s : shapes) {
    for (layout l : layouts) {
      // up starts h values into the fused rows: aligned only when h is a whole number of groups.
      const layout up_layout = l == layout::padded ? layout::dense : l;
      if (runs_in<float>(up_layout, s)) {
        check_swiglu<float>(s, l);
      }
      if (runs_in<bf16>(up_layout, s)) {
        check_swiglu<bf16>(s, l);
        check_swiglu<f16>(s, l);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// bias_add / bias_grad

// A workspace for bias_grad (null when it needs none).
struct workspace {
  kern::gpu::device_buffer<unsigned char> buffer;
  explicit workspace(std::size_t bytes) : buffer(bytes) {}
  void* get() const { return buffer.data(); }
};

template <class T> void check_bias(shape s, layout l) {
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(testing::Message() << "bias " << type_name<T>() << " " << s.rows << "x" << s.cols << " "
                                  << layout_name(l) << " seed " << seed);
  std::mt19937 rng(seed);
  const index_t ld = ld_of(l, s.cols), shift = shift_of(l);
  host_matrix<T> x = random_matrix<T>(rng, s.rows, s.cols, ld, -1.0f, 1.0f);
  x.set_padding(sentinel);
  const std::vector<float> bias = random_values<float>(rng, s.cols);
  std::vector<double> add_ref = widen(x.values());
  for (std::size_t k = 0; k < add_ref.size(); ++k) {
    add_ref[k] += bias[k % static_cast<std::size_t>(s.cols)];
  }
  const device_matrix<T> d_x(x, shift);
  const auto d_bias = to_device(bias);
  kern::gpu::bias_add(kern::ops::bias_add_params<T>{d_x.view(), d_bias.data()}, nullptr);
  const host_matrix<T> x_out = d_x.read();
  EXPECT_LT(scaled_error(x_out.values(), add_ref, storage_scale<T>(add_ref)), output_tolerance<T>());
  EXPECT_TRUE(x_out.padding_is(sentinel)) << "wrote into x's padding";

  // bias_grad accumulates onto what dbias holds.
  const host_matrix<T> dy = random_matrix<T>(rng, s.rows, s.cols, ld, -1.0f, 1.0f);
  const std::vector<float> dbias = random_values<float>(rng, s.cols);
  std::vector<double> grad_ref = widen(dbias);
  std::vector<double> term_size(grad_ref.size()); // sum of |terms| per column: what fp32 rounding scales with
  for (std::size_t j = 0; j < grad_ref.size(); ++j) {
    term_size[j] = std::abs(grad_ref[j]);
  }
  for (index_t i = 0; i < s.rows; ++i) {
    for (index_t j = 0; j < s.cols; ++j) {
      grad_ref[static_cast<std::size_t>(j)] += static_cast<float>(dy.at(i, j));
      term_size[static_cast<std::size_t>(j)] += std::abs(static_cast<float>(dy.at(i, j)));
    }
  }
  const device_matrix<T> d_dy(dy, shift);
  const auto d_dbias = to_device(dbias);
  const workspace scratch(
      kern::gpu::bias_grad_workspace_bytes(kern::ops::bias_grad_params<T>{d_dy.cview(), d_dbias.data()}));
  kern::gpu::bias_grad(kern::ops::bias_grad_params<T>{d_dy.cview(), d_dbias.data()}, scratch.get(), nullptr);
  EXPECT_LT(scaled_error(to_host(d_dbias), grad_ref, term_size), 2e-6);
}

TEST(GpuBias, MatchesReference) {
  KERN_REQUIRE_GPU();
  // Beyond 128 rows the column sums take two passes.
  for (const shape& s :
       {shape{1, 1}, shape{1, 17}, shape{5, 16}, shape{300, 3}, shape{150, 131}, shape{97, 771}, shape{129, 40}}) {
    for (layout l : layouts) {
      if (runs_in<float>(l, s)) {
        check_bias<float>(s, l);
      }
      if (runs_in<bf16>(l, s)) {
        check_bias<bf16>(s, l);
        check_bias<f16>(s, l);
      }
    }
  }
}

// bias_grad is the gradient of bias_add: dL/dbias for L = sum(w * (x + bias)).
TEST(GpuBias, GradMatchesFiniteDifferences) {
  KERN_REQUIRE_GPU();
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  const index_t rows = 5, cols = 19;
  const host_matrix<float> x = random_matrix<float>(rng, rows, cols, cols, -1.0f, 1.0f);
  const host_matrix<float> w = random_matrix<float>(rng, rows, cols, cols, -1.0f, 1.0f);
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
  const device_matrix<float> d_w(w, 0);
  const auto dbias = to_device(std::vector<float>(static_cast<std::size_t>(cols), 0.0f));
  const workspace scratch(
      kern::gpu::bias_grad_workspace_bytes(kern::ops::bias_grad_params<float>{d_w.cview(), dbias.data()}));
  kern::gpu::bias_grad(kern::ops::bias_grad_params<float>{d_w.cview(), dbias.data()}, scratch.get(), nullptr);
  EXPECT_LT(relative_error(to_host(dbias), numeric), 1e-6);
}

// ---------------------------------------------------------------------------------------------
// Determinism, NaN, bad arguments

// The bias gradient's order of additions depends on the shape alone: the same bits on every run,
// through the vector path and the scalar path alike.
TEST(GpuActivation, Deterministic) {
  KERN_REQUIRE_GPU();
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  const index_t rows = 300, cols = 203, activation_rows = 20;
  const host_matrix<float> dy = random_matrix<float>(rng, rows, cols, ld_of(layout::padded, cols), -1.0f, 1.0f);
  const host_matrix<bf16> x = random_matrix<bf16>(rng, activation_rows, cols, cols, -4.0f, 4.0f);
  const workspace scratch(
      kern::gpu::bias_grad_workspace_bytes(kern::ops::bias_grad_params<float>{{nullptr, rows, cols, dy.ld}, nullptr}));
  std::vector<std::vector<float>> dbias;
  std::vector<std::vector<bf16>> y;
  for (index_t shift : {0, 0, 1}) {
    const device_matrix<float> d_dy(dy, shift);
    const auto d_dbias = to_device(std::vector<float>(static_cast<std::size_t>(cols), 0.5f));
    kern::gpu::bias_grad(kern::ops::bias_grad_params<float>{d_dy.cview(), d_dbias.data()}, scratch.get(), nullptr);
    dbias.push_back(to_host(d_dbias));
    const device_matrix<bf16> d_x(x, shift), out(poisoned_matrix<bf16>(activation_rows, cols, cols), shift);
    kern::gpu::activation_forward(
        kern::ops::activation_forward_params<bf16>{activation::gelu_tanh, d_x.cview(), out.view()}, nullptr);
    y.push_back(out.read().values());
  }
  for (std::size_t run = 1; run < dbias.size(); ++run) {
    EXPECT_TRUE(same_bits(dbias[0], dbias[run])) << "bias_grad run " << run;
    EXPECT_TRUE(same_bits(y[0], y[run])) << "activation_forward run " << run;
  }
}

TEST(GpuActivation, NanPropagates) {
  KERN_REQUIRE_GPU();
  const index_t n = 37;
  std::vector<float> x(static_cast<std::size_t>(n), 0.5f), dy(static_cast<std::size_t>(n), 1.0f);
  x[3] = nan_value;
  dy[20] = nan_value;
  const auto d_x = to_device(x), d_dy = to_device(dy);
  kern::gpu::device_buffer<float> y(x.size()), dx(x.size());
  for (activation kind : {activation::gelu_tanh, activation::silu}) {
    SCOPED_TRACE(kind_name(kind));
    kern::gpu::activation_forward(
        kern::ops::activation_forward_params<float>{kind, {d_x.data(), 1, n}, {y.data(), 1, n}}, nullptr);
    kern::gpu::activation_backward(
        kern::ops::activation_backward_params<float>{kind, {d_x.data(), 1, n}, {d_dy.data(), 1, n}, {dx.data(), 1, n}},
        nullptr);
    const std::vector<float> y_out = to_host(y), dx_out = to_host(dx);
    for (std::size_t k = 0; k < x.size(); ++k) {
      EXPECT_EQ(std::isnan(y_out[k]), k == 3) << k;
      EXPECT_EQ(std::isnan(dx_out[k]), k == 3 || k == 20) << k;
    }
  }
  const auto dbias = to_device(std::vector<float>(4, 0.0f));
  kern::gpu::bias_grad(kern::ops::bias_grad_params<float>{{d_x.data(), 9, 4}, dbias.data()}, nullptr, nullptr);
  const std::vector<float> dbias_out = to_host(dbias);
  for (std::size_t j = 0; j < dbias_out.size(); ++j) {
    EXPECT_EQ(std::isnan(dbias_out[j]), j == 3) << j; // x[3] is in column 3
  }
}

// Validation runs on the host before any launch, so host buffers stand in for device ones.
TEST(GpuActivation, RejectsBadArguments) {
  KERN_REQUIRE_GPU();
  std::vector<float> a(64, 1.0f), b(64, 1.0f), c(64, 1.0f);
  using fwd = kern::ops::activation_forward_params<float>;
  using bwd = kern::ops::activation_backward_params<float>;
  using swi = kern::ops::swiglu_backward_params<float>;
  using grad = kern::ops::bias_grad_params<float>;
  expect_error(
      [&] {
        kern::gpu::activation_forward(fwd{activation::silu, {a.data(), 4, 4}, {b.data(), 4, 3}}, nullptr);
      },
      "y is 4 x 3");
  expect_error(
      [&] {
        kern::gpu::activation_forward(fwd{activation::silu, {nullptr, 2, 4}, {b.data(), 2, 4}}, nullptr);
      },
      "x.data is null");
  expect_error(
      [&] {
        kern::gpu::activation_forward(fwd{activation::silu, {a.data(), 2, 4, 3}, {b.data(), 2, 4}}, nullptr);
      },
      "x.ld = 3");
  expect_error(
      [&] {
        kern::gpu::activation_forward(fwd{activation(7), {a.data(), 2, 4}, {b.data(), 2, 4}}, nullptr);
      },
      "kind = 7");
  expect_error(
      [&] {
        kern::gpu::activation_forward(fwd{activation::silu, {a.data(), 4, 4}, {a.data() + 1, 4, 4}}, nullptr);
      },
      "y overlaps x");
  expect_error(
      [&] {
        kern::gpu::activation_backward(
            bwd{activation::gelu_tanh, {a.data(), 4, 4}, {b.data(), 4, 4}, {b.data() + 4, 4, 4}}, nullptr);
      },
      "dx overlaps dy");
  expect_error(
      [&] {
        kern::gpu::swiglu_backward(swi{{a.data(), 2, 8, 16},
                                       {a.data() + 8, 2, 8, 16},
                                       {b.data(), 2, 8},
                                       {c.data(), 2, 8, 16},
                                       {c.data() + 7, 2, 8, 16}},
                                   nullptr);
      },
      "dgate overlaps dup");
  expect_error(
      [&] {
        kern::gpu::bias_add(kern::ops::bias_add_params<float>{{a.data(), 2, 4}, nullptr}, nullptr);
      },
      "bias is null");
  expect_error(
      [&] {
        kern::gpu::bias_add(kern::ops::bias_add_params<float>{{a.data(), 2, 4}, a.data() + 2}, nullptr);
      },
      "x overlaps bias");
  expect_error([&] { kern::gpu::bias_grad(grad{{a.data(), 2, 4}, a.data()}, nullptr, nullptr); }, "dbias overlaps dy");
  // Beyond one pass the workspace must be there, aligned, and apart from the operands.
  const index_t rows = 300, cols = 4;
  std::vector<float> dy(static_cast<std::size_t>(rows * cols));
  const std::size_t bytes = kern::gpu::bias_grad_workspace_bytes(grad{{dy.data(), rows, cols}, b.data()});
  ASSERT_GT(bytes, 0U);
  std::vector<float> scratch(bytes / sizeof(float) + 1);
  expect_error(
      [&] {
        kern::gpu::bias_grad(grad{{dy.data(), rows, cols}, b.data()}, nullptr, nullptr);
      },
      "workspace is null");
  expect_error(
      [&] {
        kern::gpu::bias_grad(grad{{dy.data(), rows, cols}, b.data()}, dy.data(), nullptr);
      },
      "workspace overlaps dy");
  auto* misaligned = reinterpret_cast<unsigned char*>(scratch.data()) + 2;
  expect_error(
      [&] {
        kern::gpu::bias_grad(grad{{dy.data(), rows, cols}, b.data()}, misaligned, nullptr);
      },
      "is not 4-byte aligned");
  // Empty matrices are no-ops even with null pointers.
  EXPECT_NO_THROW(
      kern::gpu::activation_forward(fwd{activation::silu, {nullptr, 0, 4, 4}, {nullptr, 0, 4, 4}}, nullptr));
  EXPECT_NO_THROW(kern::gpu::bias_grad(grad{{nullptr, 0, 0, 1}, nullptr}, nullptr, nullptr));
}

} // namespace
