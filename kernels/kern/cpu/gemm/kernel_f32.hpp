// The fp32 FMA micro-kernel of the CPU GEMM (every ISA), with its packing and block sizes.
//
// An MR x NR tile of C lives in MR * NR / lanes vector registers; each of the kc steps multiplies a
// row of NR values of B by MR broadcast values of A (one FMA per register). Packing copies blocks
// of op(A) and op(B) into the order the kernel reads, widening bf16 to fp32 (or, for the bf16
// compute mode, rounding fp32 through bf16), and pads edges with zeros: the kernel has no tails.
//
// Block sizes (BLIS's table, one row per ISA):
//   MR x NR   MR * NR / lanes accumulators + NR / lanes B registers + 1 broadcast fit the register
//             file: 28 + 2 + 1 of 32 zmm (AVX-512); 12 + 2 + 1 of 16 ymm / xmm (AVX2, SSE2).
//   KC        depth of one packed block: the kc x NR micro-panel of B is reused by every MR-row
//             micro-panel of A, and a deeper block means fewer passes of partial sums over C.
//   MC        rows of the packed A block, kept in L2 (1 MiB per core here): MC x KC x 4 bytes.
//   NC        columns of B packed per outer iteration (K x NC x 4 bytes, shared by all threads).
#pragma once

#include <algorithm>

#include <xsimd/xsimd.hpp>

#include "kern/core/dtype.hpp"
#include "kern/core/view.hpp"
#include "kern/cpu/gemm/epilogue.hpp"
#include "kern/cpu/isa.hpp"

