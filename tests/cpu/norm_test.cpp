// kern::cpu::norm_forward / norm_backward (LayerNorm, RMSNorm) against a float64 reference.
//
// Forward: y, mean and rstd against the float64 formulas on random rows, with and without bias and
// the fused residual add, over shapes with 1, primes, non-multiples of the SIMD width and strided
// rows, in f32 and bf16, on 1 and 2 threads. Outputs start as NaN; the ld padding of inputs holds
// NaN (a kernel that reads it fails) and that of outputs a sentinel (a kernel that writes it fails).
// Backward: against central finite differences of the float64 forward on small shapes, and against
// the analytic float64 gradient on larger ones; parameter gradients are accumulated into random
// starting values. Then bad arguments, NaN propagation, in-place use and determinism.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "kern/cpu.hpp"
#include "support/kernel_test.hpp"
#include "support/norm_reference.hpp"

namespace {

using kern::bf16;
using kern::index_t;
using kern::ops::norm_kind;
using namespace kern::test;

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
  int threads;
};

template <class T> void check_forward(const forward_case& c) {
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(testing::Message() << name(c.kind) << " " << c.rows << " x " << c.dim << " ld +" << c.pad << " bias "
                                  << c.bias << " residual " << c.residual << " threads " << c.threads << " "
                                  << kern::name(kern::dtype_of_v<T>) << " seed " << seed);
  std::mt19937 rng(seed);
  const index_t ld = c.dim + c.pad;
  host_matrix<T> x(c.rows, c.dim, ld, nan_value), residual(c.rows, c.dim, ld, nan_value);
  x.fill_random(rng, -2.0f, 3.0f); // an offset mean, so that the centring matters
  residual.fill_random(rng, -1.0f, 1.0f);
  host_matrix<T> y(c.rows, c.dim, ld, sentinel, nan_value), residual_out(c.rows, c.dim, ld, sentinel, nan_value);
  const std::vector<float> weight = random_floats(rng, c.dim, 0.5f, 1.5f);
  const std::vector<float> bias = random_floats(rng, c.dim, -0.5f, 0.5f);
  std::vector<float> mean(static_cast<std::size_t>(c.rows), nan_value), rstd(mean);

  kern::ops::norm_forward_params<T> p;
  p.kind = c.kind;
  p.x = x.cview();
  if (c.residual) {
    p.residual = residual.cview();
    p.residual_out = residual_out.view();
  }
  p.weight = weight.data();
  p.bias = c.bias ? bias.data() : nullptr;
  p.y = y.view();
  p.mean = c.kind == norm_kind::layernorm ? mean.data() : nullptr;
  p.rstd = rstd.data();
  kern::cpu::norm_forward(kern::cpu::context(c.threads), p);

  expect_forward_matches_reference(c.kind, x, c.residual ? &residual : nullptr, residual_out, weight,
                                   c.bias ? &bias : nullptr, y, mean, rstd);
}

template <class T> void forward_sweep() {
  const index_t shapes[][2] = {{1, 1}, {1, 7}, {3, 16}, {5, 31}, {7, 64}, {13, 100}, {64, 768}, {3, 4099}};
  for (norm_kind kind : {norm_kind::layernorm, norm_kind::rmsnorm}) {
    for (const auto& shape : shapes) {
      for (bool residual : {false, true}) {
        for (int threads : {1, 2}) {
          const index_t pad = shape[0] % 2 == 1 ? 3 : 0;
          check_forward<T>({kind, shape[0], shape[1], pad, kind == norm_kind::layernorm, residual, threads});
          if (kind == norm_kind::layernorm) {
            check_forward<T>({kind, shape[0], shape[1], pad, false, residual, threads});
          }
        }
      }
    }
  }
}

TEST(CpuNorm, ForwardF32) { forward_sweep<float>(); }
TEST(CpuNorm, ForwardBf16) { forward_sweep<bf16>(); }

// Many rows and threads: each thread's share of the rows is right.
TEST(CpuNorm, ForwardManyRows) {
  check_forward<float>({norm_kind::layernorm, 333, 257, 5, true, true, 2});
  check_forward<bf16>({norm_kind::rmsnorm, 333, 257, 5, false, true, 2});
}

// ---------------------------------------------------------------------------------------------
// Backward against the analytic reference.

struct backward_case {
  norm_kind kind;
  index_t rows, dim, pad;
  bool accumulate_dx;
  int threads;
};

