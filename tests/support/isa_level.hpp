// CMake runs each CPU kernel test program once per ISA level, forced with KERN_ISA
// (cmake/kern_project_targets.cmake). kern caps its level at KERN_ISA, so a level above this CPU's
// would only run the CPU's own path again: such a run exits with isa_above_cpu_exit_code, which
// ctest reports as a skip (SKIP_RETURN_CODE), before any test runs.
#pragma once

#include <cstdlib>
#include <iostream>

#include <gtest/gtest.h>

#include "kern/core/cpu_info.hpp"

namespace kern::test {

inline constexpr int isa_above_cpu_exit_code = 77;

class skip_isa_above_cpu : public testing::Environment {
public:
  void SetUp() override {
    const kern::cpu::cpu_info& cpu = kern::cpu::info();
    if (!cpu.isa_override.empty() && kern::cpu::detail::parse_isa(cpu.isa_override) > cpu.detected) {
      std::cout << "skipped: KERN_ISA=" << cpu.isa_override << " is above this CPU's level ("
                << kern::cpu::name(cpu.detected) << "), which its own run tests" << std::endl;
      std::exit(isa_above_cpu_exit_code);
    }
  }
};
// NOLINTNEXTLINE(cert-err58-cpp): GoogleTest registers environments at static initialization
[[maybe_unused]] inline testing::Environment* const skip_isa_environment =
    testing::AddGlobalTestEnvironment(new skip_isa_above_cpu);

} // namespace kern::test
