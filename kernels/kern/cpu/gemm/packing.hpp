// What the CPU GEMM's packing routines share across its kernels: a view of op(X), the walk over the
// stored rows of A^T, the value an fp32 kernel multiplies, and the transpose of a square of
// registers that the vector packs use (fp32 rows into micro-panels, bf16 rows into k pairs).
#pragma once

#include <algorithm>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#include "kern/core/dtype.hpp"
#include "kern/core/view.hpp"

namespace kern::cpu::detail {

// op(X) as a read-only view in logical (row, col) coordinates, whatever X's storage order.
template <class T> struct op_view {
  const T* data;
  index_t ld;
  bool transposed; // element (r, c) of op(X) is data[c * ld + r] instead of data[r * ld + c]
  const T& operator()(index_t r, index_t c) const { return transposed ? data[c * ld + r] : data[r * ld + c]; }
};

// The stored rows [0, depth) of A^T (row k at first + k * ld, `count` values used from each), in
// chunks of sixteen: body(k0, k1) deals rows [k0, k1) out to the panels while the next sixteen are
// asked into L1. Both transposed-A packs walk their rows this way.
template <class T, class Body>
inline void for_each_row_chunk(const T* first, index_t ld, index_t depth, index_t count, Body&& body) {
  constexpr index_t chunk = 16; // even: a chunk holds whole k pairs
  const index_t lines = (count * index_t{sizeof(T)} + 63) / 64;
  for (index_t k0 = 0; k0 < depth; k0 += chunk) {
    const index_t k1 = std::min(depth, k0 + chunk);
    for (index_t k = k1; k < std::min(depth, k1 + chunk); ++k) {
      const char* row = reinterpret_cast<const char*>(first + k * ld);
      for (index_t line = 0; line < lines; ++line) {
        __builtin_prefetch(row + line * 64, 0, 3);
      }
    }
    body(k0, k1);
  }
}

// The value the fp32 micro-kernel multiplies: the element widened to float, or rounded through bf16.
template <bool RoundToBf16, class T> inline float packed_value(T x) {
  if constexpr (RoundToBf16) {
    return static_cast<float>(bf16(static_cast<float>(x)));
  } else {
    return static_cast<float>(x);
  }
}

// A square of lanes x lanes fp32 values in registers, transposed with shuffles (16 x 16 zmm with
// 64 of them, 8 x 8 ymm with 24), and the loads and stores of the packs around it. MR is the number
// of rows of a packed A micro-panel (store_first_mr). Arch, unused in the code, keeps the square of
// each ISA's translation unit a distinct entity: its registers depend on the compiler flags.
#if defined(__AVX512F__)
template <class Arch, int MR> struct lanes_square {
  using reg = __m512;
  static constexpr int size = 16;
  static reg load(const float* p) { return _mm512_loadu_ps(p); }
  static reg zero() { return _mm512_setzero_ps(); }
  static void store_aligned(float* p, reg v) { _mm512_store_ps(p, v); }
  // The first `count` values at p, zeros after them; the first MR values of v to out.
  static reg load_first(const float* p, index_t count) {
    return _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << count) - 1u), p);
  }
  static void store_first_mr(float* out, reg v) {
    _mm512_mask_storeu_ps(out, static_cast<__mmask16>((1u << MR) - 1u), v);
  }

  // r[i][j] becomes r[j][i].
  static void transpose(reg (&r)[16]) {
    reg t[16];
    for (int i = 0; i < 16; i += 2) {
      t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
      t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {
      for (int h = 0; h < 2; ++h) {
        const __m512d lo = _mm512_castps_pd(t[i + h]), hi = _mm512_castps_pd(t[i + h + 2]);
        r[i + 2 * h] = _mm512_castpd_ps(_mm512_unpacklo_pd(lo, hi));
        r[i + 2 * h + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(lo, hi));
      }
    }
    for (int i = 0; i < 16; i += 8) {
      for (int h = 0; h < 4; ++h) {
        t[i + h] = _mm512_shuffle_f32x4(r[i + h], r[i + h + 4], 0x88);
        t[i + h + 4] = _mm512_shuffle_f32x4(r[i + h], r[i + h + 4], 0xdd);
      }
    }
    for (int h = 0; h < 8; ++h) {
      r[h] = _mm512_shuffle_f32x4(t[h], t[h + 8], 0x88);
      r[h + 8] = _mm512_shuffle_f32x4(t[h], t[h + 8], 0xdd);
    }
  }
};
#elif defined(__AVX2__)
template <class Arch, int MR> struct lanes_square {
  using reg = __m256;
  static constexpr int size = 8;
  static reg load(const float* p) { return _mm256_loadu_ps(p); }
  static reg zero() { return _mm256_setzero_ps(); }
  static void store_aligned(float* p, reg v) { _mm256_store_ps(p, v); }
  // The first `count` values at p, zeros after them; the first MR values of v to out (no masked
  // store: AMD's are slow).
  static reg load_first(const float* p, index_t count) {
    const __m256i lanes_wanted =
        _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(count)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    return _mm256_maskload_ps(p, lanes_wanted);
  }
  static void store_first_mr(float* out, reg v) {
    if constexpr (MR == 8) {
      _mm256_storeu_ps(out, v);
    } else {
      _mm_storeu_ps(out, _mm256_castps256_ps128(v));
      if constexpr (MR == 6) {
        _mm_storel_pi(reinterpret_cast<__m64*>(out + 4), _mm256_extractf128_ps(v, 1));
      }
    }
  }

  // r[i][j] becomes r[j][i].
  static void transpose(reg (&r)[8]) {
    reg t[8];
    for (int i = 0; i < 8; i += 2) {
      t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
      t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {
      for (int h = 0; h < 2; ++h) {
        r[i + 2 * h] = _mm256_shuffle_ps(t[i + h], t[i + h + 2], 0x44);
        r[i + 2 * h + 1] = _mm256_shuffle_ps(t[i + h], t[i + h + 2], 0xee);
      }
    }
    for (int h = 0; h < 4; ++h) {
      t[h] = _mm256_permute2f128_ps(r[h], r[h + 4], 0x20);
      t[h + 4] = _mm256_permute2f128_ps(r[h], r[h + 4], 0x31);
    }
    for (int i = 0; i < 8; ++i) {
      r[i] = t[i];
    }
  }
};
#endif

} // namespace kern::cpu::detail
