// The CPU execution mode's runtime: device memory is host memory, a stream runs its work at the
// moment it is enqueued (so it is always in order and always complete), and events record the
// host clock. Each call returns a status like the CUDA runtime's, so that the portable layer
// checks every call the same way in every mode.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <new>

namespace kern::gpu::emulator {

enum class status : int { success = 0, out_of_memory = 2, invalid_value = 1 };

inline const char* status_name(status s) noexcept {
  switch (s) {
  case status::success:
    return "success";
  case status::out_of_memory:
    return "out of memory";
  case status::invalid_value:
    return "invalid value";
  }
  return "unknown";
}

struct stream {};
struct event {
  std::chrono::steady_clock::time_point time;
};

// 256-byte aligned like cudaMalloc's allocations.
inline status device_malloc(void** pointer, std::size_t bytes) {
  *pointer = nullptr;
  if (bytes == 0) {
    return status::success;
  }
  *pointer = ::operator new (bytes, std::align_val_t{256}, std::nothrow);
  return *pointer != nullptr ? status::success : status::out_of_memory;
}

inline status device_free(void* pointer) {
  if (pointer != nullptr) {
    ::operator delete (pointer, std::align_val_t{256});
  }
  return status::success;
}

inline status copy(void* destination, const void* source, std::size_t bytes, stream* /*on*/) {
  if (bytes > 0 && (destination == nullptr || source == nullptr)) {
    return status::invalid_value;
  }
  if (bytes > 0) {
    std::memmove(destination, source, bytes);
  }
  return status::success;
}

inline status fill_bytes(void* destination, int value, std::size_t bytes, stream* /*on*/) {
  if (bytes > 0 && destination == nullptr) {
    return status::invalid_value;
  }
  if (bytes > 0) {
    std::memset(destination, value, bytes);
  }
  return status::success;
}

inline status stream_create(stream** s) {
  *s = new (std::nothrow) stream;
  return *s != nullptr ? status::success : status::out_of_memory;
}
inline status stream_destroy(stream* s) {
  delete s;
  return status::success;
}
inline status stream_synchronize(stream* /*s*/) { return status::success; }

inline status event_create(event** e) {
  *e = new (std::nothrow) event;
  return *e != nullptr ? status::success : status::out_of_memory;
}
inline status event_destroy(event* e) {
  delete e;
  return status::success;
}
inline status event_record(event* e, stream* /*on*/) {
  e->time = std::chrono::steady_clock::now();
  return status::success;
}
inline status event_synchronize(event* /*e*/) { return status::success; }
inline status event_elapsed_ms(float* ms, const event* start, const event* stop) {
  *ms = std::chrono::duration<float, std::milli>(stop->time - start->time).count();
  return status::success;
}
inline status device_synchronize() { return status::success; }

} // namespace kern::gpu::emulator