template <class T> void check_backward(const backward_case& c) {
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(testing::Message() << name(c.kind) << " backward " << c.rows << " x " << c.dim << " ld +" << c.pad
                                  << " accumulate_dx " << c.accumulate_dx << " threads " << c.threads << " "
                                  << kern::name(kern::dtype_of_v<T>) << " seed " << seed);
  std::mt19937 rng(seed);
  const index_t ld = c.dim + c.pad;
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
  std::vector<float> dweight = random_floats(rng, c.dim, -1.0f, 1.0f);
  std::vector<float> dbias = random_floats(rng, c.dim, -1.0f, 1.0f);
  const std::vector<float> dweight_before = dweight, dbias_before = dbias;

  kern::ops::norm_backward_params<T> p;
  p.kind = c.kind;
  p.x = x.cview();
  p.dy = dy.cview();
  p.weight = weight.data();
  p.mean = c.kind == norm_kind::layernorm ? mean.data() : nullptr;
  p.rstd = rstd.data();
  p.dx = dx.view();
  p.accumulate_dx = c.accumulate_dx;
  p.dweight = dweight.data();
  p.dbias = c.kind == norm_kind::layernorm ? dbias.data() : nullptr;
  kern::cpu::norm_backward(kern::cpu::context(c.threads), p);

  expect_backward_matches_reference<T>(
      {c.kind, x, dy, weight, mean, rstd, c.accumulate_dx, dx_before, dweight_before, dbias_before}, dx, dweight,
      dbias);
}

template <class T> void backward_sweep() {
  const index_t shapes[][2] = {{1, 1}, {1, 7}, {3, 16}, {5, 31}, {13, 100}, {70, 768}, {2, 4099}, {130, 33}};
  for (norm_kind kind : {norm_kind::layernorm, norm_kind::rmsnorm}) {
    for (const auto& shape : shapes) {
      for (int threads : {1, 2}) {
        const index_t pad = shape[1] % 2 == 1 ? 5 : 0;
        check_backward<T>({kind, shape[0], shape[1], pad, false, threads});
        check_backward<T>({kind, shape[0], shape[1], pad, true, threads});
      }
    }
  }
}

TEST(CpuNorm, BackwardF32) { backward_sweep<float>(); }
TEST(CpuNorm, BackwardBf16) { backward_sweep<bf16>(); }

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
  std::vector<float> h(static_cast<std::size_t>(n)), y(static_cast<std::size_t>(n));
  std::vector<float> mean(static_cast<std::size_t>(c.rows)), rstd(mean);
  const kern::cpu::context ctx(1);
  kern::ops::norm_forward_params<float> f;
  f.kind = c.kind;
  f.x = {in.x.data(), c.rows, c.dim};
  if (c.residual) {
    f.residual = {in.residual.data(), c.rows, c.dim};
    f.residual_out = {h.data(), c.rows, c.dim};
  } else {
    h = in.x;
  }
  f.weight = in.weight.data();
  f.bias = c.bias ? in.bias.data() : nullptr;
  f.y = {y.data(), c.rows, c.dim};
  f.mean = c.kind == norm_kind::layernorm ? mean.data() : nullptr;
  f.rstd = rstd.data();
  kern::cpu::norm_forward(ctx, f);
  const std::vector<float> dy(in.w.begin(), in.w.end());
  std::vector<float> dx(static_cast<std::size_t>(n), nan_value);
  std::vector<float> dweight(static_cast<std::size_t>(c.dim), 0.0f), dbias(dweight);
  kern::ops::norm_backward_params<float> b;
  b.kind = c.kind;
  b.x = {h.data(), c.rows, c.dim};
  b.dy = {dy.data(), c.rows, c.dim};
  b.weight = in.weight.data();
  b.mean = f.mean;
  b.rstd = rstd.data();
  b.dx = {dx.data(), c.rows, c.dim};
  b.dweight = dweight.data();
  b.dbias = c.bias ? dbias.data() : nullptr;
  kern::cpu::norm_backward(ctx, b);

  expect_gradients_match_finite_differences(c, in, h, mean, rstd, dx, dweight, dbias);
}

