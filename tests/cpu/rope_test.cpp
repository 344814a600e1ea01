// kern::cpu::rope_forward / rope_backward against a float64 implementation of each pairing's
// definition (angles computed in double from theta, not from the tables).
//
// x is a strided view into a larger buffer (padding after each head, position and batch item) whose
// padding holds a sentinel that must survive; inputs are random with a fresh seed per case (in the
// trace; KERN_TEST_SEED replays). Beyond the reference: the backward pass against finite
// differences, forward then backward returning x, half pairing equal to adjacent pairing on permuted
// head dims, and a position offset equal to the tail of a longer sequence.
#include <array>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "kern/cpu.hpp"
#include "support/kernel_test.hpp"
#include "support/rope_reference.hpp"

namespace {

using kern::bf16;
using kern::index_t;
using kern::ops::rope_pairing;
using namespace kern::test;

using dims = rope_dims;
using tables = rope_tables;

template <class T> kern::ops::rope_params<T> params(host_tensor<T>& x, rope_pairing pairing, index_t rotary,
                                                    index_t offset, const tables& t) {
  return rope_call(x.view(), pairing, rotary, offset, t.cos.data(), t.sin.data(), t.positions);
}

struct rope_case {
  dims d;
  index_t rotary; // -1: head_dim
};
constexpr rope_case cases[] = {
    {{1, 1, 1, 2}, -1}, {{2, 5, 3, 64}, -1}, {{1, 7, 2, 34}, -1}, {{3, 4, 2, 128}, 64},
    {{1, 3, 4, 16}, 8}, {{2, 9, 3, 10}, 6},  {{1, 2, 1, 96}, 0},  {{2, 33, 5, 48}, -1},
};

template <class T> void check_reference(const rope_case& c, rope_pairing pairing, index_t offset, int threads) {
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(testing::Message() << pairing_name(pairing) << " " << type_name<T>() << " " << c.d.batch << "x"
                                  << c.d.seq << "x" << c.d.heads << "x" << c.d.head_dim << " rotary " << c.rotary
                                  << " offset " << offset << " threads " << threads << " seed " << seed);
  std::mt19937 rng(seed);
  const index_t rotary = c.rotary < 0 ? c.d.head_dim : c.rotary;
  const tables t(offset + c.d.seq + 3, rotary);
  const kern::cpu::context ctx(threads);
  host_tensor<T> x(c.d, 3);
  x.assign(random_values<T>(rng, c.d.count()));
  const std::size_t sentinels = x.sentinels();
  const std::vector<double> xs = widen(x.values());

  kern::cpu::rope_forward(ctx, params(x, pairing, c.rotary, offset, t));
  const std::vector<double> forward_ref = rope_ref(xs, c.d, pairing, rotary, offset, false);
  EXPECT_LT(relative_error(x.values(), forward_ref), output_tolerance<T>());
  EXPECT_EQ(x.sentinels(), sentinels) << "wrote into the padding";

  x.assign(std::vector<T>(xs.begin(), xs.end()));
  kern::cpu::rope_backward(ctx, params(x, pairing, c.rotary, offset, t));
  EXPECT_LT(relative_error(x.values(), rope_ref(xs, c.d, pairing, rotary, offset, true)), output_tolerance<T>());
  EXPECT_EQ(x.sentinels(), sentinels) << "wrote into the padding";
}

TEST(CpuRope, MatchesDefinition) {
  for (const rope_case& c : cases) {
    for (rope_pairing pairing : {rope_pairing::adjacent, rope_pairing::half}) {
      for (int threads : {1, 2}) {
        for (index_t offset : {0, 5}) {
          check_reference<float>(c, pairing, offset, threads);
          check_reference<bf16>(c, pairing, offset, threads);
        }
      }
    }
  }
}

// rope_backward is the gradient of rope_forward: for L = sum(w * rope(x)), dL/dx = rope_backward(w).
TEST(CpuRope, BackwardMatchesFiniteDifferences) {
  for (rope_pairing pairing : {rope_pairing::adjacent, rope_pairing::half}) {
    const std::uint32_t seed = fresh_seed();
    SCOPED_TRACE(testing::Message() << pairing_name(pairing) << " seed " << seed);
    std::mt19937 rng(seed);
    const dims d{2, 3, 2, 12};
    const index_t rotary = 8, offset = 2;
    const std::vector<double> ws = widen(random_values<float>(rng, d.count()));
    std::vector<double> xs = widen(random_values<float>(rng, d.count()));
    const auto loss = [&](const std::vector<double>& in) {
      const std::vector<double> y = rope_ref(in, d, pairing, rotary, offset, false);
      double l = 0.0;
      for (std::size_t k = 0; k < y.size(); ++k) {
        l += ws[k] * y[k];
      }
      return l;
    };
    std::vector<double> numeric(xs.size());
    for (std::size_t k = 0; k < xs.size(); ++k) {
      const double x0 = xs[k], h = 1e-6;
      xs[k] = x0 + h;
      const double up = loss(xs);
      xs[k] = x0 - h;
      numeric[k] = (up - loss(xs)) / (2.0 * h);
      xs[k] = x0;
    }
    const tables t(offset + d.seq, rotary);
    host_tensor<float> dx(d, 0);
    dx.assign(std::vector<float>(ws.begin(), ws.end()));
    kern::cpu::rope_backward(kern::cpu::context(1), params(dx, pairing, rotary, offset, t));
    EXPECT_LT(relative_error(dx.values(), numeric), 1e-6);
  }
}

template <class T> void check_round_trip(rope_pairing pairing) {
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(testing::Message() << pairing_name(pairing) << " " << type_name<T>() << " seed " << seed);
  std::mt19937 rng(seed);
  const dims d{2, 40, 3, 80};
  const tables t(d.seq + 100, d.head_dim);
  host_tensor<T> x(d, 1);
  x.assign(random_values<T>(rng, d.count()));
  const std::vector<double> xs = widen(x.values());
  kern::cpu::rope_forward(kern::cpu::context(2), params(x, pairing, -1, 100, t));
  kern::cpu::rope_backward(kern::cpu::context(2), params(x, pairing, -1, 100, t));
  const double tolerance = std::is_same_v<T, float> ? 1e-6 : 2 * output_tolerance<T>(); // two roundings for bf16
  EXPECT_LT(relative_error(x.values(), xs), tolerance);
}

TEST(CpuRope, BackwardUndoesForward) {
  for (rope_pairing pairing : {rope_pairing::adjacent, rope_pairing::half}) {
    check_round_trip<float>(pairing);
    check_round_trip<bf16>(pairing);
  }
}

// Half pairing on x equals adjacent pairing on x's head dims reordered so that each pair
// (x[i], x[i + half]) sits at (2i, 2i + 1).
TEST(CpuRope, HalfEqualsAdjacentOnPermutedDims) {
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  const dims d{2, 6, 3, 40};
  const index_t rotary = 36, half = rotary / 2;
  const tables t(d.seq, rotary);
  host_tensor<float> x_half(d, 0), x_adjacent(d, 0);
  x_half.assign(random_values<float>(rng, d.count()));
  const auto permuted = [&](index_t i) { return i < rotary ? (i < half ? 2 * i : 2 * (i - half) + 1) : i; };
  x_half.for_each(
      [&](index_t b, index_t s, index_t h, index_t i) { x_adjacent.at(b, s, h, permuted(i)) = x_half.at(b, s, h, i); });
  kern::cpu::rope_forward(kern::cpu::context(1), params(x_half, rope_pairing::half, rotary, 0, t));
  kern::cpu::rope_forward(kern::cpu::context(1), params(x_adjacent, rope_pairing::adjacent, rotary, 0, t));
  std::vector<double> expected;
  std::vector<float> got;
  x_half.for_each([&](index_t b, index_t s, index_t h, index_t i) {
    expected.push_back(x_half.at(b, s, h, i));
    got.push_back(x_adjacent.at(b, s, h, permuted(i)));
  });
  EXPECT_LT(relative_error(got, expected), 1e-7);
}

// Decoding: positions [offset, offset + n) of a cache equal the last n positions of the whole
// sequence rotated from 0, bit for bit, at any thread count.
TEST(CpuRope, PositionOffsetMatchesLongerSequence) {
  for (rope_pairing pairing : {rope_pairing::adjacent, rope_pairing::half}) {
    const std::uint32_t seed = fresh_seed();
    SCOPED_TRACE(testing::Message() << pairing_name(pairing) << " seed " << seed);
    std::mt19937 rng(seed);
    const index_t offset = 13, n = 5;
    const dims whole{2, offset + n, 4, 64}, tail{2, n, 4, 64};
    const tables t(offset + n, 64);
    host_tensor<bf16> x_whole(whole, 2), x_tail(tail, 0);
    x_whole.assign(random_values<bf16>(rng, whole.count()));
    x_tail.for_each(
        [&](index_t b, index_t s, index_t h, index_t i) { x_tail.at(b, s, h, i) = x_whole.at(b, offset + s, h, i); });
    kern::cpu::rope_forward(kern::cpu::context(1), params(x_whole, pairing, -1, 0, t));
    kern::cpu::rope_forward(kern::cpu::context(2), params(x_tail, pairing, -1, offset, t));
    std::vector<bf16> expected;
    x_tail.for_each(
        [&](index_t b, index_t s, index_t h, index_t i) { expected.push_back(x_whole.at(b, offset + s, h, i)); });
    EXPECT_TRUE(same_bits(x_tail.values(), expected));
  }
}

TEST(CpuRope, DeterministicAcrossThreadCounts) {
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  const dims d{2, 300, 4, 64};
  const tables t(d.seq, d.head_dim);
  const std::vector<float> start = random_values<float>(rng, d.count());
  std::vector<std::vector<float>> results;
  for (int threads : {1, 2, 2}) {
    host_tensor<float> x(d, 0);
    x.assign(start);
    kern::cpu::rope_forward(kern::cpu::context(threads), params(x, rope_pairing::adjacent, -1, 0, t));
    results.push_back(x.values());
  }
  EXPECT_TRUE(same_bits(results[0], results[1]));
  EXPECT_TRUE(same_bits(results[0], results[2]));
}

TEST(CpuRope, NanStaysInItsPair) {
  for (rope_pairing pairing : {rope_pairing::adjacent, rope_pairing::half}) {
    SCOPED_TRACE(pairing_name(pairing));
    const dims d{1, 2, 1, 32};
    const tables t(d.seq, d.head_dim);
    host_tensor<float> x(d, 0);
    x.assign(std::vector<float>(static_cast<std::size_t>(d.count()), 0.25f));
    x.at(0, 1, 0, 4) = std::numeric_limits<float>::quiet_NaN();
    kern::cpu::rope_forward(kern::cpu::context(1), params(x, pairing, -1, 0, t));
    const index_t partner = pairing == rope_pairing::adjacent ? 5 : 20;
    x.for_each([&](index_t b, index_t s, index_t h, index_t i) {
      const bool expect_nan = s == 1 && (i == 4 || i == partner);
      EXPECT_EQ(std::isnan(x.at(b, s, h, i)), expect_nan) << "s " << s << " i " << i;
    });
  }
}

TEST(CpuRope, FillTableMatchesDefinition) {
  const index_t positions = 50, rotary = 20;
  std::vector<float> c(static_cast<std::size_t>(positions * rotary / 2)), s(c.size());
  kern::ops::fill_rope_table(c.data(), s.data(), positions, rotary, 500000.0);
  for (index_t p = 0; p < positions; ++p) {
    for (index_t i = 0; i < rotary / 2; ++i) {
      const double angle = static_cast<double>(p) / std::pow(500000.0, static_cast<double>(2 * i) / rotary);
      const auto k = static_cast<std::size_t>(p * rotary / 2 + i);
      EXPECT_EQ(c[k], static_cast<float>(std::cos(angle))) << p << " " << i;
      EXPECT_EQ(s[k], static_cast<float>(std::sin(angle))) << p << " " << i;
    }
  }
}

TEST(CpuRope, RejectsBadArguments) {
  const kern::cpu::context ctx(1);
  const tables t(8, 16);
  host_tensor<float> x({1, 4, 2, 16}, 0);
  const auto run = [&](auto edit) {
    return [&, edit] {
      kern::ops::rope_params<float> p = params(x, rope_pairing::adjacent, -1, 0, t);
      edit(p);
      kern::cpu::rope_forward(ctx, p);
    };
  };
  using P = kern::ops::rope_params<float>;
  expect_error(run([](P& p) { p.rotary_dim = 7; }), "rotary_dim = 7");
  expect_error(run([](P& p) { p.rotary_dim = 18; }), "rotary_dim = 18 exceeds head_dim = 16");
  expect_error(run([](P& p) { p.rotary_dim = -2; }), "rotary_dim = -2");
  expect_error(run([](P& p) { p.position_offset = 5; }), "exceeds table_positions = 8");
  expect_error(run([](P& p) { p.position_offset = -1; }), "position_offset = -1");
  expect_error(run([](P& p) { p.sin_table = nullptr; }), "sin_table is null");
  expect_error(run([](P& p) { p.cos_table = nullptr; }), "cos_table is null");
  expect_error(run([](P& p) { p.pairing = rope_pairing(3); }), "pairing = 3");
  expect_error(run([](P& p) { p.x.strides[3] = 2; }), "x.strides[3] = 2");
  expect_error(run([](P& p) { p.x.strides[2] = 8; }), "x.strides[2] = 8");
  expect_error(run([](P& p) { p.x.shape[1] = -1; }), "x.shape[1] = -1");
  expect_error(run([](P& p) { p.x.data = nullptr; }), "x.data is null");
  expect_error(run([&](P& p) { p.cos_table = reinterpret_cast<const float*>(x.storage.data()); }),
               "x overlaps cos_table");
  expect_error([] { kern::ops::fill_rope_table(nullptr, nullptr, 4, 3); }, "rotary_dim = 3");
  expect_error([] { kern::ops::fill_rope_table(nullptr, nullptr, 4, 8); }, "cos_table is null");
  // Nothing to rotate: no tables needed.
  EXPECT_NO_THROW(run([](P& p) {
    p.rotary_dim = 0;
    p.cos_table = p.sin_table = nullptr;
  })());
}

} // namespace
