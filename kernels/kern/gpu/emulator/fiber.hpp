// Fibers for the CPU execution mode: each emulated GPU thread runs on its own stack, and control
// moves between them and the block scheduler only at explicit switch points (barriers, warp
// collectives, the end of the thread). Built on POSIX ucontext; the switches are annotated for
// AddressSanitizer so that it follows the stack changes.
#pragma once

#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <cstddef>
#include <new>

#include "kern/core/error.hpp"

#if defined(__SANITIZE_ADDRESS__)
#define KERN_GPU_EMULATOR_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define KERN_GPU_EMULATOR_ASAN 1
#endif
#endif

#if defined(KERN_GPU_EMULATOR_ASAN)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

namespace kern::gpu::emulator {

// A stack of `size` usable bytes with an inaccessible guard page below it, so that an overflow
// faults instead of overwriting a neighbour.
class fiber_stack {
public:
  explicit fiber_stack(std::size_t size) : size_(size), page_(static_cast<std::size_t>(sysconf(_SC_PAGESIZE))) {
    void* memory = mmap(nullptr, size_ + page_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (memory == MAP_FAILED) {
      throw std::bad_alloc();
    }
    mprotect(memory, page_, PROT_NONE);
    mapping_ = static_cast<std::byte*>(memory);
  }
  fiber_stack(const fiber_stack&) = delete;
  fiber_stack& operator=(const fiber_stack&) = delete;
  ~fiber_stack() { munmap(mapping_, size_ + page_); }

  std::byte* bottom() const noexcept { return mapping_ + page_; }
  std::size_t size() const noexcept { return size_; }

  // After a fiber was abandoned mid-run its frames never returned; AddressSanitizer's marks of
  // them must go before the stack is reused.
  void forget_frames() const noexcept {
#if defined(KERN_GPU_EMULATOR_ASAN)
    __asan_unpoison_memory_region(bottom(), size_);
#endif
  }

private:
  std::size_t size_;
  std::size_t page_;
  std::byte* mapping_ = nullptr;
};

// The two sides of a switch: the scheduler's context (one per CPU thread) and a fiber's. The
// sanitizer bookkeeping is kept here so that callers only say where they go.
class fiber_context {
public:
  // Prepares the fiber to run entry(argument) on `stack` from its start.
  void reset(const fiber_stack& stack, void (*entry)(), fiber_context& scheduler) {
    stack_ = &stack;
    if (getcontext(&context_) != 0) {
      throw error("kern::gpu::emulator: getcontext failed");
    }
    context_.uc_stack.ss_sp = stack.bottom();
    context_.uc_stack.ss_size = stack.size();
    context_.uc_link = &scheduler.context_;
    makecontext(&context_, entry, 0);
  }

  // From the scheduler into this fiber, until it switches back.
  void resume_from(fiber_context& scheduler) {
#if defined(KERN_GPU_EMULATOR_ASAN)
    void* fake_stack = nullptr;
    __sanitizer_start_switch_fiber(&fake_stack, stack_->bottom(), stack_->size());
    swapcontext(&scheduler.context_, &context_);
    __sanitizer_finish_switch_fiber(fake_stack, nullptr, nullptr);
#else
    swapcontext(&scheduler.context_, &context_);
#endif
  }

  // From this fiber back to the scheduler; returns when the scheduler resumes the fiber.
  // `finished`: the fiber will never be resumed (its stack may be reused).
  void suspend_to(fiber_context& scheduler, bool finished) {
#if defined(KERN_GPU_EMULATOR_ASAN)
    void* fake_stack = nullptr;
    __sanitizer_start_switch_fiber(finished ? nullptr : &fake_stack, scheduler.stack_bottom_, scheduler.stack_size_);
    swapcontext(&context_, &scheduler.context_);
    __sanitizer_finish_switch_fiber(fake_stack, nullptr, nullptr);
#else
    (void)finished;
    swapcontext(&context_, &scheduler.context_);
#endif
  }

  // Called first thing on a fiber's own stack: records where the scheduler's stack is, which
  // AddressSanitizer needs for the switches back.
  static void entered(fiber_context& scheduler) {
#if defined(KERN_GPU_EMULATOR_ASAN)
    const void* bottom = nullptr;
    std::size_t size = 0;
    __sanitizer_finish_switch_fiber(nullptr, &bottom, &size);
    scheduler.stack_bottom_ = bottom;
    scheduler.stack_size_ = size;
#else
    (void)scheduler;
#endif
  }

private:
  ucontext_t context_{};
  const fiber_stack* stack_ = nullptr;
  const void* stack_bottom_ = nullptr; // the scheduler's stack, for AddressSanitizer
  std::size_t stack_size_ = 0;
};

} // namespace kern::gpu::emulator
