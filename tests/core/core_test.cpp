// Views, errors, aligned memory, threading and CPU detection.
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <type_traits>
#include <vector>

#include <gtest/gtest.h>

#include "kern/core/cpu_info.hpp"
#include "kern/core/error.hpp"
#include "kern/core/memory.hpp"
#include "kern/core/threading.hpp"
#include "kern/core/view.hpp"

namespace {

using kern::index_t;

std::string message_of(auto&& call) {
  try {
    call();
  } catch (const kern::error& e) {
    return e.what();
  }
  return "(no kern::error thrown)";
}

TEST(MatrixView, AddressesRowMajorWithLeadingDimension) {
  std::vector<int> storage(std::size_t{3} * 5);
  for (int i = 0; i < 15; ++i) {
    storage[i] = i;
  }
  const kern::matrix_view m(storage.data(), 3, 4, 5);
  EXPECT_EQ(m(2, 3), 13);
  EXPECT_EQ(m.row(1)[0], 5);
  EXPECT_EQ(m.end(), storage.data() + 14);
  const auto b = m.block(1, 1, 2, 2);
  EXPECT_EQ(b(0, 0), 6);
  EXPECT_EQ(b(1, 1), 12);
  const kern::matrix_view<const int> read_only = m; // T -> const T converts implicitly
  EXPECT_EQ(read_only(0, 1), 1);
  static_assert(!std::is_convertible_v<kern::matrix_view<const int>, kern::matrix_view<int>>);
  static_assert(std::is_trivially_copyable_v<kern::matrix_view<float>> && sizeof(kern::matrix_view<float>) == 32);
}

TEST(TensorView, StridedIndexing) {
  std::vector<float> storage(std::size_t{2} * 3 * 4);
  const kern::tensor_view<float, 3> t(storage.data(), {2, 3, 4});
  EXPECT_EQ(t.strides, (std::array<index_t, 3>{12, 4, 1}));
  EXPECT_TRUE(t.is_contiguous());
  EXPECT_EQ(&t(1, 2, 3), storage.data() + 23);
  // A transposed view of the last two dimensions.
  const kern::tensor_view<const float, 3> transposed(storage.data(), {2, 4, 3}, {12, 1, 4});
  EXPECT_FALSE(transposed.is_contiguous());
  EXPECT_EQ(&transposed(1, 3, 2), storage.data() + 23);
  EXPECT_EQ(transposed.size(), 24);
}

TEST(Error, MessagesNameTheArgumentAndTheValues) {
  EXPECT_EQ(message_of([] { kern::require_non_negative("kern::cpu::op", "count", -3); }),
            "kern::cpu::op: count = -3 must not be negative");
  EXPECT_EQ(message_of([] { kern::require_leading_dimension("kern::cpu::gemm", "a.ld", 3, 5); }),
            "kern::cpu::gemm: a.ld = 3 must be at least the row length 5 (and at least 1)");
  EXPECT_EQ(message_of([] { kern::require_not_null("kern::cpu::op", "x", nullptr, 7); }),
            "kern::cpu::op: x is null but holds 7 elements");
  EXPECT_NO_THROW(kern::require_not_null("op", "x", nullptr, 0));
  float buffer[8];
  EXPECT_NE(message_of([&] {
              kern::require_disjoint("op", "out", buffer, buffer + 4, "in", buffer + 3, buffer + 8);
            }).find("op: out overlaps in"),
            std::string::npos);
  EXPECT_NO_THROW(kern::require_disjoint("op", "out", buffer, buffer + 4, "in", buffer + 4, buffer + 8));
  static_assert(std::is_base_of_v<std::exception, kern::error>);
}

TEST(AlignedBuffer, IsAlignedMoveOnlyAndSized) {
  kern::aligned_buffer<float> a(1000, 2.0f);
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(a.data()) % 64, 0u);
  EXPECT_EQ(a.size(), 1000u);
  EXPECT_EQ(a[999], 2.0f);
  float* raw = a.data();
  kern::aligned_buffer<float> b(std::move(a));
  EXPECT_EQ(b.data(), raw);
  EXPECT_TRUE(a.empty()); // NOLINT(bugprone-use-after-move): the moved-from state is specified
  a = std::move(b);
  EXPECT_EQ(a.data(), raw);
  static_assert(!std::is_copy_constructible_v<kern::aligned_buffer<float>>);
  static_assert(!std::is_copy_assignable_v<kern::aligned_buffer<float>>);
  const auto m = a.matrix(10, 90, 100);
  EXPECT_EQ(m.end(), raw + 990);
  EXPECT_THROW((void)a.matrix(11, 90, 100), kern::error);
  EXPECT_THROW((void)a.matrix(2, 101, 100), kern::error);
  EXPECT_EQ(kern::aligned_buffer<double>(0).data(), nullptr);
}

