// Warp and block collectives, one set of names for every mode. All lanes of the warp (all threads
// of the block, for block_*) must call them together, as with CUDA's full-mask *_sync intrinsics;
// in the CPU execution mode a lane that does not arrive is reported.
//
//   lane_id(), warp_id()                         position of the calling thread (x-major linear id)
//   shfl(v, src), shfl_xor(v, mask),             lane exchanges within segments of `width` lanes
//   shfl_down(v, delta), shfl_up(v, delta)       (a power of two <= warp_size), as CUDA defines them
//   ballot(p), any(p), all(p)                    votes
//   warp_sum(v), warp_max(v)                     butterfly reductions: every lane gets the result
//                                                (sums of float, double or integers; max of float)
//   block_sum(v), block_max(v)                   every thread of the block gets the result
#pragma once

#include <cmath>
#include <cstring>
#include <string_view>

#include "kern/gpu/platform.hpp"
#include "kern/gpu/shared.hpp"

namespace kern::gpu {

KERN_DEVICE int linear_thread_id() {
  return static_cast<int>(threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z));
}
KERN_DEVICE int block_thread_count() { return static_cast<int>(blockDim.x * blockDim.y * blockDim.z); }
KERN_DEVICE int lane_id() { return linear_thread_id() % warp_size; }
KERN_DEVICE int warp_id() { return linear_thread_id() / warp_size; }

#if defined(KERN_GPU_EMULATED)

namespace emulator {
template <class T> T warp_read(std::string_view collective, const T& value, int source) {
  block_runner& runner = block_runner::current();
  const auto all = runner.warp_gather<warp_size>(collective, value);
  const int warp = runner.linear_thread() / warp_size;
  if (source >= runner.lanes_in_warp(warp, warp_size)) {
    runner.fail(collective, " reads lane ", source, ", which does not exist: the block's last warp has ",
                runner.lanes_in_warp(warp, warp_size), " lanes");
  }
  return all[static_cast<std::size_t>(source)];
}
} // namespace emulator

template <class T> T shfl(T value, int source_lane, int width = warp_size) {
  const int lane = lane_id();
  return emulator::warp_read("shfl", value, (lane & ~(width - 1)) + (source_lane & (width - 1)));
}
template <class T> T shfl_xor(T value, int lane_mask, int width = warp_size) {
  const int lane = lane_id();
  const int source = lane ^ lane_mask;
  return emulator::warp_read("shfl_xor", value, source >= ((lane & ~(width - 1)) + width) ? lane : source);
}
template <class T> T shfl_down(T value, int delta, int width = warp_size) {
  const int lane = lane_id();
  const int source = (lane & (width - 1)) + delta < width ? lane + delta : lane;
  return emulator::warp_read("shfl_down", value, source);
}
template <class T> T shfl_up(T value, int delta, int width = warp_size) {
  const int lane = lane_id();
  const int source = (lane & (width - 1)) >= delta ? lane - delta : lane;
  return emulator::warp_read("shfl_up", value, source);
}
inline lane_mask ballot(bool predicate) {
  const auto votes = emulator::block_runner::current().warp_gather<warp_size>("ballot", predicate);
  lane_mask mask = 0;
  for (int l = 0; l < warp_size; ++l) {
    mask |= votes[static_cast<std::size_t>(l)] ? lane_mask{1} << l : lane_mask{0};
  }
  return mask;
}
inline void sync_warp() { (void)emulator::block_runner::current().warp_gather<warp_size>("sync_warp", 0); }

#elif defined(KERN_GPU_CUDA)

template <class T> KERN_DEVICE T shfl(T value, int source_lane, int width = warp_size) {
  return __shfl_sync(full_lane_mask, value, source_lane, width);
}
template <class T> KERN_DEVICE T shfl_xor(T value, int lane_mask, int width = warp_size) {
  return __shfl_xor_sync(full_lane_mask, value, lane_mask, width);
}
template <class T> KERN_DEVICE T shfl_down(T value, int delta, int width = warp_size) {
  return __shfl_down_sync(full_lane_mask, value, static_cast<unsigned>(delta), width);
}
template <class T> KERN_DEVICE T shfl_up(T value, int delta, int width = warp_size) {
  return __shfl_up_sync(full_lane_mask, value, static_cast<unsigned>(delta), width);
}
KERN_DEVICE lane_mask ballot(bool predicate) { return __ballot_sync(full_lane_mask, predicate); }
KERN_DEVICE void sync_warp() { __syncwarp(); }

#else // HIP: wavefronts execute in lockstep; the collectives take no mask

template <class T> KERN_DEVICE T shfl(T value, int source_lane, int width = warp_size) {
  return __shfl(value, source_lane, width);
}
template <class T> KERN_DEVICE T shfl_xor(T value, int lane_mask, int width = warp_size) {
  return __shfl_xor(value, lane_mask, width);
}
template <class T> KERN_DEVICE T shfl_down(T value, int delta, int width = warp_size) {
  return __shfl_down(value, static_cast<unsigned>(delta), width);
}
template <class T> KERN_DEVICE T shfl_up(T value, int delta, int width = warp_size) {
  return __shfl_up(value, static_cast<unsigned>(delta), width);
}
KERN_DEVICE lane_mask ballot(bool predicate) { return __ballot(predicate); }
KERN_DEVICE void sync_warp() { __builtin_amdgcn_wave_barrier(); }

#endif

KERN_DEVICE bool any(bool predicate) { return ballot(predicate) != 0; }
KERN_DEVICE bool all(bool predicate) { return ballot(predicate) == ballot(true); }

// T: float, double or an integer type.
template <class T> KERN_DEVICE T warp_sum(T value) {
  for (int offset = warp_size / 2; offset > 0; offset /= 2) {
    value += shfl_xor(value, offset);
  }
  return value;
}
KERN_DEVICE float warp_max(float value) {
  for (int offset = warp_size / 2; offset > 0; offset /= 2) {
    value = fmaxf(value, shfl_xor(value, offset));
  }
  return value;
}

namespace detail {
// Combines one value per warp through shared memory; every thread gets the result. The trailing
// barrier lets the caller run another block reduction right away.
template <class T, class Combine> KERN_DEVICE T block_reduce(T value, T identity, Combine warp_reduce) {
  KERN_SHARED(T, per_warp, max_block_warps);
  const int warps = (block_thread_count() + warp_size - 1) / warp_size;
  value = warp_reduce(value);
  if (lane_id() == 0) {
    per_warp[static_cast<std::size_t>(warp_id())] = value;
  }
  __syncthreads();
  value = lane_id() < warps ? per_warp[static_cast<std::size_t>(lane_id())] : identity;
  value = warp_reduce(value);
  __syncthreads();
  return value;
}
} // namespace detail

// Sum over the block, in a fixed order (the same bits every run); the block's thread count must be a
// multiple of warp_size. T as for warp_sum.
template <class T> KERN_DEVICE T block_sum(T value) {
  return detail::block_reduce(value, T{0}, [](T v) { return warp_sum(v); });
}
KERN_DEVICE float block_max(float value) {
  return detail::block_reduce(value, -INFINITY, [](float v) { return warp_max(v); });
}

} // namespace kern::gpu
