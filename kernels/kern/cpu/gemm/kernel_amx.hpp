// The AMX micro-kernel of the CPU GEMM: tdpbf16ps on tiles, for bf16 inputs and the bf16 compute mode.
//
// A tile register holds 16 rows of 64 bytes. tdpbf16ps C, A, B multiplies a 16 x 32 bf16 tile A
// (16 k pairs per row) by a B tile of 16 k pairs x 16 columns (each row: the pairs of 16 columns,
// the VNNI layout of the AVX512-BF16 kernel) into a 16 x 16 fp32 tile C: 16 x 16 x 32 products,
// the work of 256 zmm vdpbf16ps, in one instruction.
//
// Tile: the C block is MR x NR = 32 x 32 fp32 in the four accumulators tmm0..3 (2 x 2 tiles of 16 x
// 16); A in tmm4, 5 (rows 0..15 and 16..31), B in tmm6, 7 (columns 0..15 and 16..31). Per 32-deep k
// step: 2 A loads, 2 B loads, 4 tdpbf16ps, each loaded tile used twice. That is all eight tiles
// (more C tiles would leave no room for A and B).
//
// Packing (zeros beyond the edges, so every step is whole tiles):
//   A  per 32-row panel and 32-deep k step, 32 rows x 32 bf16, row after row: the two A tiles,
//      64 bytes from one row to the next. Depth rounded up to 32.
//   B  the AVX512-BF16 kernel's 32-column panel of k pairs (bf16_dot_kernel::pack_b_panel), depth
//      rounded up to 32: two B tiles side by side, 128 bytes from one k pair to the next.
// Blocks: KC = 512 (the kc x 32 B micro-panel is 32 KiB: it stays in L1 while the 32 KiB A
// micro-panels of the row block stream past it from L2), MC = 512 (512 KiB of packed A in L2: 2 MiB
// per core on Sapphire Rapids, 1 MiB on the machines that test it emulated), NC = 1024. Not tuned:
// it has run on one AMX machine, a noisy one (docs/kernels/gemm.md).
//
// M > 4 uses MR = 32 (rows beyond M are zeros), so a pre-packed B and the blocked path are one
// instance and give the same bits; M <= 4 runs amx_small_m_kernel (below). The tile configuration
// is loaded once per thread and GEMM call (prepare_thread) and stays loaded afterwards.
#pragma once

#include "kern/cpu/gemm/amx_tiles.hpp"
#include "kern/cpu/gemm/kernel_bf16.hpp"

#if defined(KERN_HAVE_BF16_DOT_KERNEL) && (defined(KERN_CPU_AMX_EMULATED) || defined(KERN_HAVE_AMX_HARDWARE_TILES))
#define KERN_HAVE_AMX_KERNEL 1

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include <immintrin.h>

#include "kern/cpu/isa.hpp"

