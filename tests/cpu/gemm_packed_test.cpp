// kern::cpu::pack_gemm_b: a pre-packed B gives the same bits as the unpacked call, for every path
// (small M reading B directly, the blocked kernel, transposed B, bf16, the bf16 compute mode).
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "kern/cpu.hpp"
#include "support/isa_level.hpp"

namespace {

using kern::bf16;
using kern::index_t;
using kern::ops::gemm_compute;
using kern::ops::transpose;

template <class T> std::vector<T> random_matrix(index_t rows, index_t cols, std::mt19937& rng) {
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<T> x(static_cast<std::size_t>(rows * cols));
  for (auto& v : x) {
    v = kern::from_float<T>(u(rng));
  }
  return x;
}

struct shape {
  index_t m, n, k;
  transpose trans_b;
};

template <class TA, class TB, class TC> void check_packed_matches(const shape& s, gemm_compute compute, int threads) {
  const std::uint32_t seed = std::random_device{}();
  SCOPED_TRACE(testing::Message() << "M " << s.m << " N " << s.n << " K " << s.k << " trans_b "
                                  << (s.trans_b == transpose::trans) << " compute bf16 "
                                  << (compute == gemm_compute::bf16) << " threads " << threads << " seed " << seed);
  std::mt19937 rng(seed);
  const bool tb = s.trans_b == transpose::trans;
  const auto a = random_matrix<TA>(s.m, s.k, rng);
  const auto b = random_matrix<TB>(tb ? s.n : s.k, tb ? s.k : s.n, rng);
  const auto bias = random_matrix<TC>(1, s.n, rng);
  std::vector<TC> unpacked(static_cast<std::size_t>(s.m * s.n)), packed(unpacked.size());
  const kern::cpu::context ctx(threads);

  kern::ops::gemm_params<TA, TB, TC> p;
  p.a = {a.data(), s.m, s.k};
  p.b = {b.data(), tb ? s.n : s.k, tb ? s.k : s.n};
  p.trans_b = s.trans_b;
  p.c = {unpacked.data(), s.m, s.n};
  p.alpha = 0.5f;
  p.bias = bias.data();
  p.gelu = true;
  p.compute = compute;
  kern::cpu::gemm(ctx, p);

  const auto b_packed = kern::cpu::pack_gemm_b(ctx, p.b, s.trans_b, compute);
  EXPECT_EQ(b_packed.k(), s.k);
  EXPECT_EQ(b_packed.n(), s.n);
  p.c = {packed.data(), s.m, s.n};
  p.b = {}; // not used with a packed B
  kern::cpu::gemm(ctx, p, b_packed);
  ASSERT_EQ(std::memcmp(unpacked.data(), packed.data(), unpacked.size() * sizeof(TC)), 0)
      << "packed and unpacked B differ";
}

constexpr shape shapes[] = {{1, 50, 768, transpose::none},
                            {1, 50, 768, transpose::trans},
                            {3, 1000, 77, transpose::none},
                            {4, 33, 2500, transpose::none},
                            {5, 65, 400, transpose::none},
                            {64, 257, 1000, transpose::trans},
                            {40, 20, 2500, transpose::none},
                            {400, 70, 2100, transpose::trans},
                            {130, 1100, 31, transpose::none},
                            // several row blocks over a K shorter than one K block (AVX2 then makes the blocks
                            // taller), with k steps before the near-end point that are not a multiple of four
                            {700, 200, 250, transpose::none},
                            // B of up to 16 columns runs on the 16 x 16 kernel unpacked, on the 14 x 32 one pre-packed
                            {37, 16, 1500, transpose::none},
                            {300, 9, 2100, transpose::trans}};

TEST(CpuGemmPacked, F32MatchesUnpacked) {
  for (const auto& s : shapes) {
    for (int threads : {1, 2}) {
      check_packed_matches<float, float, float>(s, gemm_compute::native, threads);
      check_packed_matches<float, float, float>(s, gemm_compute::bf16, threads);
    }
  }
}

TEST(CpuGemmPacked, Bf16MatchesUnpacked) {
  for (const auto& s : shapes) {
    for (int threads : {1, 2}) {
      check_packed_matches<bf16, bf16, float>(s, gemm_compute::native, threads);
      check_packed_matches<bf16, bf16, bf16>(s, gemm_compute::native, threads);
    }
  }
}

TEST(CpuGemmPacked, RejectsAMismatchedPackedB) {
  std::vector<float> b(std::size_t{12} * 8), a(std::size_t{5} * 12), c(std::size_t{5} * 8);
  const kern::cpu::context ctx(1);
  const auto packed = kern::cpu::pack_gemm_b(ctx, kern::matrix_view<const float>(b.data(), 12, 8), transpose::none);
  EXPECT_EQ(packed.k(), 12);
  EXPECT_EQ(packed.n(), 8);
  auto message = [&](auto params) {
    try {
      kern::cpu::gemm(ctx, params, packed);
    } catch (const kern::error& e) {
      return std::string(e.what());
    }
    return std::string("(no error)");
  };
  kern::ops::gemm_params<float, float, float> p;
  p.a = {a.data(), 5, 12};
  p.c = {c.data(), 5, 8};
  EXPECT_EQ(message(p), "(no error)");
  p.a = {a.data(), 5, 11};
  EXPECT_NE(message(p).find("op(B) has 12 rows"), std::string::npos) << message(p);
  p.a = {a.data(), 5, 12};
  p.c = {c.data(), 5, 7};
  EXPECT_NE(message(p).find("columns but C has 7"), std::string::npos) << message(p);
  p.c = {c.data(), 5, 8};
  p.compute = gemm_compute::bf16;
  EXPECT_NE(message(p).find("packed for compute mode native, the call asks for bf16"), std::string::npos) << message(p);
  std::vector<bf16> ab(std::size_t{5} * 12), bb(std::size_t{12} * 8);
  kern::ops::gemm_params<bf16, bf16, float> q;
  q.a = {ab.data(), 5, 12};
  q.c = {c.data(), 5, 8};
  EXPECT_NE(message(q).find("packed B holds f32 but B is bf16"), std::string::npos) << message(q);
  std::vector<kern::f16> h(4);
  EXPECT_THROW((void)kern::cpu::pack_gemm_b(ctx, kern::matrix_view<const kern::f16>(h.data(), 2, 2), transpose::none),
               kern::error);
}

} // namespace
