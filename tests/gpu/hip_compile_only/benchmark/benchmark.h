// Google Benchmark's API without its machinery, for the hipcc compile check only: clang 15 crashes
// on benchmark.h in C++20 HIP mode as it does on GoogleTest's header (gtest/gtest.h here says more;
// the trigger is a std::map keyed by std::string, so State::counters is not one here). The check
// compiles the GPU benchmark sources so that hipcc builds their kernels; nothing runs.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace benchmark {

enum TimeUnit { kNanosecond, kMicrosecond, kMillisecond, kSecond };

class Counter {
public:
  enum Flags { kDefaults = 0, kIsRate = 1, kAvgThreads = 2, kIsIterationInvariant = 4, kIsIterationInvariantRate = 5 };
  Counter(double v = 0.0, Flags = kDefaults) : value(v) {} // NOLINT(google-explicit-constructor)
  double value;
};

class State {
public:
  struct [[maybe_unused]] value {}; // `for (auto _ : state)` never uses `_`
  struct iterator {
    bool operator!=(const iterator&) const { return false; }
    iterator& operator++() { return *this; }
    value operator*() const { return {}; }
  };
  iterator begin() { return {}; }
  iterator end() { return {}; }
  std::int64_t range(std::size_t = 0) const { return 0; }
  std::int64_t iterations() const { return 0; }
  void SetIterationTime(double) {}
  void SetLabel(const std::string&) {}
  void SetBytesProcessed(std::int64_t) {}
  void SetItemsProcessed(std::int64_t) {}
  void SkipWithError(const char*) {}
  void PauseTiming() {}
  void ResumeTiming() {}
  struct counter_map {
    Counter& operator[](const std::string&) { return last; }
    Counter last;
  } counters;
};

class Benchmark {
public:
  Benchmark* UseManualTime() { return this; }
  Benchmark* UseRealTime() { return this; }
  Benchmark* Unit(TimeUnit) { return this; }
  Benchmark* Arg(std::int64_t) { return this; }
  Benchmark* Args(const std::vector<std::int64_t>&) { return this; }
  Benchmark* Iterations(std::int64_t) { return this; }
  Benchmark* MinTime(double) { return this; }
  Benchmark* Threads(int) { return this; }
};

template <class Fn, class... Args> Benchmark* RegisterBenchmark(const char*, Fn&&, Args&&...) {
  static Benchmark registered;
  return &registered;
}
template <class Fn, class... Args> Benchmark* RegisterBenchmark(const std::string&, Fn&&, Args&&...) {
  static Benchmark registered;
  return &registered;
}
template <class T> void DoNotOptimize(T&&) {}
inline void ClobberMemory() {}
inline void AddCustomContext(const std::string&, const std::string&) {}

} // namespace benchmark

#define BENCHMARK(function)                                                                                            \
  [[maybe_unused]] static ::benchmark::Benchmark* function##_registered =                                              \
      ::benchmark::RegisterBenchmark(#function, function)