namespace kern::cpu::detail {

template <class Arch, class Tiles> struct amx_bf16_kernel {
  using arch = Arch;
  using tiles = Tiles;
  using packed = std::uint16_t;
  static constexpr int mr = 32;
  static constexpr int nr = 32;
  static constexpr int kc = 512;
  static constexpr int mc = 512;
  static constexpr int nc = 1024;
  static constexpr int default_mr = 32;
  static constexpr int step = 32; // k per tile row: 64 bytes of bf16
  // The AVX512-BF16 kernel, for its B packing and its k-pair interleave (neither depends on its MR).
  using vnni = bf16_dot_kernel<Arch, 14>;

  static constexpr index_t padded_depth(index_t depth) { return (depth + step - 1) / step * step; }
  // Packed values from one k pair of a B micro-panel to the next.
  static constexpr index_t panel_ld = 2 * nr;

  using c00 = amx_tile<0, 16, 64>; // rows 0..15, columns 0..15
  using c01 = amx_tile<1, 16, 64>; // rows 0..15, columns 16..31
  using c10 = amx_tile<2, 16, 64>;
  using c11 = amx_tile<3, 16, 64>;
  using a0 = amx_tile<4, 16, 64>; // rows 0..15 x 32 k
  using a1 = amx_tile<5, 16, 64>; // rows 16..31
  using b0 = amx_tile<6, 16, 64>; // 16 k pairs x columns 0..15
  using b1 = amx_tile<7, 16, 64>; // columns 16..31

  static void prepare_thread() {
    static constexpr amx_tile_config config = amx_config_of<c00, c01, c10, c11, a0, a1, b0, b1>();
    Tiles::load_config(&config);
  }

  // 32-row micro-panels, each 32-deep k block 32 rows x 32 bf16 (two A tiles):
  // dst[p * pd * 32 + (k / 32) * 1024 + i * 32 + k % 32].
  template <bool Round, class T>
  static void pack_a(const op_view<T>& a, index_t row0, index_t rows, index_t col0, index_t depth, packed* dst) {
    const index_t pd = padded_depth(depth);
    for (index_t p0 = 0; p0 < rows; p0 += mr) {
      const index_t valid = std::min<index_t>(mr, rows - p0);
      packed* panel = dst + (p0 / mr) * pd * mr;
      if (!a.transposed) {
        pack_a_rows(a.data + (row0 + p0) * a.ld + col0, a.ld, valid, depth, panel);
        continue;
      }
      index_t k = 0;
      if (valid == mr) {
        for (; k + step <= depth; k += step) {
          pack_a_transposed_block(a.data + (col0 + k) * a.ld + row0 + p0, a.ld, panel + k * mr);
        }
      }
      for (; k < pd; ++k) {
        packed* out = panel + (k / step) * step * mr + k % step;
        for (index_t i = 0; i < mr; ++i) {
          out[i * step] = (i < valid && k < depth) ? bf16_bits(a(row0 + p0 + i, col0 + k)) : packed{0};
        }
      }
    }
  }

  template <bool Round, class T>
  static void pack_b(const op_view<T>& b, index_t row0, index_t depth, index_t col0, index_t cols, packed* panel) {
    vnni::pack_b_panel(b, row0, depth, col0, cols, padded_depth(depth), panel);
  }

  template <bool Round, class T> static constexpr bool reads_b_directly = false;

  // The tile = packed A panel times packed B panel (ldb values from one k pair to the next), over
  // kc_steps values of k (the panels are zero up to the next multiple of 32).
  static void run(index_t kc_steps, const packed* __restrict a, const packed* __restrict b, index_t ldb,
                  float* __restrict tile) {
    Tiles::zero(c00{});
    Tiles::zero(c01{});
    Tiles::zero(c10{});
    Tiles::zero(c11{});
    const index_t b_stride = ldb * index_t{sizeof(packed)};
    constexpr index_t a_stride = step * index_t{sizeof(packed)};
    for (index_t k = 0; k < kc_steps; k += step) {
      const packed* a_step = a + k * mr;
      const packed* b_step = b + (k / 2) * ldb;
      Tiles::load(a0{}, a_step, a_stride);
      Tiles::load(a1{}, a_step + 16 * step, a_stride);
      Tiles::load(b0{}, b_step, b_stride);
      Tiles::load(b1{}, b_step + 32, b_stride);
      Tiles::dpbf16ps(c00{}, a0{}, b0{});
      Tiles::dpbf16ps(c01{}, a0{}, b1{});
      Tiles::dpbf16ps(c10{}, a1{}, b0{});
      Tiles::dpbf16ps(c11{}, a1{}, b1{});
    }
    constexpr index_t c_stride = nr * index_t{sizeof(float)};
    Tiles::store(c00{}, tile, c_stride);
    Tiles::store(c01{}, tile + 16, c_stride);
    Tiles::store(c10{}, tile + 16 * nr, c_stride);
    Tiles::store(c11{}, tile + 16 * nr + 16, c_stride);
  }

private:
  // `valid` rows of A (row i at src + i * ld) over `depth`: 32 k per masked load (a row of one
  // tile), zeros beyond the depth and for rows beyond `valid`.
  template <class T> static void pack_a_rows(const T* src, index_t ld, index_t valid, index_t depth, packed* panel) {
    for (index_t k = 0; k < depth; k += step) {
      const index_t left = std::min<index_t>(step, depth - k);
      const __mmask32 mask = left == step ? ~__mmask32{0} : static_cast<__mmask32>((1u << left) - 1u);
      packed* out = panel + k * mr;
      for (index_t i = 0; i < mr; ++i) {
        _mm512_storeu_si512(out + i * step,
                            i < valid ? load_bf16x32_masked(src + i * ld + k, mask) : _mm512_setzero_si512());
      }
    }
  }

  template <class T> static __m512i load_bf16x32_masked(const T* src, __mmask32 mask) {
    if constexpr (std::is_same_v<T, bf16>) {
      return _mm512_maskz_loadu_epi16(mask, src);
    } else {
      const __m512 low = _mm512_maskz_loadu_ps(static_cast<__mmask16>(mask), src);
      const __m512 high = _mm512_maskz_loadu_ps(static_cast<__mmask16>(mask >> 16), src + 16);
      const __m512bh both = _mm512_cvtne2ps_pbh(high, low);
      return reinterpret_cast<const __m512i&>(both);
    }
  }

  // One 32 x 32 block of op(A) = A^T: src points at A(k, i) for the block's first k and row i,
  // rows of A (one k each) `ld` apart. Rows k and k + 1 interleaved give the k pairs of 32 rows
  // of op(A) as 32-bit lanes; a 16 x 16 transpose of those lanes per 16 rows gives tile rows.
  template <class T> static void pack_a_transposed_block(const T* src, index_t ld, packed* out) {
    __m512 first[16], second[16]; // pair kp of rows 0..15 and of rows 16..31
    for (int kp = 0; kp < 16; ++kp) {
      __m512i lo, hi;
      vnni::pair_rows(load_bf16x32(src + 2 * kp * ld), load_bf16x32(src + (2 * kp + 1) * ld), lo, hi);
      first[kp] = _mm512_castsi512_ps(lo);
      second[kp] = _mm512_castsi512_ps(hi);
    }
    lanes_square<Arch, 16>::transpose(first);
    lanes_square<Arch, 16>::transpose(second);
    for (int i = 0; i < 16; ++i) {
      _mm512_storeu_ps(reinterpret_cast<float*>(out + i * step), first[i]);
      _mm512_storeu_ps(reinterpret_cast<float*>(out + (16 + i) * step), second[i]);
    }
  }
};

#if defined(KERN_CPU_AMX_EMULATED)
// Software tiles: runs wherever the AVX512-BF16 kernel does (its packing code is shared).
template <class Arch> using amx_kernel = amx_bf16_kernel<Arch, amx_emulated_tiles<Arch>>;
inline constexpr isa amx_kernel_isa = isa::avx512_bf16;
#else
template <class Arch> using amx_kernel = amx_bf16_kernel<Arch, amx_hardware_tiles<Arch>>;
inline constexpr isa amx_kernel_isa = isa::amx;
#endif

// Decode (M <= 4) where the AMX kernel runs the rest of the bf16 work. On tiles, four rows fill an
// eighth of each A tile, and B is packed on every call: read, written and read again, where decode
// only needs to read it once (bf16 weights at 58% of the triad on an Emerald Rapids core, fp32
// weights at 139%). The AVX512-BF16 kernel with four rows streams B unpacked instead (small_m.hpp);
// here it takes the AMX kernel's K blocks and packed-B layout (depth padded to 32), so that a B
// pre-packed for the AMX kernel serves it as it is and gives the bits of an unpacked call. Its sums
// are vdpbf16ps's, not tdpbf16ps's: a decode step and a prompt of more rows agree to the
// tolerances, not to the bit.
template <class Arch> struct amx_small_m_kernel : bf16_dot_kernel<Arch, 4> {
  using tiles_kernel = amx_kernel<Arch>;
  using packed = typename tiles_kernel::packed;
  static constexpr int kc = tiles_kernel::kc;
  static constexpr int nc = tiles_kernel::nc;
  static_assert(bf16_dot_kernel<Arch, 4>::nr == tiles_kernel::nr &&
                    bf16_dot_kernel<Arch, 4>::panel_ld == tiles_kernel::panel_ld,
                "one k-pair panel layout");

  static constexpr index_t padded_depth(index_t depth) { return tiles_kernel::padded_depth(depth); }

  template <bool Round, class T>
  static void pack_b(const op_view<T>& b, index_t row0, index_t depth, index_t col0, index_t cols, packed* panel) {
    tiles_kernel::template pack_b<Round>(b, row0, depth, col0, cols, panel);
  }
};

} // namespace kern::cpu::detail

#endif
