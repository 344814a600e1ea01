// The fp32 FMA micro-kernel of the CPU GEMM (every ISA), with its packing and block sizes.
//
// An MR x NR tile of C lives in MR * NR / lanes vector registers; each of the kc steps multiplies a
// row of NR values of B by MR broadcast values of A (one FMA per register). Packing copies blocks
// of op(A) and op(B) into the order the kernel reads, widening bf16 to fp32 (or, for the bf16
// compute mode, rounding fp32 through bf16), and pads edges with zeros: the kernel has no tails.
//
// Block sizes (BLIS's table, one row per ISA):
//   MR x NR   MR * NR / lanes accumulators + NR / lanes B registers + 1 broadcast fit the register
//             file: 28 + 2 + 1 of 32 zmm (AVX-512); 12 + 2 + 1 of 16 ymm / xmm (AVX2, SSE2). A B of
//             up to 16 columns gets a 16 x 16 tile (NV = 1) instead of half of a 14 x 32 one.
//   KC        depth of one packed block: the kc x NR micro-panel of B is reused by every MR-row
//             micro-panel of A, and a deeper block means fewer passes of partial sums over C. Each
//             pass reads and writes C from memory, which costs more than streaming both micro-
//             panels from L2: on AVX-512, KC = 1024 (B micro-panel 128 KiB, in L2 rather than L1)
//             gave 7% more than KC = 384 at 2048^3 (KC = 192, 256, 512, 768, 1536, 2048 measured).
//             On AVX2 (a Zen 3 core, 32 KiB L1 and 512 KiB L2), KC = 384 with the assembly k loop
//             was 1.00-1.13x KC = 256 over K >= 768 (A/B runs in one process), although the 24 KiB
//             B micro-panel and a 9 KiB A micro-panel then no longer fit L1 together; KC = 768 (96
//             rows a block) gained as much at 2048^3 and 4096^3 but lost up to 15% on the shapes of
//             256 rows or 256 k steps (more row blocks, or a 256-row block too large for L2). SSE2
//             (and NEON, unmeasured) keep KC = 256: KC = 384 measured 0.85-1.05x there.
//   MC        rows of the packed A block, kept in L2 (1 MiB per core on AVX-512 machines, 512 KiB on
//             the Zen 3 one): MC x KC x 4 bytes. On AVX2 a K shorter than KC gets as many more rows
//             as keep the block's bytes (block_rows): with KC = 384 and 192 rows a block, the weight
//             gradients over 256 tokens (768 rows) were cut into four blocks, each reading all of the
//             packed B again, and ran 0.96-1.07x the 288-row blocks of KC = 256 (0.96-0.97x on one
//             thread in one of two passes); block_rows keeps their blocks as they were.
//   NC        columns of B packed per outer iteration (K x NC x 4 bytes, shared by all threads).
#pragma once

#include <algorithm>
#include <type_traits>

#include <xsimd/xsimd.hpp>

#include "kern/core/dtype.hpp"
#include "kern/core/view.hpp"
#include "kern/cpu/gemm/epilogue.hpp"
#include "kern/cpu/gemm/kernel_f32_avx2_loop.hpp"
#include "kern/cpu/gemm/packing.hpp"
#include "kern/cpu/isa.hpp"
#include "kern/cpu/simd.hpp"

