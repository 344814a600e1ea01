// The CPU execution mode's block scheduler: runs the threads of one GPU block as fibers on the
// calling CPU thread, switching only where the GPU's threads would have to meet (block barriers
// and warp collectives), and owns the block's shared memory.
//
// Errors in the kernel (a barrier or warp collective that not every thread reaches, shared
// memory used outside its allocation, a cp.async copy still pending when its thread exits, a
// kern::error thrown by a thread) stop the block and come out of the launch as a kern::error
// naming the block, the thread and the place.
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <functional>
#include <memory>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "kern/core/error.hpp"
#include "kern/gpu/emulator/fiber.hpp"

namespace kern::gpu::emulator {

// CUDA's index and size triples (the emulated dim3 / uint3 are these).
struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) noexcept // NOLINT(google-explicit-constructor)
      : x(x_), y(y_), z(z_) {}
  constexpr std::uint64_t volume() const noexcept { return std::uint64_t{x} * y * z; }
};
struct uint3 {
  unsigned x = 0, y = 0, z = 0;
};

inline std::ostream& operator<<(std::ostream& out, const uint3& v) {
  return out << '(' << v.x << ',' << v.y << ',' << v.z << ')';
}

// What a launch runs: the grid, the block, the dynamic shared memory, and the kernel call that
// every thread makes.
struct launch_config {
  dim3 grid;
  dim3 block;
  std::size_t dynamic_shared_bytes = 0;
};

// The shared memory a block may use, static and dynamic together: 48 KiB, what every CUDA GPU
// grants a kernel that has not raised its limit (cudaFuncAttributeMaxDynamicSharedMemorySize), and
// kern::gpu::launch raises none. (sm_90 allows 227 KiB after opting in.)
inline constexpr std::size_t max_shared_bytes = std::size_t{48} * 1024;

class block_runner {
public:
  block_runner(const block_runner&) = delete;
  block_runner& operator=(const block_runner&) = delete;
  block_runner() = default;
  ~block_runner() = default;

  // Runs every thread of block `block_index` to completion; throws kern::error on a fault.
  void run(const launch_config& config, uint3 block_index, const std::function<void()>& body) {
    prepare(config, block_index, body);
    try {
      schedule();
      check_shared_guards();
    } catch (...) {
      abandon();
      throw;
    }
    active_ = nullptr;
  }

  // The runner of the block the calling fiber belongs to.
  static block_runner& current() {
    if (active_ == nullptr) {
      throw error("kern::gpu::emulator: a GPU builtin was used outside a kernel launch");
    }
    return *active_;
  }

  uint3 thread_index() const noexcept { return threads_[static_cast<std::size_t>(running_)].index; }
  uint3 block_index() const noexcept { return block_index_; }
  dim3 block_dim() const noexcept { return config_.block; }
  dim3 grid_dim() const noexcept { return config_.grid; }
  int linear_thread() const noexcept { return running_; }
  int thread_count() const noexcept { return thread_count_; }

  // The lanes that exist in warp `warp` (the last warp of a block may be partial).
  int lanes_in_warp(int warp, int warp_size) const noexcept {
    return std::min(warp_size, thread_count_ - warp * warp_size);
  }

  // __syncthreads(): waits until every thread of the block reaches this barrier.
  void sync_threads(const char* file, int line) {
    auto& self = threads_[static_cast<std::size_t>(running_)];
    self.state = thread_state::at_barrier;
    self.file = file;
    self.line = line;
    suspend();
  }

