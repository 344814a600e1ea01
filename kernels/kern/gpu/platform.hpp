// The GPU portability layer's base: which compiler is compiling the kernels, the function
// qualifiers, and the warp size as a compile-time constant.
//
// kern's GPU kernels are written once, in the CUDA dialect, and compiled three ways:
//   KERN_GPU_CUDA      nvcc (kern::cuda); warp size 32
//   KERN_GPU_HIP       hipcc / HIP-clang for AMD GPUs (kern::hip); warp size 64 on CDNA
//   KERN_GPU_EMULATED  the host C++ compiler, in the CPU execution mode (kern/gpu/emulator/): each
//                      GPU thread is a fiber; warp size KERN_GPU_EMULATED_WARP_SIZE (32 or 64)
// Exactly one is 1 in any translation unit. The entry points live in kern::gpu and are also named
// kern::cuda / kern::hip / kern::emulated after the mode that compiled them.
#pragma once

#include <cstdint>
#include <type_traits>

#if defined(__CUDACC__)
#define KERN_GPU_CUDA 1
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#elif defined(__HIPCC__) || defined(__HIP__)
#define KERN_GPU_HIP 1
#include <hip/hip_runtime.h>
#else
#define KERN_GPU_EMULATED 1
#include "kern/gpu/emulator/builtins.hpp"
#endif

// Qualifiers for code that runs on both sides, and for device-only helpers.
#define KERN_HOST_DEVICE __host__ __device__
#define KERN_DEVICE __device__ __forceinline__

namespace kern::gpu {

#if defined(KERN_GPU_CUDA)
inline constexpr int warp_size = 32;
#elif defined(KERN_GPU_HIP)
// Only the device pass knows the target's wavefront; the host pass sees the CDNA value, which is
// what kern targets (gfx9 family). RDNA (wave32) builds are not supported.
#if defined(__AMDGCN_WAVEFRONT_SIZE)
inline constexpr int warp_size = __AMDGCN_WAVEFRONT_SIZE;
#else
inline constexpr int warp_size = 64;
#endif
#else
inline constexpr int warp_size = KERN_GPU_EMULATED_WARP_SIZE;
#endif
static_assert(warp_size == 32 || warp_size == 64, "kern's GPU kernels support warps of 32 or 64 lanes");

// One bit per lane of a warp.
using lane_mask = std::conditional_t<warp_size == 64, std::uint64_t, std::uint32_t>;
inline constexpr lane_mask full_lane_mask = ~lane_mask{0};

// The largest block kern launches, and so the most warps a block reduction has to combine.
inline constexpr int max_block_threads = 1024;
inline constexpr int max_block_warps = max_block_threads / warp_size;

} // namespace kern::gpu

// The mode's own name for the entry points: kern::cuda::norm_forward is kern::gpu::norm_forward
// compiled by nvcc. KERN_GPU_OP("norm_forward") is that name as text, for error messages.
#if defined(KERN_GPU_CUDA)
namespace kern::cuda {
using namespace ::kern::gpu; // NOLINT(google-build-using-namespace)
}
#define KERN_GPU_OP(name) "kern::cuda::" name
#elif defined(KERN_GPU_HIP)
namespace kern::hip {
using namespace ::kern::gpu; // NOLINT(google-build-using-namespace)
}
#define KERN_GPU_OP(name) "kern::hip::" name
#else
namespace kern::emulated {
using namespace ::kern::gpu; // NOLINT(google-build-using-namespace)
}
#define KERN_GPU_OP(name) "kern::emulated::" name
#endif
