// CPU GEMM entry: kern::cpu::gemm(ctx, params). Validates, then runs the best compiled ISA.
// Parameters and semantics: kern/ops/gemm.hpp. Algorithm and measurements: docs/kernels/gemm.md.
#pragma once

#include "kern/core/threading.hpp"
#include "kern/cpu/gemm/driver.hpp"
#include "kern/cpu/isa.hpp"
#include "kern/ops/gemm.hpp"

// The instances every ISA translation unit provides (see kern/cpu/isa_instances.hpp).
#define KERN_CPU_GEMM_INSTANCES(ARCH, X)                                                                               \
  X(ARCH, float, float, float)                                                                                         \
  X(ARCH, ::kern::bf16, ::kern::bf16, float)                                                                           \
  X(ARCH, ::kern::bf16, ::kern::bf16, ::kern::bf16)

#if defined(KERN_ISA_DISPATCH) && (defined(__x86_64__) || defined(_M_X64))
#define KERN_CPU_GEMM_EXTERN(ARCH, TA, TB, TC)                                                                         \
  extern template void kern::cpu::detail::gemm_run<ARCH, TA, TB, TC>(const ::kern::cpu::context&,                      \
                                                                     const ::kern::ops::gemm_params<TA, TB, TC>&);
KERN_CPU_GEMM_INSTANCES(xsimd::avx512bw, KERN_CPU_GEMM_EXTERN)
KERN_CPU_GEMM_INSTANCES(xsimd::fma3<xsimd::avx2>, KERN_CPU_GEMM_EXTERN)
KERN_CPU_GEMM_INSTANCES(xsimd::sse2, KERN_CPU_GEMM_EXTERN)
#undef KERN_CPU_GEMM_EXTERN
#endif

namespace kern::cpu {

template <element_type TA, element_type TB, element_type TC>
void gemm(const context& ctx, const ops::gemm_params<TA, TB, TC>& params) {
  ops::validate("kern::cpu::gemm", params);
  if constexpr (ops::gemm_types_supported<TA, TB, TC>()) {
    detail::dispatch([&](auto arch) { detail::gemm_run<decltype(arch)>(ctx, params); });
  }
}

} // namespace kern::cpu