  // Every lane of the calling thread's warp contributes `value`; each gets all of them, indexed by
  // lane. A switch point: returns when the whole warp has arrived at the same collective.
  template <int WarpSize, class T> std::array<T, WarpSize> warp_gather(std::string_view collective, const T& value) {
    static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= exchange_bytes);
    warp_size_ = WarpSize;
    const int warp = running_ / WarpSize, lane = running_ % WarpSize;
    warp_exchange& exchange = warps_[static_cast<std::size_t>(warp)];
    if (exchange.arrived == 0) {
      exchange.collective = collective;
    } else if (exchange.collective != collective) {
      fail("lanes of warp ", warp, " call different warp collectives: this lane calls ", collective,
           ", another called ", exchange.collective);
    }
    std::memcpy(exchange.input[static_cast<std::size_t>(lane)].data(), &value, sizeof(T));
    if (++exchange.arrived == lanes_in_warp(warp, WarpSize)) {
      exchange.snapshot = exchange.input;
      exchange.arrived = 0;
      for (int l = 0; l < lanes_in_warp(warp, WarpSize); ++l) {
        auto& thread = threads_[static_cast<std::size_t>(warp) * WarpSize + static_cast<std::size_t>(l)];
        if (thread.state == thread_state::at_warp) {
          thread.state = thread_state::runnable;
        }
      }
    } else {
      auto& self = threads_[static_cast<std::size_t>(running_)];
      self.state = thread_state::at_warp;
      self.collective = collective;
      suspend();
    }
    // The snapshot stays until the warp's next collective completes, which needs this lane.
    std::array<T, WarpSize> all{};
    for (int l = 0; l < lanes_in_warp(warp, WarpSize); ++l) {
      std::memcpy(&all[static_cast<std::size_t>(l)], exchange.snapshot[static_cast<std::size_t>(l)].data(), sizeof(T));
    }
    return all;
  }

  // The block's instance of a statically sized shared variable, keyed by its declaration.
  void* shared_variable(const void* key, std::size_t bytes, std::size_t alignment, const char* name) {
    for (const auto& a : allocations_) {
      if (a.key == key) {
        return shared_.data() + a.offset;
      }
    }
    return allocate_shared(key, bytes, alignment, name);
  }

  std::byte* dynamic_shared() noexcept { return shared_.data() + dynamic_offset_; }
  std::size_t dynamic_shared_bytes() const noexcept { return config_.dynamic_shared_bytes; }

  // Whether [p, p + bytes) lies inside one shared allocation of this block.
  bool in_shared_allocation(const void* p, std::size_t bytes) const noexcept {
    const auto* b = static_cast<const std::byte*>(p);
    return std::any_of(allocations_.begin(), allocations_.end(), [&](const shared_allocation& a) {
      return b >= shared_.data() + a.offset && b + bytes <= shared_.data() + a.offset + a.bytes;
    });
  }

  // A cp.async copy the calling thread has started and not yet waited for; it lands when a wait
  // covers its group (kern/gpu/emulator/tensor_core.hpp).
  struct async_copy {
    std::byte* destination;
    const std::byte* source;
    std::size_t bytes;        // written at the destination
    std::size_t source_bytes; // read from the source; the rest is zero-filled
    int group;                // its commit group, or -1 while uncommitted
  };
  struct async_copies {
    std::vector<async_copy> pending;
    int committed_groups = 0;
  };
  async_copies& thread_async_copies() noexcept { return threads_[static_cast<std::size_t>(running_)].copies; }

  // Stops the block with a kern::error that names the block, the thread and what went wrong.
  template <class... Parts> [[noreturn]] void fail(const Parts&... parts) const {
    std::ostringstream message;
    message << "kern::gpu::emulator: block " << block_index_ << " thread " << thread_index() << ": ";
    (message << ... << parts);
    throw error(message.str());
  }

private:
  enum class thread_state : std::uint8_t { runnable, at_barrier, at_warp, finished };
  static constexpr std::size_t exchange_bytes = 16;
  static constexpr std::size_t max_warp_lanes = 64;
  static constexpr std::size_t guard_bytes = 16;
  static constexpr std::byte guard_pattern{0xa5};
  static constexpr std::byte fresh_pattern{0xff}; // fresh shared memory reads as NaN / all ones
#if defined(KERN_GPU_EMULATOR_ASAN)
  // AddressSanitizer clears the shadow of a fiber's whole stack at every switch into it; above 512
  // KiB of stack (64 KiB of shadow) it does so with mmap, a system call per switch.
  static constexpr std::size_t stack_bytes = 256 << 10;
#else
  static constexpr std::size_t stack_bytes = 128 << 10;
