// CPU convert: element-wise dtype conversion, split across threads in contiguous chunks.
//
// The conversions in core/dtype.hpp are branch-light integer code; `omp simd` lets the compiler
// vectorize them at the including translation unit's ISA. Memory-bound: the goal is the copy rate.
#pragma once

#include "kern/core/threading.hpp"
#include "kern/ops/convert.hpp"

namespace kern::cpu {

template <element_type Src, element_type Dst> void convert(const context& ctx, const ops::convert_params<Src, Dst>& p) {
  ops::validate("kern::cpu::convert", p);
  // Below this many elements a thread costs more than it saves.
  constexpr index_t elements_per_thread = 1 << 16;
  const index_t useful = (p.count + elements_per_thread - 1) / elements_per_thread;
  const context run(useful < ctx.threads() ? static_cast<int>(useful < 1 ? 1 : useful) : ctx.threads());
  parallel_for(run, p.count, [&](index_t begin, index_t end) {
    const Src* src = p.src;
    Dst* dst = p.dst;
#pragma omp simd
    for (index_t i = begin; i < end; ++i) {
      dst[i] = from_float<Dst>(to_float(src[i]));
    }
  });
}

} // namespace kern::cpu