namespace kern::cpu::detail {

// op(X) as a read-only view in logical (row, col) coordinates, whatever X's storage order.
template <class T> struct op_view {
  const T* data;
  index_t ld;
  bool transposed; // element (r, c) of op(X) is data[c * ld + r] instead of data[r * ld + c]
  const T& operator()(index_t r, index_t c) const { return transposed ? data[c * ld + r] : data[r * ld + c]; }
};

// The value the fp32 micro-kernel multiplies: the element widened to float, or rounded through bf16.
template <bool RoundToBf16, class T> inline float packed_value(T x) {
  if constexpr (RoundToBf16) {
    return static_cast<float>(bf16(static_cast<float>(x)));
  } else {
    return static_cast<float>(x);
  }
}

template <class Arch, int MR> struct f32_fma_kernel {
  using arch = Arch;
  using packed = float;
  using batch = xsimd::batch<float, Arch>;
  static constexpr int lanes = static_cast<int>(batch::size);
  static constexpr bool wide = isa_of<Arch>() >= isa::avx512;
  static constexpr int mr = MR;
  static constexpr int nr = 2 * lanes;
  static constexpr int kc = wide ? 384 : 256;
  static constexpr int mc = wide ? 14 * 24 : 6 * 48; // 336 x 384 x 4 = 504 KiB of A in L2
  static constexpr int nc = 1024;
  static constexpr int default_mr = wide ? 14 : 6;

  // Packed values per k step of a micro-panel row (1 here; 2 for the bf16 pair kernel).
  static constexpr index_t padded_depth(index_t depth) { return depth; }

  // Rows [row0, row0 + rows) x columns [col0, col0 + depth) of op(A) into MR-row micro-panels:
  // panel p holds depth steps of MR values, dst[p * depth * MR + k * MR + i]; missing rows are 0.
  template <bool Round, class T>
  static void pack_a(const op_view<T>& a, index_t row0, index_t rows, index_t col0, index_t depth, float* dst) {
    for (index_t p0 = 0; p0 < rows; p0 += MR) {
      const index_t valid = std::min<index_t>(MR, rows - p0);
      float* panel = dst + (p0 / MR) * depth * MR;
      if (!a.transposed) {
        for (index_t i = 0; i < MR; ++i) {
          const T* src = a.data + (row0 + p0 + i) * a.ld + col0;
          for (index_t k = 0; k < depth; ++k) {
            panel[k * MR + i] = i < valid ? packed_value<Round>(src[k]) : 0.0f;
          }
        }
      } else {
        for (index_t k = 0; k < depth; ++k) {
          const T* src = a.data + (col0 + k) * a.ld + row0 + p0;
          for (index_t i = 0; i < MR; ++i) {
            panel[k * MR + i] = i < valid ? packed_value<Round>(src[i]) : 0.0f;
          }
        }
      }
    }
  }

  // Rows [row0, row0 + depth) x columns [col0, col0 + cols) of op(B) into one NR-column
  // micro-panel, panel[k * NR + j]; missing columns are 0.
  template <bool Round, class T>
  static void pack_b(const op_view<T>& b, index_t row0, index_t depth, index_t col0, index_t cols, float* panel) {
    const index_t valid = std::min<index_t>(nr, cols);
    if (!b.transposed) {
      for (index_t k = 0; k < depth; ++k) {
        const T* src = b.data + (row0 + k) * b.ld + col0;
        for (index_t j = 0; j < nr; ++j) {
          panel[k * nr + j] = j < valid ? packed_value<Round>(src[j]) : 0.0f;
        }
      }
    } else {
      for (index_t j = 0; j < nr; ++j) {
        const T* src = b.data + (col0 + j) * b.ld + row0;
        for (index_t k = 0; k < depth; ++k) {
          panel[k * nr + j] = j < valid ? packed_value<Round>(src[k]) : 0.0f;
        }
      }
    }
  }

  // B can be read straight from its storage (rows of op(B) = B, NR columns at a time) when no
  // rounding is needed: the small-M path does so instead of packing.
  template <bool Round, class T> static constexpr bool reads_b_directly = !Round;

  // The small-M form, for decode: rows of B streamed whole (`width` columns, a multiple of NR)
  // into fp32 sums acc[i * ld_acc + j] of the first `rows` (<= MR) rows, with the same operation
  // sequence per element as run(). B rows are `ldb` apart.
  template <class T> static void accumulate_rows(index_t kc_steps, const float* __restrict a, index_t rows,
                                                 const T* __restrict b, index_t ldb, index_t width,
                                                 float* __restrict acc, index_t ld_acc) {
    for (index_t k = 0; k < kc_steps; ++k) {
      const T* row = b + k * ldb;
      for (index_t j = 0; j < width; j += lanes) {
        // The same columns of the next row: a whole row ahead, which hides DRAM latency where the
        // hardware prefetchers stop at page boundaries.
        __builtin_prefetch(row + ldb + j, 0, 3);
        const batch bv = load_float<Arch>(row + j);
        for (index_t i = 0; i < rows; ++i) {
          float* sum = acc + i * ld_acc + j;
          xsimd::fma(batch(a[k * MR + i]), bv, batch::load_aligned(sum)).store_aligned(sum);
        }
      }
    }
  }

  // The tile += packed A panel (kc x MR) times kc rows of NR values of B, `ldb` apart; B is either a
  // packed panel (ldb = NR) or B itself (T float or bf16).
  template <class T> static void run(index_t kc_steps, const float* __restrict a, const T* __restrict b, index_t ldb,
                                     float* __restrict tile) {
    batch acc[MR][2];
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      acc[i][0] = batch(0.0f);
      acc[i][1] = batch(0.0f);
    }
    for (index_t k = 0; k < kc_steps; ++k) {
      const batch b0 = load_float<Arch>(b + k * ldb);
      const batch b1 = load_float<Arch>(b + k * ldb + lanes);
#pragma GCC unroll 16
      for (int i = 0; i < MR; ++i) {
        const batch ai(a[k * MR + i]);
        acc[i][0] = xsimd::fma(ai, b0, acc[i][0]);
        acc[i][1] = xsimd::fma(ai, b1, acc[i][1]);
      }
    }
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      acc[i][0].store_aligned(tile + i * nr);
      acc[i][1].store_aligned(tile + i * nr + lanes);
    }
  }
};

} // namespace kern::cpu::detail
