// Element access for kernels: fp32 math on f32 / bf16 / f16 storage, 16-byte vector loads and
// stores, and the few math functions whose fast GPU forms differ by vendor.
//
// kern::bf16 and kern::f16 (kern/core/dtype.hpp) are the device types too: two-byte plain structs
// with the layout of __nv_bfloat16 / __half, so buffers pass between host and device unchanged.
// Their conversions are constexpr, so device code may call them (nvcc: --expt-relaxed-constexpr);
// on NVIDIA GPUs the hardware conversions are used instead.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>

#include "kern/core/dtype.hpp"
#include "kern/gpu/platform.hpp"

namespace kern::gpu {

template <class T> KERN_DEVICE float load_float(const T* p) {
  if constexpr (std::is_same_v<T, float>) {
    return *p;
  } else {
    return to_float(*p);
  }
}

template <class T> KERN_DEVICE float as_float(T value) {
  if constexpr (std::is_same_v<T, float>) {
    return value;
  } else {
#if defined(KERN_GPU_CUDA) && defined(__CUDA_ARCH__)
    if constexpr (std::is_same_v<T, bf16>) {
      return __bfloat162float(__ushort_as_bfloat16(value.bits));
    } else {
      return __half2float(__ushort_as_half(value.bits));
    }
#else
    return value.to_float();
#endif
  }
}

// float -> T, rounded to nearest even (the same bits as the host conversions).
template <class T> KERN_DEVICE T from_float_rn(float value) {
  if constexpr (std::is_same_v<T, float>) {
    return value;
  } else {
#if defined(KERN_GPU_CUDA) && defined(__CUDA_ARCH__)
    if constexpr (std::is_same_v<T, bf16>) {
      return T::from_bits(__bfloat16_as_ushort(__float2bfloat16_rn(value)));
    } else {
      return T::from_bits(__half_as_ushort(__float2half_rn(value)));
    }
#else
    return T(value);
#endif
  }
}

// A 16-byte group of T: the unit of vectorized global-memory access (one 128-bit load / store).
template <class T> struct alignas(16) vector16 {
  static constexpr int size = static_cast<int>(16 / sizeof(T));
  T values[size];
};

// A GPU faults on a misaligned 16-byte access; the CPU execution mode reports it instead.
template <class T> KERN_DEVICE void require_vector_aligned([[maybe_unused]] const T* p) {
#if defined(KERN_GPU_EMULATED)
  if (reinterpret_cast<std::uintptr_t>(p) % 16 != 0) {
    emulator::block_runner::current().fail("a 16-byte vector access at ", static_cast<const void*>(p),
                                           ", which is not 16-byte aligned");
  }
#endif
}

template <class T> KERN_DEVICE vector16<T> load_vector(const T* p) {
  require_vector_aligned(p);
  return *reinterpret_cast<const vector16<T>*>(p);
}
template <class T> KERN_DEVICE void store_vector(T* p, const vector16<T>& v) {
  require_vector_aligned(p);
  *reinterpret_cast<vector16<T>*>(p) = v;
}

// Whether p may be accessed as 16-byte vectors.
template <class T> KERN_HOST_DEVICE inline bool vector_aligned(const T* p) {
  return reinterpret_cast<std::uintptr_t>(p) % 16 == 0;
}

// e^x with the GPU's fast exponential (a few ulp; the CPU execution mode uses std::exp).
KERN_DEVICE float fast_exp(float x) {
#if defined(KERN_GPU_CUDA) || defined(KERN_GPU_HIP)
  return __expf(x);
#else
  return std::exp(x);
#endif
}

KERN_DEVICE float reciprocal_sqrt(float x) {
#if defined(KERN_GPU_CUDA) || defined(KERN_GPU_HIP)
  return rsqrtf(x);
#else
  return 1.0f / std::sqrt(x);
#endif
}

} // namespace kern::gpu
