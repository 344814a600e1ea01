// What every GPU kernel test shares, in all three compilation modes (CUDA, HIP, the CPU execution
// mode): the device it runs on in the log, a skip where there is no GPU, host <-> device copies, and
// the memory layouts a case puts its matrices in.
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

// How a case lays its matrices out in memory.
enum class memory_layout {
  cpu_padding, // the CPU tests': rows padded by a few values (the case's pad) where they pad them
  vector_rows, // rows padded to a multiple of 16 bytes: 16-byte access where the length allows it
  misaligned,  // no padding, the buffer one element past 16-byte alignment: single-value access
};
const char* name(memory_layout l) {
  return l == memory_layout::cpu_padding   ? "cpu padding"
         : l == memory_layout::vector_rows ? "16-byte rows"
                                           : "misaligned";
}

// The layouts in turn, one per case of a sweep (each shape's cases meet all three).
class layout_cycle {
public:
  memory_layout next() { return all_[count_++ % 3]; }

private:
  static constexpr memory_layout all_[] = {memory_layout::cpu_padding, memory_layout::vector_rows,
                                           memory_layout::misaligned};
  int count_ = 0;
};

template <class T> index_t leading_dimension(memory_layout l, index_t cols, index_t cpu_pad) {
  constexpr index_t per_vector = 16 / sizeof(T);
  switch (l) {
  case memory_layout::cpu_padding:
    return cols + cpu_pad;
  case memory_layout::vector_rows:
    return (cols + per_vector - 1) / per_vector * per_vector;
  case memory_layout::misaligned:
    break;
  }
  return cols;
}

// A host matrix's whole buffer (padding included) in device memory, `offset` elements into its
// allocation: a read past the matrix leaves the allocation, and offset 1 puts every row off a
// 16-byte boundary.
template <class T> class device_matrix {
public:
  device_matrix(const host_matrix<T>& m, index_t offset)
      : host_(m), offset_(offset), buffer_(m.data.size() + static_cast<std::size_t>(offset)) {
    gpu::copy(data(), m.data.data(), m.data.size(), nullptr);
    gpu::synchronize(nullptr);
  }
  T* data() const { return buffer_.data() + offset_; }
  matrix_view<T> view() const { return {data(), host_.rows, host_.cols, host_.ld}; }
  matrix_view<const T> cview() const { return view(); }
  // The device buffer now, as a host matrix of the same shape.
  host_matrix<T> read() const {
    host_matrix<T> out = host_;
    out.data = to_host(data(), host_.data.size());
    return out;
  }

private:
  host_matrix<T> host_;
  index_t offset_;
  gpu::device_buffer<T> buffer_;
};

} // namespace kern::test