TEST(CpuNorm, BackwardMatchesFiniteDifferences) {
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

// y over x; and the residual stream updated in place (residual_out = residual).
TEST(CpuNorm, InPlace) {
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  const index_t rows = 9, dim = 37, n = rows * dim;
  const std::vector<float> x = random_floats(rng, n, -1.0f, 1.0f), residual = random_floats(rng, n, -1.0f, 1.0f);
  const std::vector<float> weight = random_floats(rng, dim, 0.5f, 1.5f);
  const kern::cpu::context ctx(2);
  // Out of place, as the reference.
  std::vector<float> h(x.size()), y(x.size());
  kern::ops::norm_forward_params<float> p;
  p.kind = norm_kind::rmsnorm;
  p.x = {x.data(), rows, dim};
  p.residual = {residual.data(), rows, dim};
  p.residual_out = {h.data(), rows, dim};
  p.weight = weight.data();
  p.y = {y.data(), rows, dim};
  kern::cpu::norm_forward(ctx, p);
  // In place: the stream (residual) becomes h, the block's output (x) becomes y.
  std::vector<float> stream = residual, block = x;
  p.x = {block.data(), rows, dim};
  p.residual = {stream.data(), rows, dim};
  p.residual_out = {stream.data(), rows, dim};
  p.y = {block.data(), rows, dim};
  kern::cpu::norm_forward(ctx, p);
  EXPECT_EQ(stream, h);
  EXPECT_EQ(block, y);
}

TEST(CpuNorm, EmptyIsANoOp) {
  const std::vector<float> weight(4, 1.0f);
  kern::ops::norm_forward_params<float> p;
  p.weight = weight.data();
  p.x = {nullptr, 0, 0, 1};
  p.y = {nullptr, 0, 0, 1};
  EXPECT_NO_THROW(kern::cpu::norm_forward(kern::cpu::context(2), p)); // 0 x 0, all null
  float mean = nan_value;
  p.x = {weight.data(), 0, 4};
  p.y = {nullptr, 0, 4, 4};
  p.mean = &mean;
  EXPECT_NO_THROW(kern::cpu::norm_forward(kern::cpu::context(2), p));
  EXPECT_TRUE(std::isnan(mean)); // no row, nothing written
  kern::ops::norm_backward_params<float> b;
  b.x = {nullptr, 3, 0, 1};
  b.dy = {nullptr, 3, 0, 1};
  b.dx = {nullptr, 3, 0, 1};
  b.weight = weight.data();
  b.mean = &mean;
  b.rstd = &mean;
  b.dweight = &mean;
  EXPECT_NO_THROW(kern::cpu::norm_backward(kern::cpu::context(2), b));
}

// A NaN in one row makes that row NaN, and only that row; Inf likewise is not clamped away.
TEST(CpuNorm, NanPropagates) {
  for (norm_kind kind : {norm_kind::layernorm, norm_kind::rmsnorm}) {
    SCOPED_TRACE(name(kind));
    const index_t rows = 4, dim = 21;
    std::vector<float> x(static_cast<std::size_t>(rows * dim), 0.5f), y(x.size()), dx(x.size());
    for (index_t j = 0; j < dim; ++j) {
      x[static_cast<std::size_t>(j)] = static_cast<float>(j); // row 0 finite, not constant
    }
    x[static_cast<std::size_t>(1 * dim + 3)] = nan_value;
    x[static_cast<std::size_t>(2 * dim + 5)] = std::numeric_limits<float>::infinity();
    const std::vector<float> weight(static_cast<std::size_t>(dim), 1.0f);
    std::vector<float> mean(static_cast<std::size_t>(rows)), rstd(mean);
    kern::ops::norm_forward_params<float> p;
    p.kind = kind;
    p.x = {x.data(), rows, dim};
    p.weight = weight.data();
    p.y = {y.data(), rows, dim};
    p.mean = kind == norm_kind::layernorm ? mean.data() : nullptr;
    p.rstd = rstd.data();
    kern::cpu::norm_forward(kern::cpu::context(1), p);
    for (index_t j = 0; j < dim; ++j) {
      EXPECT_TRUE(std::isfinite(y[static_cast<std::size_t>(j)])) << "row 0, column " << j;
      EXPECT_TRUE(std::isnan(y[static_cast<std::size_t>(dim + j)])) << "row 1, column " << j;
      EXPECT_TRUE(std::isfinite(y[static_cast<std::size_t>(3 * dim + j)])) << "row 3, column " << j;
    }
    EXPECT_FALSE(std::isfinite(y[static_cast<std::size_t>(2 * dim + 5)])) << "the Inf element";

    // Backward: a NaN gradient in row 1 reaches that row's dx and dweight, not row 0's dx.
    std::vector<float> dy(x.size(), 0.25f), dweight(static_cast<std::size_t>(dim), 0.0f);
    dy[static_cast<std::size_t>(dim + 2)] = nan_value;
    std::vector<float> x_ok(x.size(), 0.5f);
    for (std::size_t k = 0; k < x_ok.size(); ++k) {
      x_ok[k] = static_cast<float>(k % 7);
    }
    p.x = {x_ok.data(), rows, dim};
    kern::cpu::norm_forward(kern::cpu::context(1), p);
    kern::ops::norm_backward_params<float> b;
    b.kind = kind;
    b.x = {x_ok.data(), rows, dim};
    b.dy = {dy.data(), rows, dim};
    b.weight = weight.data();
    b.mean = p.mean;
    b.rstd = rstd.data();
    b.dx = {dx.data(), rows, dim};
    b.dweight = dweight.data();
    kern::cpu::norm_backward(kern::cpu::context(1), b);
    EXPECT_TRUE(std::isfinite(dx[0]));
    EXPECT_TRUE(std::isnan(dx[static_cast<std::size_t>(dim)]));
    EXPECT_TRUE(std::isnan(dweight[2]));
  }
}

// The same bits on every call and for 1 and 2 threads, parameter gradients included.
template <class T> void check_determinism() {
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(testing::Message() << kern::name(kern::dtype_of_v<T>) << " seed " << seed);
  std::mt19937 rng(seed);
  const index_t rows = 301, dim = 771, n = rows * dim; // several gradient blocks, both threads busy
  const std::vector<T> x = random_values<T>(rng, n), dy = random_values<T>(rng, n);
  const std::vector<float> weight = random_floats(rng, dim, 0.5f, 1.5f), bias = random_floats(rng, dim, -1.f, 1.f);
  struct outputs {
    std::vector<T> y, dx;
    std::vector<float> mean, rstd, dweight, dbias;
  };
  const auto run = [&](int threads) {
    outputs o{std::vector<T>(x.size()), std::vector<T>(x.size()),      std::vector<float>(rows),
              std::vector<float>(rows), std::vector<float>(dim, 0.5f), std::vector<float>(dim, 0.5f)};
    kern::ops::norm_forward_params<T> p;
    p.x = {x.data(), rows, dim};
    p.weight = weight.data();
    p.bias = bias.data();
    p.y = {o.y.data(), rows, dim};
    p.mean = o.mean.data();
    p.rstd = o.rstd.data();
    kern::cpu::norm_forward(kern::cpu::context(threads), p);
    kern::ops::norm_backward_params<T> b;
    b.x = {x.data(), rows, dim};
    b.dy = {dy.data(), rows, dim};
    b.weight = weight.data();
    b.mean = o.mean.data();
    b.rstd = o.rstd.data();
    b.dx = {o.dx.data(), rows, dim};
    b.dweight = o.dweight.data();
    b.dbias = o.dbias.data();
    kern::cpu::norm_backward(kern::cpu::context(threads), b);
    return o;
  };
  const outputs first = run(2), second = run(2), single = run(1);
  for (const outputs* o : {&second, &single}) {
    EXPECT_EQ(bits_of(o->y), bits_of(first.y));
    EXPECT_EQ(bits_of(o->dx), bits_of(first.dx));
    EXPECT_EQ(bits_of(o->mean), bits_of(first.mean));
    EXPECT_EQ(bits_of(o->rstd), bits_of(first.rstd));
    EXPECT_EQ(bits_of(o->dweight), bits_of(first.dweight));
    EXPECT_EQ(bits_of(o->dbias), bits_of(first.dbias));
  }
}

TEST(CpuNorm, DeterministicAcrossCallsAndThreadCounts) {
  check_determinism<float>();
  check_determinism<bf16>();
}

TEST(CpuNorm, RejectsBadArguments) {
  std::vector<float> x(64, 1.0f), y(64), h(64), weight(8, 1.0f), stats(8);
  const kern::cpu::context ctx(1);
  const auto valid = [&] {
    kern::ops::norm_forward_params<float> p;
    p.x = {x.data(), 8, 8};
    p.y = {y.data(), 8, 8};
    p.weight = weight.data();
    p.mean = stats.data();
    return p;
  };
  const auto forward_error = [&](const kern::ops::norm_forward_params<float>& p) {
    return error_of([&] { kern::cpu::norm_forward(ctx, p); });
  };
  EXPECT_EQ(forward_error(valid()), "(no error)");
  auto p = valid();
  p.x.rows = -1;
  EXPECT_EQ(forward_error(p), "kern::cpu::norm_forward: x is -1 x 8: sizes must not be negative");
  p = valid();
  p.y.cols = 7;
  EXPECT_EQ(forward_error(p), "kern::cpu::norm_forward: y is 8 x 7 but x is 8 x 8");
  p = valid();
  p.weight = nullptr;
  EXPECT_EQ(forward_error(p), "kern::cpu::norm_forward: weight is null but holds 8 elements");
  p = valid();
  p.epsilon = 0.0f;
  EXPECT_EQ(forward_error(p), "kern::cpu::norm_forward: epsilon = 0 must be positive and finite");
  p.epsilon = nan_value;
  EXPECT_NE(forward_error(p).find("epsilon = nan"), std::string::npos);
  p = valid();
  p.kind = norm_kind::rmsnorm;
  p.bias = weight.data();
  p.mean = nullptr;
  EXPECT_EQ(forward_error(p), "kern::cpu::norm_forward: bias applies to layernorm only");
  p.bias = nullptr;
  p.mean = stats.data();
  EXPECT_NE(forward_error(p).find("mean applies to layernorm only"), std::string::npos);
  p = valid();
  p.residual = {h.data(), 8, 8};
  EXPECT_EQ(forward_error(p), "kern::cpu::norm_forward: residual is given but residual_out is null");
  p = valid();
  p.residual_out = {h.data(), 8, 8};
  EXPECT_EQ(forward_error(p), "kern::cpu::norm_forward: residual_out is given but residual is not");
  p = valid();
  p.y = {x.data() + 1, 8, 8, 8}; // a partial overlap (exactly x would be in place)
  EXPECT_NE(forward_error(p).find("y overlaps x"), std::string::npos);
  p = valid();
  p.rstd = y.data() + 3;
  EXPECT_NE(forward_error(p).find("rstd overlaps y"), std::string::npos);
  p = valid();
  p.residual = {h.data(), 8, 8};
  p.residual_out = {y.data(), 8, 8};
  EXPECT_NE(forward_error(p).find("y overlaps residual_out"), std::string::npos);
  p = valid();
  p.kind = static_cast<norm_kind>(7);
  EXPECT_EQ(forward_error(p), "kern::cpu::norm_forward: kind = 7 is not a norm_kind");

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
  const auto backward_error = [&](const kern::ops::norm_backward_params<float>& b) {
    return error_of([&] { kern::cpu::norm_backward(ctx, b); });
  };
  EXPECT_EQ(backward_error(valid_backward()), "(no error)");
  auto b = valid_backward();
  b.mean = nullptr;
  EXPECT_EQ(backward_error(b), "kern::cpu::norm_backward: mean is null but holds 8 elements");
  b = valid_backward();
  b.rstd = nullptr;
  EXPECT_EQ(backward_error(b), "kern::cpu::norm_backward: rstd is null but holds 8 elements");
  b = valid_backward();
  b.dx = {x.data(), 8, 8};
  EXPECT_NE(backward_error(b).find("dx overlaps x"), std::string::npos);
  b = valid_backward();
  b.dx = {h.data(), 8, 8};
  EXPECT_EQ(backward_error(b), "(no error)"); // dx over dy: in place
  b.accumulate_dx = true;
  EXPECT_NE(backward_error(b).find("dx overlaps dy"), std::string::npos);
  b = valid_backward();
  b.dweight = weight.data();
  EXPECT_NE(backward_error(b).find("dweight overlaps weight"), std::string::npos);
  b = valid_backward();
  b.kind = norm_kind::rmsnorm;
  b.mean = nullptr;
  b.dbias = stats.data();
  EXPECT_EQ(backward_error(b), "kern::cpu::norm_backward: dbias applies to layernorm only");
  b = valid_backward();
  b.dy.rows = 4;
  EXPECT_EQ(backward_error(b), "kern::cpu::norm_backward: dy is 4 x 8 but x is 8 x 8");
}

} // namespace
