// The GPU runtime, the same in every compilation mode: device memory, copies, streams, events and
// kernel launches, with every failed call turned into a kern::error that names the call and the
// code ("kern::gpu: cudaMalloc(&pointer, bytes) failed: cudaErrorMemoryAllocation (out of memory)").
//
// Work is stream-ordered and nothing here synchronizes unless its name says so. In the CPU
// execution mode a stream runs each piece of work when it is enqueued.
#pragma once

#include <cstddef>
#include <string>
#include <utility>

#include "kern/core/error.hpp"
#include "kern/core/view.hpp"
#include "kern/gpu/platform.hpp"

namespace kern::gpu {

namespace api {
#if defined(KERN_GPU_CUDA)
using status = cudaError_t;
using stream_handle = cudaStream_t;
using event_handle = cudaEvent_t;
inline bool ok(status s) { return s == cudaSuccess; }
inline std::string describe(status s) { return std::string(cudaGetErrorName(s)) + " (" + cudaGetErrorString(s) + ")"; }
#define KERN_GPU_API(cuda, hip, emulated) cuda
#define KERN_GPU_NAME(cuda, hip, emulated) cuda
#elif defined(KERN_GPU_HIP)
using status = hipError_t;
using stream_handle = hipStream_t;
using event_handle = hipEvent_t;
inline bool ok(status s) { return s == hipSuccess; }
inline std::string describe(status s) { return std::string(hipGetErrorName(s)) + " (" + hipGetErrorString(s) + ")"; }
#define KERN_GPU_API(cuda, hip, emulated) hip
#define KERN_GPU_NAME(cuda, hip, emulated) hip
#else
using status = emulator::status;
using stream_handle = emulator::stream*;
using event_handle = emulator::event*;
inline bool ok(status s) { return s == emulator::status::success; }
inline std::string describe(status s) { return emulator::status_name(s); }
#define KERN_GPU_API(cuda, hip, emulated) emulator::emulated
#define KERN_GPU_NAME(cuda, hip, emulated) emulated
#endif
} // namespace api

using stream_t = api::stream_handle;

// Throws kern::error when a runtime call failed.
inline void check(api::status result, const char* call) {
  if (!api::ok(result)) [[unlikely]] {
    throw error(std::string("kern::gpu: ") + call + " failed: " + api::describe(result));
  }
}

// Calls the mode's runtime function (CUDA's, HIP's or the emulator's name for it) and checks it;
// the error names the function that ran and its arguments.
#define KERN_GPU_CALL(cuda, hip, emulated, ...)                                                                        \
  ::kern::gpu::check(KERN_GPU_API(cuda, hip, emulated)(__VA_ARGS__),                                                   \
                     KERN_GPU_NAME(#cuda, #hip, "emulator::" #emulated) "(" #__VA_ARGS__ ")")

// How many GPUs this process can use: 0 where there is no driver or no device (never throws).
inline int device_count() noexcept {
#if defined(KERN_GPU_EMULATED)
  return 1;
#else
  int count = 0;
  return api::ok(KERN_GPU_API(cudaGetDeviceCount, hipGetDeviceCount, none)(&count)) ? count : 0;
#endif
}

// The device kernels run on, in words: "NVIDIA H200 (sm_90, 132 SMs)", or the emulator's mode.
inline std::string describe_device() {
#if defined(KERN_GPU_EMULATED)
  return "CPU execution mode, warp size " + std::to_string(warp_size) + ", " +
         std::to_string(emulator::grid_threads()) + " CPU thread(s) per grid";
#else
  int device = 0;
  KERN_GPU_CALL(cudaGetDevice, hipGetDevice, none, &device);
  KERN_GPU_API(cudaDeviceProp, hipDeviceProp_t, none) props{};
  KERN_GPU_CALL(cudaGetDeviceProperties, hipGetDeviceProperties, none, &props, device);
  return std::string(props.name) + " (" + KERN_GPU_API("sm_", "gfx", "") + std::to_string(props.major) +
         std::to_string(props.minor) + ", " + std::to_string(props.multiProcessorCount) + " multiprocessors, warp " +
         std::to_string(props.warpSize) + ")";
#endif
}

// Owned device memory for `count` values of T (uninitialized). Move-only.
template <class T> class device_buffer {
public:
  device_buffer() = default;
  explicit device_buffer(std::size_t count) : count_(count) {
    void* pointer = nullptr;
    KERN_GPU_CALL(cudaMalloc, hipMalloc, device_malloc, &pointer, count * sizeof(T));
    data_ = static_cast<T*>(pointer);
  }
  device_buffer(device_buffer&& other) noexcept
      : data_(std::exchange(other.data_, nullptr)), count_(std::exchange(other.count_, 0)) {}
  device_buffer& operator=(device_buffer&& other) noexcept {
    std::swap(data_, other.data_);
    std::swap(count_, other.count_);
    return *this;
  }
  device_buffer(const device_buffer&) = delete;
  device_buffer& operator=(const device_buffer&) = delete;
  ~device_buffer() {
    if (data_ != nullptr) {
      (void)KERN_GPU_API(cudaFree, hipFree, device_free)(data_); // cannot throw from here
    }
  }

  T* data() const noexcept { return data_; }
  std::size_t size() const noexcept { return count_; }

private:
  T* data_ = nullptr;
  std::size_t count_ = 0;
};

// Copies `count` values between host and device memory (either direction), in stream order.
template <class T> void copy(T* destination, const T* source, std::size_t count, stream_t stream) {
#if defined(KERN_GPU_EMULATED)
  KERN_GPU_CALL(none, none, copy, destination, source, count * sizeof(T), stream);
#else
  constexpr auto direction = KERN_GPU_API(cudaMemcpyDefault, hipMemcpyDefault, 0); // from the pointers
  KERN_GPU_CALL(cudaMemcpyAsync, hipMemcpyAsync, copy, destination, source, count * sizeof(T), direction, stream);
#endif
}

// Sets `count` values' bytes to zero, in stream order.
template <class T> void zero(T* destination, std::size_t count, stream_t stream) {
  KERN_GPU_CALL(cudaMemsetAsync, hipMemsetAsync, fill_bytes, destination, 0, count * sizeof(T), stream);
}

inline void synchronize(stream_t stream) {
  KERN_GPU_CALL(cudaStreamSynchronize, hipStreamSynchronize, stream_synchronize, stream);
}

// An owned stream.
class stream {
public:
  stream() { KERN_GPU_CALL(cudaStreamCreate, hipStreamCreate, stream_create, &handle_); }
  stream(const stream&) = delete;
  stream& operator=(const stream&) = delete;
  ~stream() { (void)KERN_GPU_API(cudaStreamDestroy, hipStreamDestroy, stream_destroy)(handle_); }
  stream_t get() const noexcept { return handle_; }
  void synchronize() const { gpu::synchronize(handle_); }

private:
  stream_t handle_{};
};

// An owned event, for ordering and timing.
class event {
public:
  event() { KERN_GPU_CALL(cudaEventCreate, hipEventCreate, event_create, &handle_); }
  event(const event&) = delete;
  event& operator=(const event&) = delete;
  ~event() { (void)KERN_GPU_API(cudaEventDestroy, hipEventDestroy, event_destroy)(handle_); }
  void record(stream_t stream) { KERN_GPU_CALL(cudaEventRecord, hipEventRecord, event_record, handle_, stream); }
  void synchronize() const { KERN_GPU_CALL(cudaEventSynchronize, hipEventSynchronize, event_synchronize, handle_); }
  // Milliseconds from `start` to this event (both recorded and complete).
  float elapsed_ms_since(const event& start) const {
    float ms = 0;
    KERN_GPU_CALL(cudaEventElapsedTime, hipEventElapsedTime, event_elapsed_ms, &ms, start.handle_, handle_);
    return ms;
  }

private:
  api::event_handle handle_{};
};

// A launch's grid and block.
struct launch_shape {
  dim3 grid;
  dim3 block;
};

// The most blocks a grid may have along y (and z).
inline constexpr index_t max_grid_y = 65535;

// Blocks of `threads` threads (a power of two, at least a warp) over rows x groups, where groups are
// a row's column groups: x across the groups (a power of two from a warp up to `threads`), y across
// the rows, so that short rows still fill a block. Rows beyond max_grid_y blocks are the kernel's to
// grid-stride over.
inline launch_shape rows_by_column_groups(index_t rows, index_t groups, int threads = 256) {
  int block_x = warp_size;
  while (block_x < threads && block_x < groups) {
    block_x *= 2;
  }
  const int block_y = threads / block_x;
  const index_t grid_x = (groups + block_x - 1) / block_x;
  const index_t grid_y = (rows + block_y - 1) / block_y;
  return {dim3(static_cast<unsigned>(grid_x), static_cast<unsigned>(grid_y < max_grid_y ? grid_y : max_grid_y)),
          dim3(static_cast<unsigned>(block_x), static_cast<unsigned>(block_y))};
}

// Launches kernel<<<grid, block, shared_bytes, stream>>>(args...) and checks the launch. An empty
// grid launches nothing (callers skip empty work before they get here).
template <class... Params, class... Args> void launch(void (*kernel)(Params...), dim3 grid, dim3 block,
                                                      std::size_t shared_bytes, stream_t stream, Args&&... args) {
  static_assert(sizeof...(Params) == sizeof...(Args), "launch: the kernel takes a different number of arguments");
#if defined(KERN_GPU_EMULATED)
  emulator::run_grid({grid, block, shared_bytes},
                     [&] { kernel(static_cast<Params>(args)...); }); // each GPU thread gets its own copies
  (void)stream;
#else
  kernel<<<grid, block, shared_bytes, stream>>>(static_cast<Params>(std::forward<Args>(args))...);
  KERN_GPU_CALL(cudaGetLastError, hipGetLastError, none);
#endif
}

} // namespace kern::gpu
