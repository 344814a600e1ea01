// The emulated AMX tiles (kern/cpu/gemm/amx_tiles.hpp) that the AMX GEMM kernel runs on where the
// CPU has no AMX: tdpbf16ps against a float64 reference on random tiles of full and partial shapes,
// the SDM's order of sums and its DAZ / FTZ rules on values that tell them apart, and every misuse a
// processor would fault on, each a kern::error naming it.
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "kern/core/dtype.hpp"
#include "kern/cpu/gemm/amx_tiles.hpp"

namespace {

using kern::index_t;
using kern::cpu::detail::amx_config_of;
using kern::cpu::detail::amx_tile;
using kern::cpu::detail::amx_tile_config;

struct test_arch {}; // the emulation's ISA tag: any type
using tiles = kern::cpu::detail::amx_emulated_tiles<test_arch>;

std::uint16_t bits_of(float x) { return kern::bf16(x).bits; }
float value_of(std::uint16_t bits) { return static_cast<float>(std::bit_cast<kern::bf16>(bits)); }

// C (M x N fp32) += A (M x 2K bf16) B (K pairs x N): random tiles, one tdpbf16ps, against float64.
template <int M, int K, int N> void check_dp_against_reference() {
  using c_tile = amx_tile<1, M, 4 * N>;
  using a_tile = amx_tile<3, M, 4 * K>;
  using b_tile = amx_tile<6, K, 4 * N>;
  const std::uint32_t seed = std::random_device{}();
  SCOPED_TRACE(testing::Message() << "M " << M << " K pairs " << K << " N " << N << " seed " << seed);
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  // Memory rows wider than the tiles (a stride above the row length), the rest poisoned with NaN.
  constexpr index_t ld = 40; // elements of 16 or 32 bits per memory row
  std::vector<std::uint16_t> a(M * ld, bits_of(NAN)), b(K * ld, bits_of(NAN));
  std::vector<float> c(M * ld, NAN), out(M * ld, -1.0f);
  for (index_t m = 0; m < M; ++m) {
    for (index_t j = 0; j < index_t{2} * K; ++j) {
      a[m * ld + j] = bits_of(normal(rng));
    }
    for (index_t n = 0; n < N; ++n) {
      c[m * ld + n] = normal(rng);
    }
  }
  for (index_t k = 0; k < K; ++k) {
    for (index_t j = 0; j < index_t{2} * N; ++j) {
      b[k * ld + j] = bits_of(normal(rng));
    }
  }
  static constexpr amx_tile_config config = amx_config_of<c_tile, a_tile, b_tile>();
  tiles::load_config(&config);
  tiles::load(c_tile{}, c.data(), ld * 4);
  tiles::load(a_tile{}, a.data(), ld * 2);
  tiles::load(b_tile{}, b.data(), ld * 2);
  tiles::dpbf16ps(c_tile{}, a_tile{}, b_tile{});
  tiles::store(c_tile{}, out.data(), ld * 4);

  for (index_t m = 0; m < M; ++m) {
    for (index_t n = 0; n < N; ++n) {
      double want = c[m * ld + n], scale = std::abs(want);
      for (index_t k = 0; k < K; ++k) {
        for (index_t h = 0; h < 2; ++h) {
          const double p = static_cast<double>(value_of(a[m * ld + 2 * k + h])) * value_of(b[k * ld + 2 * n + h]);
          want += p;
          scale += std::abs(p);
        }
      }
      // fp32 sums of at most 34 exact terms: a few units of 2^-24 of the terms' size.
      EXPECT_NEAR(out[m * ld + n], want, 4e-6 * scale) << "C(" << m << ", " << n << ")";
    }
    for (index_t n = N; n < ld; ++n) {
      EXPECT_EQ(out[m * ld + n], -1.0f) << "stored past the row at C(" << m << ", " << n << ")";
    }
  }
  // The parts of C's register outside its shape are zero (the SDM's write_row_and_zero, zero_upper_rows).
  const auto& reg = tiles::tiles().data[c_tile::index];
  for (int r = 0; r < 16; ++r) {
    for (int byte = r < M ? 4 * N : 0; byte < 64; ++byte) {
      ASSERT_EQ(reg[r][byte], 0) << "row " << r << " byte " << byte;
    }
  }
}

TEST(CpuAmxEmulatedTiles, DpMatchesReferenceOnFullTiles) { check_dp_against_reference<16, 16, 16>(); }

TEST(CpuAmxEmulatedTiles, DpMatchesReferenceOnPartialTiles) {
  check_dp_against_reference<1, 1, 1>();
  check_dp_against_reference<5, 3, 7>();
  check_dp_against_reference<16, 1, 16>();
  check_dp_against_reference<3, 16, 2>();
  check_dp_against_reference<16, 9, 13>();
}

// One 1 x 1 product of a tile row of A (pairs) and a column of B: C(0, 0) = c + sum a b.
float dot_one(const std::vector<float>& a_values, const std::vector<float>& b_values, float c = 0.0f) {
  using c_tile = amx_tile<0, 1, 4>;
  using a_tile = amx_tile<1, 1, 64>;
  using b_tile = amx_tile<2, 16, 4>;
  std::uint16_t a[32] = {}, b[16][2] = {};
  for (std::size_t i = 0; i < a_values.size(); ++i) {
    a[i] = bits_of(a_values[i]);
    b[i / 2][i % 2] = bits_of(b_values[i]);
  }
  static constexpr amx_tile_config config = amx_config_of<c_tile, a_tile, b_tile>();
  tiles::load_config(&config);
  tiles::load(c_tile{}, &c, 4);
  tiles::load(a_tile{}, a, 64);
  tiles::load(b_tile{}, b, 4);
  tiles::dpbf16ps(c_tile{}, a_tile{}, b_tile{});
  float out = NAN;
  tiles::store(c_tile{}, &out, 4);
  return out;
}

// The SDM sums the even and the odd products of the pairs separately over K, then adds the two:
// with pairs (2^25, 1) and (-2^25, 1) times (1, 1) that gives 0 + 2 = 2, where one running sum
// would give ((2^25 + 1) - 2^25) + 1 = 1 (2^25 + 1 rounds to 2^25 in fp32).
TEST(CpuAmxEmulatedTiles, DpSumsEvenAndOddProductsApart) {
  const float big = 0x1p25f;
  EXPECT_EQ(dot_one({big, 1.0f, -big, 1.0f}, {1.0f, 1.0f, 1.0f, 1.0f}), 2.0f);
  // Then C is added last: 2^25 + (1 + 1) = 2^25 + 2, exact.
  EXPECT_EQ(dot_one({1.0f, 1.0f}, {1.0f, 1.0f}, big), big + 2.0f);
}

// Products of two bf16 are exact in fp32; subnormal inputs count as zero (DAZ) and subnormal
// results become zero (FTZ).
TEST(CpuAmxEmulatedTiles, DpProductsAreExactWithDazAndFtz) {
  const float x = 1.0f + 0x1p-7f; // a bf16 with its last mantissa bit set
  EXPECT_EQ(dot_one({x, 0.0f}, {x, 0.0f}), x * x);
  const float subnormal = value_of(0x0001); // 2^-133 as a bf16
  ASSERT_GT(subnormal, 0.0f);
  EXPECT_EQ(dot_one({subnormal, 0.0f}, {0x1p100f, 0.0f}), 0.0f) << "a subnormal input must read as zero";
  EXPECT_EQ(dot_one({0x1p-70f, 0.0f}, {0x1p-70f, 0.0f}), 0.0f) << "a subnormal result (2^-140) must be flushed";
  EXPECT_EQ(dot_one({0x1p-60f, 0.0f}, {0x1p-60f, 0.0f}), 0x1p-120f) << "a normal result stays";
  EXPECT_EQ(dot_one({0.0f, 0.0f}, {0.0f, 0.0f}, 0x1p-130f), 0.0f) << "a subnormal C must read as zero";
}

// ---------------------------------------------------------------------------------------------
// Misuse: what the processor faults on (#GP on ldtilecfg, #UD on the tile instructions) or would
// silently get wrong (a shape other than the configured one) throws kern::error naming it.

template <class Call> std::string message_of(Call&& call) {
  try {
    call();
  } catch (const kern::error& e) {
    return e.what();
  }
  return "(no kern::error thrown)";
}

testing::AssertionResult names(const std::string& message, const std::string& part) {
  if (message.find("(emulated)") != std::string::npos && message.find(part) != std::string::npos) {
    return testing::AssertionSuccess();
  }
  return testing::AssertionFailure() << "expected an emulated AMX error naming \"" << part << "\", got \"" << message
                                     << "\"";
}

using t0 = amx_tile<0, 16, 64>;
using t1 = amx_tile<1, 16, 64>;
using t2 = amx_tile<2, 16, 64>;

TEST(CpuAmxEmulatedTiles, RejectsABadConfiguration) {
  auto load = [](const amx_tile_config& config) { return message_of([&] { tiles::load_config(&config); }); };
  amx_tile_config good = amx_config_of<t0, t1, t2>();
  EXPECT_EQ(load(good), "(no kern::error thrown)");
  EXPECT_TRUE(names(message_of([] { tiles::load_config(nullptr); }), "configuration pointer is null"));
  amx_tile_config bad = good;
  bad.palette = 2;
  EXPECT_TRUE(names(load(bad), "palette 2 is not supported"));
  bad = good;
  bad.palette = 0;
  EXPECT_TRUE(names(load(bad), "palette 0 is not supported"));
  bad = good;
  bad.rows[1] = 17;
  EXPECT_TRUE(names(load(bad), "tile 1 has 17 rows (at most 16)"));
  bad = good;
  bad.colsb[2] = 65;
  EXPECT_TRUE(names(load(bad), "tile 2 has 65 bytes per row (at most 64)"));
  bad = good;
  bad.rows[3] = 4;
  EXPECT_TRUE(names(load(bad), "tile 3 is half configured: 4 rows x 0 bytes"));
  bad = good;
  bad.rows[9] = 1;
  bad.colsb[9] = 4;
  EXPECT_TRUE(names(load(bad), "tile 9 does not exist in palette 1"));
  bad = good;
  bad.reserved[5] = 1;
  EXPECT_TRUE(names(load(bad), "reserved bytes"));
  bad = good;
  bad.start_row = 3;
  EXPECT_TRUE(names(load(bad), "start_row = 3"));
}

TEST(CpuAmxEmulatedTiles, RejectsTileUseWithoutAConfiguration) {
  tiles::release();
  EXPECT_TRUE(names(message_of([] { tiles::zero(t0{}); }), "no tile configuration is loaded"));
  static constexpr amx_tile_config config = amx_config_of<t0>();
  tiles::load_config(&config);
  EXPECT_EQ(message_of([] { tiles::zero(t0{}); }), "(no kern::error thrown)");
  tiles::release();
  EXPECT_TRUE(names(message_of([] { tiles::zero(t0{}); }), "no tile configuration is loaded"));
  // Each thread has its own tiles: a configuration on this thread is none on another.
  tiles::load_config(&config);
  std::string other;
  std::thread([&] { other = message_of([] { tiles::zero(t0{}); }); }).join();
  EXPECT_TRUE(names(other, "no tile configuration is loaded on this thread"));
}

TEST(CpuAmxEmulatedTiles, RejectsBadTilesAndPointers) {
  static constexpr amx_tile_config config = amx_config_of<t0, t1, t2>();
  tiles::load_config(&config);
  float buffer[16 * 16] = {};
  EXPECT_TRUE(names(message_of([] { tiles::zero(amx_tile<8, 16, 64>{}); }), "tile index 8 is out of range"));
  EXPECT_TRUE(names(message_of([] { tiles::zero(amx_tile<-1, 16, 64>{}); }), "tile index -1 is out of range"));
  EXPECT_TRUE(names(message_of([] { tiles::zero(amx_tile<5, 16, 64>{}); }), "tmm5 is not configured"));
  EXPECT_TRUE(names(message_of([&] { tiles::load(amx_tile<0, 8, 64>{}, buffer, 64); }),
                    "tmm0 is configured as 16 rows x 64 bytes but used as 8 rows x 64 bytes"));
  EXPECT_TRUE(names(message_of([&] { tiles::store(amx_tile<1, 16, 32>{}, buffer, 64); }),
                    "tmm1 is configured as 16 rows x 64 bytes but used as 16 rows x 32 bytes"));
  EXPECT_TRUE(names(message_of([] { tiles::load(t0{}, nullptr, 64); }), "tmm0: the base address is null"));
  EXPECT_TRUE(names(message_of([] { tiles::store(t1{}, nullptr, 64); }), "tmm1: the base address is null"));
  EXPECT_EQ(message_of([&] { tiles::load(t0{}, buffer, 64); }), "(no kern::error thrown)");
  EXPECT_TRUE(names(message_of([] { tiles::dpbf16ps(t0{}, t0{}, t1{}); }), "must be three different tiles"));
}

TEST(CpuAmxEmulatedTiles, RejectsDpShapesThatDisagree) {
  using c16 = amx_tile<0, 16, 64>;
  using a16 = amx_tile<1, 16, 64>;
  using b8 = amx_tile<2, 8, 64>;
  static constexpr amx_tile_config k_mismatch = amx_config_of<c16, a16, b8>();
  tiles::load_config(&k_mismatch);
  EXPECT_TRUE(names(message_of([] { tiles::dpbf16ps(c16{}, a16{}, b8{}); }),
                    "A (tmm1) holds 16 bf16 pairs per row but B (tmm2) has 8 rows"));

  using c8 = amx_tile<0, 8, 64>;
  using b16 = amx_tile<2, 16, 64>;
  static constexpr amx_tile_config m_mismatch = amx_config_of<c8, a16, b16>();
  tiles::load_config(&m_mismatch);
  EXPECT_TRUE(
      names(message_of([] { tiles::dpbf16ps(c8{}, a16{}, b16{}); }), "C (tmm0) has 8 rows but A (tmm1) has 16"));

  using c_narrow = amx_tile<0, 16, 32>;
  static constexpr amx_tile_config n_mismatch = amx_config_of<c_narrow, a16, b16>();
  tiles::load_config(&n_mismatch);
  EXPECT_TRUE(names(message_of([] { tiles::dpbf16ps(c_narrow{}, a16{}, b16{}); }),
                    "C (tmm0) has 32 bytes per row but B (tmm2) has 64"));

  using c_odd = amx_tile<0, 16, 62>;
  using b_odd = amx_tile<2, 16, 62>;
  static constexpr amx_tile_config odd_bytes = amx_config_of<c_odd, a16, b_odd>();
  tiles::load_config(&odd_bytes);
  EXPECT_TRUE(names(message_of([] { tiles::dpbf16ps(c_odd{}, a16{}, b_odd{}); }), "a multiple of 4"));
}

} // namespace
