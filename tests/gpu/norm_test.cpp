// kern::gpu::norm_forward / norm_backward (LayerNorm, RMSNorm) against the float64 reference, in
// every GPU compilation mode (the CPU execution mode at warp size 32 and 64, CUDA, HIP).
//
// The cases of the CPU test (shapes with 1, primes, non-multiples of the vector width, strided
// rows), in f32, bf16 and f16, the cases of each shape spread over three memory layouts: the CPU
// test's padding, rows padded to a multiple of 16 bytes (16-byte access where the row length allows
// it), and a buffer one element off 16-byte alignment (single-value access). Long rows take a whole
// block, and longer ones several tiles.
// Outputs start as NaN; the ld padding of inputs holds NaN and that of outputs a sentinel. The
// backward also against central finite differences of the float64 forward through the kernels' own
// forward; then in-place use, empty problems, NaN propagation, determinism, bad arguments.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "kern/gpu/norm.hpp"
#include "support/gpu_test.hpp"
#include "support/kernel_test.hpp"
#include "support/norm_reference.hpp"

namespace {

using kern::bf16;
using kern::f16;
using kern::index_t;
using kern::ops::norm_kind;
using namespace kern::test;
namespace gpu = kern::gpu;

const char* name(norm_kind kind) { return kind == norm_kind::layernorm ? "layernorm" : "rmsnorm"; }

std::vector<float> random_floats(std::mt19937& rng, index_t n, float lo, float hi) {
  return random_values<float>(rng, n, lo, hi);
}

// ---------------------------------------------------------------------------------------------
// Forward against the reference.

struct forward_case {
  norm_kind kind;
  index_t rows, dim, pad;
  bool bias, residual;
  memory_layout memory;
};

template <class T> void check_forward(const forward_case& c) {
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(testing::Message() << name(c.kind) << " " << c.rows << " x " << c.dim << " " << name(c.memory)
                                  << " bias " << c.bias << " residual " << c.residual << " " << type_name<T>()
                                  << " seed " << seed);
  std::mt19937 rng(seed);
  const index_t ld = leading_dimension<T>(c.memory, c.dim, c.pad);
  const index_t offset = c.memory == memory_layout::misaligned ? 1 : 0;
  host_matrix<T> x(c.rows, c.dim, ld, nan_value), residual(c.rows, c.dim, ld, nan_value);
  x.fill_random(rng, -2.0f, 3.0f); // an offset mean, so that the centring matters
  residual.fill_random(rng, -1.0f, 1.0f);
  host_matrix<T> y(c.rows, c.dim, ld, sentinel, nan_value), residual_out(c.rows, c.dim, ld, sentinel, nan_value);
  const std::vector<float> weight = random_floats(rng, c.dim, 0.5f, 1.5f);
  const std::vector<float> bias = random_floats(rng, c.dim, -0.5f, 0.5f);
  const std::vector<float> poison(static_cast<std::size_t>(c.rows), nan_value);

  const device_matrix<T> x_d(x, offset), residual_d(residual, offset), y_d(y, offset), h_d(residual_out, offset);
  const auto weight_d = to_device(weight), bias_d = to_device(bias), mean_d = to_device(poison),
             rstd_d = to_device(poison);
  kern::ops::norm_forward_params<T> p;
  p.kind = c.kind;
  p.x = x_d.cview();
  if (c.residual) {
    p.residual = residual_d.cview();
    p.residual_out = h_d.view();
  }
  p.weight = weight_d.data();
  p.bias = c.bias ? bias_d.data() : nullptr;
  p.y = y_d.view();
  p.mean = c.kind == norm_kind::layernorm ? mean_d.data() : nullptr;
  p.rstd = rstd_d.data();
  gpu::norm_forward(p, nullptr);
  y = y_d.read();
  residual_out = h_d.read();
  const std::vector<float> mean = to_host(mean_d), rstd = to_host(rstd_d);

  expect_forward_matches_reference(c.kind, x, c.residual ? &residual : nullptr, residual_out, weight,
                                   c.bias ? &bias : nullptr, y, mean, rstd);
}

template <class T> void forward_sweep(std::initializer_list<std::pair<index_t, index_t>> shapes) {
  layout_cycle layouts;
  for (norm_kind kind : {norm_kind::layernorm, norm_kind::rmsnorm}) {
    for (const auto& [rows, dim] : shapes) {
      for (bool residual : {false, true}) {
        const index_t pad = rows % 2 == 1 ? 3 : 0;
        check_forward<T>({kind, rows, dim, pad, kind == norm_kind::layernorm, residual, layouts.next()});
        if (kind == norm_kind::layernorm) {
          check_forward<T>({kind, rows, dim, pad, false, residual, layouts.next()});
        }
      }
    }
  }
}

// The CPU test's shapes: a warp per row up to 512 (f32) or 1024 (16-bit) values at warp size 32.
constexpr std::initializer_list<std::pair<index_t, index_t>> forward_shapes = {
    {1, 1}, {1, 7}, {3, 16}, {5, 31}, {7, 64}, {13, 100}, {64, 768}, {3, 4099}};

TEST(GpuNorm, ForwardF32) {
  KERN_REQUIRE_GPU();
  forward_sweep<float>(forward_shapes);
}
TEST(GpuNorm, ForwardBf16) {
  KERN_REQUIRE_GPU();
  forward_sweep<bf16>(forward_shapes);
}
TEST(GpuNorm, ForwardF16) {
  KERN_REQUIRE_GPU();
  forward_sweep<f16>(forward_shapes);
}

// A block per row, and rows beyond a block's registers (above 8192 f32 or 16384 16-bit values with
// 16-byte access) in several tiles, with both kinds of access.
template <class T> void long_row_forward() {
  for (norm_kind kind : {norm_kind::layernorm, norm_kind::rmsnorm}) {
    for (const auto& [rows, dim] : {std::pair<index_t, index_t>{2, 20011}, {1, 40000}}) {
      check_forward<T>({kind, rows, dim, 0, kind == norm_kind::layernorm, true, memory_layout::vector_rows});
      check_forward<T>({kind, rows, dim, 0, false, false, memory_layout::misaligned});
    }
  }
}

TEST(GpuNorm, ForwardLongRows) {
  KERN_REQUIRE_GPU();
  long_row_forward<float>();
  long_row_forward<bf16>();
}

// ---------------------------------------------------------------------------------------------
// Backward against the analytic reference.

struct backward_case {
  norm_kind kind;
  index_t rows, dim, pad;
  bool accumulate_dx;
  memory_layout memory;
};

// Runs norm_backward with a workspace of the size it asks for.
template <class T> void run_backward(const kern::ops::norm_backward_params<T>& p) {
  gpu::device_buffer<std::byte> workspace(gpu::norm_backward_workspace_bytes(p));
  gpu::norm_backward(p, workspace.data(), nullptr);
  gpu::synchronize(nullptr);
}

template <class T> void check_backward(const backward_case& c) {
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(testing::Message() << name(c.kind) << " backward " << c.rows << " x " << c.dim << " " << name(c.memory)
                                  << " accumulate_dx " << c.accumulate_dx << " " << type_name<T>() << " seed " << seed);
  std::mt19937 rng(seed);
  const index_t ld = leading_dimension<T>(c.memory, c.dim, c.pad);
  const index_t offset = c.memory == memory_layout::misaligned ? 1 : 0;
  host_matrix<T> x(c.rows, c.dim, ld, nan_value), dy(c.rows, c.dim, ld, nan_value);
  host_matrix<T> dx(c.rows, c.dim, ld, sentinel, nan_value);
  x.fill_random(rng, -2.0f, 3.0f);
  dy.fill_random(rng, -1.0f, 1.0f);
  if (c.accumulate_dx) { // otherwise dx holds NaN, which the kernel overwrites
    dx.fill_random(rng, -1.0f, 1.0f);
  }
  const std::vector<double> dx_before = widen(dx.values());
  const std::vector<float> weight = random_floats(rng, c.dim, 0.5f, 1.5f);
  const reference_forward fwd = norm_reference(c.kind, widen(x.values()), c.rows, c.dim, widen(weight), nullptr, 1e-5);
  const std::vector<float> mean(fwd.mean.begin(), fwd.mean.end()), rstd(fwd.rstd.begin(), fwd.rstd.end());
  const std::vector<float> dweight_before = random_floats(rng, c.dim, -1.0f, 1.0f);
  const std::vector<float> dbias_before = random_floats(rng, c.dim, -1.0f, 1.0f);

  const device_matrix<T> x_d(x, offset), dy_d(dy, offset), dx_d(dx, offset);
  const auto weight_d = to_device(weight), mean_d = to_device(mean), rstd_d = to_device(rstd);
  const auto dweight_d = to_device(dweight_before), dbias_d = to_device(dbias_before);
  kern::ops::norm_backward_params<T> p;
  p.kind = c.kind;
  p.x = x_d.cview();
  p.dy = dy_d.cview();
  p.weight = weight_d.data();
  p.mean = c.kind == norm_kind::layernorm ? mean_d.data() : nullptr;
  p.rstd = rstd_d.data();
  p.dx = dx_d.view();
  p.accumulate_dx = c.accumulate_dx;
  p.dweight = dweight_d.data();
  p.dbias = c.kind == norm_kind::layernorm ? dbias_d.data() : nullptr;
  run_backward(p);
  dx = dx_d.read();
  const std::vector<float> dweight = to_host(dweight_d), dbias = to_host(dbias_d);

  expect_backward_matches_reference<T>(
      {c.kind, x, dy, weight, mean, rstd, c.accumulate_dx, dx_before, dweight_before, dbias_before}, dx, dweight,
      dbias);
}

// The CPU test's shapes (with parameter gradients a warp or block takes two rows or more).
template <class T> void backward_sweep() {
  const index_t shapes[][2] = {{1, 1}, {1, 7}, {3, 16}, {5, 31}, {13, 100}, {70, 768}, {2, 4099}, {130, 33}};
  layout_cycle layouts;
  for (norm_kind kind : {norm_kind::layernorm, norm_kind::rmsnorm}) {
    for (const auto& shape : shapes) {
      const index_t pad = shape[1] % 2 == 1 ? 5 : 0;
      check_backward<T>({kind, shape[0], shape[1], pad, false, layouts.next()});
      check_backward<T>({kind, shape[0], shape[1], pad, true, layouts.next()});
    }
  }
}

TEST(GpuNorm, BackwardF32) {
  KERN_REQUIRE_GPU();
  backward_sweep<float>();
}
TEST(GpuNorm, BackwardBf16) {
  KERN_REQUIRE_GPU();
  backward_sweep<bf16>();
}
TEST(GpuNorm, BackwardF16) {
  KERN_REQUIRE_GPU();
  backward_sweep<f16>();
}

// Rows beyond a block's registers (with 16-byte access above 4096 f32 or 8192 16-bit values, with
// single values above 4096): their sums come from a first kernel, and their column tiles go to
// separate blocks.
TEST(GpuNorm, BackwardLongRows) {
  KERN_REQUIRE_GPU();
  for (norm_kind kind : {norm_kind::layernorm, norm_kind::rmsnorm}) {
    check_backward<float>({kind, 3, 10000, 0, true, memory_layout::vector_rows});
    check_backward<float>({kind, 2, 10007, 0, false, memory_layout::misaligned});
    check_backward<bf16>({kind, 2, 20000, 0, false, memory_layout::vector_rows});
    check_backward<bf16>({kind, 2, 5003, 0, true, memory_layout::misaligned});
  }
}

// ---------------------------------------------------------------------------------------------
// Backward against central finite differences of the float64 forward, through the kernels' own
// forward (with the fused residual add: the gradient reaches x and residual alike).

void check_finite_differences(const norm_fd_case& c) {
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(testing::Message() << name(c.kind) << " finite differences " << c.rows << " x " << c.dim << " bias "
                                  << c.bias << " residual " << c.residual << " seed " << seed);
  std::mt19937 rng(seed);
  const index_t n = c.rows * c.dim;
  const norm_fd_inputs in(rng, c);

  // The kernels: forward (saving h, mean, rstd), then backward with dy = w.
  const auto x_d = to_device(in.x), residual_d = to_device(in.residual), weight_d = to_device(in.weight),
             bias_d = to_device(in.bias);
  gpu::device_buffer<float> h_d(static_cast<std::size_t>(n)), y_d(static_cast<std::size_t>(n));
  gpu::device_buffer<float> mean_d(static_cast<std::size_t>(c.rows)), rstd_d(static_cast<std::size_t>(c.rows));
  kern::ops::norm_forward_params<float> f;
  f.kind = c.kind;
  f.x = {x_d.data(), c.rows, c.dim};
  if (c.residual) {
    f.residual = {residual_d.data(), c.rows, c.dim};
    f.residual_out = {h_d.data(), c.rows, c.dim};
  } else {
    gpu::copy(h_d.data(), x_d.data(), in.x.size(), nullptr);
  }
  f.weight = weight_d.data();
  f.bias = c.bias ? bias_d.data() : nullptr;
  f.y = {y_d.data(), c.rows, c.dim};
  f.mean = c.kind == norm_kind::layernorm ? mean_d.data() : nullptr;
  f.rstd = rstd_d.data();
  gpu::norm_forward(f, nullptr);
  const auto dy_d = to_device(std::vector<float>(in.w.begin(), in.w.end()));
  const auto dx_d = to_device(std::vector<float>(static_cast<std::size_t>(n), nan_value));
  const auto dweight_d = to_device(std::vector<float>(static_cast<std::size_t>(c.dim), 0.0f));
  const auto dbias_d = to_device(std::vector<float>(static_cast<std::size_t>(c.dim), 0.0f));
  kern::ops::norm_backward_params<float> b;
  b.kind = c.kind;
  b.x = {h_d.data(), c.rows, c.dim};
  b.dy = {dy_d.data(), c.rows, c.dim};
  b.weight = weight_d.data();
  b.mean = f.mean;
  b.rstd = rstd_d.data();
  b.dx = {dx_d.data(), c.rows, c.dim};
  b.dweight = dweight_d.data();
  b.dbias = c.bias ? dbias_d.data() : nullptr;
  run_backward(b);
  const std::vector<float> h = to_host(h_d), mean = to_host(mean_d), rstd = to_host(rstd_d), dx = to_host(dx_d);
  const std::vector<float> dweight = to_host(dweight_d), dbias = to_host(dbias_d);

  expect_gradients_match_finite_differences(c, in, h, mean, rstd, dx, dweight, dbias);
}

TEST(GpuNorm, BackwardMatchesFiniteDifferences) {
  KERN_REQUIRE_GPU();
  for (norm_kind kind : {norm_kind::layernorm, norm_kind::rmsnorm}) {
    for (bool residual : {false, true}) {
      for (const auto& shape : {std::pair<index_t, index_t>{1, 1}, {3, 5}, {2, 17}, {4, 33}}) {
        check_finite_differences({kind, shape.first, shape.second, false, residual});
        if (kind == norm_kind::layernorm) {
          check_finite_differences({kind, shape.first, shape.second, true, residual});
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// In place, empty, NaN, determinism, bad arguments.

// y over x; the residual stream updated in place (residual_out = residual); dx over dy. Short rows
// and rows of several tiles.
TEST(GpuNorm, InPlace) {
  KERN_REQUIRE_GPU();
  for (const auto& [rows, dim] : {std::pair<index_t, index_t>{9, 37}, {2, 20000}}) {
    const std::uint32_t seed = fresh_seed();
    SCOPED_TRACE(testing::Message() << rows << " x " << dim << " seed " << seed);
    std::mt19937 rng(seed);
    const index_t n = rows * dim;
    const std::vector<float> x = random_floats(rng, n, -1.0f, 1.0f), residual = random_floats(rng, n, -1.0f, 1.0f);
    const std::vector<float> weight = random_floats(rng, dim, 0.5f, 1.5f);
    const auto x_d = to_device(x), residual_d = to_device(residual), weight_d = to_device(weight);
    // Out of place, as the reference.
    gpu::device_buffer<float> h_d(x.size()), y_d(x.size()), rstd_d(static_cast<std::size_t>(rows));
    kern::ops::norm_forward_params<float> p;
    p.kind = norm_kind::rmsnorm;
    p.x = {x_d.data(), rows, dim};
    p.residual = {residual_d.data(), rows, dim};
    p.residual_out = {h_d.data(), rows, dim};
    p.weight = weight_d.data();
    p.y = {y_d.data(), rows, dim};
    p.rstd = rstd_d.data();
    gpu::norm_forward(p, nullptr);
    // In place: the stream (residual) becomes h, the block's output (x) becomes y.
    const auto stream_d = to_device(residual), block_d = to_device(x);
    p.x = {block_d.data(), rows, dim};
    p.residual = {stream_d.data(), rows, dim};
    p.residual_out = {stream_d.data(), rows, dim};
    p.y = {block_d.data(), rows, dim};
    p.rstd = nullptr;
    gpu::norm_forward(p, nullptr);
    EXPECT_TRUE(same_bits(to_host(stream_d), to_host(h_d)));
    EXPECT_TRUE(same_bits(to_host(block_d), to_host(y_d)));

    // Backward: dx over dy equals dx apart.
    const auto dy_d = to_device(x);
    gpu::device_buffer<float> dx_d(x.size());
    kern::ops::norm_backward_params<float> b;
    b.kind = norm_kind::rmsnorm;
    b.x = {h_d.data(), rows, dim};
    b.dy = {dy_d.data(), rows, dim};
    b.weight = weight_d.data();
    b.rstd = rstd_d.data();
    b.dx = {dx_d.data(), rows, dim};
    run_backward(b);
    b.dx = {dy_d.data(), rows, dim};
    run_backward(b);
    EXPECT_TRUE(same_bits(to_host(dy_d), to_host(dx_d)));
  }
}

TEST(GpuNorm, EmptyIsANoOp) {
  KERN_REQUIRE_GPU();
  const auto weight = to_device(std::vector<float>(4, 1.0f));
  const auto stats = to_device(std::vector<float>(1, nan_value));
  kern::ops::norm_forward_params<float> p;
  p.weight = weight.data();
  p.x = {nullptr, 0, 0, 1};
  p.y = {nullptr, 0, 0, 1};
  EXPECT_NO_THROW(gpu::norm_forward(p, nullptr)); // 0 x 0, all null
  p.x = {weight.data(), 0, 4};
  p.y = {nullptr, 0, 4, 4};
  p.mean = stats.data();
  EXPECT_NO_THROW(gpu::norm_forward(p, nullptr));
  EXPECT_TRUE(std::isnan(to_host(stats)[0])); // no row, nothing written
  kern::ops::norm_backward_params<float> b;
  b.x = {nullptr, 3, 0, 1};
  b.dy = {nullptr, 3, 0, 1};
  b.dx = {nullptr, 3, 0, 1};
  b.weight = weight.data();
  b.mean = stats.data();
  b.rstd = stats.data();
  b.dweight = stats.data();
  EXPECT_EQ(gpu::norm_backward_workspace_bytes(b), 0u);
  EXPECT_NO_THROW(gpu::norm_backward(b, nullptr, nullptr));
}

// A NaN in one row makes that row NaN, and only that row; Inf likewise is not clamped away.
TEST(GpuNorm, NanPropagates) {
  KERN_REQUIRE_GPU();
  for (norm_kind kind : {norm_kind::layernorm, norm_kind::rmsnorm}) {
    SCOPED_TRACE(name(kind));
    const index_t rows = 4, dim = 21;
    std::vector<float> x(static_cast<std::size_t>(rows * dim), 0.5f);
    for (index_t j = 0; j < dim; ++j) {
      x[static_cast<std::size_t>(j)] = static_cast<float>(j); // row 0 finite, not constant
    }
    x[static_cast<std::size_t>(1 * dim + 3)] = nan_value;
    x[static_cast<std::size_t>(2 * dim + 5)] = std::numeric_limits<float>::infinity();
    const auto x_d = to_device(x), weight_d = to_device(std::vector<float>(static_cast<std::size_t>(dim), 1.0f));
    gpu::device_buffer<float> y_d(x.size()), mean_d(static_cast<std::size_t>(rows)), rstd_d(mean_d.size());
    kern::ops::norm_forward_params<float> p;
    p.kind = kind;
    p.x = {x_d.data(), rows, dim};
    p.weight = weight_d.data();
    p.y = {y_d.data(), rows, dim};
    p.mean = kind == norm_kind::layernorm ? mean_d.data() : nullptr;
    p.rstd = rstd_d.data();
    gpu::norm_forward(p, nullptr);
    const std::vector<float> y = to_host(y_d);
    for (index_t j = 0; j < dim; ++j) {
      EXPECT_TRUE(std::isfinite(y[static_cast<std::size_t>(j)])) << "row 0, column " << j;
      EXPECT_TRUE(std::isnan(y[static_cast<std::size_t>(dim + j)])) << "row 1, column " << j;
      EXPECT_TRUE(std::isfinite(y[static_cast<std::size_t>(3 * dim + j)])) << "row 3, column " << j;
    }
    EXPECT_FALSE(std::isfinite(y[static_cast<std::size_t>(2 * dim + 5)])) << "the Inf element";

    // Backward: a NaN gradient in row 1 reaches that row's dx and dweight, not row 0's dx.
    std::vector<float> dy(x.size(), 0.25f), x_ok(x.size());
    dy[static_cast<std::size_t>(dim + 2)] = nan_value;
    for (std::size_t k = 0; k < x_ok.size(); ++k) {
      x_ok[k] = static_cast<float>(k % 7);
    }
    const auto x_ok_d = to_device(x_ok), dy_d = to_device(dy);
    const auto dweight_d = to_device(std::vector<float>(static_cast<std::size_t>(dim), 0.0f));
    gpu::device_buffer<float> dx_d(x.size());
    p.x = {x_ok_d.data(), rows, dim};
    gpu::norm_forward(p, nullptr);
    kern::ops::norm_backward_params<float> b;
    b.kind = kind;
    b.x = {x_ok_d.data(), rows, dim};
    b.dy = {dy_d.data(), rows, dim};
    b.weight = weight_d.data();
    b.mean = p.mean;
    b.rstd = rstd_d.data();
    b.dx = {dx_d.data(), rows, dim};
    b.dweight = dweight_d.data();
    run_backward(b);
    const std::vector<float> dx = to_host(dx_d), dweight = to_host(dweight_d);
    EXPECT_TRUE(std::isfinite(dx[0]));
    EXPECT_TRUE(std::isnan(dx[static_cast<std::size_t>(dim)]));
    EXPECT_TRUE(std::isnan(dweight[2]));
  }
}

// The same bits on every call, parameter gradients included (summed over many row groups).
template <class T> void check_determinism() {
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(testing::Message() << type_name<T>() << " seed " << seed);
  std::mt19937 rng(seed);
  const index_t rows = 9, dim = 771, n = rows * dim; // a block per row, two rows per block
  const auto x = to_device(random_values<T>(rng, n)), dy = to_device(random_values<T>(rng, n));
  const auto weight = to_device(random_floats(rng, dim, 0.5f, 1.5f)), bias = to_device(random_floats(rng, dim, -1, 1));
  struct outputs {
    std::vector<T> y, dx;
    std::vector<float> mean, rstd, dweight, dbias;
  };
  const auto run = [&] {
    gpu::device_buffer<T> y(static_cast<std::size_t>(n)), dx(static_cast<std::size_t>(n));
    gpu::device_buffer<float> mean(static_cast<std::size_t>(rows)), rstd(static_cast<std::size_t>(rows));
    const auto dweight = to_device(std::vector<float>(static_cast<std::size_t>(dim), 0.5f));
    const auto dbias = to_device(std::vector<float>(static_cast<std::size_t>(dim), 0.5f));
    kern::ops::norm_forward_params<T> p;
    p.x = {x.data(), rows, dim};
    p.weight = weight.data();
    p.bias = bias.data();
    p.y = {y.data(), rows, dim};
    p.mean = mean.data();
    p.rstd = rstd.data();
    gpu::norm_forward(p, nullptr);
    kern::ops::norm_backward_params<T> b;
    b.x = {x.data(), rows, dim};
    b.dy = {dy.data(), rows, dim};
    b.weight = weight.data();
    b.mean = mean.data();
    b.rstd = rstd.data();
    b.dx = {dx.data(), rows, dim};
    b.dweight = dweight.data();
    b.dbias = dbias.data();
    run_backward(b);
    return outputs{to_host(y), to_host(dx), to_host(mean), to_host(rstd), to_host(dweight), to_host(dbias)};
  };
  const outputs first = run(), second = run();
  EXPECT_EQ(bits_of(second.y), bits_of(first.y));
  EXPECT_EQ(bits_of(second.dx), bits_of(first.dx));
  EXPECT_EQ(bits_of(second.mean), bits_of(first.mean));
  EXPECT_EQ(bits_of(second.rstd), bits_of(first.rstd));
  EXPECT_EQ(bits_of(second.dweight), bits_of(first.dweight));
  EXPECT_EQ(bits_of(second.dbias), bits_of(first.dbias));
}

TEST(GpuNorm, DeterministicAcrossCalls) {
  KERN_REQUIRE_GPU();
  check_determinism<float>();
  check_determinism<bf16>();
}

TEST(GpuNorm, RejectsBadArguments) {
  KERN_REQUIRE_GPU();
  const auto x = to_device(std::vector<float>(64, 1.0f)), weight = to_device(std::vector<float>(8, 1.0f));
  const auto y = to_device(std::vector<float>(64, 0.0f)), h = to_device(std::vector<float>(64, 0.5f));
  const auto stats = to_device(std::vector<float>(8, 1.0f));
  const std::string forward_op = KERN_GPU_OP("norm_forward"), backward_op = KERN_GPU_OP("norm_backward");
  const auto valid = [&] {
    kern::ops::norm_forward_params<float> p;
    p.x = {x.data(), 8, 8};
    p.y = {y.data(), 8, 8};
    p.weight = weight.data();
    p.mean = stats.data();
    return p;
  };
  const auto forward_error = [&](const kern::ops::norm_forward_params<float>& p) {
    return error_of([&] { gpu::norm_forward(p, nullptr); });
  };
  EXPECT_EQ(forward_error(valid()), "(no error)");
  auto p = valid();
  p.x.rows = -1;
  EXPECT_EQ(forward_error(p), forward_op + ": x is -1 x 8: sizes must not be negative");
  p = valid();
  p.y.cols = 7;
  EXPECT_EQ(forward_error(p), forward_op + ": y is 8 x 7 but x is 8 x 8");
  p = valid();
  p.weight = nullptr;
  EXPECT_EQ(forward_error(p), forward_op + ": weight is null but holds 8 elements");
  p = valid();
  p.epsilon = 0.0f;
  EXPECT_EQ(forward_error(p), forward_op + ": epsilon = 0 must be positive and finite");
  p = valid();
  p.kind = norm_kind::rmsnorm;
  p.bias = weight.data();
  p.mean = nullptr;
  EXPECT_EQ(forward_error(p), forward_op + ": bias applies to layernorm only");
  p = valid();
  p.residual = {h.data(), 8, 8};
  EXPECT_EQ(forward_error(p), forward_op + ": residual is given but residual_out is null");
  p = valid();
  p.y = {x.data() + 1, 8, 8, 8}; // a partial overlap (exactly x would be in place)
  EXPECT_NE(forward_error(p).find("y overlaps x"), std::string::npos);
  p = valid();
  p.rstd = y.data() + 3;
  EXPECT_NE(forward_error(p).find("rstd overlaps y"), std::string::npos);
  p = valid();
  p.kind = static_cast<norm_kind>(7);
  EXPECT_EQ(forward_error(p), forward_op + ": kind = 7 is not a norm_kind");

  const auto valid_backward = [&] {
    kern::ops::norm_backward_params<float> b;
    b.x = {x.data(), 8, 8};
    b.dy = {h.data(), 8, 8};
    b.dx = {y.data(), 8, 8};
    b.weight = weight.data();
    b.mean = stats.data();
    b.rstd = stats.data();
    return b;
  };
  gpu::device_buffer<std::byte> workspace(4096);
  const auto backward_error = [&](const kern::ops::norm_backward_params<float>& b, void* w) {
    return error_of([&] { gpu::norm_backward(b, w, nullptr); });
  };
  EXPECT_EQ(backward_error(valid_backward(), nullptr), "(no error)"); // no parameter gradients: no workspace
  auto b = valid_backward();
  b.mean = nullptr;
  EXPECT_EQ(backward_error(b, nullptr), backward_op + ": mean is null but holds 8 elements");
  b = valid_backward();
  b.dx = {x.data(), 8, 8};
  EXPECT_NE(backward_error(b, nullptr).find("dx overlaps x"), std::string::npos);
  b = valid_backward();
  b.dx = {h.data(), 8, 8};
  EXPECT_EQ(backward_error(b, nullptr), "(no error)"); // dx over dy: in place
  b.accumulate_dx = true;
  EXPECT_NE(backward_error(b, nullptr).find("dx overlaps dy"), std::string::npos);
  b = valid_backward();
  b.kind = norm_kind::rmsnorm;
  b.mean = nullptr;
  b.dbias = stats.data();
  EXPECT_EQ(backward_error(b, nullptr), backward_op + ": dbias applies to layernorm only");
  b = valid_backward();
  const auto dweight = to_device(std::vector<float>(8, 0.0f));
  b.dweight = dweight.data();
  const std::size_t bytes = gpu::norm_backward_workspace_bytes(b);
  EXPECT_GT(bytes, 0u);
  EXPECT_LE(bytes, workspace.size());
  EXPECT_EQ(backward_error(b, nullptr), backward_op + ": workspace is null but " + std::to_string(bytes) +
                                            " bytes are needed (norm_backward_workspace_bytes)");
  EXPECT_NE(backward_error(b, workspace.data() + 2).find("workspace = "), std::string::npos);
  EXPECT_EQ(backward_error(b, workspace.data()), "(no error)");
}

} // namespace
