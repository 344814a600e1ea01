// The CPU GEMM driver: BLIS's loops around a micro-kernel, for one ISA (Arch) and one kernel.
//
//   for jc in N by NC:                 pack op(B)[:, jc..] (all of K) once, threads share it (with a
//                                      single row block, N is one block and each panel is packed by
//                                      its user instead)
//     parallel over (ic in M by MC) x (a share of the NR panels) [x (a share of the K blocks)]:
//       for pc in K by KC:             pack op(A)[ic.., pc..] into this thread's MC x KC block
//         for jr over NR panels:       the kc x NR micro-panel of B
//           for ir over MR panels:     micro-kernel, then the tile's epilogue
//
// With one block of rows (up to single_block_rows, more over a short K) the panels are split among
// threads instead, so that two threads help even for 256-token shapes, and each panel of B is
// packed by its one user: by its first tile, which reads B from its storage, where the kernel can.
// When rows and panels still leave threads idle (a small M x N over a long K: weight gradients of
// narrow layers), the K blocks are shared out too: each share sums into its own fp32 block, and the
// blocks are added in share order before the epilogue, so results depend on the shape and the
// thread count only. For M <= 4 (decode) the kernel runs with MR = 4, and where B can be read
// straight from its storage the small-M driver (small_m.hpp) streams it unpacked. Each output
// element gets the same sequence of operations whatever the path (MR, packed or direct, pre-packed
// B), so all of them give the same bits. fp32 partial sums carry between K blocks in C itself (f32
// output) or in a per-thread fp32 block (bf16 output, rounded once at the end).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "kern/core/threading.hpp"
#include "kern/cpu/gemm/epilogue.hpp"
#include "kern/cpu/gemm/kernel_amx.hpp"
#include "kern/cpu/gemm/kernel_bf16.hpp"
#include "kern/cpu/gemm/kernel_f32.hpp"
#include "kern/cpu/gemm/small_m.hpp"
#include "kern/cpu/gemm/workspace.hpp"
#include "kern/ops/gemm.hpp"

