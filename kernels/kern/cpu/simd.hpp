// Vector building blocks shared by the CPU kernels: fp32 batches loaded from and stored to any
// storage type (f32, bf16), whole or partial, and horizontal reductions.
//
// Every kernel does its math in fp32 batches; bf16 storage is widened on load and rounded to
// nearest even on store, bit-identical to kern::bf16(float). A tail shorter than a batch goes
// through a small zero-padded buffer, so that it takes exactly the same arithmetic as the body:
// no scalar second copy of a kernel's math.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include <xsimd/xsimd.hpp>

#include "kern/core/dtype.hpp"
#include "kern/core/view.hpp"
#include "kern/cpu/isa.hpp"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

namespace kern::cpu::detail {

template <class Arch> using fbatch = xsimd::batch<float, Arch>;
template <class Arch> inline constexpr index_t lanes_of = static_cast<index_t>(fbatch<Arch>::size);

// Loads `lanes` values of T as fp32. bf16 widens with integer instructions (zero-extend, shift).
template <class Arch, class T> fbatch<Arch> load_float(const T* src) {
  using batch = fbatch<Arch>;
  if constexpr (std::is_same_v<T, float>) {
    return batch::load_unaligned(src);
#if defined(__x86_64__) || defined(_M_X64)
  } else if constexpr (std::is_same_v<T, bf16> && isa_of<Arch>() >= isa::avx512) {
    const __m256i half = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(half), 16));
  } else if constexpr (std::is_same_v<T, bf16> && isa_of<Arch>() == isa::avx2) {
    const __m128i half = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(half), 16));
  } else if constexpr (std::is_same_v<T, bf16>) {
    const __m128i half = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(src));
    return _mm_castsi128_ps(_mm_unpacklo_epi16(_mm_setzero_si128(), half));
#endif
  } else {
    alignas(64) float wide[batch::size];
    for (std::size_t l = 0; l < batch::size; ++l) {
      wide[l] = static_cast<float>(src[l]);
    }
    return batch::load_aligned(wide);
  }
}

// Stores `lanes` fp32 values as T. bf16 rounds to nearest even in integer registers (the same
// rule as kern::bf16(float): NaN stays a quiet NaN with its sign, subnormals are kept).
template <class Arch, class T> void store_from_float(T* dst, fbatch<Arch> v) {
  if constexpr (std::is_same_v<T, float>) {
    v.store_unaligned(dst);
#if defined(__x86_64__) || defined(_M_X64)
  } else if constexpr (std::is_same_v<T, bf16> && isa_of<Arch>() >= isa::avx512) {
    const __m512i bits = _mm512_castps_si512(v);
    const __m512i lowest_kept = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
    const __m512i rounded =
        _mm512_srli_epi32(_mm512_add_epi32(bits, _mm512_add_epi32(_mm512_set1_epi32(0x7fff), lowest_kept)), 16);
    const __m512i quiet_nan = _mm512_or_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(0x40));
    const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    const __m512i out = _mm512_mask_blend_epi32(nan, rounded, quiet_nan);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), _mm512_cvtepi32_epi16(out));
  } else if constexpr (std::is_same_v<T, bf16> && isa_of<Arch>() == isa::avx2) {
    const __m256i bits = _mm256_castps_si256(v);
    const __m256i lowest_kept = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
    const __m256i rounded =
        _mm256_srli_epi32(_mm256_add_epi32(bits, _mm256_add_epi32(_mm256_set1_epi32(0x7fff), lowest_kept)), 16);
    const __m256i quiet_nan = _mm256_or_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(0x40));
    const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    const __m256i out = _mm256_blendv_epi8(rounded, quiet_nan, nan);
    // Values fit 16 bits, so the unsigned-saturating pack keeps them; it packs within 128-bit halves.
    const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(out, out), 0x08);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst), _mm256_castsi256_si128(packed));
  } else if constexpr (std::is_same_v<T, bf16>) {
    const __m128i bits = _mm_castps_si128(v);
    const __m128i lowest_kept = _mm_and_si128(_mm_srli_epi32(bits, 16), _mm_set1_epi32(1));
    const __m128i rounded = _mm_srli_epi32(_mm_add_epi32(bits, _mm_add_epi32(_mm_set1_epi32(0x7fff), lowest_kept)), 16);
    const __m128i quiet_nan = _mm_or_si128(_mm_srli_epi32(bits, 16), _mm_set1_epi32(0x40));
    const __m128i nan = _mm_castps_si128(_mm_cmpunord_ps(v, v));
    const __m128i out = _mm_or_si128(_mm_and_si128(nan, quiet_nan), _mm_andnot_si128(nan, rounded));
    // SSE2 has only the signed-saturating pack: sign-extend the 16-bit values first so it keeps them.
    const __m128i signed16 = _mm_srai_epi32(_mm_slli_epi32(out, 16), 16);
    _mm_storel_epi64(reinterpret_cast<__m128i*>(dst), _mm_packs_epi32(signed16, signed16));
#endif
  } else {
    alignas(64) float wide[fbatch<Arch>::size];
    v.store_aligned(wide);
    for (std::size_t l = 0; l < fbatch<Arch>::size; ++l) {
      dst[l] = T(wide[l]);
    }
  }
}

