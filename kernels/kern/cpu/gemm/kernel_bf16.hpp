// The AVX512-BF16 micro-kernel of the CPU GEMM: vdpbf16ps, for bf16 inputs and the bf16 compute mode.
//
// vdpbf16ps multiplies pairs of bf16 values and adds both products to an fp32 lane, so one
// instruction does twice the work of an fp32 FMA. Operands are packed in k pairs: a 32-bit slot
// holds (k even, k odd) of one row of A or one column of B (the "VNNI" layout); an odd depth gets a
// zero partner. The tile is MR x 32: 2 zmm per row, MR * 2 accumulators, as in the fp32 kernel; or
// 16 x 16 (NV = 1) for B of up to 16 columns, which the 32-column tile would half fill.
// The instruction treats subnormal bf16 inputs as zero (values below 1.2e-38).
#pragma once

#if defined(__AVX512BF16__) && defined(__AVX512BW__)
#define KERN_HAVE_BF16_DOT_KERNEL 1

#include <algorithm>
#include <cstdint>

#include <immintrin.h>

#include "kern/core/dtype.hpp"
#include "kern/cpu/gemm/packing.hpp"

namespace kern::cpu::detail {

// The bf16 bits the pair kernel multiplies: the element itself, or a float rounded to bf16.
template <class T> inline std::uint16_t bf16_bits(T x) {
  if constexpr (std::is_same_v<T, bf16>) {
    return x.bits;
  } else {
    return bf16(static_cast<float>(x)).bits;
  }
}

// 32 consecutive values as bf16 in one register: loaded as they are, or rounded from fp32
// (vcvtne2ps2bf16: round to nearest even; subnormals become zero, as vdpbf16ps treats them anyway).
template <class T> inline __m512i load_bf16x32(const T* src) {
  if constexpr (std::is_same_v<T, bf16>) {
    return _mm512_loadu_si512(src);
  } else {
    const __m512bh both = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(src + 16), _mm512_loadu_ps(src));
    return reinterpret_cast<const __m512i&>(both);
  }
}

