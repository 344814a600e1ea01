// The machine's fp32 FMA peak (AVX-512 and AVX2, per core and all cores) and its memory bandwidth
// (STREAM triad): the denominators of peak_frac in every other benchmark. Also the AMX bf16 peak,
// the ceiling of the bf16 GEMM where the CPU has AMX.
#include <array>
#include <cstdint>

#include "bench_common.hpp"
#include "kern/cpu/gemm/amx_tiles.hpp"

namespace {

using namespace kern::bench;

void fma_peak(benchmark::State& state, fma_width width) {
  const int threads = threads_of(state);
  if (!supported(width)) {
    state.SkipWithError("this CPU lacks the instruction set");
    return;
  }
  constexpr std::int64_t rounds = 1'000'000;
  double gflops = 0;
  for (auto _ : state) {
    gflops = fma_gflops(width, threads, rounds);
  }
  benchmark::DoNotOptimize(gflops);
  report_flops(state, flops_per_round(width) * rounds * threads);
}

// AMX: tdpbf16ps on tiles that stay in the tile registers. tmm0..3 accumulate 16 x 16 fp32, tmm4..5
// hold A (16 rows of 32 bf16), tmm6..7 B (16 rows of 16 bf16 pairs): a 2 x 2 block of independent
// products, each 16 x 16 x 32 multiply-adds. The GEMM's kernel must also load its A and B tiles, so
// this is its ceiling. Inline assembly, so that this file needs no AMX compiler flags; it runs only
// where kern::cpu::info() found AMX, and so the OS granted the tile state to this process.
constexpr double amx_flops_per_round = 4 * 2.0 * 16 * 16 * 32;

void amx_bf16_rounds(std::int64_t rounds) {
  using kern::cpu::detail::amx_tile;
  static constexpr kern::cpu::detail::amx_tile_config config =
      kern::cpu::detail::amx_config_of<amx_tile<0, 16, 64>, amx_tile<1, 16, 64>, amx_tile<2, 16, 64>,
                                       amx_tile<3, 16, 64>, amx_tile<4, 16, 64>, amx_tile<5, 16, 64>,
                                       amx_tile<6, 16, 64>, amx_tile<7, 16, 64>>();
  alignas(64) std::array<std::uint16_t, 16 * 32> ones{};
  ones.fill(0x3f80); // bf16 1.0: each round adds 32 to every sum, which stays exact
  __asm__ volatile("ldtilecfg %0" ::"m"(config));
  __asm__ volatile("tilezero %%tmm0\n\ttilezero %%tmm1\n\ttilezero %%tmm2\n\ttilezero %%tmm3\n\t"
                   "tileloadd (%0,%1,1), %%tmm4\n\ttileloadd (%0,%1,1), %%tmm5\n\t"
                   "tileloadd (%0,%1,1), %%tmm6\n\ttileloadd (%0,%1,1), %%tmm7" ::"r"(ones.data()),
                   "r"(std::int64_t{64})
                   : "memory");
  for (std::int64_t i = 0; i < rounds; ++i) {
    __asm__ volatile("tdpbf16ps %tmm6, %tmm4, %tmm0\n\ttdpbf16ps %tmm7, %tmm4, %tmm1\n\t"
                     "tdpbf16ps %tmm6, %tmm5, %tmm2\n\ttdpbf16ps %tmm7, %tmm5, %tmm3");
  }
  __asm__ volatile("tilerelease");
}

void amx_bf16_peak(benchmark::State& state) {
  const int threads = threads_of(state);
  if (kern::cpu::info().detected < kern::cpu::isa::amx) {
    state.SkipWithError("this CPU lacks AMX, or the OS did not grant its tile state");
    return;
  }
  constexpr std::int64_t rounds = 200'000;
  const kern::cpu::context ctx(threads);
  for (auto _ : state) {
    kern::cpu::parallel_region(ctx, [](int, int) { amx_bf16_rounds(rounds); });
  }
  // GFLOPS only: peak_frac's denominator is the fp32 FMA peak, which this row would exceed many times.
  state.counters["GFLOPS"] =
      benchmark::Counter(amx_flops_per_round * rounds * threads * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

void triad(benchmark::State& state) {
  const kern::cpu::context ctx(threads_of(state));
  triad_arrays arrays(ctx);
  for (auto _ : state) {
    benchmark::DoNotOptimize(triad_gbps(ctx, arrays.a.data(), arrays.b.data(), arrays.c.data(), triad_elements));
  }
  report_bytes(state, 12.0 * triad_elements);
}

const bool registered = [] {
  add("peak", "fma_avx512", "f32", "zmm", [](benchmark::State& s) { fma_peak(s, fma_width::avx512); });
  add("peak", "fma_avx2", "f32", "ymm", [](benchmark::State& s) { fma_peak(s, fma_width::avx2); });
  add("peak", "amx", "bf16", "tmm", amx_bf16_peak);
  add("peak", "triad", "f32", "3x128MiB", triad);
  return true;
}();

} // namespace