// Each lane rounded to the nearest bf16 and kept as fp32: float(bf16(x)) for every lane, NaN made
// quiet with its sign. The same carry as store_from_float, with the dropped half cleared in place.
template <class Arch> fbatch<Arch> round_through_bf16(fbatch<Arch> v) {
  using ubatch = xsimd::batch<std::uint32_t, Arch>;
  const ubatch bits = xsimd::bitwise_cast<ubatch>(v);
  const ubatch kept_half(0xffff0000u);
  const ubatch rounded = (bits + ubatch(0x7fffu) + ((bits >> 16) & ubatch(1u))) & kept_half;
  const ubatch quiet_nan = (bits | ubatch(0x00400000u)) & kept_half;
  return xsimd::select(xsimd::isnan(v), xsimd::bitwise_cast<fbatch<Arch>>(quiet_nan),
                       xsimd::bitwise_cast<fbatch<Arch>>(rounded));
}

// The first n (< lanes) values of T as fp32; the other lanes hold `fill`.
template <class Arch, class T> fbatch<Arch> load_float_partial(const T* src, index_t n, float fill = 0.0f) {
  T part[fbatch<Arch>::size];
  std::fill(part, part + fbatch<Arch>::size, T(fill));
  std::copy(src, src + n, part);
  return load_float<Arch>(part);
}

// Stores the first n (< lanes) values of v as T.
template <class Arch, class T> void store_from_float_partial(T* dst, fbatch<Arch> v, index_t n) {
  T part[fbatch<Arch>::size];
  store_from_float<Arch>(part, v);
  std::copy(part, part + n, dst);
}

// Calls body(i, valid) for i = 0, lanes, 2 lanes, ... below n; valid is lanes except for the last
// (partial) step. Kernels load with load_float_n and store with store_from_float_n, which take the
// partial path only when valid < lanes.
template <class Arch, class Body> void for_each_batch(index_t n, Body&& body) {
  constexpr index_t lanes = lanes_of<Arch>;
  index_t i = 0;
  for (; i + lanes <= n; i += lanes) {
    body(i, lanes);
  }
  if (i < n) {
    body(i, n - i);
  }
}

template <class Arch, class T> fbatch<Arch> load_float_n(const T* src, index_t valid, float fill = 0.0f) {
  return valid == lanes_of<Arch> ? load_float<Arch>(src) : load_float_partial<Arch>(src, valid, fill);
}

template <class Arch, class T> void store_from_float_n(T* dst, fbatch<Arch> v, index_t valid) {
  if (valid == lanes_of<Arch>) {
    store_from_float<Arch>(dst, v);
  } else {
    store_from_float_partial<Arch>(dst, v, valid);
  }
}

// GELU, tanh approximation (GPT-2): 0.5 x (1 + tanh(u)), u = sqrt(2 / pi) (x + 0.044715 x^3),
// evaluated as x / (1 + exp(-2u)), the same function: for very negative x, 1 + tanh(u) cancels to 0
// in float while this form keeps the tiny negative result.
template <class V> V gelu_tanh(V x) {
  using std::exp;
  using xsimd::exp;
  const V u = V(0.7978845608028654f) * (x + V(0.044715f) * x * x * x);
  return x / (V(1.0f) + exp(V(-2.0f) * u));
}

// Horizontal sum and maximum of the lanes (NaN in any lane gives NaN).
template <class Arch> float reduce_sum(fbatch<Arch> v) { return xsimd::hadd(v); }

template <class Arch> float reduce_max(fbatch<Arch> v) {
  alignas(64) float lane[fbatch<Arch>::size];
  v.store_aligned(lane);
  float m = lane[0];
  for (std::size_t l = 1; l < fbatch<Arch>::size; ++l) {
    m = (lane[l] > m || std::isnan(lane[l])) ? lane[l] : m; // a NaN lane wins, as IEEE max propagation wants
  }
  return m;
}

} // namespace kern::cpu::detail
