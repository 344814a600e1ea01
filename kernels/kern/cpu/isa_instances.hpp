// Included once per ISA by the translation units that kern_enable_isa_dispatch() generates, with
// KERN_ISA_INSTANTIATE naming the xsimd architecture: instantiates every CPU kernel entry for it.
#pragma once

#if !defined(KERN_ISA_INSTANTIATE)
#error "kern/cpu/isa_instances.hpp is included by the per-ISA translation units only"
#endif

#include "kern/cpu.hpp"

KERN_CPU_GEMM_INSTANCES(KERN_ISA_INSTANTIATE, KERN_CPU_GEMM_RUN_INSTANCE, KERN_CPU_GEMM_PACK_INSTANCE,
                        KERN_CPU_GEMM_SIZE_INSTANCE)
