// kern::cpu::convert against the scalar conversions (themselves checked exhaustively in dtype_test).
#include <bit>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "kern/cpu.hpp"

namespace {

using kern::bf16;
using kern::f16;
using kern::index_t;

template <class T> std::uint32_t bits(T value) {
  if constexpr (std::is_same_v<T, float>) {
    return std::bit_cast<std::uint32_t>(value);
  } else {
    return value.bits;
  }
}

template <class Src, class Dst> void check_convert(index_t count, int threads, std::uint32_t seed) {
  SCOPED_TRACE(testing::Message() << "count " << count << " threads " << threads << " seed " << seed);
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 100.0f);
  std::vector<Src> src(static_cast<std::size_t>(count));
  for (auto& x : src) {
    x = kern::from_float<Src>(normal(rng));
  }
  if (count > 3) {
    src[1] = kern::from_float<Src>(NAN);
    src[2] = kern::from_float<Src>(-INFINITY);
  }
  // Poison: a value no conversion of these inputs produces, one past the end as a canary too.
  std::vector<Dst> dst(static_cast<std::size_t>(count) + 1, kern::from_float<Dst>(12345.0f));
  kern::cpu::convert(kern::cpu::context(threads), kern::ops::convert_params{src.data(), dst.data(), count});
  for (index_t i = 0; i < count; ++i) {
    const Dst expected = kern::from_float<Dst>(kern::to_float(src[static_cast<std::size_t>(i)]));
    ASSERT_EQ(bits(dst[static_cast<std::size_t>(i)]), bits(expected)) << "element " << i;
  }
  EXPECT_EQ(bits(dst.back()), bits(kern::from_float<Dst>(12345.0f))) << "wrote past the end";
}

template <class Src, class Dst> void check_sizes() {
  std::random_device seeds;
  for (index_t count : {0, 1, 7, 16, 17, 1000, (1 << 17) + 3}) {
    for (int threads : {1, 2}) {
      check_convert<Src, Dst>(count, threads, seeds());
    }
  }
}

TEST(CpuConvert, F32ToBf16) { check_sizes<float, bf16>(); }
TEST(CpuConvert, Bf16ToF32) { check_sizes<bf16, float>(); }
TEST(CpuConvert, F32ToF16) { check_sizes<float, f16>(); }
TEST(CpuConvert, F16ToF32) { check_sizes<f16, float>(); }
TEST(CpuConvert, Bf16ToF16) { check_sizes<bf16, f16>(); }

TEST(CpuConvert, RejectsBadArguments) {
  std::vector<float> a(16);
  std::vector<bf16> b(16);
  const kern::cpu::context ctx(1);
  auto message = [&](auto params) {
    try {
      kern::cpu::convert(ctx, params);
    } catch (const kern::error& e) {
      return std::string(e.what());
    }
    return std::string("(no error)");
  };
  EXPECT_EQ(message(kern::ops::convert_params{a.data(), b.data(), -1}),
            "kern::cpu::convert: count = -1 must not be negative");
  EXPECT_EQ(message(kern::ops::convert_params<float, bf16>{nullptr, b.data(), 4}),
            "kern::cpu::convert: src is null but holds 4 elements");
  EXPECT_EQ(message(kern::ops::convert_params<float, bf16>{a.data(), nullptr, 4}),
            "kern::cpu::convert: dst is null but holds 4 elements");
  const auto* overlap_src = reinterpret_cast<const float*>(b.data());
  EXPECT_NE(message(kern::ops::convert_params{overlap_src, b.data() + 2, 4}).find("dst overlaps src"),
            std::string::npos);
  EXPECT_EQ(message(kern::ops::convert_params<float, bf16>{nullptr, nullptr, 0}), "(no error)");
}

} // namespace
