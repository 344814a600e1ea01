// kern::gpu::rope_forward / rope_backward against the float64 definition of the CPU tests
// (support/rope_reference.hpp), with the same tolerances.
//
// x is a strided view into a larger buffer whose padding holds a sentinel that must survive. Each
// case runs dense, with 8 values of padding after every head, position and batch item (16-byte
// strides where head_dim allows: the vector path, with partial units where rotary_dim ends inside
// one), and with the CPU test's padding of 3 in a buffer one element off 16-byte alignment (the
// pair-at-a-time path). Fresh seed per case, in the trace (KERN_TEST_SEED replays). Beyond the
// reference: the backward pass against finite differences, forward then backward returning x, half
// pairing equal to adjacent pairing on permuted head dims, a position offset equal to the tail of a
// longer sequence (bit for bit), determinism, NaN, bad arguments.
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <type_traits>
#include <vector>

#include <gtest/gtest.h>

#include "kern/gpu/rope.hpp"
#include "support/gpu_test.hpp"
#include "support/rope_reference.hpp"

namespace {

using kern::bf16;
using kern::f16;
using kern::index_t;
using kern::ops::rope_pairing;
using namespace kern::test;

// A host tensor's buffer on the device, `shift` elements into its allocation.
template <class T> class device_tensor {
public:
  device_tensor(const host_tensor<T>& t, index_t shift)
      : shift_(shift), buffer_(t.storage.size() + static_cast<std::size_t>(shift)) {
    kern::gpu::copy(data(), t.storage.data(), t.storage.size(), nullptr);
    kern::gpu::synchronize(nullptr);
  }
  T* data() const { return buffer_.data() + shift_; }
  // The device buffer now, into t's storage.
  void read_into(host_tensor<T>& t) const { t.storage = to_host(data(), t.storage.size()); }

private:
  index_t shift_;
  kern::gpu::device_buffer<T> buffer_;
};

// The tables in device memory.
struct device_tables {
  kern::gpu::device_buffer<float> cos, sin;
  index_t positions;
  explicit device_tables(const rope_tables& t) : cos(to_device(t.cos)), sin(to_device(t.sin)), positions(t.positions) {}
};

template <class T> kern::ops::rope_params<T> params(const host_tensor<T>& x, const device_tensor<T>& on_device,
                                                    rope_pairing pairing, index_t rotary, index_t offset,
                                                    const device_tables& t) {
  return rope_call(x.view_of(on_device.data()), pairing, rotary, offset, t.cos.data(), t.sin.data(), t.positions);
}

enum class layout : std::uint8_t { dense, padded, misaligned };
constexpr layout layouts[] = {layout::dense, layout::padded, layout::misaligned};
const char* layout_name(layout l) {
  return l == layout::dense ? "dense" : l == layout::padded ? "padded" : "misaligned";
}
index_t pad_of(layout l) { return l == layout::dense ? 0 : l == layout::padded ? 8 : 3; }
index_t shift_of(layout l) { return l == layout::misaligned ? 1 : 0; }

struct rope_case {
  rope_dims d;
  index_t rotary; // -1: head_dim
};
// The CPU test's cases, and two whose rotary_dim ends inside a 16-byte group of 16-bit values.
constexpr rope_case cases[] = {
    {{1, 1, 1, 2}, -1}, {{2, 5, 3, 64}, -1}, {{1, 7, 2, 34}, -1},  {{3, 4, 2, 128}, 64}, {{1, 3, 4, 16}, 8},
    {{2, 9, 3, 10}, 6}, {{1, 2, 1, 96}, 0},  {{2, 33, 5, 48}, -1}, {{2, 3, 2, 24}, 20},  {{1, 4, 2, 48}, 36},
};

template <class T> void check_reference(const rope_case& c, rope_pairing pairing, index_t offset, layout l) {
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(testing::Message() << pairing_name(pairing) << " " << type_name<T>() << " " << c.d.batch << "x"
                                  << c.d.seq << "x" << c.d.heads << "x" << c.d.head_dim << " rotary " << c.rotary
                                  << " offset " << offset << " " << layout_name(l) << " seed " << seed);
  std::mt19937 rng(seed);
  const index_t rotary = c.rotary < 0 ? c.d.head_dim : c.rotary;
  const device_tables t(rope_tables(offset + c.d.seq + 3, rotary));
  host_tensor<T> x(c.d, pad_of(l));
  x.assign(random_values<T>(rng, c.d.count()));
  const std::size_t sentinels = x.sentinels();
  const std::vector<double> xs = widen(x.values());

  const device_tensor<T> forward(x, shift_of(l)), backward(x, shift_of(l));
  kern::gpu::rope_forward(params(x, forward, pairing, c.rotary, offset, t), nullptr);
  kern::gpu::rope_backward(params(x, backward, pairing, c.rotary, offset, t), nullptr);
  forward.read_into(x);
  EXPECT_LT(relative_error(x.values(), rope_ref(xs, c.d, pairing, rotary, offset, false)), output_tolerance<T>());
  EXPECT_EQ(x.sentinels(), sentinels) << "wrote into the padding";
  backward.read_into(x);
  EXPECT_LT(relative_error(x.values(), rope_ref(xs, c.d, pairing, rotary, offset, true)), output_tolerance<T>());
  EXPECT_EQ(x.sentinels(), sentinels) << "wrote into the padding";
}

template <class T> void check_reference_cases() {
  for (const rope_case& c : cases) {
    for (rope_pairing pairing : {rope_pairing::adjacent, rope_pairing::half}) {
      for (layout l : layouts) {
        for (index_t offset : {0, 5}) {
          check_reference<T>(c, pairing, offset, l);
        }
      }
    }
  }
}

TEST(GpuRope, MatchesDefinitionF32) {
  KERN_REQUIRE_GPU();
  check_reference_cases<float>();
}
TEST(GpuRope, MatchesDefinitionBf16) {
  KERN_REQUIRE_GPU();
  check_reference_cases<bf16>();
}
TEST(GpuRope, MatchesDefinitionF16) {
  KERN_REQUIRE_GPU();
  check_reference_cases<f16>();
}

// rope_backward is the gradient of rope_forward: for L = sum(w * rope(x)), dL/dx = rope_backward(w).
TEST(GpuRope, BackwardMatchesFiniteDifferences) {
  KERN_REQUIRE_GPU();
  for (rope_pairing pairing : {rope_pairing::adjacent, rope_pairing::half}) {
    const std::uint32_t seed = fresh_seed();
    SCOPED_TRACE(testing::Message() << pairing_name(pairing) << " seed " << seed);
    std::mt19937 rng(seed);
    const rope_dims d{2, 3, 2, 12};
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
    const device_tables t(rope_tables(offset + d.seq, rotary));
    host_tensor<float> dx(d, 0);
    dx.assign(std::vector<float>(ws.begin(), ws.end()));
    const device_tensor<float> on_device(dx, 0);
    kern::gpu::rope_backward(params(dx, on_device, pairing, rotary, offset, t), nullptr);
    on_device.read_into(dx);
    EXPECT_LT(relative_error(dx.values(), numeric), 1e-6);
  }
}

template <class T> void check_round_trip(rope_pairing pairing) {
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(testing::Message() << pairing_name(pairing) << " " << type_name<T>() << " seed " << seed);
  std::mt19937 rng(seed);
  const rope_dims d{2, 20, 3, 80};
  const device_tables t(rope_tables(d.seq + 100, d.head_dim));
  host_tensor<T> x(d, 8);
  x.assign(random_values<T>(rng, d.count()));
  const std::vector<double> xs = widen(x.values());
  const device_tensor<T> on_device(x, 0);
  kern::gpu::rope_forward(params(x, on_device, pairing, -1, 100, t), nullptr);
  kern::gpu::rope_backward(params(x, on_device, pairing, -1, 100, t), nullptr);
  on_device.read_into(x);
  const double tolerance = std::is_same_v<T, float> ? 1e-6 : 2 * output_tolerance<T>(); // two roundings
  EXPECT_LT(relative_error(x.values(), xs), tolerance);
}

TEST(GpuRope, BackwardUndoesForward) {
  KERN_REQUIRE_GPU();
  for (rope_pairing pairing : {rope_pairing::adjacent, rope_pairing::half}) {
    check_round_trip<float>(pairing);
    check_round_trip<bf16>(pairing);
    check_round_trip<f16>(pairing);
  }
}

// Half pairing on x equals adjacent pairing on x's head dims reordered so that each pair
// (x[i], x[i + half]) sits at (2i, 2i + 1).
TEST(GpuRope, HalfEqualsAdjacentOnPermutedDims) {
  KERN_REQUIRE_GPU();
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  const rope_dims d{2, 6, 3, 40};
  const index_t rotary = 36, half = rotary / 2;
  const device_tables t(rope_tables(d.seq, rotary));
  host_tensor<float> x_half(d, 0), x_adjacent(d, 0);
  x_half.assign(random_values<float>(rng, d.count()));
  const auto permuted = [&](index_t i) { return i < rotary ? (i < half ? 2 * i : 2 * (i - half) + 1) : i; };
  x_half.for_each(
      [&](index_t b, index_t s, index_t h, index_t i) { x_adjacent.at(b, s, h, permuted(i)) = x_half.at(b, s, h, i); });
  const device_tensor<float> half_on_device(x_half, 0), adjacent_on_device(x_adjacent, 0);
  kern::gpu::rope_forward(params(x_half, half_on_device, rope_pairing::half, rotary, 0, t), nullptr);
  kern::gpu::rope_forward(params(x_adjacent, adjacent_on_device, rope_pairing::adjacent, rotary, 0, t), nullptr);
  half_on_device.read_into(x_half);
  adjacent_on_device.read_into(x_adjacent);
  std::vector<double> expected;
  std::vector<float> got;
  x_half.for_each([&](index_t b, index_t s, index_t h, index_t i) {
    expected.push_back(x_half.at(b, s, h, i));
    got.push_back(x_adjacent.at(b, s, h, permuted(i)));
  });
  EXPECT_LT(relative_error(got, expected), 1e-7);
}

// Decoding: positions [offset, offset + n) of a cache equal the last n positions of the whole
// sequence rotated from 0, bit for bit.
TEST(GpuRope, PositionOffsetMatchesLongerSequence) {
  KERN_REQUIRE_GPU();
  for (rope_pairing pairing : {rope_pairing::adjacent, rope_pairing::half}) {
    const std::uint32_t seed = fresh_seed();
    SCOPED_TRACE(testing::Message() << pairing_name(pairing) << " seed " << seed);
    std::mt19937 rng(seed);
    const index_t offset = 13, n = 5;
    const rope_dims whole{2, offset + n, 4, 64}, tail{2, n, 4, 64};
    const device_tables t(rope_tables(offset + n, 64));
    host_tensor<bf16> x_whole(whole, 8), x_tail(tail, 0);
    x_whole.assign(random_values<bf16>(rng, whole.count()));
    x_tail.for_each(
        [&](index_t b, index_t s, index_t h, index_t i) { x_tail.at(b, s, h, i) = x_whole.at(b, offset + s, h, i); });
    const device_tensor<bf16> whole_on_device(x_whole, 0), tail_on_device(x_tail, 0);
    kern::gpu::rope_forward(params(x_whole, whole_on_device, pairing, -1, 0, t), nullptr);
    kern::gpu::rope_forward(params(x_tail, tail_on_device, pairing, -1, offset, t), nullptr);
    whole_on_device.read_into(x_whole);
    tail_on_device.read_into(x_tail);
    std::vector<bf16> expected;
    x_tail.for_each(
        [&](index_t b, index_t s, index_t h, index_t i) { expected.push_back(x_whole.at(b, offset + s, h, i)); });
    EXPECT_TRUE(same_bits(x_tail.values(), expected));
  }
}

TEST(GpuRope, Deterministic) {
  KERN_REQUIRE_GPU();
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  const rope_dims d{2, 40, 4, 64};
  const device_tables t(rope_tables(d.seq, d.head_dim));
  const std::vector<float> start = random_values<float>(rng, d.count());
  std::vector<std::vector<float>> results;
  for (int run = 0; run < 2; ++run) {
    host_tensor<float> x(d, 0);
    x.assign(start);
    const device_tensor<float> on_device(x, 0);
    kern::gpu::rope_forward(params(x, on_device, rope_pairing::adjacent, -1, 0, t), nullptr);
    on_device.read_into(x);
    results.push_back(x.values());
  }
  EXPECT_TRUE(same_bits(results[0], results[1]));
}

TEST(GpuRope, NanStaysInItsPair) {
  KERN_REQUIRE_GPU();
  for (rope_pairing pairing : {rope_pairing::adjacent, rope_pairing::half}) {
    SCOPED_TRACE(pairing_name(pairing));
    const rope_dims d{1, 2, 1, 32};
    const device_tables t(rope_tables(d.seq, d.head_dim));
    host_tensor<float> x(d, 0);
    x.assign(std::vector<float>(static_cast<std::size_t>(d.count()), 0.25f));
    x.at(0, 1, 0, 4) = std::numeric_limits<float>::quiet_NaN();
    const device_tensor<float> on_device(x, 0);
    kern::gpu::rope_forward(params(x, on_device, pairing, -1, 0, t), nullptr);
    on_device.read_into(x);
    const index_t partner = pairing == rope_pairing::adjacent ? 5 : 20;
    x.for_each([&](index_t b, index_t s, index_t h, index_t i) {
      const bool expect_nan = s == 1 && (i == 4 || i == partner);
      EXPECT_EQ(std::isnan(x.at(b, s, h, i)), expect_nan) << "s " << s << " i " << i;
    });
  }
}

// Validation runs on the host before any launch, so host buffers stand in for device ones.
TEST(GpuRope, RejectsBadArguments) {
  KERN_REQUIRE_GPU();
  const rope_tables t(8, 16);
  host_tensor<float> x({1, 4, 2, 16}, 0);
  const auto run = [&](auto edit) {
    return [&, edit] {
      kern::ops::rope_params<float> p =
          rope_call(x.view(), rope_pairing::adjacent, -1, 0, t.cos.data(), t.sin.data(), t.positions);
      edit(p);
      kern::gpu::rope_forward(p, nullptr);
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
  expect_error(
      [&] {
        kern::gpu::rope_backward(kern::ops::rope_params<float>{x.view(), rope_pairing::half}, nullptr);
      },
      "rope_backward: position_offset + seq = 0 + 4 exceeds table_positions = 0");
  // Nothing to rotate: no tables needed, nothing launched.
  EXPECT_NO_THROW(run([](P& p) {
    p.rotary_dim = 0;
    p.cos_table = p.sin_table = nullptr;
  })());
}

} // namespace
