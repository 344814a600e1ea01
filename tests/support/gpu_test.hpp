// What every GPU kernel test shares, in all three compilation modes (CUDA, HIP, the CPU execution
// mode): the device it runs on in the log, a skip where there is no GPU, and host <-> device copies.
// The inputs, references and error measures are kernel_test.hpp's, the same as the CPU tests'.
#pragma once

#include <cstddef>
#include <iostream>
#include <vector>

#include <gtest/gtest.h>

#include "kern/gpu/runtime.hpp"
#include "support/kernel_test.hpp"

namespace kern::test {

// Prints the device (or the emulator's mode and warp size) once per test program.
class describe_gpu : public testing::Environment {
public:
  void SetUp() override {
    std::cout << "[ kern     ] GPU: " << (gpu::device_count() > 0 ? gpu::describe_device() : "none") << std::endl;
  }
};
// NOLINTNEXTLINE(cert-err58-cpp): GoogleTest registers environments at static initialization
[[maybe_unused]] inline testing::Environment* const gpu_environment =
    testing::AddGlobalTestEnvironment(new describe_gpu);

// Skips the test where no GPU can run it (a CUDA or HIP build on a machine without one).
#define KERN_REQUIRE_GPU()                                                                                             \
  do {                                                                                                                 \
    if (::kern::gpu::device_count() == 0) {                                                                            \
      GTEST_SKIP() << "no GPU on this machine";                                                                        \
    }                                                                                                                  \
  } while (false)

// A device copy of host values (complete when this returns).
template <class T> gpu::device_buffer<T> to_device(const std::vector<T>& host) {
  gpu::device_buffer<T> device(host.size());
  gpu::copy(device.data(), host.data(), host.size(), nullptr);
  gpu::synchronize(nullptr);
  return device;
}

// A host copy of `count` device values (waits for the work before it on the default stream).
template <class T> std::vector<T> to_host(const T* device, std::size_t count) {
  std::vector<T> host(count);
  gpu::copy(host.data(), device, count, nullptr);
  gpu::synchronize(nullptr);
  return host;
}
template <class T> std::vector<T> to_host(const gpu::device_buffer<T>& device) {
  return to_host(device.data(), device.size());
}

} // namespace kern::test