TEST(Threading, ContextRejectsZeroThreads) {
  EXPECT_EQ(message_of([] { kern::cpu::context bad(0); }), "kern::cpu::context: threads = 0 must be at least 1");
  EXPECT_GE(kern::cpu::context().threads(), 1);
}

TEST(Threading, ParallelForCoversEveryIndexOnce) {
  for (int threads : {1, 2, 3, 8}) {
    for (index_t n : {0, 1, 2, 5, 64, 1001}) {
      std::vector<std::atomic<int>> hits(static_cast<std::size_t>(n));
      kern::cpu::parallel_for(kern::cpu::context(threads), n, [&](index_t begin, index_t end) {
        for (index_t i = begin; i < end; ++i) {
          hits[static_cast<std::size_t>(i)]++;
        }
      });
      for (index_t i = 0; i < n; ++i) {
        ASSERT_EQ(hits[static_cast<std::size_t>(i)].load(), 1) << "n " << n << " threads " << threads << " i " << i;
      }
    }
  }
}

TEST(Threading, SplitIsEvenAndContiguous) {
  for (index_t n : {0, 1, 7, 100}) {
    for (int parts : {1, 2, 3, 7}) {
      index_t next = 0;
      for (int p = 0; p < parts; ++p) {
        const auto r = kern::cpu::split_evenly(n, parts, p);
        EXPECT_EQ(r.begin, next);
        EXPECT_LE(r.end - r.begin, n / parts + 1);
        EXPECT_GE(r.end - r.begin, n / parts);
        next = r.end;
      }
      EXPECT_EQ(next, n);
    }
  }
}

#if defined(_OPENMP)
TEST(Threading, NestedCallsDoNotOversubscribe) {
  std::atomic<int> inner_max_threads{0};
  std::atomic<int> outer_threads{0};
#pragma omp parallel num_threads(2)
  {
    outer_threads = omp_get_num_threads();
    kern::cpu::parallel_region(kern::cpu::context(4), [&](int, int count) {
      int seen = inner_max_threads.load();
      while (count > seen && !inner_max_threads.compare_exchange_weak(seen, count)) {
      }
    });
  }
  EXPECT_EQ(inner_max_threads.load(), 1) << "inside a parallel region a kern loop runs on the calling thread";
  // Outside any region, the context's thread count is used.
  std::atomic<int> count_seen{0};
  kern::cpu::parallel_region(kern::cpu::context(2), [&](int, int count) { count_seen = count; });
  EXPECT_EQ(count_seen.load(), 2);
}
#endif

TEST(CpuInfo, DetectsAndDescribes) {
  const auto& cpu = kern::cpu::info();
  EXPECT_LE(cpu.active, cpu.detected);
  EXPECT_GE(cpu.cores, 1);
  EXPECT_GT(cpu.l1d_bytes, 0);
  const std::string text = kern::cpu::describe();
  EXPECT_NE(text.find(std::string("isa ") + std::string(kern::cpu::name(cpu.active))), std::string::npos) << text;
#if defined(__x86_64__)
  EXPECT_GE(cpu.detected, kern::cpu::isa::sse2);
#endif
}

TEST(CpuInfo, IsaOverrideCapsTheLevel) {
  const char* saved = std::getenv("KERN_ISA");
  const std::string restore = saved ? saved : "";
  ::setenv("KERN_ISA", "scalar", 1);
  EXPECT_EQ(kern::cpu::detail::detect().active, kern::cpu::isa::scalar);
  ::setenv("KERN_ISA", "amx", 1); // a cap above the machine changes nothing
  const auto capped_high = kern::cpu::detail::detect();
  EXPECT_EQ(capped_high.active, capped_high.detected);
  ::setenv("KERN_ISA", "avx9000", 1);
  EXPECT_NE(message_of([] { (void)kern::cpu::detail::detect(); }).find("KERN_ISA = 'avx9000' is not one of"),
            std::string::npos);
  if (saved) {
    ::setenv("KERN_ISA", restore.c_str(), 1);
  } else {
    ::unsetenv("KERN_ISA");
  }
}

} // namespace
