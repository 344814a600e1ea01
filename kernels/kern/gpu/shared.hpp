// Shared memory, declared the same way in every mode:
//
//   KERN_SHARED(float, partial, 32);      // a block's float[32]: partial[i]
//   KERN_DYNAMIC_SHARED(float, tile);     // the launch's dynamic shared memory, as floats: tile[i]
//
// On a GPU these are __shared__ / extern __shared__ arrays. In the CPU execution mode each block
// gets its own instance, fresh memory reads as all-ones bytes (NaN), every operator[] is checked
// against the allocation, and guard bytes after each allocation catch writes through raw pointers
// (reported when the block ends).
#pragma once

#include <cstddef>

#include "kern/gpu/platform.hpp"

namespace kern::gpu {

#if defined(KERN_GPU_EMULATED)

// 16-byte aligned in every mode: vector accesses, ldmatrix and cp.async need it.
template <class T, std::size_t N> struct alignas(alignof(T) > 16 ? alignof(T) : 16) shared_array {
  T values[N];

  T& operator[](std::size_t i) {
    if (i >= N) {
      emulator::block_runner::current().fail("shared-memory access outside its allocation: index ", i, " of a ", N,
                                             "-element shared array");
    }
    return values[i];
  }
  T* data() noexcept { return values; }
  static constexpr std::size_t size() noexcept { return N; }
};

template <class T> class shared_span {
public:
  shared_span(T* data, std::size_t count) noexcept : data_(data), count_(count) {}
  T& operator[](std::size_t i) const {
    if (i >= count_) {
      emulator::block_runner::current().fail("shared-memory access outside its allocation: index ", i, " of ", count_,
                                             " elements of dynamic shared memory");
    }
    return data_[i];
  }
  T* data() const noexcept { return data_; }

private:
  T* data_;
  std::size_t count_;
};

namespace emulator {
// One instance per block and declaration (Tag is unique to the declaration).
template <class Array, class Tag> Array& block_shared(const char* name) {
  static const char key = 0;
  return *static_cast<Array*>(block_runner::current().shared_variable(&key, sizeof(Array), alignof(Array), name));
}
template <class T> shared_span<T> dynamic_shared_span() {
  block_runner& runner = block_runner::current();
  return {reinterpret_cast<T*>(runner.dynamic_shared()), runner.dynamic_shared_bytes() / sizeof(T)};
}
} // namespace emulator

// NOLINTBEGIN(bugprone-macro-parentheses): T and NAME are a type and a declarator
#define KERN_SHARED(T, NAME, N)                                                                                        \
  auto& NAME = ::kern::gpu::emulator::block_shared<::kern::gpu::shared_array<T, N>, decltype([] {})>(#NAME)
#define KERN_DYNAMIC_SHARED(T, NAME) const auto NAME = ::kern::gpu::emulator::dynamic_shared_span<T>()
// NOLINTEND(bugprone-macro-parentheses)

#else

template <class T, std::size_t N> struct alignas(alignof(T) > 16 ? alignof(T) : 16) shared_array {
  T values[N];
  KERN_DEVICE T& operator[](std::size_t i) { return values[i]; }
  KERN_DEVICE T* data() noexcept { return values; }
  static constexpr std::size_t size() noexcept { return N; }
};

template <class T> class shared_span {
public:
  KERN_DEVICE explicit shared_span(T* data) noexcept : data_(data) {}
  KERN_DEVICE T& operator[](std::size_t i) const { return data_[i]; }
  KERN_DEVICE T* data() const noexcept { return data_; }

private:
  T* data_;
};

#define KERN_SHARED(T, NAME, N) __shared__ ::kern::gpu::shared_array<T, N> NAME
#define KERN_DYNAMIC_SHARED(T, NAME)                                                                                   \
  extern __shared__ __align__(16) unsigned char kern_dynamic_shared_bytes[];                                           \
  const ::kern::gpu::shared_span<T> NAME(reinterpret_cast<T*>(kern_dynamic_shared_bytes))

#endif

} // namespace kern::gpu
