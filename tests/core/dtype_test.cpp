// bf16 / f16: exhaustive round trips, and float -> 16-bit rounding against an independent reference
// (nearest neighbour found by search in double arithmetic) and, where the CPU has it, the hardware.
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include <gtest/gtest.h>

#include "kern/core/cpu_info.hpp"
#include "kern/core/dtype.hpp"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace {

using kern::bf16;
using kern::f16;

std::uint32_t bits_of(float value) { return std::bit_cast<std::uint32_t>(value); }
float float_of(std::uint32_t bits) { return std::bit_cast<float>(bits); }

// The exact value of a finite, non-negative 16-bit pattern; the first pattern past the largest
// finite one (the Inf pattern) stands for the next power of two, which is where rounding overflows.
double bf16_value(std::uint32_t magnitude_bits) {
  if (magnitude_bits == 0x7f80u) {
    return std::ldexp(1.0, 128);
  }
  return static_cast<double>(float_of(magnitude_bits << 16));
}
double f16_value(std::uint32_t magnitude_bits) {
  const int exponent = static_cast<int>(magnitude_bits >> 10);
  const int mantissa = static_cast<int>(magnitude_bits & 0x3ffu);
  if (exponent == 0) {
    return std::ldexp(mantissa, -24);
  }
  return std::ldexp(1024 + mantissa, exponent - 25); // the Inf pattern gives 2^16
}

// Round |x| to the nearest of the patterns 0..inf_bits (ordered by value), ties to the even pattern.
template <class Value> std::uint16_t reference_round(float x, std::uint32_t inf_bits, Value value_of) {
  const double target = std::fabs(static_cast<double>(x));
  std::uint32_t lo = 0, hi = inf_bits; // invariant: value(lo) <= target, or lo == 0
  while (hi - lo > 1) {
    const std::uint32_t mid = (lo + hi) / 2;
    (value_of(mid) <= target ? lo : hi) = mid;
  }
  if (value_of(hi) <= target) {
    lo = hi;
  }
  std::uint32_t result = lo;
  if (lo < inf_bits) {
    const double below = target - value_of(lo);
    const double above = value_of(lo + 1) - target;
    if (above < below || (above == below && (lo & 1u))) {
      result = lo + 1;
    }
  }
  const std::uint32_t sign = std::signbit(x) ? 0x8000u : 0u;
  return static_cast<std::uint16_t>(sign | result);
}

std::uint16_t reference_bf16(float x) { return reference_round(x, 0x7f80u, bf16_value); }
std::uint16_t reference_f16(float x) { return reference_round(x, 0x7c00u, f16_value); }

bool is_nan_bf16(std::uint16_t b) { return (b & 0x7fffu) > 0x7f80u; }
bool is_nan_f16(std::uint16_t h) { return (h & 0x7fffu) > 0x7c00u; }

#if defined(__x86_64__)
__attribute__((target("f16c"))) std::uint16_t hardware_f16(float x) {
  return static_cast<std::uint16_t>(_mm_extract_epi16(_mm_cvtps_ph(_mm_set_ss(x), _MM_FROUND_TO_NEAREST_INT), 0));
}
__attribute__((target("f16c"))) float hardware_f16_to_float(std::uint16_t h) {
  return _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h)));
}
__attribute__((target("avx512f,avx512bf16"))) std::uint16_t hardware_bf16(float x) {
  const __m256bh converted = _mm512_cvtneps_pbh(_mm512_set1_ps(x));
  std::uint16_t lanes[16];
  std::memcpy(lanes, &converted, sizeof(lanes));
  return lanes[0];
}
#endif

bool have_f16c() { return kern::cpu::info().f16c; }
bool have_avx512_bf16() { return kern::cpu::info().detected >= kern::cpu::isa::avx512_bf16; }

// 10^7 floats: half uniform over all bit patterns, half with exponents around the 16-bit ranges,
// where the interesting rounding (subnormals, overflow) happens.
std::vector<float> random_floats(std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<std::uint32_t> any;
  std::uniform_int_distribution<std::uint32_t> exponent(95, 150);
  std::vector<float> values(10'000'000);
  for (std::size_t i = 0; i < values.size(); ++i) {
    std::uint32_t b = any(rng);
    if (i % 2) {
      b = (b & 0x807fffffu) | (exponent(rng) << 23);
    }
    values[i] = float_of(b);
  }
  return values;
}

