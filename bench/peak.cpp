// The machine's fp32 FMA peak (AVX-512 and AVX2, per core and all cores) and its memory bandwidth
// (STREAM triad): the denominators of peak_frac in every other benchmark.
#include "bench_common.hpp"

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
  add("peak", "triad", "f32", "3x128MiB", triad);
  return true;
}();

} // namespace
