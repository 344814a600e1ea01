// The CPU execution mode's tensor-core primitives (the API of kern/gpu/tensor_core.hpp, which
// includes this at warp size 32; kernels include that one).
//
// mma_m16n8k16: a warp collective. The lanes exchange their A and B registers; each lane rebuilds A
// (16x16) and B (16x8) from the PTX layouts and computes its four elements of D as C plus the 16
// products in k order. Every product of two bf16 or two f16 values is exact in fp32 (8- or 11-bit
// significands); the sum is rounded to fp32 after each addition. The hardware adds in its own order
// and internal precision, so the two agree bit for bit where the sums are exact (small integers),
// and within fp32 accumulation error otherwise.
//
// ldmatrix: a warp collective. Each lane that supplies a row (lanes 0 .. 8N - 1) checks its address
// (16-byte aligned, the row's 16 bytes inside one shared allocation of the block) and reads the row
// as it arrives; the rows are exchanged and each lane takes its elements.
//
// cp.async: per thread, and really asynchronous: a copy is checked (destination in shared memory and
// aligned to the copy size, source aligned and not in shared memory, 0 <= source_bytes <= size) and
// queued; it lands, source bytes then zeros, when a wait covers its group. Until then the destination
// holds what it held before, so a kernel that reads it too early sees stale data instead of the race
// it has on a GPU. A copy still queued when its thread exits is reported (block.hpp).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>
#include <type_traits>
#include <vector>

#include "kern/gpu/tensor_core.hpp"

