// What every GPU benchmark shares: device buffers filled on the device side, timing with events
// around the enqueued work (Google Benchmark's manual time), and the bandwidth counters.
//
// Names follow kern's convention, <family>/<impl>/<dtype>/<shape> (e.g. norm/kern_cuda/bf16/8192x768),
// so that tools/bench_report.py tabulates them. Memory-bound kernels report GBps, the rate of the
// minimum traffic (each input byte read once, each output byte written once), and peak_frac: that
// rate over the device's copy bandwidth (copy_GBps), measured in the same run (a device-to-device
// copy of 1 GiB, read + write bytes, the best of ten).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <benchmark/benchmark.h>

#include "kern/core/dtype.hpp"
#include "kern/gpu/runtime.hpp"

namespace kern::bench {

// The <impl> part of a benchmark's name: which backend ran it.
#if defined(KERN_GPU_HIP)
inline constexpr const char* gpu_impl = "kern_hip";
#else
inline constexpr const char* gpu_impl = "kern_cuda";
#endif

// Registers run (a callable taking benchmark::State&) as <family>/<impl>/<dtype>/<shape>, timed on
// the GPU by time_on_gpu, reported in microseconds.
template <class Run>
void add_gpu_benchmark(const std::string& family, const std::string& dtype, const std::string& shape, Run run) {
  const std::string name = family + "/" + gpu_impl + "/" + dtype + "/" + shape;
  benchmark::RegisterBenchmark(name.c_str(), run)->UseManualTime()->Unit(benchmark::kMicrosecond);
}

// A device buffer of n values of T holding a fixed pattern in [lo, hi) (copied from the host once).
template <class T> gpu::device_buffer<T> device_filled(std::size_t n, float lo = -1.0f, float hi = 1.0f) {
  std::vector<T> host(n);
  for (std::size_t i = 0; i < n; ++i) {
    host[i] = T(lo + (hi - lo) * static_cast<float>(i % 997) / 997.0f);
  }
  gpu::device_buffer<T> device(n);
  gpu::copy(device.data(), host.data(), n, nullptr);
  gpu::synchronize(nullptr);
  return device;
}

// The device's copy bandwidth in GB/s (bytes read + written per second), measured once per run.
inline double copy_bandwidth_gbs() {
  static const double measured = [] {
    constexpr std::size_t bytes = std::size_t{1} << 30;
    gpu::device_buffer<std::byte> source(bytes), destination(bytes);
    gpu::stream stream;
    gpu::event start, stop;
    float best_ms = 1e30f;
    for (int trial = 0; trial < 10; ++trial) {
      start.record(stream.get());
      gpu::copy(destination.data(), source.data(), bytes, stream.get());
      stop.record(stream.get());
      stop.synchronize();
      best_ms = std::min(best_ms, stop.elapsed_ms_since(start));
    }
    return 2.0 * static_cast<double>(bytes) / (static_cast<double>(best_ms) * 1e-3) * 1e-9;
  }();
  return measured;
}

// Times work(stream) per iteration with events around it (register the benchmark with
// ->UseManualTime()). `bytes`: the minimum traffic of one call, for GBps and peak_frac.
inline void time_on_gpu(benchmark::State& state, double bytes, const std::function<void(gpu::stream_t)>& work) {
  gpu::stream stream;
  gpu::event start, stop;
  work(stream.get()); // warm up: first-launch costs, caches
  stream.synchronize();
  double seconds = 0;
  for (auto _ : state) {
    start.record(stream.get());
    work(stream.get());
    stop.record(stream.get());
    stop.synchronize();
    const double iteration = static_cast<double>(stop.elapsed_ms_since(start)) * 1e-3;
    state.SetIterationTime(iteration);
    seconds += iteration;
  }
  const double rate = seconds > 0 ? bytes * static_cast<double>(state.iterations()) / seconds * 1e-9 : 0.0;
  state.counters["GBps"] = rate;
  state.counters["copy_GBps"] = copy_bandwidth_gbs();
  state.counters["peak_frac"] = rate / copy_bandwidth_gbs();
}

} // namespace kern::bench
