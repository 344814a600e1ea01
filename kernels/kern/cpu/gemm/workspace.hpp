// Per-thread scratch of the CPU GEMM (packed blocks, partial sums): grow-only and reused across
// calls, so that the hot path allocates only the first time a thread meets a larger problem.
#pragma once

#include <cstddef>

#include "kern/core/memory.hpp"

namespace kern::cpu::detail {

// Slot tells apart buffers that one thread holds at the same time.
template <class Arch, int Slot, class T> T* thread_workspace(std::size_t count) {
  thread_local aligned_buffer<T> buffer;
  if (buffer.size() < count) {
    buffer = aligned_buffer<T>(count);
  }
  return buffer.data();
}

} // namespace kern::cpu::detail