namespace kern::cpu::detail {

inline constexpr index_t small_m = 4;
// Up to this many rows of A make one row block, packed M x KC and streamed by the micro-kernel from
// L2 (or L3), when B has more than a few panels: splitting the rows would pack all of B first and
// read it back once per block, which cost 15% on 256-row shapes on two threads. A narrow B is cheap
// to share, and MC blocks keep packed A in L2 (288 x 16 x 16384: 3.1 ms as one block, 2.5 ms in MC
// blocks). Over a K shorter than KC, more rows make a block of the same size (single_block_fits).
inline constexpr index_t single_block_rows = 336;
inline constexpr index_t single_block_min_panels = 4;
// A packed block of A larger than this leaves no room in L2 (1 MiB or more on AVX-512 machines)
// for the B micro-panel, and comes from L3: the micro-kernel then asks for it ahead. 256 x 768 x
// 3072 (a 1 MiB block) went from 0.87-0.90x to 0.89-0.90x oneDNN on one thread (bench/gemm, two
// builds interleaved); asking for MC blocks, which stay in L2, lost 1-2% at 4096^3.
inline constexpr std::size_t a_block_l2_bytes = std::size_t{640} * 1024;

// Elements of op(B) packed for the whole K x N by Kernel (what a pre-packed B holds).
template <class Kernel> constexpr std::size_t packed_b_size(index_t k, index_t n) {
  const index_t panels = (n + Kernel::nr - 1) / Kernel::nr;
  return static_cast<std::size_t>(Kernel::padded_depth(k) * panels * Kernel::nr);
}

// Packs op(B)[:, jc .. jc + nc) for all of K: for each K block, its panels one after another.
// `dst` is where the jc block starts.
template <class Kernel, bool Round, class TB> void pack_b_block(const context& ctx, const op_view<TB>& b, index_t K,
                                                                index_t jc, index_t nc, typename Kernel::packed* dst) {
  constexpr int NR = Kernel::nr;
  const index_t panels = (nc + NR - 1) / NR;
  const index_t k_blocks = (K + Kernel::kc - 1) / Kernel::kc;
  // Jobs of four adjacent panels where the kernel packs several in one pass over the rows of B.
  constexpr bool grouped = requires { Kernel::template pack_b_panels<Round>(b, 0, 0, 0, 0, 1, dst, 0); };
  constexpr index_t group = grouped ? 4 : 1;
  const index_t groups = (panels + group - 1) / group;
  parallel_for(ctx, k_blocks * groups, [&](index_t begin, index_t end) {
    for (index_t job = begin; job < end; ++job) {
      const index_t pc = (job / groups) * Kernel::kc, panel = (job % groups) * group;
      const index_t kc = std::min<index_t>(Kernel::kc, K - pc);
      const index_t panel_size = Kernel::padded_depth(kc) * NR;
      typename Kernel::packed* first = dst + pc * panels * NR + panel * panel_size;
      if constexpr (grouped) {
        const index_t count = std::min(group, panels - panel);
        Kernel::template pack_b_panels<Round>(b, pc, kc, jc + panel * NR, nc - panel * NR, count, first, panel_size);
      } else {
        Kernel::template pack_b<Round>(b, pc, kc, jc + panel * NR, nc - panel * NR, first);
      }
    }
  });
}

// Room for one micro-panel of B packed on use (the f32 kernel packs two at a time).
template <class Kernel> constexpr index_t b_slot_size = (Kernel::kc + 1) * Kernel::nr;

// Packs the B micro-panel number `index` of a thread's share (columns from col, `cols` there) for its
// one user and returns it. Where the kernel can, an even panel is packed together with the next one
// (has_next), which the odd index then finds already in the second slot.
template <class Kernel, bool Round, class TB>
const typename Kernel::packed* pack_b_for_use(const op_view<TB>& b, index_t row0, index_t depth, index_t col,
                                              index_t cols, bool has_next, index_t index,
                                              typename Kernel::packed* slots) {
  if constexpr (requires { Kernel::template pack_b_panels<Round>(b, row0, depth, col, cols, 1, slots, 0); }) {
    if (index % 2 == 0) {
      Kernel::template pack_b_panels<Round>(b, row0, depth, col, cols, has_next ? 2 : 1, slots, b_slot_size<Kernel>);
    }
    return slots + (index % 2) * b_slot_size<Kernel>;
  } else {
    Kernel::template pack_b<Round>(b, row0, depth, col, cols, slots);
    return slots;
  }
}

// Asks for the cache lines of a rows x bytes tile (row stride `stride` bytes) ahead of its use,
// into L2, for writing. A row that starts inside a line spans one line more: all of them are asked
// for: with the operands 16 bytes past a line, 768x2304x256_dW went from 0.79-0.86x oneDNN to
// 0.83-0.89x on one thread and from 0.73-0.91x to 0.87-0.89x on two (bench/gemm, two builds
// interleaved).
// A template on Arch for the reason given at row_blocks.
template <class Arch> void prefetch_tile(const void* tile, index_t stride, index_t rows, index_t bytes) {
  const auto* base = static_cast<const char*>(tile);
  const auto first_line = -static_cast<index_t>(reinterpret_cast<std::uintptr_t>(tile) % 64);
  for (index_t i = 0; i < rows; ++i) {
    for (index_t offset = first_line; offset < bytes; offset += 64) {
      __builtin_prefetch(base + i * stride + offset, 1, 2);
    }
  }
}

// C[:, jc .. jc + nc) = epilogue(sum of the K shares' fp32 blocks, added in share order, + beta C).
template <class Arch, class TA, class TB, class TC>
void add_k_shares(const context& ctx, const ops::gemm_params<TA, TB, TC>& p, index_t jc, index_t nc,
                  const float* k_sums, index_t k_shares) {
  constexpr index_t width = 256;
  const index_t M = p.m();
  parallel_for(ctx, M, [&](index_t row_begin, index_t row_end) {
    alignas(64) float sum[width];
    for (index_t i = row_begin; i < row_end; ++i) {
      for (index_t j0 = 0; j0 < nc; j0 += width) {
        const index_t cols = std::min(width, nc - j0);
        const float* first = k_sums + i * nc + j0;
        std::copy(first, first + cols, sum);
        for (index_t s = 1; s < k_shares; ++s) {
          const float* next = first + s * M * nc;
          for (index_t j = 0; j < cols; ++j) {
            sum[j] += next[j];
          }
        }
        // The shares already hold alpha * AB: scale by 1, add beta * C, bias, GELU, residual.
        const auto t = tile_target_at(p, i, jc + j0, 1.0f, true, true, nullptr, 0);
        write_tile<Arch>(sum, width, 1, cols, t);
      }
    }
  });
}

// The blocks of rows of C, one packed block of A each; block b goes to thread b % threads. A
// template on the kernel so that each ISA's translation unit has its own: a plain inline function,
// compiled in each of them with that ISA's flags, is one function to the linker, which keeps one
// of the copies (in the sanitizer build, which did not inline it, the AVX-512 copy ran on an AVX2
// machine and stopped on an illegal instruction).
template <class Kernel> struct row_blocks {
  static constexpr index_t panel_rows = Kernel::mr;
  index_t count = 1;
  index_t rows = 0; // M
  int threads = 1;
  // When each thread gets the same number of blocks, the rows are first split exactly among the
  // threads and each thread's share is then cut into panels, so that the only short panel is the
  // last of each share: 768 rows are 55 panels, 28 for one thread and 27 for the other when split
  // as panels, but 27 and a 6-row one for each when split as rows. Each thread's rows are then also
  // contiguous. On two threads the 768-row weight gradients went from 0.80-0.93x to 0.91-0.94x
  // oneDNN (bench/gemm, two builds interleaved).
  bool split_per_thread = false;

  // Rows [begin, end) of C in block `block`.
  range of(index_t block) const {
    const index_t panels = (rows + panel_rows - 1) / panel_rows;
    if (!split_per_thread) {
      const range panels_of_block = split_evenly(panels, static_cast<int>(count), static_cast<int>(block));
      return range{panels_of_block.begin * panel_rows, std::min(rows, panels_of_block.end * panel_rows)};
    }
    const range share = split_evenly(rows, threads, static_cast<int>(block % threads));
    const index_t share_panels = (share.end - share.begin + panel_rows - 1) / panel_rows;
    const range panels_of_block =
        split_evenly(share_panels, static_cast<int>(count / threads), static_cast<int>(block / threads));
    return range{share.begin + panels_of_block.begin * panel_rows,
                 std::min(share.end, share.begin + panels_of_block.end * panel_rows)};
  }

  // The most rows of any block, in whole panels: what its packed A holds.
  index_t max_rows() const {
    index_t most = 0;
    for (index_t block = 0; block < count; ++block) {
      const range r = of(block);
      most = std::max(most, (r.end - r.begin + panel_rows - 1) / panel_rows * panel_rows);
    }
    return most;
  }
};

// Row blocks: one up to single_block_rows rows when B is wider than a few panels (each B panel
// then has one user, which packs it just before use); otherwise blocks of at most MC rows, as
// many as a multiple of the thread count when there are more blocks than threads, sharing the
// MR-row panels out evenly: 1024 rows on 2 threads are 10 blocks of 7 or 8 panels, not 8 of 126
// rows and a 16-row ninth, which would leave one thread idle. first_tile_can_pack_b: the first
// tile of each panel of B packs it (b_packed_by_first_tile in gemm_blocked); a_by_rows: A^T's
// full panels are read with a run-time k step under a B of one panel.
template <class Kernel> row_blocks<Kernel> plan_row_blocks(index_t M, index_t N, index_t K, int threads,
                                                           bool first_tile_can_pack_b, bool a_by_rows) {
  constexpr int MR = Kernel::mr, NR = Kernel::nr;
  const index_t m_panels = (M + MR - 1) / MR;
  // Over a short K (the weight gradients of 256 tokens), a block as large as that of
  // single_block_rows rows at full depth holds more rows: 768 x 2304 x 256 then reads B once, as
  // its first tiles pack it, instead of packing it first and reading it back for each of 7 MC
  // blocks. Only while every thread still gets several panels of B, which are what the threads
  // share with one block of rows, and only where the first tiles pack B: packed in a pass of its
  // own, as the AMX kernel's panels are, 768 x 768 x 256 in bf16 lost 4-5%. In fp32,
  // 768x3072x256_dW went from 0.83-0.88x oneDNN to 0.87-0.90x on one thread and from 0.82-0.85x to
  // 0.89-0.94x on two (bench/gemm, two builds interleaved).
  const index_t n_panels = (N + NR - 1) / NR;
  const bool single_block_fits = first_tile_can_pack_b &&
                                 M * std::min<index_t>(K, Kernel::kc) <= single_block_rows * Kernel::kc &&
                                 n_panels >= threads * single_block_min_panels;
  // A^T read by rows (a_by_rows) makes one block too while the block stays in L2 (a_block_l2_bytes,
  // which a copy of the rows then fills): each K block then reads whole stored rows, one sequential
  // stream, instead of a part of each row per block of rows, which the hardware prefetchers follow
  // less well. 288 x 16 x 16384 ran 1.39-1.44x faster in the bf16 compute mode (A^T copied and
  // rounded) and 1.03-1.08x in fp32 (A^T in place) on a Zen 3 core (two builds interleaved).
  const bool by_rows_block_fits =
      a_by_rows && static_cast<std::size_t>(M * std::min<index_t>(K, Kernel::kc)) * sizeof(float) <= a_block_l2_bytes;
  const bool single_block =
      ((M <= single_block_rows || single_block_fits) && N > single_block_min_panels * NR) || by_rows_block_fits;
  index_t count = single_block ? 1 : (M + Kernel::mc - 1) / Kernel::mc;
  if constexpr (requires { Kernel::block_rows(K); }) { // a kernel whose blocks depend on the depth
    if (!single_block) {
      const index_t rows_per_block = Kernel::block_rows(std::min<index_t>(K, Kernel::kc));
      count = (M + rows_per_block - 1) / rows_per_block;
    }
  }
  if (count > threads) {
    count = std::min(m_panels, (count + threads - 1) / threads * threads);
  }
  return row_blocks<Kernel>{
      .count = count, .rows = M, .threads = threads, .split_per_thread = count >= threads && count % threads == 0};
}

template <class Kernel, bool Round, class TA, class TB, class TC> void
gemm_blocked(const context& ctx, const ops::gemm_params<TA, TB, TC>& p, const typename Kernel::packed* prepacked_b) {
  using packed = typename Kernel::packed;
  constexpr int MR = Kernel::mr, NR = Kernel::nr;
  const index_t M = p.m(), N = p.n(), K = p.k();
  const op_view<TA> a{p.a.data, p.a.ld, p.trans_a == ops::transpose::trans};
  const op_view<TB> b{p.b.data, p.b.ld, p.trans_b == ops::transpose::trans};
  constexpr bool in_place_a_possible = [] {
    if constexpr (requires { Kernel::template reads_transposed_a_in_place<Round, TA>; }) {
      return Kernel::template reads_transposed_a_in_place<Round, TA>;
    }
    return false;
  }();
  constexpr bool copy_a_possible = [] {
    if constexpr (requires { Kernel::template copies_transposed_a_rows<Round, TA>; }) {
      return Kernel::template copies_transposed_a_rows<Round, TA>;
    }
    return false;
  }();
  // A^T's full panels read with a run-time k step under a B of one panel: in place, or from a copy
  // of its rows in packed_a.
  const bool a_by_rows = (in_place_a_possible || copy_a_possible) && a.transposed && N <= NR;
  // Partial sums of earlier K blocks go to C itself when C is f32, unless C is also the residual
  // and there are several K blocks (the residual must still be the original C at the last block).
  const bool partial_in_c =
      std::is_same_v<TC, float> && !(p.residual.data == p.c.data && p.residual.data != nullptr && K > Kernel::kc);

  const int threads = effective_threads(ctx);
  // Whether the first tile of a panel can read B from its storage and pack it for the others (see
  // b_packed_by_first_tile below).
  constexpr bool first_tile_packing_possible = [] {
    if constexpr (requires { Kernel::template packs_b_in_first_tile<Round, TB>; }) {
      return Kernel::template packs_b_in_first_tile<Round, TB>;
    }
    return false;
  }();
  const bool first_tile_can_pack_b = first_tile_packing_possible && !b.transposed && M >= MR;
  const row_blocks<Kernel> blocks = plan_row_blocks<Kernel>(M, N, K, threads, first_tile_can_pack_b, a_by_rows);
  const index_t ic_blocks = blocks.count, max_block_rows = blocks.max_rows();
  // Whether the kernel can hand a finished tile's rows to the epilogue from its registers (run_rows).
  constexpr bool updates_c_from_registers = requires(const packed* x) {
    Kernel::run_rows(
        index_t{}, x, x, NR, [] {}, [](index_t, const auto&) {});
  };
  const bool a_far = static_cast<std::size_t>(max_block_rows * Kernel::padded_depth(std::min<index_t>(K, Kernel::kc))) *
                         sizeof(packed) >
                     a_block_l2_bytes;

  // With one block of rows every panel of B has a single user, which packs it just before use (into
  // L1/L2, no trip through memory), and all of N is one column block: NC bounds only the shared
  // packed B, and each further column block would pack A again. Otherwise all of op(B)[:, jc..] is
  // packed first and shared.
  const bool pack_b_on_use = prepacked_b == nullptr && ic_blocks == 1;
  // Where the kernel can read B from its storage, the first tile of each whole panel does so and
  // stores each row it reads into the packing slot, where the other tiles of the panel find it: B's
  // rows, which come from L3 or memory, then arrive under the kernel's prefetches and FMAs instead of
  // in a copy loop of their own before the tiles (under perf, 10% of the time at 256 x 768 x 3072).
  // On one thread 256x768x3072 went from 0.87-0.88x oneDNN to 0.95-0.96x and 256x2304x768 from 0.90x
  // to 0.93-0.96x; on two, 0.88-0.93x to 0.97-0.99x and 0.89-0.91x to 0.92-0.96x (bench/gemm, two
  // builds interleaved).
  const bool b_packed_by_first_tile = first_tile_can_pack_b && pack_b_on_use;
  const index_t column_block = pack_b_on_use ? N : index_t{Kernel::nc};
  for (index_t jc = 0; jc < N; jc += column_block) {
    const index_t nc = std::min<index_t>(column_block, N - jc);
    const index_t panels = (nc + NR - 1) / NR;
    const packed* packed_b = nullptr;
    if (prepacked_b != nullptr) {
      packed_b = prepacked_b + (jc / NR) * Kernel::padded_depth(K) * NR;
    } else if (!pack_b_on_use) {
      auto* block = thread_workspace<typename Kernel::arch, 0, packed>(packed_b_size<Kernel>(K, nc));
      pack_b_block<Kernel, Round>(context(threads), b, K, jc, nc, block);
      packed_b = block;
    }

    // Work items: an MC block of rows, a contiguous share of the panels and a share of the K blocks.
    const index_t splits = std::clamp<index_t>((threads + ic_blocks - 1) / ic_blocks, 1, panels);
    const index_t k_blocks = (K + Kernel::kc - 1) / Kernel::kc;
    const index_t k_shares = M > small_m ? std::clamp<index_t>(threads / (ic_blocks * splits), 1, k_blocks) : 1;
    const index_t items = ic_blocks * splits * k_shares;
    // Sums of each K share when there are several: share s at k_sums + s * M * nc, rows nc apart.
    float* k_sums = k_shares > 1
                        ? thread_workspace<typename Kernel::arch, 6, float>(static_cast<std::size_t>(k_shares * M * nc))
                        : nullptr;
    parallel_region(context(static_cast<int>(std::min<index_t>(threads, items))), [&](int thread, int thread_count) {
      using arch = typename Kernel::arch;
      if constexpr (requires { Kernel::prepare_thread(); }) {
        Kernel::prepare_thread(); // per-thread state the kernel needs (a tile configuration)
      }
      packed* packed_a = thread_workspace<arch, 1, packed>(
          static_cast<std::size_t>(max_block_rows * Kernel::padded_depth(std::min<index_t>(K, Kernel::kc))) + 64);
      packed* panel_b = thread_workspace<arch, 3, packed>(static_cast<std::size_t>(2 * b_slot_size<Kernel>));
      alignas(64) float tile[MR * NR];
      for (index_t item = thread; item < items; item += thread_count) {
        const index_t k_share = item % k_shares, column_item = item / k_shares;
        const range rows = blocks.of(column_item / splits);
        const index_t ic = rows.begin, mc = rows.end - rows.begin;
        const range share = split_evenly(panels, static_cast<int>(splits), static_cast<int>(column_item % splits));
        const range k_range = split_evenly(k_blocks, static_cast<int>(k_shares), static_cast<int>(k_share));
        const index_t j0 = share.begin * NR, j1 = std::min<index_t>(nc, share.end * NR);
        if (j0 >= j1) {
          continue;
        }
        float* partial = nullptr;
        index_t ld_partial = 0;
        if (k_shares > 1) {
          ld_partial = nc;
          partial = k_sums + k_share * M * nc + ic * nc + j0;
        } else if (!partial_in_c) {
          ld_partial = j1 - j0;
          partial = thread_workspace<arch, 2, float>(static_cast<std::size_t>(mc * ld_partial));
        }
        const index_t pc_begin = k_range.begin * Kernel::kc, pc_end = std::min(K, k_range.end * Kernel::kc);
        for (index_t pc = pc_begin; pc < pc_end; pc += Kernel::kc) {
          const index_t kc = std::min<index_t>(Kernel::kc, K - pc);
          const index_t depth = Kernel::padded_depth(kc);
          // Full panels read by rows, in place (see reads_transposed_a_in_place) or from a copy of
          // their rows at the start of packed_a (copies_transposed_a_rows), `by_rows_ld` values from
          // one k step to the next; the rest packed as usual, after them.
          const index_t by_rows = a_by_rows ? mc / MR * MR : 0;
          const float* a_rows = nullptr;
          index_t by_rows_ld = 0;
          if (by_rows > 0) {
            if constexpr (in_place_a_possible) {
              a_rows = a.data + pc * a.ld + ic;
              by_rows_ld = a.ld;
            } else if constexpr (copy_a_possible) {
              Kernel::template copy_rows<Round>(a.data + pc * a.ld + ic, a.ld, kc, by_rows, packed_a);
              a_rows = packed_a;
              by_rows_ld = by_rows;
            }
          }
          if (by_rows < mc) {
            Kernel::template pack_a<Round>(a, ic + by_rows, mc - by_rows, pc, kc,
                                           packed_a + (by_rows / MR) * depth * MR);
          }
          for (index_t jr = j0; jr < j1; jr += NR) {
            const index_t nr = std::min<index_t>(NR, j1 - jr);
            const packed* b_panel = packed_b + pc * panels * NR + (jr / NR) * depth * NR;
            const bool first_tile_packs_b = b_packed_by_first_tile && jr + NR <= nc;
            if (first_tile_packs_b) {
              b_panel = panel_b;
            } else if (b_packed_by_first_tile) { // the last, partial panel: packed alone into the first slot
              b_panel = pack_b_for_use<Kernel, Round>(b, pc, kc, jc + jr, nc - jr, false, 0, panel_b);
            } else if (pack_b_on_use) {
              b_panel =
                  pack_b_for_use<Kernel, Round>(b, pc, kc, jc + jr, nc - jr, jr + NR < j1, (jr - j0) / NR, panel_b);
            }
            for (index_t ir = 0; ir < mc; ir += MR) {
              const packed* a_panel = packed_a + (ir / MR) * depth * MR;
              index_t a_k_step = MR;
              if constexpr (in_place_a_possible || copy_a_possible) {
                if (ir < by_rows) {
                  a_panel = a_rows + ir;
                  a_k_step = by_rows_ld;
                }
              }
              auto t = tile_target_at(p, ic + ir, jc + jr, p.alpha, pc == pc_begin, pc + kc == K && k_shares == 1,
                                      partial == nullptr ? nullptr : partial + ir * ld_partial + (jr - j0), ld_partial);
              if (k_shares > 1) {
                t.beta = 0.0f; // a share's own sums; beta * C joins once, when the shares are added
              }
              // The rows of partial sums (C itself for f32) of this tile and the next are asked for
              // while the kernel computes (C reads of the dW += X^T dY shapes stalled 16% of the time
              // on two threads without), and those of a tile finished from the registers once more
              // near the end of its k loop: the micro-panels streaming through L1 and L2 evict some
              // of them before the epilogue reads them.
              const index_t row_bytes = t.ld_partial * index_t{sizeof(float)}, tile_bytes = nr * index_t{sizeof(float)};
              if (ir == 0) {
                prefetch_tile<arch>(t.partial, row_bytes, std::min<index_t>(MR, mc), tile_bytes);
              }
              if (ir + MR < mc) {
                prefetch_tile<arch>(t.partial + MR * t.ld_partial, row_bytes, std::min<index_t>(MR, mc - ir - MR),
                                    tile_bytes);
              }
              const bool full_tile = ir + MR <= mc && nr == NR;
              const bool from_registers = full_tile && !(t.last && has_epilogue(t)); // C updated from them
              const auto ask_for_c = [&] { prefetch_tile<arch>(t.partial, row_bytes, MR, tile_bytes); };
              const auto finish = [&](index_t i, const auto& values) { finish_row<arch>(t, i, values); };
              if constexpr (first_tile_packing_possible) {
                if (first_tile_packs_b && ir == 0) { // a full tile: M >= MR and a whole panel
                  const TB* b_rows = b.data + pc * b.ld + jc + jr;
                  if constexpr (updates_c_from_registers) {
                    if (from_registers) {
                      Kernel::run_rows(kc, a_panel, b_rows, b.ld, ask_for_c, finish, a_k_step, a_far, panel_b);
                      continue;
                    }
                  }
                  Kernel::run(kc, a_panel, b_rows, b.ld, tile, a_k_step, panel_b);
                  write_tile<arch>(tile, NR, MR, NR, t);
                  continue;
                }
              }
              if constexpr (updates_c_from_registers) {
                if (from_registers) {
                  Kernel::run_rows(kc, a_panel, b_panel, Kernel::panel_ld, ask_for_c, finish, a_k_step, a_far);
                  continue;
                }
              }
              const index_t rows = std::min<index_t>(MR, mc - ir);
              if constexpr (requires(const packed* x) { Kernel::run_partial(rows, kc, x, x, NR, tile); }) {
                Kernel::run_partial(rows, kc, a_panel, b_panel, Kernel::panel_ld, tile, a_k_step);
              } else {
                Kernel::run(kc, a_panel, b_panel, Kernel::panel_ld, tile);
              }
              write_tile<arch>(tile, NR, rows, nr, t);
            }
          }
        }
      }
    });
    if (k_shares > 1) {
      add_k_shares<typename Kernel::arch>(context(threads), p, jc, nc, k_sums, k_shares);
    }
  }
}

// C = epilogue(beta * C) when there is no product to add (K = 0 or alpha = 0).
template <class Arch, class TA, class TB, class TC> void gemm_epilogue_only(const ops::gemm_params<TA, TB, TC>& p) {
  constexpr int rows = 4, cols = 64;
  alignas(64) float zeros[rows * cols] = {};
  for (index_t i = 0; i < p.m(); i += rows) {
    for (index_t j = 0; j < p.n(); j += cols) {
      const auto t = tile_target_at(p, i, j, 0.0f, true, true, nullptr, 0);
      write_tile<Arch>(zeros, cols, std::min<index_t>(rows, p.m() - i), std::min<index_t>(cols, p.n() - j), t);
    }
  }
}

// The bf16 pair kernel runs bf16 work where the CPU has AVX512-BF16 and KERN_ISA allows it, the
// AMX kernel instead where the CPU has AMX (or, in an emulated build, wherever the pair kernel
// would run); the fp32 FMA kernel runs everything else.
template <class Arch> constexpr bool has_bf16_dot_kernel() {
#if defined(KERN_HAVE_BF16_DOT_KERNEL)
  return isa_of<Arch>() >= isa::avx512;
#else
  return false;
#endif
}

template <class Arch> bool use_bf16_dot(dtype b_type, ops::gemm_compute compute) {
  return has_bf16_dot_kernel<Arch>() && (b_type == dtype::bf16 || compute == ops::gemm_compute::bf16) &&
         active_isa() >= isa::avx512_bf16;
}

template <class Arch> constexpr bool has_amx_kernel() {
#if defined(KERN_HAVE_AMX_KERNEL)
  return has_bf16_dot_kernel<Arch>();
#else
  return false;
#endif
}

// Whether bf16 work (use_bf16_dot) goes to the AMX kernel: all of it does, M <= 4 to its small-M
// form (amx_small_m_kernel, which reads the same pre-packed B).
template <class Arch> bool use_amx() {
#if defined(KERN_HAVE_AMX_KERNEL)
  return has_amx_kernel<Arch>() && active_isa() >= amx_kernel_isa;
#else
  return false;
#endif
}

// The kernel that bf16 work runs on in this process at this ISA (kern::cpu::detail::gemm_bf16_kernel_name()).
template <class Arch> const char* bf16_kernel_name() {
  if (!use_bf16_dot<Arch>(dtype::bf16, ops::gemm_compute::native)) {
    return "fp32 fma";
  }
#if defined(KERN_HAVE_AMX_KERNEL)
  if (use_amx<Arch>()) {
    return amx_kernel<Arch>::tiles::name;
  }
#endif
  return "avx512_bf16";
}

// Calls fn(kernel{}, round) with the kernel type, for M rows (small: M <= 4), B's width (narrow: one
// vector, when B is not pre-packed in the usual panels) and the chosen kernel family.
template <class Arch, class Fn> void with_kernel(bool dot, bool small, bool narrow, bool round, Fn&& fn) {
  using tag_round = std::true_type;
  using tag_exact = std::false_type;
#if defined(KERN_HAVE_AMX_KERNEL)
  if constexpr (has_amx_kernel<Arch>()) {
    if (dot && use_amx<Arch>()) { // rounds to bf16 itself, as the pair kernel
      small ? fn(amx_small_m_kernel<Arch>{}, tag_exact{}) : fn(amx_kernel<Arch>{}, tag_exact{});
      return;
    }
  }
#endif
#if defined(KERN_HAVE_BF16_DOT_KERNEL)
  if constexpr (has_bf16_dot_kernel<Arch>()) {
    if (dot) { // rounds to bf16 itself: one instance serves both modes
      if (small) {
        fn(bf16_dot_kernel<Arch, 4>{}, tag_exact{});
      } else if (narrow) { // 16 x 16, as the fp32 kernel below
        fn(bf16_dot_kernel<Arch, 16, 1>{}, tag_exact{});
      } else {
        fn(bf16_dot_kernel<Arch, 14>{}, tag_exact{});
      }
      return;
    }
  }
#endif
  (void)dot;
  constexpr int mr = f32_fma_kernel<Arch, 1>::default_mr;
  if constexpr (f32_fma_kernel<Arch, 1>::wide) {
    if (narrow && !small) { // a 16 x 16 tile instead of a 14 x 32 one of which half is padding
      round ? fn(f32_fma_kernel<Arch, 16, 1>{}, tag_round{}) : fn(f32_fma_kernel<Arch, 16, 1>{}, tag_exact{});
      return;
    }
  }
  if (small) {
    round ? fn(f32_fma_kernel<Arch, 4>{}, tag_round{}) : fn(f32_fma_kernel<Arch, 4>{}, tag_exact{});
  } else {
    round ? fn(f32_fma_kernel<Arch, mr>{}, tag_round{}) : fn(f32_fma_kernel<Arch, mr>{}, tag_exact{});
  }
}

// The ISA-specific entry: everything after validation. prepacked_b, when not null, holds op(B)
// packed by pack_b_run for the same kernel family.
template <class Arch, class TA, class TB, class TC>
void gemm_run(const context& ctx, const ops::gemm_params<TA, TB, TC>& p, const void* prepacked_b) {
  if (p.m() == 0 || p.n() == 0) {
    return;
  }
  if (p.k() == 0 || p.alpha == 0.0f) {
    gemm_epilogue_only<Arch>(p);
    return;
  }
  const bool round = p.compute == ops::gemm_compute::bf16 && std::is_same_v<TA, float>;
  const bool narrow = p.n() <= f32_fma_kernel<Arch, 1>::lanes && prepacked_b == nullptr;
  with_kernel<Arch>(use_bf16_dot<Arch>(dtype_of_v<TB>, p.compute), p.m() <= small_m, narrow, round,
                    [&](auto kernel, auto round_tag) {
                      using K = decltype(kernel);
                      if constexpr (!(decltype(round_tag)::value && !std::is_same_v<TA, float>)) {
                        constexpr bool round_b = decltype(round_tag)::value;
                        if constexpr (K::template reads_b_directly<round_b, TB>) {
                          if (prepacked_b == nullptr && p.m() <= small_m && p.trans_b == ops::transpose::none) {
                            gemm_small_m<K, round_b>(ctx, p);
                            return;
                          }
                        }
                        gemm_blocked<K, round_b>(ctx, p, static_cast<const typename K::packed*>(prepacked_b));
                      }
                    });
}

// Packs all of op(B) (k x n) for gemm_run into `dst`, which holds packed_b_bytes<Arch>(...) bytes.
template <class Arch> std::size_t packed_b_bytes(dtype b_type, ops::gemm_compute compute, index_t k, index_t n) {
  if (use_bf16_dot<Arch>(b_type, compute)) {
#if defined(KERN_HAVE_AMX_KERNEL)
    if (use_amx<Arch>()) {
      return packed_b_size<amx_kernel<Arch>>(k, n) * sizeof(std::uint16_t);
    }
#endif
#if defined(KERN_HAVE_BF16_DOT_KERNEL)
    return packed_b_size<bf16_dot_kernel<Arch, 14>>(k, n) * sizeof(std::uint16_t);
#endif
  }
  return packed_b_size<f32_fma_kernel<Arch, 1>>(k, n) * sizeof(float);
}

template <class Arch, class TB> void pack_b_run(const context& ctx, matrix_view<const TB> b, ops::transpose trans_b,
                                                ops::gemm_compute compute, index_t k, index_t n, void* dst) {
  const op_view<TB> op_b{b.data, b.ld, trans_b == ops::transpose::trans};
  const bool round = compute == ops::gemm_compute::bf16 && std::is_same_v<TB, float>;
  with_kernel<Arch>(use_bf16_dot<Arch>(dtype_of_v<TB>, compute), false, false, round, [&](auto kernel, auto round_tag) {
    using K = decltype(kernel);
    if constexpr (!(decltype(round_tag)::value && !std::is_same_v<TB, float>)) {
      auto* out = static_cast<typename K::packed*>(dst);
      for (index_t jc = 0; jc < n; jc += K::nc) {
        pack_b_block<K, decltype(round_tag)::value>(ctx, op_b, k, jc, std::min<index_t>(K::nc, n - jc),
                                                    out + (jc / K::nr) * K::padded_depth(k) * K::nr);
      }
    }
  });
}

} // namespace kern::cpu::detail