std::vector<float> edge_cases() {
  std::vector<std::uint32_t> bits = {
      0x00000000, 0x00000001, 0x007fffff, 0x00800000, 0x3f800000, 0x3f808000, 0x3f818000, 0x3f807fff, 0x3f808001,
      0x7f7f0000, 0x7f7f7fff, 0x7f7f8000, 0x7f7fffff, 0x7f800000, 0x7f800001, 0x7fc00000, 0x7fffffff, 0x7fa00000,
      0x00008000, 0x00018000, 0x0000ffff,
      // f16: largest finite 65504, just below and at the overflow midpoint 65520, 2^-14, 2^-24, 2^-25
      0x477fe000, 0x477fefff, 0x477ff000, 0x477ff001, 0x38800000, 0x387fffff, 0x387fe000, 0x387ff000, 0x33800000,
      0x33000000, 0x33000001, 0x32ffffff, 0x33400000, 0x33c00000, 0x3f801000, 0x3f803000};
  std::vector<float> values;
  for (std::uint32_t b : bits) {
    values.push_back(float_of(b));
    values.push_back(float_of(b | 0x80000000u));
  }
  values.push_back(std::numeric_limits<float>::max());
  values.push_back(std::numeric_limits<float>::lowest());
  values.push_back(std::numeric_limits<float>::denorm_min());
  return values;
}

TEST(Bf16, EveryPatternRoundTripsThroughFloat) {
  for (std::uint32_t b = 0; b <= 0xffffu; ++b) {
    const auto bits = static_cast<std::uint16_t>(b);
    const float wide = bf16::from_bits(bits);
    EXPECT_EQ(bits_of(wide), b << 16) << "widening is exact";
    const std::uint16_t back = bf16(wide).bits;
    if (is_nan_bf16(bits)) {
      ASSERT_TRUE(std::isnan(wide)) << std::hex << b;
      ASSERT_EQ(back, bits | 0x0040u) << "NaN stays NaN (quiet, sign and payload kept) " << std::hex << b;
    } else {
      ASSERT_EQ(back, bits) << std::hex << b;
    }
  }
}

TEST(F16, EveryPatternRoundTripsThroughFloat) {
  for (std::uint32_t h = 0; h <= 0xffffu; ++h) {
    const auto bits = static_cast<std::uint16_t>(h);
    const float wide = f16::from_bits(bits);
    if (is_nan_f16(bits)) {
      ASSERT_TRUE(std::isnan(wide)) << std::hex << h;
      ASSERT_EQ(f16(wide).bits, bits | 0x0200u) << "NaN stays NaN (quiet, sign and payload kept) " << std::hex << h;
      continue;
    }
    const double exact = f16_value(bits & 0x7fffu) * ((bits & 0x8000u) ? -1.0 : 1.0);
    const double reference = (bits & 0x7fffu) == 0x7c00u ? std::copysign(INFINITY, exact) : exact;
    ASSERT_EQ(static_cast<double>(wide), reference) << std::hex << h;
    ASSERT_EQ(std::signbit(wide), (bits & 0x8000u) != 0) << std::hex << h;
    ASSERT_EQ(f16(wide).bits, bits) << std::hex << h;
#if defined(__x86_64__)
    if (have_f16c()) {
      ASSERT_EQ(bits_of(wide), bits_of(hardware_f16_to_float(bits))) << std::hex << h;
    }
#endif
  }
}