#endif

  struct thread_slot {
    fiber_context context;
    thread_state state = thread_state::runnable;
    uint3 index;
    const char* file = nullptr; // the barrier waited at
    int line = 0;
    std::string_view collective; // the warp collective waited at
    async_copies copies;
  };

  struct warp_exchange {
    int arrived = 0;
    std::string_view collective;
    std::array<std::array<std::byte, exchange_bytes>, max_warp_lanes> input{};
    std::array<std::array<std::byte, exchange_bytes>, max_warp_lanes> snapshot{};
  };

  struct shared_allocation {
    const void* key;
    std::size_t offset;
    std::size_t bytes;
    const char* name;
  };

  inline static thread_local block_runner* active_ = nullptr;

  void prepare(const launch_config& config, uint3 block_index, const std::function<void()>& body) {
    config_ = config;
    block_index_ = block_index;
    body_ = &body;
    thread_count_ = static_cast<int>(config.block.volume());
    const auto count = static_cast<std::size_t>(thread_count_);
    while (stacks_.size() < count) {
      stacks_.push_back(std::make_unique<fiber_stack>(stack_bytes));
    }
    threads_.assign(count, thread_slot{});
    warps_.assign(count / 32 + 1, warp_exchange{});
    for (std::size_t i = 0; i < count; ++i) {
      const auto linear = static_cast<unsigned>(i);
      threads_[i].index = {linear % config.block.x, linear / config.block.x % config.block.y,
                           linear / (config.block.x * config.block.y)};
      threads_[i].context.reset(*stacks_[i], &fiber_main, scheduler_);
    }
    if (shared_.empty()) {
      shared_.assign(max_shared_bytes + 64 * guard_bytes, fresh_pattern);
    } else {
      std::fill_n(shared_.begin(), used_, fresh_pattern);
    }
    allocations_.clear();
    used_ = guard_bytes;
    std::fill_n(shared_.begin(), guard_bytes, guard_pattern);
    failure_ = nullptr;
    active_ = this;
    dynamic_offset_ = 0;
    if (config.dynamic_shared_bytes > 0) {
      dynamic_offset_ = allocate_offset(nullptr, config.dynamic_shared_bytes, 16, "dynamic shared memory");
    }
  }

  // Runs the runnable threads in order until none is; then either every thread has finished, or
  // all wait at one barrier (released), or the block cannot go on (an error).
  //
  // Blocks of even linear index resume their threads in increasing order, odd ones in decreasing
  // order: a kernel that reads another thread's write with no barrier in between sees the write in
  // one order and misses it in the other, so a missing barrier fails in one block or the next.
  void schedule() {
    const std::uint64_t linear_block =
        block_index_.x +
        std::uint64_t{config_.grid.x} * (block_index_.y + std::uint64_t{config_.grid.y} * block_index_.z);
    const bool descending = linear_block % 2 == 1;
    for (;;) {
      bool ran = false;
      for (int k = 0; k < thread_count_; ++k) {
        const int i = descending ? thread_count_ - 1 - k : k;
        if (threads_[static_cast<std::size_t>(i)].state == thread_state::runnable) {
          running_ = i;
          threads_[static_cast<std::size_t>(i)].context.resume_from(scheduler_);
          ran = true;
          if (failure_) {
            std::rethrow_exception(failure_);
          }
        }
      }
      if (!ran && !release_barrier()) {
        return;
      }
    }
  }

  // Nothing is runnable: releases the barrier every live thread waits at. Returns false when all
  // threads have finished; throws when the block is stuck.
  bool release_barrier() {
    const thread_slot* waiting = nullptr;
    const thread_slot* exited = nullptr;
    for (const auto& t : threads_) {
      if (t.state == thread_state::at_warp) {
        stuck_at_warp_collective(t);
      }
      if (t.state == thread_state::at_barrier && waiting == nullptr) {
        waiting = &t;
      }
      if (t.state == thread_state::finished && exited == nullptr) {
        exited = &t;
      }
    }
    if (waiting == nullptr) {
      return false;
    }
    running_ = static_cast<int>(waiting - threads_.data());
    if (exited != nullptr) {
      fail("waits at __syncthreads() (", waiting->file, ":", waiting->line, ") that thread ", exited->index,
           " never reaches: it has exited");
    }
    for (const auto& t : threads_) {
      if (t.line != waiting->line || std::string_view(t.file) != waiting->file) {
        fail("waits at __syncthreads() (", waiting->file, ":", waiting->line, ") while thread ", t.index,
             " waits at another one (", t.file, ":", t.line, ")");
      }
    }
    for (auto& t : threads_) {
      t.state = thread_state::runnable;
    }
    return true;
  }

  [[noreturn]] void stuck_at_warp_collective(const thread_slot& t) {
    running_ = static_cast<int>(&t - threads_.data());
    for (const auto& other : threads_) {
      const bool same_warp = (&other - threads_.data()) / warp_size_ == running_ / warp_size_;
      if (same_warp && other.state != thread_state::at_warp) {
        fail("waits at the warp collective ", t.collective, " that thread ", other.index, " never reaches",
             other.state == thread_state::finished ? ": it has exited" : ": it waits at __syncthreads()");
      }
    }
    fail("waits at the warp collective ", t.collective, " that the rest of its warp never reaches");
  }

  void suspend() { threads_[static_cast<std::size_t>(running_)].context.suspend_to(scheduler_, false); }

  static void fiber_main() {
    block_runner& self = *active_;
    fiber_context::entered(self.scheduler_);
    const int me = self.running_;
    try {
      (*self.body_)();
      self.require_no_pending_copies();
    } catch (...) {
      self.failure_ = std::current_exception();
    }
    self.threads_[static_cast<std::size_t>(me)].state = thread_state::finished;
    self.threads_[static_cast<std::size_t>(me)].context.suspend_to(self.scheduler_, true);
  }

  // A copy that no wait covered: the kernel never needed it, or read its destination without waiting.
  void require_no_pending_copies() const {
    const auto& pending = threads_[static_cast<std::size_t>(running_)].copies.pending;
    if (!pending.empty()) {
      fail("exits with ", pending.size(), " cp.async copies still pending (never waited for with cp_async_wait_group ",
           "or cp_async_wait_all)");
    }
  }

  void* allocate_shared(const void* key, std::size_t bytes, std::size_t alignment, const char* name) {
    return shared_.data() + allocate_offset(key, bytes, alignment, name);
  }

  std::size_t allocate_offset(const void* key, std::size_t bytes, std::size_t alignment, const char* name) {
    const std::size_t align = std::max<std::size_t>(alignment, 16);
    const std::size_t offset = (used_ + align - 1) / align * align;
    std::size_t data_bytes = bytes;
    for (const auto& a : allocations_) {
      data_bytes += a.bytes;
    }
    if (data_bytes > max_shared_bytes || offset + bytes + guard_bytes > shared_.size()) {
      fail("shared memory of ", data_bytes, " bytes (with ", name, ") exceeds the ", max_shared_bytes,
           " bytes a block may use without opting in");
    }
    allocations_.push_back({key, offset, bytes, name});
    std::fill_n(shared_.begin() + static_cast<std::ptrdiff_t>(offset + bytes), guard_bytes, guard_pattern);
    used_ = offset + bytes + guard_bytes;
    return offset;
  }

  // A write through a raw pointer past an allocation lands in its guard bytes.
  void check_shared_guards() {
    for (const auto& a : allocations_) {
      const auto guard = shared_.begin() + static_cast<std::ptrdiff_t>(a.offset + a.bytes);
      if (std::any_of(guard, guard + guard_bytes, [](std::byte b) { return b != guard_pattern; })) {
        running_ = 0;
        fail("a shared-memory write outside its allocation: the bytes after ", a.name, " (", a.bytes,
             " bytes) were overwritten");
      }
    }
    if (std::any_of(shared_.begin(), shared_.begin() + guard_bytes, [](std::byte b) { return b != guard_pattern; })) {
      running_ = 0;
      fail("a shared-memory write outside its allocation: the bytes before the first allocation were overwritten");
    }
  }

  // After a failure the suspended fibers are dropped where they stand.
  void abandon() noexcept {
    for (std::size_t i = 0; i < threads_.size(); ++i) {
      if (threads_[i].state != thread_state::finished) {
        stacks_[i]->forget_frames();
      }
    }
    active_ = nullptr;
  }

  launch_config config_;
  uint3 block_index_;
  const std::function<void()>* body_ = nullptr;
  int thread_count_ = 0;
  int running_ = 0;
  int warp_size_ = 32; // of the kernel's warp collectives
  fiber_context scheduler_;
  std::vector<std::unique_ptr<fiber_stack>> stacks_;
  std::vector<thread_slot> threads_;
  std::vector<warp_exchange> warps_;
  std::vector<std::byte> shared_;
  std::vector<shared_allocation> allocations_;
  std::size_t used_ = 0;
  std::size_t dynamic_offset_ = 0;
  std::exception_ptr failure_;
};

} // namespace kern::gpu::emulator
