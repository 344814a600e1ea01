// CPU threading: the execution context every CPU kernel takes, and OpenMP-based parallel loops.
//
// A parallel loop called from inside an enclosing parallel region (a user's OpenMP loop, or another
// kern kernel) runs on the calling thread alone: nesting would oversubscribe the cores.
#pragma once

#include <cstdlib>
#include <string_view>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include "kern/core/error.hpp"
#include "kern/core/view.hpp"

namespace kern::cpu {

// KERN_NUM_THREADS when set (a positive integer), else OpenMP's default (OMP_NUM_THREADS or the cores).
inline int default_thread_count() {
  if (const char* env = std::getenv("KERN_NUM_THREADS"); env != nullptr && *env != '\0') {
    char* end = nullptr;
    const long value = std::strtol(env, &end, 10);
    require(*end == '\0' && value >= 1 && value <= 4096, "kern", "KERN_NUM_THREADS = '", env,
            "' is not a thread count (1 to 4096)");
    return static_cast<int>(value);
  }
#if defined(_OPENMP)
  return omp_get_max_threads();
#else
  return 1;
#endif
}

// What a CPU kernel runs on. Cheap to copy.
class context {
public:
  context() : threads_(default_thread_count()) {}
  explicit context(int threads) : threads_(threads) {
    require(threads >= 1, "kern::cpu::context", "threads = ", threads, " must be at least 1");
  }
  int threads() const noexcept { return threads_; }

private:
  int threads_;
};

// True inside an active OpenMP parallel region (where kern runs single-threaded).
inline bool in_parallel_region() noexcept {
#if defined(_OPENMP)
  return omp_in_parallel() != 0;
#else
  return false;
#endif
}

// The number of threads a region started now with `ctx` would run on.
inline int effective_threads(const context& ctx) noexcept { return in_parallel_region() ? 1 : ctx.threads(); }

// Runs body(thread_index, thread_count) once on each of `effective_threads(ctx)` threads.
template <class Body> void parallel_region(const context& ctx, Body&& body) {
  const int threads = effective_threads(ctx);
  if (threads == 1) {
    body(0, 1);
    return;
  }
#if defined(_OPENMP)
#pragma omp parallel num_threads(threads)
  body(omp_get_thread_num(), omp_get_num_threads());
#else
  body(0, 1);
#endif
}

// The contiguous share [begin, end) of [0, n) that part `part` of `parts` gets: sizes differ by at most one.
struct range {
  index_t begin;
  index_t end;
};
constexpr range split_evenly(index_t n, int parts, int part) noexcept {
  const index_t base = n / parts;
  const index_t extra = n % parts;
  const index_t begin = part * base + (part < extra ? part : extra);
  return {begin, begin + base + (part < extra ? 1 : 0)};
}

// Calls body(begin, end) on contiguous, disjoint chunks covering [0, n), one chunk per thread. The
// split depends only on n and the thread count, so results are reproducible for a given count.
template <class Body> void parallel_for(const context& ctx, index_t n, Body&& body) {
  if (n <= 0) {
    return;
  }
  const int threads = effective_threads(ctx) < n ? effective_threads(ctx) : static_cast<int>(n);
  parallel_region(context(threads), [&](int thread, int thread_count) {
    const range chunk = split_evenly(n, thread_count, thread);
    if (chunk.begin < chunk.end) {
      body(chunk.begin, chunk.end);
    }
  });
}

} // namespace kern::cpu
