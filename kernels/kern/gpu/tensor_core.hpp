// NVIDIA's warp-level matrix primitives (sm_80): the tensor-core product mma.sync.m16n8k16 (bf16 or
// f16 inputs, fp32 accumulation), ldmatrix (shared memory -> fragments) and cp.async (global ->
// shared memory, asynchronous). nvcc compiles them to inline PTX; the CPU execution mode emulates
// them with the same layouts and checks their use (kern/gpu/emulator/tensor_core.hpp), so that
// kernels built on them run in CI.
//
// KERN_GPU_TENSOR_CORE_API is 1 where the API exists: nvcc, and the CPU execution mode at warp size
// 32. NVIDIA's layouts are defined for 32-lane warps, so neither hipcc (AMD has other matrix
// instructions) nor the emulation of 64-lane warps has them; code that uses them is NVIDIA code and
// sits under `#if KERN_GPU_TENSOR_CORE_API`.
//
//   mma_m16n8k16<T>(a, b, c)          D = A * B + C for one warp: A 16x16 (row-major), B 16x8
//                                     (column-major), C and D 16x8 fp32; T is bf16 or f16
//   ldmatrix<N>(row), ldmatrix_trans<N>(row)
//                                     N = 1, 2 or 4 8x8 matrices of 16-bit elements from shared
//                                     memory; lane l gives the address of row l % 8 of matrix l / 8
//   cp_async_ca<Bytes>(dst, src[, source_bytes]), cp_async_cg(dst, src[, source_bytes])
//                                     starts a copy of 4, 8 or 16 bytes (cg: 16) from global to
//                                     shared memory; the bytes after source_bytes are zero-filled
//   cp_async_commit_group(), cp_async_wait_group<N>(), cp_async_wait_all()
//
// Every lane of the warp calls mma and ldmatrix together (they are warp collectives). cp.async is
// per thread: the copies land only when a wait covers their group; other threads see them after a
// barrier that follows the wait.
//
// Fragment layouts (PTX ISA, "Matrix Fragments for mma.m16n8k16 with floating point type"), with
// groupID g = lane >> 2 and threadID_in_group t = lane % 4. A fragment register holds two 16-bit
// elements, the lower-indexed one in the low half.
//
//   A, elements a0..a7 in registers 0..3:  row = g      for a0, a1, a4, a5;  g + 8 otherwise
//                                          col = 2t + (i & 1)  for ai, i < 4;  2t + (i & 1) + 8 otherwise
//   B, elements b0..b3 in registers 0..1:  row = 2t + (i & 1)  for bi, i < 2;  2t + (i & 1) + 8 otherwise
//                                          col = g
//   C and D, floats c0..c3:                row = g      for ci, i < 2;  g + 8 otherwise
//                                          col = 2t + (i & 1)
//
// So register r of A holds A[g + 8 (r % 2)][2t + 8 (r / 2) + {0, 1}], register r of B holds
// B[2t + 8r + {0, 1}][g], and lanes 4g .. 4g + 3 together hold rows g and g + 8 of C.
//
// ldmatrix (PTX ISA, "ldmatrix"): lane l receives, in register m, row l / 4, elements 2 (l % 4) and
// 2 (l % 4) + 1 of matrix m; with .trans the matrix is transposed first (elements (2 (l % 4), l / 4)
// and (2 (l % 4) + 1, l / 4) of the matrix as stored). Each row address is 16-byte aligned. Hence
// an A fragment is ldmatrix<4> with lane l at &A[l % 16][8 (l / 16)], and a B fragment is
// ldmatrix<2> with lane l at &Bt[l % 8][8 ((l / 8) % 2)] for B stored n-major (Bt[n][k], B's "col"
// layout), or ldmatrix_trans<2> with lane l at &B[l % 16][0] for B stored k-major (B[k][n]).
#pragma once

#include <cstdint>
#include <type_traits>

#include "kern/core/dtype.hpp"
#include "kern/gpu/platform.hpp"

