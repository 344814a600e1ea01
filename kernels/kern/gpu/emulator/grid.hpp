// The CPU execution mode's launch: checks the configuration as a GPU would, then runs the blocks
// of the grid one after another, or spread over several CPU threads (each block on one thread,
// its GPU threads as fibers there).
//
// The number of CPU threads is set_grid_threads(n), or KERN_GPU_EMULATOR_THREADS in the
// environment, default 1. Blocks of one grid must not depend on each other's progress (as on a
// GPU); with one CPU thread they run in order of their linear index.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "kern/core/error.hpp"
#include "kern/gpu/emulator/block.hpp"

namespace kern::gpu::emulator {

namespace detail {
inline std::atomic<int>& grid_threads_setting() {
  static std::atomic<int> threads{[] {
    const char* text = std::getenv("KERN_GPU_EMULATOR_THREADS");
    const int parsed = text != nullptr ? std::atoi(text) : 1;
    return std::max(parsed, 1);
  }()};
  return threads;
}

inline block_runner& thread_runner() {
  thread_local block_runner runner;
  return runner;
}

inline uint3 block_at(const dim3& grid, std::uint64_t linear) {
  return {static_cast<unsigned>(linear % grid.x), static_cast<unsigned>(linear / grid.x % grid.y),
          static_cast<unsigned>(linear / (std::uint64_t{grid.x} * grid.y))};
}
} // namespace detail

inline void set_grid_threads(int threads) { detail::grid_threads_setting() = std::max(threads, 1); }
inline int grid_threads() { return detail::grid_threads_setting(); }

// The checks the CUDA runtime makes at launch ("invalid configuration argument"), as kern::error.
inline void validate_launch(const launch_config& c) {
  const auto text = [](const dim3& d) {
    return "(" + std::to_string(d.x) + ", " + std::to_string(d.y) + ", " + std::to_string(d.z) + ")";
  };
  require(c.grid.volume() > 0 && c.grid.y <= 65535 && c.grid.z <= 65535 && c.grid.x <= 0x7fffffffu, "kern::gpu::launch",
          "grid ", text(c.grid), " is not a valid grid");
  require(c.block.volume() > 0 && c.block.volume() <= 1024 && c.block.z <= 64, "kern::gpu::launch", "block ",
          text(c.block), " is not a valid block (1 to 1024 threads, z <= 64)");
  require(c.dynamic_shared_bytes <= max_shared_bytes, "kern::gpu::launch", "dynamic shared memory of ",
          c.dynamic_shared_bytes, " bytes exceeds the ", max_shared_bytes, " bytes a block may use without opting in");
}

// Runs `body` (the kernel call) in every thread of every block; the first error stops the grid.
inline void run_grid(const launch_config& config, const std::function<void()>& body) {
  validate_launch(config);
  const std::uint64_t blocks = config.grid.volume();
  const auto workers = static_cast<std::uint64_t>(grid_threads());
  if (workers == 1 || blocks == 1) {
    for (std::uint64_t b = 0; b < blocks; ++b) {
      detail::thread_runner().run(config, detail::block_at(config.grid, b), body);
    }
    return;
  }
  std::atomic<std::uint64_t> next{0};
  std::atomic<bool> stop{false};
  std::exception_ptr failure;
  std::mutex failure_mutex;
  const auto work = [&] {
    for (std::uint64_t b = next++; b < blocks && !stop; b = next++) {
      try {
        detail::thread_runner().run(config, detail::block_at(config.grid, b), body);
      } catch (...) {
        const std::lock_guard lock(failure_mutex);
        if (!failure) {
          failure = std::current_exception();
        }
        stop = true;
      }
    }
  };
  std::vector<std::thread> threads;
  for (std::uint64_t t = 1; t < std::min(workers, blocks); ++t) {
    threads.emplace_back(work);
  }
  work();
  for (auto& t : threads) {
    t.join();
  }
  if (failure) {
    std::rethrow_exception(failure);
  }
}

} // namespace kern::gpu::emulator
