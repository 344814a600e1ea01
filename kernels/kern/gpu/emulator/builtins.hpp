// The CUDA dialect for the host compiler: the names a kernel uses (__global__, threadIdx,
// __syncthreads, atomicAdd, dim3, ...) mapped onto the CPU execution mode. Included by
// kern/gpu/platform.hpp when neither nvcc nor hipcc compiles; kernels never include it directly.
//
// Not emulated on purpose: `__shared__` (kernels declare shared memory with KERN_SHARED /
// KERN_DYNAMIC_SHARED, which the emulator bounds-checks), and raw warp intrinsics (kernels use
// kern/gpu/warp.hpp, whose collectives are switch points here).
#pragma once

#include <atomic>
#include <type_traits>

#include "kern/gpu/emulator/block.hpp"
#include "kern/gpu/emulator/grid.hpp"
#include "kern/gpu/emulator/runtime.hpp"

#if !defined(KERN_GPU_EMULATED_WARP_SIZE)
#define KERN_GPU_EMULATED_WARP_SIZE 32
#endif

// NOLINTBEGIN(bugprone-reserved-identifier,cert-dcl37-c,cert-dcl51-cpp,cppcoreguidelines-macro-usage)
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __syncthreads() ::kern::gpu::emulator::block_runner::current().sync_threads(__FILE__, __LINE__)
#define threadIdx (::kern::gpu::emulator::block_runner::current().thread_index())
#define blockIdx (::kern::gpu::emulator::block_runner::current().block_index())
#define blockDim (::kern::gpu::emulator::block_runner::current().block_dim())
#define gridDim (::kern::gpu::emulator::block_runner::current().grid_dim())
// NOLINTEND(bugprone-reserved-identifier,cert-dcl37-c,cert-dcl51-cpp,cppcoreguidelines-macro-usage)

using dim3 = ::kern::gpu::emulator::dim3;
using uint3 = ::kern::gpu::emulator::uint3;

// Atomics: correct across the CPU threads that run blocks concurrently.
template <class T> T atomicAdd(T* address, T value) { return std::atomic_ref<T>(*address).fetch_add(value); }
template <class T> T atomicSub(T* address, T value) { return std::atomic_ref<T>(*address).fetch_sub(value); }
template <class T> T atomicExch(T* address, T value) { return std::atomic_ref<T>(*address).exchange(value); }
template <class T> T atomicCAS(T* address, T expected, T desired) {
  std::atomic_ref<T>(*address).compare_exchange_strong(expected, desired);
  return expected;
}
template <class T> T atomicMax(T* address, T value) {
  static_assert(std::is_integral_v<T>, "atomicMax is integral, as in CUDA");
  std::atomic_ref<T> target(*address);
  T old = target.load();
  while (old < value && !target.compare_exchange_weak(old, value)) {
  }
  return old;
}
template <class T> T atomicMin(T* address, T value) {
  static_assert(std::is_integral_v<T>, "atomicMin is integral, as in CUDA");
  std::atomic_ref<T> target(*address);
  T old = target.load();
  while (value < old && !target.compare_exchange_weak(old, value)) {
  }
  return old;
}
// NOLINTNEXTLINE(bugprone-reserved-identifier,cert-dcl37-c,cert-dcl51-cpp): CUDA's name
inline void __threadfence() {
  std::atomic_thread_fence(std::memory_order_seq_cst);
} // NOLINT(bugprone-reserved-identifier,cert-dcl37-c,cert-dcl51-cpp)
