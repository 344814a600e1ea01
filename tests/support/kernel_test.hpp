// What every CPU kernel test shares: the ISA it runs on in the log, fresh seeds (replayable),
// random inputs in a storage type, poisoned outputs, and the relative error against float64.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <iostream>
#include <limits>
#include <random>
#include <vector>

#include <gtest/gtest.h>

#include "kern/core/cpu_info.hpp"
#include "kern/core/dtype.hpp"
#include "kern/core/view.hpp"

namespace kern::test {

// Prints kern::cpu::describe() once per test program, so that a log says which ISA path ran.
class describe_isa : public testing::Environment {
public:
  void SetUp() override { std::cout << "[ kern     ] " << kern::cpu::describe() << std::endl; }
};
// NOLINTNEXTLINE(cert-err58-cpp): GoogleTest registers environments at static initialization
[[maybe_unused]] inline testing::Environment* const isa_environment =
    testing::AddGlobalTestEnvironment(new describe_isa);

// A new seed per case; KERN_TEST_SEED=<n> replays one. Tests put it in their SCOPED_TRACE.
inline std::uint32_t fresh_seed() {
  static std::random_device device;
  if (const char* replay = std::getenv("KERN_TEST_SEED"); replay != nullptr && *replay != '\0') {
    return static_cast<std::uint32_t>(std::strtoul(replay, nullptr, 10));
  }
  return device();
}

// n values uniform in [lo, hi), stored as T (rounded for bf16).
template <class T> std::vector<T> random_values(std::mt19937& rng, index_t n, float lo = -1.0f, float hi = 1.0f) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<T> out(static_cast<std::size_t>(n));
  for (T& x : out) {
    x = T(dist(rng));
  }
  return out;
}

// The stored values as doubles (the exact inputs a float64 reference should see).
template <class T> std::vector<double> widen(const std::vector<T>& x) {
  std::vector<double> out(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) {
    out[i] = static_cast<double>(static_cast<float>(x[i]));
  }
  return out;
}

// A buffer of n values of T, all NaN: an element the kernel forgets to write fails the check.
template <class T> std::vector<T> poisoned(index_t n) {
  return std::vector<T>(static_cast<std::size_t>(n), T(std::numeric_limits<float>::quiet_NaN()));
}

// ||out - ref|| / ||ref||; infinite when an output is
// NaN or Inf where the reference is finite, so that NaN never passes. A zero reference gives the
// absolute norm of out.
template <class T> double relative_error(const std::vector<T>& out, const std::vector<double>& ref) {
  double diff = 0.0, norm = 0.0;
  for (std::size_t i = 0; i < ref.size(); ++i) {
    const double o = static_cast<double>(static_cast<float>(out[i]));
    if (!std::isfinite(o) && std::isfinite(ref[i])) {
      return std::numeric_limits<double>::infinity();
    }
    diff += (o - ref[i]) * (o - ref[i]);
    norm += ref[i] * ref[i];
  }
  return norm > 0.0 ? std::sqrt(diff / norm) : std::sqrt(diff);
}

// The error bound a kernel's output in storage type T is held to: fp32 math throughout, so an f32
// output is close to the float64 result; a bf16 output carries its own rounding (2^-9 relative).
template <class T> constexpr double output_tolerance() { return dtype_of_v<T> == dtype::bf16 ? 8e-3 : 5e-6; }

} // namespace kern::test