void expect_matches_reference(const std::vector<float>& values, const char* what) {
  std::size_t checked_hw_bf16 = 0, checked_hw_f16 = 0;
  for (float x : values) {
    const std::uint16_t b = bf16(x).bits;
    const std::uint16_t h = f16(x).bits;
    if (std::isnan(x)) {
      ASSERT_TRUE(is_nan_bf16(b)) << what << " " << std::hex << bits_of(x);
      ASSERT_TRUE(is_nan_f16(h)) << what << " " << std::hex << bits_of(x);
      ASSERT_EQ(b >> 15, bits_of(x) >> 31);
      ASSERT_EQ(h >> 15, bits_of(x) >> 31);
      continue;
    }
    ASSERT_EQ(b, reference_bf16(x)) << what << " bf16 of " << std::hex << bits_of(x);
    ASSERT_EQ(h, reference_f16(x)) << what << " f16 of " << std::hex << bits_of(x);
#if defined(__x86_64__)
    if (have_f16c()) {
      ASSERT_EQ(h, hardware_f16(x)) << what << " f16 (vcvtps2ph) of " << std::hex << bits_of(x);
      ++checked_hw_f16;
    }
    // vcvtneps2bf16 treats subnormal inputs as zero; compare it on normal numbers only.
    if (have_avx512_bf16() && std::isnormal(x)) {
      ASSERT_EQ(b, hardware_bf16(x)) << what << " bf16 (vcvtneps2bf16) of " << std::hex << bits_of(x);
      ++checked_hw_bf16;
    }
#endif
  }
  testing::Test::RecordProperty("hardware_checked_f16", static_cast<int>(checked_hw_f16));
  testing::Test::RecordProperty("hardware_checked_bf16", static_cast<int>(checked_hw_bf16));
}

TEST(Float16Types, RoundingMatchesReferenceOnEdgeCases) { expect_matches_reference(edge_cases(), "edge case"); }

TEST(Float16Types, RoundingMatchesReferenceOnTenMillionRandomFloats) {
  const std::uint32_t seed = std::random_device{}();
  SCOPED_TRACE(testing::Message() << "seed " << seed);
  expect_matches_reference(random_floats(seed), "random");
}

TEST(Float16Types, KnownValues) {
  EXPECT_EQ(bf16(1.0f).bits, 0x3f80);
  EXPECT_EQ(bf16(float_of(0x3f808000)).bits, 0x3f80) << "tie to even (down)";
  EXPECT_EQ(bf16(float_of(0x3f818000)).bits, 0x3f82) << "tie to even (up)";
  EXPECT_EQ(bf16(float_of(0x7f7f8000)).bits, 0x7f80) << "rounds to Inf";
  EXPECT_EQ(bf16(float_of(0x7f7f7fff)).bits, 0x7f7f) << "largest finite";
  EXPECT_EQ(bf16(float_of(0x00008000)).bits, 0x0000) << "subnormal tie to even";
  EXPECT_EQ(bf16(float_of(0x00018000)).bits, 0x0002) << "subnormal tie to even";
  EXPECT_EQ(f16(65504.0f).bits, 0x7bff);
  EXPECT_EQ(f16(65519.0f).bits, 0x7bff);
  EXPECT_EQ(f16(65520.0f).bits, 0x7c00) << "the overflow midpoint rounds to Inf";
  EXPECT_EQ(f16(0x1p-24f).bits, 0x0001) << "smallest subnormal";
  EXPECT_EQ(f16(0x1p-25f).bits, 0x0000) << "half the smallest subnormal ties to zero";
  EXPECT_EQ(f16(0x1.8p-24f).bits, 0x0002) << "1.5 ulp ties to even";
  EXPECT_EQ(f16(-2.0f).bits, 0xc000);
  EXPECT_EQ(f16(-0.0f).bits, 0x8000);
  EXPECT_EQ(static_cast<float>(f16::from_bits(0x3555)), 0x1.554p-2f);
}

TEST(Float16Types, ArithmeticGoesThroughFloat) {
  bf16 a(1.5f);
  const bf16 b(2.25f);
  EXPECT_EQ(a + b, 3.75f);
  EXPECT_EQ(a * b, 3.375f);
  a += 1.0f;
  EXPECT_EQ(static_cast<float>(a), 2.5f);
  f16 c(0.1f);
  c *= 10.0f;
  EXPECT_EQ(static_cast<float>(c), static_cast<float>(f16(static_cast<float>(f16(0.1f)) * 10.0f)));
  static_assert(bf16(1.0f).bits == 0x3f80, "conversions are constexpr");
  static_assert(kern::dtype_of_v<bf16> == kern::dtype::bf16 && kern::dtype_of_v<float> == kern::dtype::f32);
  static_assert(kern::name(kern::dtype::f16) == "f16" && kern::size_of(kern::dtype::bf16) == 2);
}

} // namespace
