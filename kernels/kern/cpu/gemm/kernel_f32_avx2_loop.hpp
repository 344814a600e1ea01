// The k loop of the AVX2 fp32 micro-kernel over packed operands, written in assembly.
//
// A 6 x 16 tile over a packed A micro-panel (6 values a k step) and a packed B micro-panel (16
// values a k step), four k steps an iteration: per step one prefetch of B, two loads of B, six
// broadcasts of A and twelve FMAs, and per iteration one set of pointer and counter updates: 87
// instructions for four steps, with one pointer for each operand and the offsets in the
// instructions. g++ 12 compiles the same steps written with xsimd (kernel_f32.hpp) into 93
// instructions that reach B and A through several derived pointers. In A/B runs of the two in one
// process on a Zen 3 core (1024^3, 2048^3, 256x3072x768, 1024x768x3072 and the weight gradients
// 768x768x1024, 768x3072x256 and 768x2304x256, on one and two threads) the GEMM ran 1.06-1.25x
// faster with this loop, and 1.11-1.25x faster than with the xsimd loop aligned to 32 bytes
// (-falign-loops=32); see "On an AVX2 machine" in docs/kernels/gemm.md. Each accumulator takes the
// same FMAs in the same order as in the xsimd loop, so the results are bit-identical to it (the
// tests compare the paths bit for bit).
//
// GNU extended assembly: compiled where the including translation unit targets AVX2 without
// AVX-512 with g++ or clang; elsewhere kernel_f32.hpp keeps its xsimd loop.
#pragma once

#if defined(__AVX2__) && defined(__FMA__) && !defined(__AVX512F__) && defined(__GNUC__) && defined(__x86_64__)
#define KERN_HAVE_AVX2_K_LOOP 1

#include <immintrin.h>

#include "kern/core/dtype.hpp"

namespace kern::cpu::detail {

// Bytes ahead of the current step at which the loop asks for a row of B: 64 steps of 16 floats,
// the micro-kernel's prefetch_steps. Written into the assembly below as the literals 4096 + 64 * s.
inline constexpr index_t avx2_k_loop_prefetch_bytes = 4096;

// groups x 4 k steps of the 6 x 16 tile: acc[i][v] += A(i, k) * B(k, 8v .. 8v + 8) for the steps
// in order, with A at a (a[k * 6 + i]) and B at b (b[k * 16 + j]). groups > 0.
template <class Batch> __attribute__((always_inline)) inline void
avx2_packed_k_steps(const float* a, const float* b, index_t groups, Batch (&acc)[6][2]) {
  __m256 c00 = acc[0][0], c01 = acc[0][1], c10 = acc[1][0], c11 = acc[1][1], c20 = acc[2][0], c21 = acc[2][1];
  __m256 c30 = acc[3][0], c31 = acc[3][1], c40 = acc[4][0], c41 = acc[4][1], c50 = acc[5][0], c51 = acc[5][1];
  // ymm0/ymm1 hold the step's row of B and ymm2/ymm3 the broadcasts, in turn; the twelve
  // accumulators are operands (GCC allows 30: 12 read-write accumulators and 3 pointers fill it).
  // clang-format off
#define KERN_ROW(a_off, bcast, c0, c1)                                                                  \
  "vbroadcastss " a_off "(%[a]), %%" bcast "\n\t"                                                      \
  "vfmadd231ps %%ymm0, %%" bcast ", %[" c0 "]\n\t"                                                     \
  "vfmadd231ps %%ymm1, %%" bcast ", %[" c1 "]\n\t"
#define KERN_STEP(a_off, b_off)                                                                         \
  "prefetcht0 4096+" b_off "(%[b])\n\t"                                                                \
  "vmovups " b_off "(%[b]), %%ymm0\n\t"                                                                \
  "vmovups 32+" b_off "(%[b]), %%ymm1\n\t"                                                             \
  KERN_ROW(a_off, "ymm2", "c00", "c01") KERN_ROW("4+" a_off, "ymm3", "c10", "c11")                     \
  KERN_ROW("8+" a_off, "ymm2", "c20", "c21") KERN_ROW("12+" a_off, "ymm3", "c30", "c31")               \
  KERN_ROW("16+" a_off, "ymm2", "c40", "c41") KERN_ROW("20+" a_off, "ymm3", "c50", "c51")
  asm volatile(".p2align 5\n\t"
               "1:\n\t"
               KERN_STEP("0", "0") KERN_STEP("24", "64") KERN_STEP("48", "128") KERN_STEP("72", "192")
               "add $96, %[a]\n\t"
               "add $256, %[b]\n\t"
               "dec %[n]\n\t"
               "jnz 1b\n\t"
               : [a] "+r"(a), [b] "+r"(b), [n] "+r"(groups),
                 [c00] "+x"(c00), [c01] "+x"(c01), [c10] "+x"(c10), [c11] "+x"(c11), [c20] "+x"(c20), [c21] "+x"(c21),
                 [c30] "+x"(c30), [c31] "+x"(c31), [c40] "+x"(c40), [c41] "+x"(c41), [c50] "+x"(c50), [c51] "+x"(c51)
               :
               : "memory", "cc", "xmm0", "xmm1", "xmm2", "xmm3");
#undef KERN_STEP
#undef KERN_ROW
  // clang-format on
  acc[0][0] = c00, acc[0][1] = c01, acc[1][0] = c10, acc[1][1] = c11, acc[2][0] = c20, acc[2][1] = c21;
  acc[3][0] = c30, acc[3][1] = c31, acc[4][0] = c40, acc[4][1] = c41, acc[5][0] = c50, acc[5][1] = c51;
}

} // namespace kern::cpu::detail

#endif