namespace kern::cpu::detail {

template <class Arch, int MR, int NV = 2> struct f32_fma_kernel {
  using arch = Arch;
  using packed = float;
  using batch = xsimd::batch<float, Arch>;
  static constexpr int lanes = static_cast<int>(batch::size);
  static constexpr bool wide = isa_of<Arch>() >= isa::avx512;
  static constexpr int mr = MR;
  static constexpr int nv = NV; // vectors per row of the tile
  static constexpr int nr = NV * lanes;
  static constexpr bool avx2 = isa_of<Arch>() == isa::avx2;
  // 126 x 1024 x 4 = 504 KiB of A (AVX-512), 192 x 384 x 4 = 288 KiB (AVX2), 288 x 256 x 4 (SSE2, NEON)
  static constexpr int kc = wide ? 1024 : avx2 ? 384 : 256;
  static constexpr int mc = wide ? 14 * 9 : avx2 ? 6 * 32 : 6 * 48;
  // Rows of A in one packed block over `depth` (<= kc) k steps on AVX2 (see MC above); MC elsewhere.
  static constexpr index_t block_rows(index_t depth) requires avx2 {
    return std::max<index_t>(mc, index_t{mc} * kc / std::max<index_t>(depth, 1) / MR * MR);
  }
  static constexpr int nc = 1024;
  static constexpr int default_mr = wide ? 14 : 6;

  // k steps ahead at which the micro-kernel asks for a row of B (and of A, where it does).
  static constexpr index_t prefetch_steps = 64;
  // k steps before the end of a tile at which the driver asks for its C rows (about 2,000 cycles
  // of FMAs: more than a DRAM access). Asked for a tile ahead only, they were often gone again by
  // the time the epilogue read them: under perf at 4096^3 the epilogue's C loads fell from 3.5% of
  // the time to 2.9% with this.
  static constexpr index_t near_end_steps = 160;
  // Whether the micro-kernel's k loop runs four steps an iteration. On AVX2 a step is 12 FMAs among
  // 26 instructions, of which the loop's own (pointer and counter updates, compare and branch) are
  // 5; four steps an iteration share one set of them (93 instructions for four steps, as g++ 12
  // compiles it). On a Zen 3 guest that made the GEMM 1.12-1.39x faster in A/B runs taken while
  // the guest ran slow (see "On an AVX2 machine" in docs/kernels/gemm.md), 0.92-1.24x (median
  // 1.05x) otherwise. On AVX-512 unrolling measured no gain.
  static constexpr bool unroll_k_loop = !wide;

  // packed_value for a batch: the vector packs round through bf16 in registers. Rounded element by
  // element, packing A^T took most of the time of a 288 x 16 x 16384 weight gradient in the bf16
  // compute mode (perf on a Zen 3 core); a vector at a time, that GEMM ran 1.24-1.48x faster.
  template <bool Round> static batch packed_batch(batch v) {
    if constexpr (Round) {
      return round_through_bf16<Arch>(v);
    } else {
      return v;
    }
  }
  // The values at src (lanes of T) as the kernel multiplies them.
  template <bool Round, class T> static batch load_packed(const T* src) {
    return packed_batch<Round>(load_float<Arch>(src));
  }

  // Packed values per k step of a micro-panel row (1 here; 2 for the bf16 pair kernel).
  static constexpr index_t padded_depth(index_t depth) { return depth; }
  // Packed values from one k step of a B micro-panel to the next.
  static constexpr index_t panel_ld = nr;

  // Full panels of fp32 rows are transposed a square of lanes x lanes at a time in registers
  // (lanes_square, packing.hpp) instead of element by element: packing A is a tenth of the GEMM's
  // time otherwise on AVX-512, and on AVX2 it fell from 3.7% of the time to 1.8% at 1024^3 (perf).
#if defined(__AVX512F__)
  template <bool Round, class T>
  static constexpr bool fast_pack_rows = (isa_of<Arch>() >= isa::avx512) && MR <= 16 && std::is_same_v<T, float>;
#elif defined(__AVX2__)
  template <bool Round, class T>
  static constexpr bool fast_pack_rows = (isa_of<Arch>() == isa::avx2) && std::is_same_v<T, float> &&
                                         (MR == 4 || MR == 6 || MR == 8);
#endif
#if defined(__AVX512F__) || defined(__AVX2__)
  using lanes_square = detail::lanes_square<Arch, MR>;

  // Rows of A (MR of them, `ld` apart, `depth` long) into one micro-panel, panel[k * MR + i].
  template <bool Round> static void pack_rows_transposed(const float* rows, index_t ld, index_t depth, float* panel) {
    constexpr int size = lanes_square::size;
    index_t k0 = 0;
    for (; k0 + size <= depth; k0 += size) {
      typename lanes_square::reg r[size];
      for (int i = 0; i < size; ++i) {
        r[i] = lanes_square::zero();
        if (i < MR) {
          r[i] = packed_batch<Round>(lanes_square::load(rows + i * ld + k0));
        }
      }
      lanes_square::transpose(r);
      for (int j = 0; j < size; ++j) {
        lanes_square::store_first_mr(panel + (k0 + j) * MR, r[j]);
      }
    }
    for (; k0 < depth; ++k0) {
      for (int i = 0; i < MR; ++i) {
        panel[k0 * MR + i] = packed_value<Round>(rows[i * ld + k0]);
      }
    }
  }

  // NR = NV * lanes rows of B^T (`ld` apart) into one B micro-panel, panel[k * NR + j], lanes k at a
  // time; returns how many k it packed (a multiple of lanes).
  template <bool Round>
  static index_t pack_columns_transposed(const float* rows, index_t ld, index_t depth, float* panel) {
    constexpr int size = lanes_square::size;
    static_assert(size == lanes);
    index_t k0 = 0;
    for (; k0 + size <= depth; k0 += size) {
      for (index_t part = 0; part < NV; ++part) {
        typename lanes_square::reg r[size];
        for (int j = 0; j < size; ++j) {
          r[j] = packed_batch<Round>(lanes_square::load(rows + (part * size + j) * ld + k0));
        }
        lanes_square::transpose(r);
        for (int k = 0; k < size; ++k) {
          lanes_square::store_aligned(panel + (k0 + k) * nr + part * size, r[k]);
        }
      }
    }
    return k0;
  }
#else
  template <bool Round, class T> static constexpr bool fast_pack_rows = false;
  template <bool Round> static void pack_rows_transposed(const float*, index_t, index_t, float*) {}
  template <bool Round> static index_t pack_columns_transposed(const float*, index_t, index_t, float*) { return 0; }
#endif

  // Rows [row0, row0 + rows) x columns [col0, col0 + depth) of op(A) into MR-row micro-panels:
  // panel p holds depth steps of MR values, dst[p * depth * MR + k * MR + i]; missing rows are 0.
  template <bool Round, class T>
  static void pack_a(const op_view<T>& a, index_t row0, index_t rows, index_t col0, index_t depth, float* dst) {
    if (a.transposed) {
      // Stored row k of A^T holds step k of every panel. Rows are taken sixteen at a time, front to
      // back, with the next sixteen asked for meanwhile; each panel then gets its sixteen steps in
      // one contiguous run. One sequential stream with the prefetch packs at about 40 GB/s where
      // reading MR values from each row, panel by panel, reached 22; and writing every panel's step
      // k before step k + 1 (21 write streams whose panels lie a multiple of 4 KiB apart at
      // KC = 1024, so in the same L1 sets) fell to 11 GB/s.
      const T* first = a.data + col0 * a.ld + row0;
      for_each_row_chunk(first, a.ld, depth, rows, [&](index_t k0, index_t k1) {
        for (index_t p0 = 0; p0 < rows; p0 += MR) {
          const index_t valid = std::min<index_t>(MR, rows - p0);
          float* panel = dst + (p0 / MR) * depth * MR;
          for (index_t k = k0; k < k1; ++k) {
            const T* src = first + k * a.ld + p0;
            float* out = panel + k * MR;
#if defined(__AVX512F__) || defined(__AVX2__)
            if constexpr (fast_pack_rows<Round, T>) { // one masked load (zeros past `valid`) and store
              lanes_square::store_first_mr(out, packed_batch<Round>(lanes_square::load_first(src, valid)));
              continue;
            }
            if constexpr (std::is_same_v<T, bf16> && MR <= lanes) {
              if (p0 + lanes <= rows) { // a whole vector of bf16 inside the block, widened in registers
                lanes_square::store_first_mr(out, load_float<Arch>(src));
                continue;
              }
            }
#endif
            for (index_t i = 0; i < MR; ++i) {
              out[i] = i < valid ? packed_value<Round>(src[i]) : 0.0f;
            }
          }
        }
      });
      return;
    }
    for (index_t p0 = 0; p0 < rows; p0 += MR) {
      const index_t valid = std::min<index_t>(MR, rows - p0);
      float* panel = dst + (p0 / MR) * depth * MR;
      if constexpr (fast_pack_rows<Round, T>) {
        if (!a.transposed && valid == MR) {
          pack_rows_transposed<Round>(a.data + (row0 + p0) * a.ld + col0, a.ld, depth, panel);
          continue;
        }
      }
      for (index_t i = 0; i < MR; ++i) {
        const T* src = a.data + (row0 + p0 + i) * a.ld + col0;
        for (index_t k = 0; k < depth; ++k) {
          panel[k * MR + i] = i < valid ? packed_value<Round>(src[k]) : 0.0f;
        }
      }
    }
  }

  // Rows [row0, row0 + depth) x columns [col0, col0 + cols) of op(B) into one NR-column
  // micro-panel, panel[k * NR + j]; missing columns are 0.
  template <bool Round, class T>
  static void pack_b(const op_view<T>& b, index_t row0, index_t depth, index_t col0, index_t cols, float* panel) {
    const index_t valid = std::min<index_t>(nr, cols);
    // Separate loops for the valid columns and the zero padding keep both free of branches, so
    // that the compiler vectorizes them.
    if (!b.transposed && valid == nr) { // whole rows of NR: NV vector copies per k
      for (index_t k = 0; k < depth; ++k) {
        const T* src = b.data + (row0 + k) * b.ld + col0;
        for (index_t v = 0; v < NV; ++v) {
          load_packed<Round>(src + v * lanes).store_aligned(panel + k * nr + v * lanes);
        }
      }
    } else if (!b.transposed) {
      for (index_t k = 0; k < depth; ++k) {
        const T* src = b.data + (row0 + k) * b.ld + col0;
        float* out = panel + k * nr;
        for (index_t j = 0; j < valid; ++j) {
          out[j] = packed_value<Round>(src[j]);
        }
        for (index_t j = valid; j < nr; ++j) {
          out[j] = 0.0f;
        }
      }
    } else {
      index_t k_done = 0;
      if constexpr (fast_pack_rows<Round, T>) {
        if (valid == nr) { // B^T's rows are op(B)'s columns: NV transposes of lanes x lanes per lanes k
          k_done = pack_columns_transposed<Round>(b.data + col0 * b.ld + row0, b.ld, depth, panel);
        }
      }
      for (index_t j = 0; j < valid; ++j) {
        const T* src = b.data + (col0 + j) * b.ld + row0;
        for (index_t k = k_done; k < depth; ++k) {
          panel[k * nr + j] = packed_value<Round>(src[k]);
        }
      }
      for (index_t j = valid; j < nr; ++j) {
        for (index_t k = 0; k < depth; ++k) {
          panel[k * nr + j] = 0.0f;
        }
      }
    }
  }

  // `count` adjacent micro-panels of op(B) from column col0 (`cols` columns there) in one pass over
  // its rows, panel p at dst + p * panel_stride; the same values as pack_b. A row then gives four
  // cache lines at a time instead of two: rows whose stride is a multiple of 1 KiB (N = 1024, 3072)
  // fall into few cache sets, and one panel at a time packed 23 GB/s from them, two at a time 56.
  template <bool Round, class T> static void pack_b_panels(const op_view<T>& b, index_t row0, index_t depth,
                                                           index_t col0, index_t cols, index_t count, float* dst,
                                                           index_t panel_stride) {
    if (!b.transposed && cols >= count * nr) {
      for (index_t k = 0; k < depth; ++k) {
        const T* src = b.data + (row0 + k) * b.ld + col0;
        for (index_t p = 0; p < count; ++p) {
          for (index_t v = 0; v < NV; ++v) {
            load_packed<Round>(src + p * nr + v * lanes).store_aligned(dst + p * panel_stride + k * nr + v * lanes);
          }
        }
      }
      return;
    }
    for (index_t p = 0; p < count; ++p) {
      pack_b<Round>(b, row0, depth, col0 + p * nr, cols - p * nr, dst + p * panel_stride);
    }
  }

  // B can be read straight from its storage (rows of op(B) = B, NR columns at a time): the small-M
  // path does so instead of packing, rounding each vector of B as it loads it where asked to (the
  // bf16 compute mode). Each weight is used once there, and packing them cost more than the product:
  // with B packed, 1 x 50304 x 768 in the bf16 compute mode ran at 0.23-0.25x oneDNN's sgemm on a
  // Zen 3 core, reading B in place at 0.83-0.87x.
  template <bool Round, class T> static constexpr bool reads_b_directly = true;
  // Whether the blocked path's first tile of a panel packs it while it computes (b_copy in
  // run_rows): only where no rounding is needed.
  template <bool Round, class T> static constexpr bool packs_b_in_first_tile = !Round;

  // One row of A: sums[0, V vectors) += A(0, :) B(:, V vectors), the sums in registers while the
  // chunk goes down all kc rows of B. Each row of B gives the chunk's V vectors (V cache lines on
  // AVX-512); the loads then have a fixed stride from one k to the next, which the hardware's stride
  // prefetchers follow, and the first line of the row 8 k ahead is asked for where they do not.
  template <bool Round, int V, class T> static void accumulate_column_chunk(index_t kc_steps, const float* __restrict a,
                                                                            const T* __restrict b, index_t ldb,
                                                                            float* __restrict acc) {
    batch sum[V];
#pragma GCC unroll 16
    for (index_t v = 0; v < V; ++v) {
      sum[v] = batch::load_aligned(acc + v * lanes);
    }
    for (index_t k = 0; k < kc_steps; ++k) {
      const T* row = b + k * ldb;
      __builtin_prefetch(row + 8 * ldb, 0, 3);
      const batch ak(a[k * MR]);
#pragma GCC unroll 16
      for (index_t v = 0; v < V; ++v) {
        sum[v] = xsimd::fma(ak, load_packed<Round>(row + v * lanes), sum[v]);
      }
    }
#pragma GCC unroll 16
    for (index_t v = 0; v < V; ++v) {
      sum[v].store_aligned(acc + v * lanes);
    }
  }

  // One row of A over `width` columns of B with its sums in L1 (acc): four rows of B are read at a
  // time, a cache line of each per step, and every sum takes its k in order. This form leaves
  // the streams to the hardware prefetchers: asking for the next four rows in software, as the
  // form for several rows of A does, was 2-11% slower on a Zen 3 core.
  template <bool Round, class T> static void accumulate_row_streamed(index_t kc_steps, const float* __restrict a,
                                                                     const T* __restrict b, index_t ldb, index_t width,
                                                                     float* __restrict acc) {
    constexpr index_t line = 2 * index_t{lanes}; // a cache line of fp32 on AVX2: two vectors
    static_assert(nr % line == 0);               // width, a multiple of NR, is then whole lines
    index_t k = 0;
    for (; k + 4 <= kc_steps; k += 4) {
      const T* row = b + k * ldb;
      const batch a0(a[k * MR]), a1(a[(k + 1) * MR]), a2(a[(k + 2) * MR]), a3(a[(k + 3) * MR]);
      for (index_t j = 0; j < width; j += line) {
#pragma GCC unroll 2
        for (index_t h = j; h < j + line; h += lanes) {
          batch sum = batch::load_aligned(acc + h);
          sum = xsimd::fma(a0, load_packed<Round>(row + h), sum);
          sum = xsimd::fma(a1, load_packed<Round>(row + ldb + h), sum);
          sum = xsimd::fma(a2, load_packed<Round>(row + 2 * ldb + h), sum);
          sum = xsimd::fma(a3, load_packed<Round>(row + 3 * ldb + h), sum);
          sum.store_aligned(acc + h);
        }
      }
    }
    accumulate_rows_from<Round>(k, kc_steps, a, 1, b, ldb, width, acc, width);
  }

  // Steps [k, kc_steps) of accumulate_rows one row of B at a time: the steps left after groups of
  // four.
  template <bool Round, class T> static void accumulate_rows_from(index_t k, index_t kc_steps,
                                                                  const float* __restrict a, index_t rows,
                                                                  const T* __restrict b, index_t ldb, index_t width,
                                                                  float* __restrict acc, index_t ld_acc) {
    for (; k < kc_steps; ++k) {
      const T* row = b + k * ldb;
      for (index_t j = 0; j < width; j += lanes) {
        const batch bv = load_packed<Round>(row + j);
        for (index_t i = 0; i < rows; ++i) {
          float* sum = acc + i * ld_acc + j;
          xsimd::fma(batch(a[k * MR + i]), bv, batch::load_aligned(sum)).store_aligned(sum);
        }
      }
    }
  }

  // The small-M form, for decode: `width` columns of B (a multiple of NR) into fp32 sums
  // acc[i * ld_acc + j] of the first `rows` (<= MR) rows, with the same operation sequence per
  // element as run(). B rows are `ldb` apart. With several rows of A, the sums stay in L1 and rows
  // of B are streamed whole, which for four rows measured 20% faster than column chunks. One row
  // of A (M = 1: a token against the weights) takes B in column chunks held in registers (above)
  // on AVX-512: on a Zen 5 core 768 x 50304 went from 0.88x oneDNN's speed to 1.04-1.18x on one
  // core, and from 0.97x to 1.11x on two. With AVX2's chunks of four cache lines, each step of a
  // chunk lands on another page: on a Zen 3 core the chunks read B at 0.54-0.63x oneDNN's speed,
  // the streamed form at 0.92-1.03x, so there one row streams too (accumulate_row_streamed).
  template <bool Round, class T> static void accumulate_rows(index_t kc_steps, const float* __restrict a, index_t rows,
                                                             const T* __restrict b, index_t ldb, index_t width,
                                                             float* __restrict acc, index_t ld_acc) {
    if constexpr (!wide) {
      if (rows == 1) {
        accumulate_row_streamed<Round>(kc_steps, a, b, ldb, width, acc);
        return;
      }
    }
    if (rows == 1) {
      constexpr index_t chunk = 8; // vectors: eight cache lines per row of B on AVX-512
      index_t j = 0;
      for (; j + chunk * lanes <= width; j += chunk * lanes) {
        accumulate_column_chunk<Round, chunk>(kc_steps, a, b + j, ldb, acc + j);
      }
      for (; j < width; j += index_t{NV} * lanes) {
        accumulate_column_chunk<Round, NV>(kc_steps, a, b + j, ldb, acc + j);
      }
      return;
    }
    // Four rows of B at a time: four streams in flight instead of one, which is what one core
    // needs to approach the memory bandwidth. Each sum still takes its k in order.
    index_t k = 0;
    for (; k + 4 <= kc_steps; k += 4) {
      const T* row = b + k * ldb;
      for (index_t j = 0; j < width; j += lanes) {
        // The same columns of the next four rows: prefetched a group ahead, which hides DRAM
        // latency where the hardware prefetchers stop at page boundaries.
        for (index_t ahead = 4; ahead < 8; ++ahead) {
          __builtin_prefetch(row + ahead * ldb + j, 0, 3);
        }
        const batch b0 = load_packed<Round>(row + j);
        const batch b1 = load_packed<Round>(row + ldb + j);
        const batch b2 = load_packed<Round>(row + 2 * ldb + j);
        const batch b3 = load_packed<Round>(row + 3 * ldb + j);
        for (index_t i = 0; i < rows; ++i) {
          float* sum = acc + i * ld_acc + j;
          batch s = batch::load_aligned(sum);
          s = xsimd::fma(batch(a[k * MR + i]), b0, s);
          s = xsimd::fma(batch(a[(k + 1) * MR + i]), b1, s);
          s = xsimd::fma(batch(a[(k + 2) * MR + i]), b2, s);
          s = xsimd::fma(batch(a[(k + 3) * MR + i]), b3, s);
          s.store_aligned(sum);
        }
      }
    }
    accumulate_rows_from<Round>(k, kc_steps, a, rows, b, ldb, width, acc, ld_acc);
  }

  // The tile = A (MR x kc) times kc rows of NR values of B, `ldb` apart; B is either a packed panel
  // (ldb = NR) or B itself (T float or bf16). A(i, k) is a[i * ARowStep + k * AKStep]: a packed
  // micro-panel by default; the attention kernels also read tiles of row- or column-major blocks,
  // with their compile-time strides (a broadcast load does not care where its value lives).
  // near_end() runs near_end_steps k steps before the end (the driver asks for the tile's C there),
  // and row i of the finished tile is handed to row(i, its NV vectors) while it is still in
  // registers. a_k_step replaces AKStep where A is read in place with a run-time stride (the stored
  // rows of A^T); A is then asked for ahead, as it is with a_far (a packed block of A too large for
  // L2, so streamed from L3). With b_copy, each row of B is also stored there as it is read, which
  // packs B (read from its storage) into a micro-panel for the tiles that follow.
  template <class T, index_t ARowStep = 1, index_t AKStep = MR, class NearEnd, class Row>
  static void run_rows(index_t kc_steps, const float* __restrict a, const T* __restrict b, index_t ldb,
                       NearEnd&& near_end, Row&& row, index_t a_k_step = AKStep, bool a_far = false,
                       float* __restrict b_copy = nullptr) {
    if (b_copy != nullptr) {
      run_rows_copying<true, T, ARowStep, AKStep>(kc_steps, a, b, ldb, near_end, row, a_k_step, a_far, b_copy);
    } else {
      run_rows_copying<false, T, ARowStep, AKStep>(kc_steps, a, b, ldb, near_end, row, a_k_step, a_far, nullptr);
    }
  }

  template <bool CopyB, class T, index_t ARowStep, index_t AKStep, class NearEnd, class Row>
  static void run_rows_copying(index_t kc_steps, const float* __restrict a, const T* __restrict b, index_t ldb,
                               NearEnd&& near_end, Row&& row, index_t a_k_step, bool a_far, float* __restrict b_copy) {
    const bool ask_for_a = a_far || a_k_step != AKStep;
    batch acc[MR][NV];
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) {
        acc[i][v] = batch(0.0f);
      }
    }
    constexpr index_t b_row_lines = (nr * index_t{sizeof(T)} + 63) / 64;
    const auto step = [&](index_t k) __attribute__((always_inline)) {
      batch bk[NV];
#pragma GCC unroll 4
      for (index_t v = 0; v < NV; ++v) {
        bk[v] = load_float<Arch>(b + k * ldb + v * lanes);
        if constexpr (CopyB) {
          bk[v].store_aligned(b_copy + k * nr + v * lanes);
        }
      }
      // The hardware prefetchers alone left the loop waiting on B (packed panels come from L2, and
      // from L3 for the first tile of each): 4096^3 on one thread went from 0.91-0.92x to 0.94x
      // oneDNN with this (bench/gemm, two builds interleaved).
      const char* b_ahead = reinterpret_cast<const char*>(b + (k + prefetch_steps) * ldb);
#pragma GCC unroll 4
      for (index_t line = 0; line < b_row_lines; ++line) {
        __builtin_prefetch(b_ahead + line * 64, 0, 3);
      }
      if (ask_for_a) { // two lines: in place, a step's MR values may straddle them
        __builtin_prefetch(a + (k + prefetch_steps) * a_k_step, 0, 3);
        __builtin_prefetch(a + (k + prefetch_steps) * a_k_step + 16, 0, 3);
      }
#pragma GCC unroll 16
      for (int i = 0; i < MR; ++i) {
        const batch ai(a[k * a_k_step + i * ARowStep]);
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) {
          acc[i][v] = xsimd::fma(ai, bk[v], acc[i][v]);
        }
      }
    };
    const index_t near_end_at = std::max<index_t>(0, kc_steps - near_end_steps);
