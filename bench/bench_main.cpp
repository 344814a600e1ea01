// The main of every kern benchmark program: records what kern detected in the JSON context.
#include <benchmark/benchmark.h>

#include "kern/core/cpu_info.hpp"

int main(int argc, char** argv) {
  benchmark::AddCustomContext("kern", kern::cpu::describe());
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) {
    return 1;
  }
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