template <class Arch, int MR, int NV = 2> struct bf16_dot_kernel {
  using arch = Arch;
  using packed = std::uint16_t;
  static constexpr int lanes = 16;
  static constexpr int mr = MR;
  static constexpr int nr = NV * lanes; // a k pair of NR columns fills NV registers
  static constexpr int kc = 1024;       // 1024 x 32 x 2 bytes = 64 KiB of B in L2: fewer passes over C
  static constexpr int mc = 14 * 12;    // 168 x 1024 x 2 = 336 KiB of A in L2 (KC 512: 10% slower)
  static constexpr int nc = 1024;
  static constexpr int default_mr = 14;

  static constexpr index_t padded_depth(index_t depth) { return depth + (depth & 1); }
  // Packed values from one k pair of a B micro-panel to the next.
  static constexpr index_t panel_ld = 2 * nr;

  // MR-row micro-panels of k pairs: dst[p * pd * MR + (k / 2) * 2 * MR + 2 * i + (k % 2)].
  template <bool Round, class T>
  static void pack_a(const op_view<T>& a, index_t row0, index_t rows, index_t col0, index_t depth, packed* dst) {
    const index_t pd = padded_depth(depth);
    if (a.transposed) {
      pack_a_transposed(a, row0, rows, col0, depth, dst);
      return;
    }
    for (index_t p0 = 0; p0 < rows; p0 += MR) {
      const index_t valid = std::min<index_t>(MR, rows - p0);
      packed* panel = dst + (p0 / MR) * pd * MR;
      index_t k = 0;
      if (!a.transposed && valid == MR) {
        // A k pair of one row is 32 contiguous bits of that row: 32 k of MR rows are a 16 x MR
        // transpose of 32-bit lanes, done in registers as in the fp32 kernel.
        constexpr __mmask16 row_mask = static_cast<__mmask16>((1u << MR) - 1u);
        const T* rows_base = a.data + (row0 + p0) * a.ld + col0;
        for (; k + 32 <= depth; k += 32) {
          __m512 r[16];
          for (int i = 0; i < 16; ++i) {
            r[i] = i < MR ? _mm512_castsi512_ps(load_bf16x32(rows_base + i * a.ld + k)) : _mm512_setzero_ps();
          }
          lanes_square<Arch, 16>::transpose(r);
          for (int j = 0; j < 16; ++j) {
            _mm512_mask_storeu_ps(reinterpret_cast<float*>(panel + (k / 2 + j) * 2 * MR), row_mask, r[j]);
          }
        }
      }
      for (; k < pd; ++k) {
        packed* out = panel + (k / 2) * 2 * MR + (k % 2);
        for (index_t i = 0; i < MR; ++i) {
          out[2 * i] = (i < valid && k < depth) ? bf16_bits(a(row0 + p0 + i, col0 + k)) : packed{0};
        }
      }
    }
  }

  // Up to 16 values of a stored row as bf16 in the low half of a register (zeros past `count`).
  template <class T> static __m256i load_bf16x16(const T* src, index_t count) {
    const auto mask = static_cast<__mmask16>((1u << count) - 1u);
    if constexpr (std::is_same_v<T, bf16>) {
      return _mm256_maskz_loadu_epi16(mask, src);
    } else {
      const __m256bh rounded = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(mask, src));
      return reinterpret_cast<const __m256i&>(rounded);
    }
  }

  // op(A) = A^T: stored rows k and k + 1 hold the k pair of every panel. Read the rows front to
  // back and interleave each panel's MR values of two rows into its pair slots: the element-wise
  // copy, panel by panel, was a fifth of the speed on a long, narrow weight gradient (288 x 16 x
  // 16384: 6.7 ms, against 1.3 ms for the same product with A not transposed; 1.2 ms now).
  template <class T> static void pack_a_transposed(const op_view<T>& a, index_t row0, index_t rows, index_t col0,
                                                   index_t depth, packed* dst) {
    // Lane 2i takes value i of row k (index i), lane 2i + 1 value i of row k + 1 (index 16 + i).
    alignas(64) static constexpr std::uint16_t interleave[32] = {0,  16, 1,  17, 2,  18, 3,  19, 4,  20, 5,
                                                                 21, 6,  22, 7,  23, 8,  24, 9,  25, 10, 26,
                                                                 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
    const __m512i order = _mm512_load_si512(interleave);
    constexpr auto pair_mask = static_cast<__mmask32>((std::uint64_t{1} << (2 * MR)) - 1u);
    // Sixteen rows (eight pairs) at a time, the next sixteen asked for meanwhile, each panel's eight
    // pairs written in one run (as in the fp32 kernel: the panels share L1 sets at KC = 1024).
    const index_t pd = padded_depth(depth);
    const T* first = a.data + col0 * a.ld + row0;
    for_each_row_chunk(first, a.ld, depth, rows, [&](index_t k0, index_t k1) {
      for (index_t p0 = 0; p0 < rows; p0 += MR) {
        const index_t valid = std::min<index_t>(MR, rows - p0);
        for (index_t k = k0; k < k1; k += 2) {
          const T* row_k = first + k * a.ld + p0;
          const __m256i first = load_bf16x16(row_k, valid);
          const __m256i second = k + 1 < depth ? load_bf16x16(row_k + a.ld, valid) : _mm256_setzero_si256();
          const __m512i both = _mm512_inserti64x4(_mm512_castsi256_si512(first), second, 1);
          _mm512_mask_storeu_epi16(dst + (p0 / MR) * pd * MR + k * MR, pair_mask,
                                   _mm512_permutexvar_epi16(order, both));
        }
      }
    });
  }

  // One NR-column micro-panel of k pairs: panel[(k / 2) * 2 * NR + 2 * j + (k % 2)]. A 16-column
  // panel is laid out as a 16-row micro-panel of A would be for op(B)^T, and packed as one.
  template <bool Round, class T>
  static void pack_b(const op_view<T>& b, index_t row0, index_t depth, index_t col0, index_t cols, packed* panel) {
    if constexpr (NV == 1) {
      const op_view<T> b_transposed{b.data, b.ld, !b.transposed};
      bf16_dot_kernel<Arch, lanes>::template pack_a<Round>(b_transposed, col0, std::min<index_t>(nr, cols), row0, depth,
                                                           panel);
    } else {
      pack_b_panel(b, row0, depth, col0, cols, padded_depth(depth), panel);
    }
  }

  // pack_b with zeros up to depth `pd` (>= depth, even): the AMX kernel's B tiles are this layout
  // too (two tiles side by side, 128 bytes from one k pair to the next), padded to whole tiles.
  template <class T> static void pack_b_panel(const op_view<T>& b, index_t row0, index_t depth, index_t col0,
                                              index_t cols, index_t pd, packed* panel) {
    static_assert(NV == 2, "32-column panels");
    const index_t valid = std::min<index_t>(nr, cols);
    index_t k = 0;
    if (!b.transposed && valid == nr) { // rows k and k + 1, paired in registers
      for (; k + 2 <= depth; k += 2) {
        const T* row = b.data + (row0 + k) * b.ld + col0;
        __m512i first, second;
        pair_rows(load_bf16x32(row), load_bf16x32(row + b.ld), first, second);
        _mm512_storeu_si512(panel + k * nr, first);
        _mm512_storeu_si512(panel + k * nr + 2 * lanes, second);
      }
    } else if (b.transposed && valid == nr) { // B^T's rows hold k pairs contiguously: 32-bit transposes
      for (; k + 32 <= depth; k += 32) {
        for (int half = 0; half < 2; ++half) {
          __m512 r[16];
          for (int j = 0; j < 16; ++j) {
            r[j] = _mm512_castsi512_ps(load_bf16x32(b.data + (col0 + half * 16 + j) * b.ld + row0 + k));
          }
          lanes_square<Arch, 16>::transpose(r);
          for (int kp = 0; kp < 16; ++kp) {
            _mm512_storeu_ps(reinterpret_cast<float*>(panel + (k / 2 + kp) * 2 * nr + half * 2 * lanes), r[kp]);
          }
        }
      }
    }
    for (; k < pd; ++k) {
      packed* out = panel + (k / 2) * 2 * nr + (k % 2);
      for (index_t j = 0; j < nr; ++j) {
        out[2 * j] = (j < valid && k < depth) ? bf16_bits(b(row0 + k, col0 + j)) : packed{0};
      }
    }
  }

  // Rows of B can be paired in registers (two loads and two permutes per k pair), bf16 as they are
  // and fp32 rounded as they load (the bf16 compute mode: this kernel always rounds fp32 operands).
  template <bool Round, class T> static constexpr bool reads_b_directly = NV == 2;

  // Interleaves row k (low 32 values) and row k + 1 (high 32 values) of `rows` into k pairs for
  // columns 0..15 (first) and 16..31 (second).
  static void pair_rows(__m512i rows_k, __m512i rows_k1, __m512i& first, __m512i& second) {
    // Lane 2j takes column j of row k, lane 2j + 1 column j of row k + 1 (index 32 + j).
    alignas(64) static constexpr std::uint16_t low[32] = {0, 32, 1, 33, 2,  34, 3,  35, 4,  36, 5,  37, 6,  38, 7,  39,
                                                          8, 40, 9, 41, 10, 42, 11, 43, 12, 44, 13, 45, 14, 46, 15, 47};
    alignas(64) static constexpr std::uint16_t high[32] = {16, 48, 17, 49, 18, 50, 19, 51, 20, 52, 21,
                                                           53, 22, 54, 23, 55, 24, 56, 25, 57, 26, 58,
                                                           27, 59, 28, 60, 29, 61, 30, 62, 31, 63};
    first = _mm512_permutex2var_epi16(rows_k, _mm512_load_si512(low), rows_k1);
    second = _mm512_permutex2var_epi16(rows_k, _mm512_load_si512(high), rows_k1);
  }

  static __m512 dot(__m512 acc, __m512i a, __m512i b) {
    return _mm512_dpbf16_ps(acc, reinterpret_cast<__m512bh&>(a), reinterpret_cast<__m512bh&>(b));
  }

  // The small-M form, for decode: pairs of rows of B streamed whole (`width` columns, a multiple of
  // NR) into fp32 sums acc[i * ld_acc + j] of the first `rows` (<= MR) rows, with the same operation
  // sequence per element as run(). B rows are `ldb` apart, bf16, or fp32 rounded to bf16 as they load
  // (as pack_b rounds them); an odd last row pairs with zeros.
  template <bool Round, class T> static void accumulate_rows(index_t kc_steps, const packed* __restrict a, index_t rows,
                                                             const T* __restrict b, index_t ldb, index_t width,
                                                             float* __restrict acc, index_t ld_acc) {
    static_assert(NV == 2, "rows of B are paired 32 columns at a time");
    const auto* a32 = reinterpret_cast<const std::int32_t*>(a);
    const index_t pairs = padded_depth(kc_steps) / 2;
    constexpr index_t values_per_line = 64 / sizeof(T);
    index_t kp = 0;
    // Two pairs (four rows of B) at a time, the next four rows prefetched: several streams in
    // flight (see the fp32 kernel). Each sum still takes its pairs in order.
    for (; 2 * kp + 4 <= kc_steps; kp += 2) {
      const T* row = b + 2 * kp * ldb;
      for (index_t j = 0; j < width; j += nr) {
        for (index_t ahead = 4; ahead < 8; ++ahead) {
          for (index_t line = 0; line < nr; line += values_per_line) {
            __builtin_prefetch(row + ahead * ldb + j + line, 0, 3);
          }
        }
        __m512i p0_lo, p0_hi, p1_lo, p1_hi;
        pair_rows(load_bf16x32(row + j), load_bf16x32(row + ldb + j), p0_lo, p0_hi);
        pair_rows(load_bf16x32(row + 2 * ldb + j), load_bf16x32(row + 3 * ldb + j), p1_lo, p1_hi);
        for (index_t i = 0; i < rows; ++i) {
          const __m512i a0 = _mm512_set1_epi32(a32[kp * MR + i]);
          const __m512i a1 = _mm512_set1_epi32(a32[(kp + 1) * MR + i]);
          float* sum = acc + i * ld_acc + j;
          _mm512_store_ps(sum, dot(dot(_mm512_load_ps(sum), a0, p0_lo), a1, p1_lo));
          _mm512_store_ps(sum + lanes, dot(dot(_mm512_load_ps(sum + lanes), a0, p0_hi), a1, p1_hi));
        }
      }
    }
    for (; kp < pairs; ++kp) {
      const T* row_k = b + 2 * kp * ldb;
      const bool has_partner = 2 * kp + 1 < kc_steps;
      for (index_t j = 0; j < width; j += nr) {
        __m512i b0, b1;
        pair_rows(load_bf16x32(row_k + j), has_partner ? load_bf16x32(row_k + ldb + j) : _mm512_setzero_si512(), b0,
                  b1);
        for (index_t i = 0; i < rows; ++i) {
          const __m512i ai = _mm512_set1_epi32(a32[kp * MR + i]);
          float* sum = acc + i * ld_acc + j;
          _mm512_store_ps(sum, dot(_mm512_load_ps(sum), ai, b0));
          _mm512_store_ps(sum + lanes, dot(_mm512_load_ps(sum + lanes), ai, b1));
        }
      }
    }
  }

  // Whether the blocked path's first tile of a panel packs it while it computes (run with b_copy):
  // the rows it pairs in registers are the panel's k pairs, stored as they are made.
  template <bool Round, class T> static constexpr bool packs_b_in_first_tile = NV == 2;

  // The tile += packed A (pairs) times kc_steps rows of B: a packed panel (ldb values per pair), or
  // with b_copy the rows of B itself (`ldb` apart; bf16, or fp32 rounded as it loads), paired in
  // registers and stored to b_copy as the panel pack_b makes of them (zero partner for an odd last
  // row). The blocked path reads A packed: a_k_step is always MR here.
  template <class T> static void run(index_t kc_steps, const packed* __restrict a, const T* __restrict b, index_t ldb,
                                     float* __restrict tile, [[maybe_unused]] index_t a_k_step = MR,
                                     packed* __restrict b_copy = nullptr) {
    __m512 acc[MR][NV];
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) {
        acc[i][v] = _mm512_setzero_ps();
      }
    }
    const index_t pairs = padded_depth(kc_steps) / 2;
    const auto* a32 = reinterpret_cast<const std::int32_t*>(a);
    for (index_t kp = 0; kp < pairs; ++kp) {
      __m512i bk[NV];
      if constexpr (std::is_same_v<T, packed>) {
#pragma GCC unroll 2
        for (int v = 0; v < NV; ++v) {
          bk[v] = _mm512_loadu_si512(b + kp * ldb + v * 2 * lanes);
        }
      } else {
        static_assert(NV == 2, "rows of B are paired 32 columns at a time");
        const T* row_k = b + 2 * kp * ldb;
        pair_rows(load_bf16x32(row_k), 2 * kp + 1 < kc_steps ? load_bf16x32(row_k + ldb) : _mm512_setzero_si512(),
                  bk[0], bk[1]);
        _mm512_store_si512(b_copy + kp * panel_ld, bk[0]);
        _mm512_store_si512(b_copy + kp * panel_ld + 2 * lanes, bk[1]);
      }
#pragma GCC unroll 16
      for (int i = 0; i < MR; ++i) {
        const __m512i ai = _mm512_set1_epi32(a32[kp * MR + i]);
#pragma GCC unroll 2
        for (int v = 0; v < NV; ++v) {
          acc[i][v] = dot(acc[i][v], ai, bk[v]);
        }
      }
    }
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) {
        _mm512_store_ps(tile + i * nr + v * lanes, acc[i][v]);
      }
    }
  }
};

} // namespace kern::cpu::detail

#endif
