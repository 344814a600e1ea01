// Shared by kern's benchmark programs: the naming scheme and the counters.
//
// Names are <family>/<impl>/<dtype>/<shape>/threads:<n>, e.g. gemm/kern/f32/1024x1024x1024/threads:2,
// so that tools/bench_report.py can line up every impl of one (family, dtype, shape, threads).
// Counters: GFLOPS (compute-bound) or GBps (memory-bound), and peak_frac, the fraction of this
// machine's measured peak for the same thread count (bench/machine_peak.hpp).
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <benchmark/benchmark.h>

#include "machine_peak.hpp"

namespace kern::bench {

inline std::string benchmark_name(std::string_view family, std::string_view impl, std::string_view dtype,
                                  std::string_view shape) {
  std::string name;
  for (std::string_view part : {family, impl, dtype, shape}) {
    if (!name.empty()) {
      name += '/';
    }
    name += part;
  }
  return name;
}

// One thread, and all the cores this process may use.
inline std::vector<int> default_thread_counts() {
  const int cores = kern::cpu::info().cores;
  return cores > 1 ? std::vector<int>{1, cores} : std::vector<int>{1};
}

// Registers fn(state) under the scheme's name, once per thread count (state.range(0)).
template <class Fn> benchmark::internal::Benchmark* add(std::string_view family, std::string_view impl,
                                                        std::string_view dtype, std::string_view shape, Fn&& fn,
                                                        const std::vector<int>& threads = default_thread_counts()) {
  auto* b = benchmark::RegisterBenchmark(benchmark_name(family, impl, dtype, shape).c_str(), std::forward<Fn>(fn));
  b->ArgName("threads")->UseRealTime();
  for (int t : threads) {
    b->Arg(t);
  }
  return b;
}

inline int threads_of(const benchmark::State& state) { return static_cast<int>(state.range(0)); }

// Reports `flops` floating-point operations per iteration as GFLOPS and as a fraction of the FMA peak.
inline void report_flops(benchmark::State& state, double flops) {
  const double peak = machine_peak::fma_gflops(threads_of(state));
  state.counters["GFLOPS"] = benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["peak_frac"] = benchmark::Counter(flops * 1e-9 / peak, benchmark::Counter::kIsIterationInvariantRate);
}

// Reports `bytes` moved per iteration as GBps and as a fraction of the triad bandwidth.
inline void report_bytes(benchmark::State& state, double bytes) {
  const double peak = machine_peak::triad_gbps(threads_of(state));
  state.counters["GBps"] = benchmark::Counter(bytes * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["peak_frac"] = benchmark::Counter(bytes * 1e-9 / peak, benchmark::Counter::kIsIterationInvariantRate);
}

} // namespace kern::bench
