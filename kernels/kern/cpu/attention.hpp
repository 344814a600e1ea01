// CPU attention entry points. Parameters and semantics: kern/ops/attention.hpp; algorithm, tiling
// and measurements: docs/kernels/attention.md.
//
//   kern::cpu::attention_forward(ctx, params)    FlashAttention-2: O and the log-sum-exp
//   kern::cpu::attention_backward(ctx, params)   FlashAttention-2 backward: dQ, dK, dV
//   kern::cpu::attention_decode(ctx, params)     the forward for a few queries against a long
//                                                KV cache (flash-decoding: keys split in chunks)
#pragma once

#include "kern/core/threading.hpp"
#include "kern/cpu/attention/backward.hpp"
#include "kern/cpu/attention/decode.hpp"
#include "kern/cpu/attention/forward.hpp"
#include "kern/cpu/isa.hpp"
#include "kern/ops/attention.hpp"

// The entries each ISA translation unit instantiates (see kern/cpu/isa.hpp); EXTERN is `extern` or empty.
// NOLINTBEGIN(bugprone-macro-parentheses): EXTERN and the types are declaration parts, not expressions
#define KERN_CPU_ATTENTION_PASSES(ARCH, EXTERN, T)                                                                     \
  EXTERN template void kern::cpu::detail::attention_forward_run<ARCH, T>(                                              \
      const ::kern::cpu::context&, const ::kern::ops::attention_forward_params<T>&);                                   \
  EXTERN template void kern::cpu::detail::attention_backward_run<ARCH, T>(                                             \
      const ::kern::cpu::context&, const ::kern::ops::attention_backward_params<T>&);                                  \
  EXTERN template void kern::cpu::detail::attention_decode_run<ARCH, T>(                                               \
      const ::kern::cpu::context&, const ::kern::ops::attention_forward_params<T>&);
#define KERN_CPU_ATTENTION_INSTANCES(ARCH, EXTERN)                                                                     \
  KERN_CPU_ATTENTION_PASSES(ARCH, EXTERN, float)                                                                       \
  KERN_CPU_ATTENTION_PASSES(ARCH, EXTERN, ::kern::bf16)
// NOLINTEND(bugprone-macro-parentheses)
KERN_CPU_EXTERN_INSTANCES(KERN_CPU_ATTENTION_INSTANCES)

namespace kern::cpu {

template <element_type T> void attention_forward(const context& ctx, const ops::attention_forward_params<T>& params) {
  ops::validate("kern::cpu::attention_forward", params);
  if (params.q.size() == 0) {
    return;
  }
  detail::dispatch([&](auto arch) { detail::attention_forward_run<decltype(arch), T>(ctx, params); });
}

template <element_type T> void attention_backward(const context& ctx, const ops::attention_backward_params<T>& params) {
  ops::validate("kern::cpu::attention_backward", params);
  if (params.q.size() == 0 && params.k.size() == 0) {
    return;
  }
  detail::dispatch([&](auto arch) { detail::attention_backward_run<decltype(arch), T>(ctx, params); });
}

template <element_type T> void attention_decode(const context& ctx, const ops::attention_forward_params<T>& params) {
  ops::validate("kern::cpu::attention_decode", params);
  if (params.q.size() == 0) {
    return;
  }
  detail::dispatch([&](auto arch) { detail::attention_decode_run<decltype(arch), T>(ctx, params); });
}

} // namespace kern::cpu
