// Which xsimd architectures the CPU kernels are compiled for, and the choice among them at run time.
//
// By default a kernel is compiled once, at the ISA of the translation unit that includes it
// (xsimd::default_arch). A target that calls kern_enable_isa_dispatch() in CMake (cmake/kern_isa.cmake)
// gets KERN_ISA_DISPATCH defined and extra translation units, one per (ISA, kernel family), each
// compiled with that ISA's flags and instantiating the family's entries: every kernel header lists
// them in a macro KERN_CPU_<FAMILY>_INSTANCES(ARCH, EXTERN) and declares them extern for the other
// translation units with KERN_CPU_EXTERN_INSTANCES. The entries then pick, once per call, the best
// compiled ISA that kern::cpu::active_isa() allows.
#pragma once

#include <xsimd/xsimd.hpp>

#include "kern/core/cpu_info.hpp"

#if defined(KERN_ISA_DISPATCH) && (defined(__x86_64__) || defined(_M_X64))
#define KERN_CPU_EXTERN_INSTANCES(LIST)                                                                                \
  LIST(xsimd::avx512bw, extern) LIST(xsimd::fma3<xsimd::avx2>, extern) LIST(xsimd::sse2, extern)
#else
#define KERN_CPU_EXTERN_INSTANCES(LIST)
#endif

namespace kern::cpu::detail {

#if defined(KERN_ISA_DISPATCH)
#if defined(__x86_64__) || defined(_M_X64)
using compiled_archs = xsimd::arch_list<xsimd::avx512bw, xsimd::fma3<xsimd::avx2>, xsimd::sse2>;
#else
using compiled_archs = xsimd::arch_list<xsimd::default_arch>;
#endif
#else
using compiled_archs = xsimd::arch_list<xsimd::default_arch>;
#endif

// The kern ISA level an xsimd architecture needs.
template <class Arch> constexpr isa isa_of() {
#if defined(__x86_64__) || defined(_M_X64)
  if constexpr (std::is_base_of_v<xsimd::avx512bw, Arch> || std::is_same_v<Arch, xsimd::avx512bw>) {
    return isa::avx512;
  } else if constexpr (std::is_base_of_v<xsimd::avx2, Arch> || std::is_same_v<Arch, xsimd::fma3<xsimd::avx2>>) {
    return isa::avx2;
  } else {
    return isa::sse2;
  }
#else
  return isa::neon;
#endif
}

template <class Fn, class Arch, class... Rest>
decltype(auto) dispatch_among(isa allowed, Fn&& fn, xsimd::arch_list<Arch, Rest...>) {
  if constexpr (sizeof...(Rest) == 0) {
    return fn(Arch{}); // the lowest compiled ISA: also what a cap below it (scalar) gets
  } else {
    if (isa_of<Arch>() <= allowed) {
      return fn(Arch{});
    }
    return dispatch_among(allowed, std::forward<Fn>(fn), xsimd::arch_list<Rest...>{});
  }
}

// Calls fn(Arch{}) with the best compiled architecture that the active ISA level allows.
template <class Fn> decltype(auto) dispatch(Fn&& fn) {
  return dispatch_among(active_isa(), std::forward<Fn>(fn), compiled_archs{});
}

} // namespace kern::cpu::detail
