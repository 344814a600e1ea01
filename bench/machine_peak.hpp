// This machine's measured limits, the denominators of every benchmark's peak_frac:
// - the fp32 FMA rate: independent chains of vector FMAs that never touch memory;
// - the memory bandwidth: a STREAM triad a[i] = b[i] + s * c[i] over arrays far larger than the caches.
// Both are measured per thread count, once per process, and cached.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <mutex>

#include <immintrin.h>

#include "kern/core/cpu_info.hpp"
#include "kern/core/memory.hpp"
#include "kern/core/threading.hpp"

namespace kern::bench {

// Independent accumulators: at least FMA latency x FMA ports on current x86 cores (4 x 2) so that
// the FMA units, not the latency, limit the rate; few enough to stay in registers (AVX-512 has 32
// vector registers, AVX2 16, and two hold the operands).
inline constexpr int fma_chains_avx512 = 16;
inline constexpr int fma_chains_avx2 = 12;

// Runs `iterations` rounds of fma_chains FMAs on one thread; returns a value that depends on all of
// them so that nothing is optimized away. `scale` and `offset` come from outside (1 and 0).
__attribute__((target("avx512f"))) inline float fma_rounds_avx512(std::int64_t iterations, float scale, float offset) {
  constexpr int fma_chains = fma_chains_avx512;
  __m512 acc[fma_chains];
  for (int k = 0; k < fma_chains; ++k) {
    acc[k] = _mm512_set1_ps(static_cast<float>(k));
  }
  const __m512 a = _mm512_set1_ps(scale);
  const __m512 b = _mm512_set1_ps(offset);
  for (std::int64_t i = 0; i < iterations; ++i) {
    for (int k = 0; k < fma_chains; ++k) {
      acc[k] = _mm512_fmadd_ps(acc[k], a, b);
    }
  }
  __m512 sum = acc[0];
  for (int k = 1; k < fma_chains; ++k) {
    sum = _mm512_add_ps(sum, acc[k]);
  }
  float lanes[16];
  _mm512_storeu_ps(lanes, sum);
  float total = 0;
  for (float lane : lanes) {
    total += lane;
  }
  return total;
}

__attribute__((target("avx2,fma"))) inline float fma_rounds_avx2(std::int64_t iterations, float scale, float offset) {
  constexpr int fma_chains = fma_chains_avx2;
  __m256 acc[fma_chains];
  for (int k = 0; k < fma_chains; ++k) {
    acc[k] = _mm256_set1_ps(static_cast<float>(k));
  }
  const __m256 a = _mm256_set1_ps(scale);
  const __m256 b = _mm256_set1_ps(offset);
  for (std::int64_t i = 0; i < iterations; ++i) {
    for (int k = 0; k < fma_chains; ++k) {
      acc[k] = _mm256_fmadd_ps(acc[k], a, b);
    }
  }
  __m256 sum = acc[0];
  for (int k = 1; k < fma_chains; ++k) {
    sum = _mm256_add_ps(sum, acc[k]);
  }
  const __m128 half = _mm_add_ps(_mm256_castps256_ps128(sum), _mm256_extractf128_ps(sum, 1));
  return _mm_cvtss_f32(_mm_hadd_ps(_mm_hadd_ps(half, half), half));
}

enum class fma_width { avx512, avx2 };

// fp32 flops of one round: two per lane per FMA, over all chains.
inline double flops_per_round(fma_width width) {
  return width == fma_width::avx512 ? 2.0 * 16 * fma_chains_avx512 : 2.0 * 8 * fma_chains_avx2;
}

inline bool supported(fma_width width) {
  return kern::cpu::info().detected >= (width == fma_width::avx512 ? cpu::isa::avx512 : cpu::isa::avx2);
}

// fp32 GFLOP/s of `threads` threads each running `iterations` FMA rounds (2 flops per lane per FMA).
inline double fma_gflops(fma_width width, int threads, std::int64_t iterations) {
  volatile float scale = 1.0f;
  volatile float offset = 0.0f;
  volatile float sink = 0.0f;
  const auto start = std::chrono::steady_clock::now();
  cpu::parallel_region(cpu::context(threads), [&](int, int) {
    const float s = scale, o = offset;
    sink = width == fma_width::avx512 ? fma_rounds_avx512(iterations, s, o) : fma_rounds_avx2(iterations, s, o);
  });
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const double flops = flops_per_round(width) * static_cast<double>(iterations) * threads;
  return flops / seconds * 1e-9;
}

// One STREAM triad pass over three arrays of `n` floats split across threads; returns GB/s counting
// the 12 bytes per element the kernel reads and writes.
inline double triad_gbps(const cpu::context& ctx, float* a, const float* b, const float* c, index_t n) {
  const float s = 3.0f;
  const auto start = std::chrono::steady_clock::now();
  cpu::parallel_for(ctx, n, [&](index_t begin, index_t end) {
#pragma omp simd
    for (index_t i = begin; i < end; ++i) {
      a[i] = b[i] + s * c[i];
    }
  });
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return 12.0 * static_cast<double>(n) / seconds * 1e-9;
}

// 128 MiB per array: four times any last-level cache here, so the triad runs from DRAM.
inline constexpr index_t triad_elements = index_t{32} << 20;

struct triad_arrays {
  aligned_buffer<float> a, b, c;
  // First touch from the threads that will use the pages.
  explicit triad_arrays(const cpu::context& ctx) : a(triad_elements), b(triad_elements), c(triad_elements) {
    cpu::parallel_for(ctx, triad_elements, [&](index_t begin, index_t end) {
      for (index_t i = begin; i < end; ++i) {
        a[i] = 0.0f;
        b[i] = 1.0f;
        c[i] = 2.0f;
      }
    });
  }
};

// The best of a few short measurements, cached per thread count: a denominator, measured quickly.
class machine_peak {
public:
  static double fma_gflops(int threads) {
    return cached(instance().fma_, threads, [threads] {
      const fma_width width = supported(fma_width::avx512) ? fma_width::avx512 : fma_width::avx2;
      double best = 0;
      for (int trial = 0; trial < 5; ++trial) {
        const double g = bench::fma_gflops(width, threads, 2'000'000);
        best = g > best ? g : best;
      }
      return best;
    });
  }
  static double triad_gbps(int threads) {
    return cached(instance().triad_, threads, [threads] {
      const cpu::context ctx(threads);
      triad_arrays arrays(ctx);
      double best = 0;
      for (int trial = 0; trial < 4; ++trial) {
        const double g = bench::triad_gbps(ctx, arrays.a.data(), arrays.b.data(), arrays.c.data(), triad_elements);
        best = g > best ? g : best;
      }
      return best;
    });
  }

private:
  static machine_peak& instance() {
    static machine_peak peak;
    return peak;
  }
  template <class Measure> static double cached(std::map<int, double>& table, int threads, Measure measure) {
    const std::lock_guard lock(instance().mutex_);
    auto it = table.find(threads);
    if (it == table.end()) {
      it = table.emplace(threads, measure()).first;
    }
    return it->second;
  }
  std::mutex mutex_;
  std::map<int, double> fma_;
  std::map<int, double> triad_;
};

} // namespace kern::bench