#if defined(KERN_GPU_CUDA) || (defined(KERN_GPU_EMULATED) && KERN_GPU_EMULATED_WARP_SIZE == 32)
#define KERN_GPU_TENSOR_CORE_API 1
#else
#define KERN_GPU_TENSOR_CORE_API 0
#endif

#if KERN_GPU_TENSOR_CORE_API

namespace kern::gpu {

// N .b32 registers of one lane, each holding two 16-bit elements.
template <int N> struct fragment { std::uint32_t reg[N]; };
using mma_a_fragment = fragment<4>;
using mma_b_fragment = fragment<2>;

// One lane's four fp32 elements of C or D.
struct mma_accumulator {
  float reg[4];
};

struct matrix_position {
  int row, col;
};

// Where element i of lane `lane`'s fragment sits in its matrix (the layouts above): A, i in 0..7.
KERN_HOST_DEVICE constexpr matrix_position mma_a_position(int lane, int i) {
  return {lane / 4 + 8 * ((i / 2) % 2), 2 * (lane % 4) + (i % 2) + 8 * (i / 4)};
}
// B, i in 0..3.
KERN_HOST_DEVICE constexpr matrix_position mma_b_position(int lane, int i) {
  return {2 * (lane % 4) + (i % 2) + 8 * (i / 2), lane / 4};
}
// C and D, i in 0..3.
KERN_HOST_DEVICE constexpr matrix_position mma_c_position(int lane, int i) {
  return {lane / 4 + 8 * (i / 2), 2 * (lane % 4) + (i % 2)};
}

template <class T> inline constexpr bool is_mma_input_v = std::is_same_v<T, bf16> || std::is_same_v<T, f16>;

// A register of two 16-bit elements: `low` is the one with the lower row or column index.
template <class T> KERN_HOST_DEVICE constexpr std::uint32_t pack_pair(T low, T high) {
  static_assert(is_mma_input_v<T>, "pack_pair: bf16 or f16");
  return std::uint32_t{low.bits} | (std::uint32_t{high.bits} << 16);
}

#if defined(KERN_GPU_CUDA)

// The PTX needs sm_80 (bf16 mma, cp.async). Device code for an older GPU still compiles, so that a
// translation unit with other kernels builds for it, but a kernel that reaches these instructions
// there traps. The host pass never runs the bodies.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#define KERN_GPU_SM80_PTX 1
#else
#define KERN_GPU_SM80_PTX 0
#endif

namespace detail {
template <class... Unused> KERN_DEVICE void trap_before_sm80(const Unused&... /*arguments*/) { __trap(); }

KERN_DEVICE std::uint32_t shared_address(const void* p) {
  return static_cast<std::uint32_t>(__cvta_generic_to_shared(p));
}

// asm volatile keeps the load in program order with the barrier (sync_warp or __syncthreads) that
// must separate it from the writes of the rows.
template <int N, bool Transposed> KERN_DEVICE fragment<N> ldmatrix_m8n8(const void* row) {
  static_assert(N == 1 || N == 2 || N == 4, "ldmatrix loads 1, 2 or 4 matrices");
  fragment<N> out{};
#if KERN_GPU_SM80_PTX
  const std::uint32_t address = shared_address(row);
  if constexpr (N == 1) {
    if constexpr (Transposed) {
      asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];\n" : "=r"(out.reg[0]) : "r"(address));
    } else {
      asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n" : "=r"(out.reg[0]) : "r"(address));
    }
  } else if constexpr (N == 2) {
    if constexpr (Transposed) {
      asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n"
                   : "=r"(out.reg[0]), "=r"(out.reg[1])
                   : "r"(address));
    } else {
      asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n"
                   : "=r"(out.reg[0]), "=r"(out.reg[1])
                   : "r"(address));
    }
  } else {
    if constexpr (Transposed) {
      asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                   : "=r"(out.reg[0]), "=r"(out.reg[1]), "=r"(out.reg[2]), "=r"(out.reg[3])
                   : "r"(address));
    } else {
      asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                   : "=r"(out.reg[0]), "=r"(out.reg[1]), "=r"(out.reg[2]), "=r"(out.reg[3])
                   : "r"(address));
    }
  }
#else
  trap_before_sm80(row);
