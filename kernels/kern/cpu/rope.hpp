// CPU rotary position embedding. Parameters and semantics: kern/ops/rope.hpp; algorithm and
// measurements: docs/kernels/rope.md.
//
//   kern::cpu::rope_forward(ctx, p)    rotates x in place by each position's angles
//   kern::cpu::rope_backward(ctx, p)   rotates back (the gradient of rope_forward), in place on dx
//
// Memory-bound: one read and one write of the rotated part of x, in fp32 batches. Positions are
// handed out to threads; within a position every batch item and head shares one row of the tables.
#pragma once

#include <type_traits>

#include "kern/core/threading.hpp"
#include "kern/cpu/gemm/workspace.hpp"
#include "kern/cpu/isa.hpp"
#include "kern/cpu/simd.hpp"
#include "kern/ops/rope.hpp"

namespace kern::cpu::detail {

// [v1, v0, v3, v2, ...]: the partner of each lane in an adjacent pair.
template <class Arch> fbatch<Arch> swap_adjacent(fbatch<Arch> v) {
#if defined(__x86_64__) || defined(_M_X64)
  if constexpr (fbatch<Arch>::size == 16) {
    return _mm512_permute_ps(v, 0xb1);
  } else if constexpr (fbatch<Arch>::size == 8) {
    return _mm256_permute_ps(v, 0xb1);
  } else {
    return _mm_shuffle_ps(v, v, 0xb1);
  }
#else
  alignas(64) float lane[fbatch<Arch>::size];
  v.store_aligned(lane);
  for (std::size_t l = 0; l < fbatch<Arch>::size; l += 2) {
    const float first = lane[l];
    lane[l] = lane[l + 1];
    lane[l + 1] = first;
  }
  return fbatch<Arch>::load_aligned(lane);
#endif
}

// Below this many rotated elements per thread, another thread costs more than it saves.
inline constexpr index_t rope_elements_per_thread = index_t{1} << 15;

// Adjacent pairs in place: y = x * [c0, c0, c1, c1, ...] + swap_adjacent(x) * [-s0, s0, -s1, s1, ...],
// with the table row spread out once per position into `cos_pairs` and `sin_pairs` (sign applied).
template <class Arch, class T>
void rope_adjacent_head(T* x, index_t rotary, const float* cos_pairs, const float* sin_pairs) {
  for_each_batch<Arch>(rotary, [&](index_t j, index_t valid) {
    const fbatch<Arch> v = load_float_n<Arch>(x + j, valid);
    const fbatch<Arch> c = load_float_n<Arch>(cos_pairs + j, valid);
    const fbatch<Arch> s = load_float_n<Arch>(sin_pairs + j, valid);
    store_from_float_n<Arch>(x + j, v * c + swap_adjacent<Arch>(v) * s, valid);
  });
}

// Half pairs in place: (a, b) = (x[i], x[i + half]) -> (a c - b s, a s + b c); `sign` is -1 for the
// inverse rotation.
template <class Arch, class T>
void rope_half_head(T* x, index_t half, const float* cos_row, const float* sin_row, float sign) {
  for_each_batch<Arch>(half, [&](index_t j, index_t valid) {
    const fbatch<Arch> a = load_float_n<Arch>(x + j, valid);
    const fbatch<Arch> b = load_float_n<Arch>(x + half + j, valid);
    const fbatch<Arch> c = load_float_n<Arch>(cos_row + j, valid);
    const fbatch<Arch> s = load_float_n<Arch>(sin_row + j, valid) * fbatch<Arch>(sign);
    store_from_float_n<Arch>(x + j, a * c - b * s, valid);
    store_from_float_n<Arch>(x + half + j, a * s + b * c, valid);
  });
}

// Rotates x by the positions' angles, or back by them when `inverse`.
template <class Arch, class T> void rope_run(const context& ctx, const ops::rope_params<T>& p, bool inverse) {
  const index_t batch = p.x.shape[0], seq = p.x.shape[1], heads = p.x.shape[2];
  const index_t rotary = p.rotated_dims(), half = rotary / 2;
  if (p.x.size() == 0 || rotary == 0) {
    return;
  }
  const float sign = inverse ? -1.0f : 1.0f;
  const index_t items = seq * batch; // (position, batch item) pairs, position-major
  const index_t useful = (items * heads * rotary + rope_elements_per_thread - 1) / rope_elements_per_thread;
  const int threads = useful < ctx.threads() ? static_cast<int>(useful) : ctx.threads();
  parallel_for(context(threads), items, [&](index_t begin, index_t end) {
    float* cos_pairs = nullptr;
    float* sin_pairs = nullptr;
    if (p.pairing == ops::rope_pairing::adjacent) {
      cos_pairs = thread_workspace<Arch, 0, float>(static_cast<std::size_t>(2 * rotary));
      sin_pairs = cos_pairs + rotary;
    }
    index_t spread_position = -1;
    for (index_t item = begin; item < end; ++item) {
      const index_t s = item / batch, b = item % batch;
      const index_t position = p.position_offset + s;
      const float* cos_row = p.cos_table + position * half;
      const float* sin_row = p.sin_table + position * half;
      if (p.pairing == ops::rope_pairing::adjacent && position != spread_position) {
        for (index_t i = 0; i < half; ++i) {
          cos_pairs[2 * i] = cos_row[i];
          cos_pairs[2 * i + 1] = cos_row[i];
          sin_pairs[2 * i] = -sign * sin_row[i];
          sin_pairs[2 * i + 1] = sign * sin_row[i];
        }
        spread_position = position;
      }
      for (index_t h = 0; h < heads; ++h) {
        T* head = p.x.data + b * p.x.strides[0] + s * p.x.strides[1] + h * p.x.strides[2];
        if (p.pairing == ops::rope_pairing::adjacent) {
          rope_adjacent_head<Arch>(head, rotary, cos_pairs, sin_pairs);
        } else {
          rope_half_head<Arch>(head, half, cos_row, sin_row, sign);
        }
      }
    }
  });
}

} // namespace kern::cpu::detail

// NOLINTBEGIN(bugprone-macro-parentheses): EXTERN and the types are declaration parts, not expressions
#define KERN_CPU_ROPE_RUN(ARCH, EXTERN, T)                                                                             \
  EXTERN template void kern::cpu::detail::rope_run<ARCH, T>(const ::kern::cpu::context&,                               \
                                                            const ::kern::ops::rope_params<T>&, bool);
#define KERN_CPU_ROPE_INSTANCES(ARCH, EXTERN)                                                                          \
  KERN_CPU_ROPE_RUN(ARCH, EXTERN, float)                                                                               \
  KERN_CPU_ROPE_RUN(ARCH, EXTERN, ::kern::bf16)
// NOLINTEND(bugprone-macro-parentheses)
KERN_CPU_EXTERN_INSTANCES(KERN_CPU_ROPE_INSTANCES)

namespace kern::cpu {

template <element_type T> void rope_forward(const context& ctx, const ops::rope_params<T>& p) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, bf16>, "kern::cpu::rope_forward stores f32 or bf16");
  ops::validate("kern::cpu::rope_forward", p);
  detail::dispatch([&](auto arch) { detail::rope_run<decltype(arch), T>(ctx, p, false); });
}

template <element_type T> void rope_backward(const context& ctx, const ops::rope_params<T>& p) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, bf16>, "kern::cpu::rope_backward stores f32 or bf16");
  ops::validate("kern::cpu::rope_backward", p);
  detail::dispatch([&](auto arch) { detail::rope_run<decltype(arch), T>(ctx, p, true); });
}

} // namespace kern::cpu
