// The main of the GPU benchmark program: records the device and its copy bandwidth in the JSON
// context, so that every figure in the file can be read against them.
#include <cstdio>
#include <string>

#include <benchmark/benchmark.h>

#include "gpu/gpu_bench.hpp"

int main(int argc, char** argv) {
  if (kern::gpu::device_count() == 0) {
    std::fprintf(stderr, "kern_bench_gpu: no GPU on this machine\n");
    return 1;
  }
  benchmark::AddCustomContext("kern_gpu", kern::gpu::describe_device());
  benchmark::AddCustomContext("copy_GBps", std::to_string(kern::bench::copy_bandwidth_gbs()));
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) {
    return 1;
  }
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