#endif
  return out;
}
} // namespace detail

template <class T>
KERN_DEVICE mma_accumulator mma_m16n8k16(const mma_a_fragment& a, const mma_b_fragment& b, const mma_accumulator& c) {
  static_assert(is_mma_input_v<T>, "mma_m16n8k16: the inputs are bf16 or f16");
  mma_accumulator d{};
#if KERN_GPU_SM80_PTX
  if constexpr (std::is_same_v<T, bf16>) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
                 "{%8, %9}, {%10, %11, %12, %13};\n"
                 : "=f"(d.reg[0]), "=f"(d.reg[1]), "=f"(d.reg[2]), "=f"(d.reg[3])
                 : "r"(a.reg[0]), "r"(a.reg[1]), "r"(a.reg[2]), "r"(a.reg[3]), "r"(b.reg[0]), "r"(b.reg[1]),
                   "f"(c.reg[0]), "f"(c.reg[1]), "f"(c.reg[2]), "f"(c.reg[3]));
  } else {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
                 "{%8, %9}, {%10, %11, %12, %13};\n"
                 : "=f"(d.reg[0]), "=f"(d.reg[1]), "=f"(d.reg[2]), "=f"(d.reg[3])
                 : "r"(a.reg[0]), "r"(a.reg[1]), "r"(a.reg[2]), "r"(a.reg[3]), "r"(b.reg[0]), "r"(b.reg[1]),
                   "f"(c.reg[0]), "f"(c.reg[1]), "f"(c.reg[2]), "f"(c.reg[3]));
  }
#else
  detail::trap_before_sm80(a, b, c);
#endif
  return d;
}

template <int N> KERN_DEVICE fragment<N> ldmatrix(const void* row) { return detail::ldmatrix_m8n8<N, false>(row); }
template <int N> KERN_DEVICE fragment<N> ldmatrix_trans(const void* row) { return detail::ldmatrix_m8n8<N, true>(row); }

// The copies clobber memory: shared-memory reads must not move above the wait that lands them.
template <int Bytes> KERN_DEVICE void cp_async_ca(void* destination, const void* source, int source_bytes = Bytes) {
  static_assert(Bytes == 4 || Bytes == 8 || Bytes == 16, "cp.async.ca copies 4, 8 or 16 bytes");
#if KERN_GPU_SM80_PTX
  asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" ::"r"(detail::shared_address(destination)),
               "l"(__cvta_generic_to_global(source)), "n"(Bytes), "r"(source_bytes)
               : "memory");
#else
  detail::trap_before_sm80(destination, source, source_bytes);
#endif
}

KERN_DEVICE void cp_async_cg(void* destination, const void* source, int source_bytes = 16) {
#if KERN_GPU_SM80_PTX
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(detail::shared_address(destination)),
               "l"(__cvta_generic_to_global(source)), "r"(source_bytes)
               : "memory");
#else
  detail::trap_before_sm80(destination, source, source_bytes);
#endif
}

KERN_DEVICE void cp_async_commit_group() {
#if KERN_GPU_SM80_PTX
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#else
  detail::trap_before_sm80();
#endif
}

// Waits until at most `Pending` of the thread's most recently committed groups are still in flight.
template <int Pending> KERN_DEVICE void cp_async_wait_group() {
  static_assert(Pending >= 0, "cp_async_wait_group: a count of groups");
#if KERN_GPU_SM80_PTX
  asm volatile("cp.async.wait_group %0;\n" ::"n"(Pending) : "memory");
#else
  detail::trap_before_sm80();
#endif
}

// Waits for every copy the thread has started, committed or not.
KERN_DEVICE void cp_async_wait_all() {
#if KERN_GPU_SM80_PTX
  asm volatile("cp.async.wait_all;\n" ::: "memory");
#else
  detail::trap_before_sm80();
#endif
}

#undef KERN_GPU_SM80_PTX
#endif // KERN_GPU_CUDA

} // namespace kern::gpu

#if defined(KERN_GPU_EMULATED)
#include "kern/gpu/emulator/tensor_core.hpp"
#endif

#endif // KERN_GPU_TENSOR_CORE_API