namespace kern::gpu {

namespace emulator {

// The calling lane; mma and ldmatrix need all 32 lanes of the warp.
inline int lane_of_full_warp(std::string_view instruction) {
  block_runner& runner = block_runner::current();
  const int warp = runner.linear_thread() / warp_size;
  if (runner.lanes_in_warp(warp, warp_size) != warp_size) {
    runner.fail(instruction, " needs all ", warp_size, " lanes of a warp; warp ", warp, " of this block has ",
                runner.lanes_in_warp(warp, warp_size));
  }
  return runner.linear_thread() % warp_size;
}

template <class T> float element(std::uint32_t reg, int i) {
  return T::from_bits(static_cast<std::uint16_t>(reg >> (16 * (i % 2)))).to_float();
}

inline std::uint32_t pack_bits(std::uint16_t low, std::uint16_t high) {
  return std::uint32_t{low} | (std::uint32_t{high} << 16);
}

template <int N, bool Transposed> fragment<N> ldmatrix_m8n8(const void* row) {
  static_assert(N == 1 || N == 2 || N == 4, "ldmatrix loads 1, 2 or 4 matrices");
  constexpr std::string_view names[2][3] = {{"ldmatrix.x1", "ldmatrix.x2", "ldmatrix.x4"},
                                            {"ldmatrix.x1.trans", "ldmatrix.x2.trans", "ldmatrix.x4.trans"}};
  constexpr std::string_view instruction = names[Transposed ? 1 : 0][N / 2];
  block_runner& runner = block_runner::current();
  const int lane = lane_of_full_warp(instruction);
  using matrix_row = std::array<std::uint16_t, 8>;
  matrix_row contents{};
  if (lane < 8 * N) {
    if (reinterpret_cast<std::uintptr_t>(row) % sizeof(matrix_row) != 0) {
      runner.fail(instruction, ": lane ", lane, "'s row address ", row, " is not 16-byte aligned");
    }
    if (!runner.in_shared_allocation(row, sizeof(matrix_row))) {
      runner.fail(instruction, ": lane ", lane, "'s row at ", row,
                  " (16 bytes) is not inside one shared-memory allocation of the block");
    }
    std::memcpy(contents.data(), row, sizeof(matrix_row));
  }
  const auto rows = runner.warp_gather<warp_size>(instruction, contents);
  const auto g = static_cast<std::size_t>(lane / 4), t = static_cast<std::size_t>(lane % 4);
  fragment<N> out{};
  for (std::size_t m = 0; m < N; ++m) {
    const auto at = [&](std::size_t r, std::size_t c) { return rows[8 * m + r][c]; };
    out.reg[m] = Transposed ? pack_bits(at(2 * t, g), at(2 * t + 1, g)) : pack_bits(at(g, 2 * t), at(g, 2 * t + 1));
  }
  return out;
}

inline void start_async_copy(std::string_view instruction, void* destination, const void* source, std::size_t bytes,
                             int source_bytes) {
  block_runner& runner = block_runner::current();
  if (source_bytes < 0 || static_cast<std::size_t>(source_bytes) > bytes) {
    runner.fail(instruction, ": the source size ", source_bytes, " is not within the copy size ", bytes);
  }
  if (!runner.in_shared_allocation(destination, bytes)) {
    runner.fail(instruction, ": the destination ", destination, " (", bytes,
                " bytes) is not inside one shared-memory allocation of the block");
  }
  if (reinterpret_cast<std::uintptr_t>(destination) % bytes != 0 ||
      reinterpret_cast<std::uintptr_t>(source) % bytes != 0) {
    runner.fail(instruction, ": the destination ", destination, " and the source ", source,
                " must be aligned to the copy size, ", bytes, " bytes");
  }
  if (source_bytes > 0 && (source == nullptr || runner.in_shared_allocation(source, 1))) {
    runner.fail(instruction, ": the source ", source, " is not in global memory");
  }
  runner.thread_async_copies().pending.push_back({static_cast<std::byte*>(destination),
                                                  static_cast<const std::byte*>(source), bytes,
                                                  static_cast<std::size_t>(source_bytes), -1});
}

// Lands, in the order they were started, the calling thread's copies of the groups before `group_end`.
inline void land_async_copies(int group_end) {
  auto& pending = block_runner::current().thread_async_copies().pending;
  const auto landing = [&](const block_runner::async_copy& c) { return c.group >= 0 && c.group < group_end; };
  for (const auto& c : pending) {
    if (landing(c)) {
      std::memcpy(c.destination, c.source, c.source_bytes);
      std::memset(c.destination + c.source_bytes, 0, c.bytes - c.source_bytes);
    }
  }
  std::erase_if(pending, landing);
}

} // namespace emulator

template <class T>
mma_accumulator mma_m16n8k16(const mma_a_fragment& a, const mma_b_fragment& b, const mma_accumulator& c) {
  static_assert(is_mma_input_v<T>, "mma_m16n8k16: the inputs are bf16 or f16");
  constexpr std::string_view instruction =
      std::is_same_v<T, bf16> ? "mma.m16n8k16 (bf16)" : "mma.m16n8k16 (f16)"; // mixing types is reported
  emulator::block_runner& runner = emulator::block_runner::current();
  const int lane = emulator::lane_of_full_warp(instruction);
  const auto a_lanes = runner.warp_gather<warp_size>(instruction, a);
  const auto b_lanes = runner.warp_gather<warp_size>(instruction, b);
  std::array<std::array<float, 16>, 16> a_matrix{};
  std::array<std::array<float, 8>, 16> b_matrix{};
  for (int l = 0; l < warp_size; ++l) {
    const auto& a_regs = a_lanes[static_cast<std::size_t>(l)].reg;
    const auto& b_regs = b_lanes[static_cast<std::size_t>(l)].reg;
    for (int i = 0; i < 8; ++i) {
      const matrix_position p = mma_a_position(l, i);
      a_matrix[static_cast<std::size_t>(p.row)][static_cast<std::size_t>(p.col)] =
          emulator::element<T>(a_regs[i / 2], i);
    }
    for (int i = 0; i < 4; ++i) {
      const matrix_position p = mma_b_position(l, i);
      b_matrix[static_cast<std::size_t>(p.row)][static_cast<std::size_t>(p.col)] =
          emulator::element<T>(b_regs[i / 2], i);
    }
  }
  mma_accumulator d = c;
  for (int i = 0; i < 4; ++i) {
    const matrix_position p = mma_c_position(lane, i);
    for (std::size_t k = 0; k < 16; ++k) {
      d.reg[i] += a_matrix[static_cast<std::size_t>(p.row)][k] * b_matrix[k][static_cast<std::size_t>(p.col)];
    }
  }
  return d;
}

template <int N> fragment<N> ldmatrix(const void* row) { return emulator::ldmatrix_m8n8<N, false>(row); }
template <int N> fragment<N> ldmatrix_trans(const void* row) { return emulator::ldmatrix_m8n8<N, true>(row); }

template <int Bytes> void cp_async_ca(void* destination, const void* source, int source_bytes = Bytes) {
  static_assert(Bytes == 4 || Bytes == 8 || Bytes == 16, "cp.async.ca copies 4, 8 or 16 bytes");
  emulator::start_async_copy("cp.async.ca", destination, source, Bytes, source_bytes);
}

inline void cp_async_cg(void* destination, const void* source, int source_bytes = 16) {
  emulator::start_async_copy("cp.async.cg", destination, source, 16, source_bytes);
}

inline void cp_async_commit_group() {
  auto& copies = emulator::block_runner::current().thread_async_copies();
  for (auto& c : copies.pending) {
    if (c.group < 0) {
      c.group = copies.committed_groups;
    }
  }
  ++copies.committed_groups; // an empty group counts too, as on the GPU
}

template <int Pending> void cp_async_wait_group() {
  static_assert(Pending >= 0, "cp_async_wait_group: a count of groups");
  emulator::land_async_copies(emulator::block_runner::current().thread_async_copies().committed_groups - Pending);
}

// PTX defines wait_all as commit_group followed by wait_group 0.
inline void cp_async_wait_all() {
  cp_async_commit_group();
  cp_async_wait_group<0>();
}

} // namespace kern::gpu