#if defined(KERN_HAVE_AVX2_K_LOOP)
    // Packed micro-panels of a 6 x 16 tile: the k loop in assembly (kernel_f32_avx2_loop.hpp), the
    // steps left after groups of four through step().
    if constexpr (avx2 && !CopyB && MR == 6 && NV == 2 && std::is_same_v<T, float> && AKStep == MR && ARowStep == 1) {
      static_assert(prefetch_steps * nr * index_t{sizeof(float)} == avx2_k_loop_prefetch_bytes);
      if (ldb == nr && a_k_step == MR && !ask_for_a) {
        const auto steps = [&](index_t k_begin, index_t k_end) __attribute__((always_inline)) {
          const index_t groups = (k_end - k_begin) / 4;
          if (groups > 0) {
            avx2_packed_k_steps(a + k_begin * MR, b + k_begin * nr, groups, acc);
          }
          for (index_t k = k_begin + groups * 4; k < k_end; ++k) {
            step(k);
          }
        };
        steps(0, near_end_at);
        near_end();
        steps(near_end_at, kc_steps);
#pragma GCC unroll 16
        for (int i = 0; i < MR; ++i) {
          row(index_t{i}, acc[i]);
        }
        return;
      }
    }
#endif
    if constexpr (unroll_k_loop) { // the same loops as below, four steps an iteration
#pragma GCC unroll 4
      for (index_t k = 0; k < near_end_at; ++k) {
        step(k);
      }
      near_end();
#pragma GCC unroll 4
      for (index_t k = near_end_at; k < kc_steps; ++k) {
        step(k);
      }
    } else {
      for (index_t k = 0; k < near_end_at; ++k) {
        step(k);
      }
      near_end();
      for (index_t k = near_end_at; k < kc_steps; ++k) {
        step(k);
      }
    }
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      row(index_t{i}, acc[i]);
    }
  }

  // The same, storing the tile to `tile` (NR values per row).
  template <class T, index_t ARowStep = 1, index_t AKStep = MR>
  static void run(index_t kc_steps, const float* __restrict a, const T* __restrict b, index_t ldb,
                  float* __restrict tile, index_t a_k_step = AKStep, float* __restrict b_copy = nullptr) {
    run_rows<T, ARowStep, AKStep>(
        kc_steps, a, b, ldb, [] {},
        [tile](index_t i, const batch(&values)[NV]) {
          for (index_t v = 0; v < NV; ++v) {
            values[v].store_aligned(tile + i * nr + v * lanes);
          }
        },
        a_k_step, false, b_copy);
  }

  // The first `rows` (up to MR) rows of a tile, from a packed micro-panel: on a kernel of 4 or 8
  // rows where that covers them, since the MR-row kernel would spend most of its FMAs on the zero
  // padding (256 rows are 18 panels of 14 and one of 4: 4% of the work on 10 padded rows). Each
  // element gets the same operations, so the bits do not change.
  template <class T> static void run_partial(index_t rows, index_t kc_steps, const float* __restrict a,
                                             const T* __restrict b, index_t ldb, float* __restrict tile,
                                             index_t a_k_step = MR) {
    if constexpr (MR > 4) {
      if (rows <= 4) {
        f32_fma_kernel<Arch, 4, NV>::template run<T, 1, MR>(kc_steps, a, b, ldb, tile, a_k_step);
        return;
      }
    }
    if constexpr (MR > 8) {
      if (rows <= 8) {
        f32_fma_kernel<Arch, 8, NV>::template run<T, 1, MR>(kc_steps, a, b, ldb, tile, a_k_step);
        return;
      }
    }
    run(kc_steps, a, b, ldb, tile, a_k_step);
  }

  // Whether full MR-row panels of op(A) can be read in place instead of packed: A^T stored fp32
  // (each k step's MR values are contiguous in one stored row) under a B of one panel, which uses
  // each value of A once, so that packing would only add a pass over A. Weight gradients of narrow
  // layers (an adapter's dW = X^T dY) are such shapes. With A in memory, reading in place gains only
  // with the kernel's prefetch of the rows ahead: 288 x 16 x 16384 went from 87 GFLOP/s (packed, or
  // in place without the prefetch) to 116-122 on one core.
  template <bool Round, class T> static constexpr bool reads_transposed_a_in_place = !Round && std::is_same_v<T, float>;
  // Where A^T cannot be read as the kernel multiplies it (fp32 to round through bf16 in the bf16
  // compute mode, or bf16 to widen), those shapes read a copy of its rows instead (copy_rows), with
  // the same run-time k step: a copy keeps each stored row whole, where packing deals every row out
  // to the panels, MR values to each. With the copy, and whole rows in one block, 288 x 16 x 16384
  // ran 1.58-1.87x faster in the bf16 compute mode and 1.39-1.53x with bf16 inputs than packed in
  // blocks of part-rows, on one and two threads of a Zen 3 core (two builds interleaved).
  template <bool Round, class T> static constexpr bool copies_transposed_a_rows =
      !reads_transposed_a_in_place<Round, T>;

  // `depth` stored rows of A^T from `first` (`ld` apart), the first `count` values of each, into
  // dst as the kernel multiplies them, rows `count` apart. The rows are mostly whole (one block of
  // rows, see by_rows_block_fits in the driver), so this reads one sequential stream, which the
  // hardware prefetchers follow: asking for the rows ahead in software, as the packing does, was
  // 1.03-1.14x slower on a Zen 3 core.
  template <bool Round, class T>
  static void copy_rows(const T* first, index_t ld, index_t depth, index_t count, float* dst) {
    for (index_t k = 0; k < depth; ++k) {
      const T* src = first + k * ld;
      float* out = dst + k * count;
      index_t i = 0;
      for (; i + lanes <= count; i += lanes) {
        load_packed<Round>(src + i).store_unaligned(out + i);
      }
      for (; i < count; ++i) {
        out[i] = packed_value<Round>(src[i]);
      }
    }
  }
};

} // namespace kern::cpu::detail
