// Included once per ISA by the translation units that kern_enable_isa_dispatch() generates, with
// KERN_ISA_INSTANTIATE naming the xsimd architecture: instantiates every CPU kernel entry for it.
#pragma once

#if !defined(KERN_ISA_INSTANTIATE)
#error "kern/cpu/isa_instances.hpp is included by the per-ISA translation units only"
#endif

#include "kern/cpu.hpp"

#define KERN_CPU_GEMM_INSTANTIATE(ARCH, TA, TB, TC)                                                                    \
  template void kern::cpu::detail::gemm_run<ARCH, TA, TB, TC>(const ::kern::cpu::context&,                             \
                                                              const ::kern::ops::gemm_params<TA, TB, TC>&);
KERN_CPU_GEMM_INSTANCES(KERN_ISA_INSTANTIATE, KERN_CPU_GEMM_INSTANTIATE)
#undef KERN_CPU_GEMM_INSTANTIATE
