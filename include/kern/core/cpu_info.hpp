// What this CPU can run, detected once per process, and the ISA level kern's CPU kernels use.
//
// ISA levels are ordered: each includes the ones below it. The environment variable KERN_ISA
// (scalar, sse2, avx2, avx512, avx512_bf16, amx) caps the level, so that one machine can run and
// test every code path it supports; a cap above what the machine has changes nothing.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>

#include <xsimd/xsimd.hpp>

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#define KERN_X86 1
#endif
#if defined(__linux__)
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include "kern/core/error.hpp"
#include "kern/core/threading.hpp"
#include "kern/core/version.hpp"

namespace kern::cpu {

enum class isa : std::uint8_t {
  scalar,      // plain C++
  neon,        // AArch64 Advanced SIMD
  sse2,        // x86-64 baseline
  avx2,        // AVX2 + FMA3
  avx512,      // AVX-512 F, CD, DQ, BW, VL
  avx512_bf16, // + vdpbf16ps / vcvtne2ps2bf16
  amx,         // + AMX tiles with bf16 (granted by the OS)
};

constexpr std::string_view name(isa level) noexcept {
  switch (level) {
  case isa::scalar:
    return "scalar";
  case isa::neon:
    return "neon";
  case isa::sse2:
    return "sse2";
  case isa::avx2:
    return "avx2";
  case isa::avx512:
    return "avx512";
  case isa::avx512_bf16:
    return "avx512_bf16";
  case isa::amx:
    return "amx";
  }
  return "?";
}

struct cpu_info {
  isa detected = isa::scalar; // the best level the CPU and the OS support
  isa active = isa::scalar;   // the level kernels use: detected, capped by KERN_ISA
  bool f16c = false;          // hardware f16 <-> f32 conversion
  bool avx512_fp16 = false;   // AVX-512 FP16 arithmetic
  int cores = 1;              // CPUs this process may run on
  int threads = 1;            // kern's default thread count
  long l1d_bytes = 0;         // per core
  long l2_bytes = 0;          // per core
  long l3_bytes = 0;          // shared (as reported; 0 when unknown)
  std::string isa_override;   // the KERN_ISA value, empty when unset
};

namespace detail {

#if defined(KERN_X86)
struct cpuid_regs {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
};
inline cpuid_regs cpuid(unsigned leaf, unsigned subleaf) {
  cpuid_regs r;
  if (__get_cpuid_count(leaf, subleaf, &r.eax, &r.ebx, &r.ecx, &r.edx) == 0) {
    return {};
  }
  return r;
}
inline std::uint64_t xgetbv0() {
  std::uint32_t lo = 0, hi = 0;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (static_cast<std::uint64_t>(hi) << 32) | lo;
}
inline constexpr bool bit(unsigned value, int index) { return ((value >> index) & 1u) != 0; }

// Linux hands out the AMX tile state only on request (ARCH_REQ_XCOMP_PERM for XTILEDATA).
inline bool request_amx_permission() {
#if defined(__linux__)
  constexpr long arch_req_xcomp_perm = 0x1023;
  constexpr long xfeature_xtiledata = 18;
  return syscall(SYS_arch_prctl, arch_req_xcomp_perm, xfeature_xtiledata) == 0;
#else
  return false;
#endif
}

inline void detect_x86(cpu_info& info) {
  const auto leaf1 = cpuid(1, 0);
  const bool osxsave = bit(leaf1.ecx, 27);
  const std::uint64_t xcr0 = osxsave ? xgetbv0() : 0;
  const bool os_avx = (xcr0 & 0x6) == 0x6;                // XMM and YMM state
  const bool os_avx512 = os_avx && (xcr0 & 0xe0) == 0xe0; // opmask, ZMM_Hi256, Hi16_ZMM
  const bool os_amx = (xcr0 & 0x60000) == 0x60000;        // XTILECFG, XTILEDATA

  const auto leaf7 = cpuid(7, 0);
  const auto leaf7_1 = cpuid(7, 1);
  // xsimd knows the instruction sets it has kernels for (it does not check the OS: that is done here).
  const auto xs = xsimd::available_architectures();
  const bool avx512 = os_avx512 && xs.avx512bw && xs.avx512dq && xs.avx512cd && bit(leaf7.ebx, 31) /* VL */;

  info.f16c = os_avx && bit(leaf1.ecx, 29);
  info.avx512_fp16 = avx512 && bit(leaf7.edx, 23);
  info.detected = isa::sse2;
  if (os_avx && xs.avx2 && xs.fma3_avx2) {
    info.detected = isa::avx2;
  }
  if (avx512 && info.detected == isa::avx2) {
    info.detected = isa::avx512;
    if (bit(leaf7_1.eax, 5)) {
      info.detected = isa::avx512_bf16;
      const bool amx_bf16 = bit(leaf7.edx, 22) && bit(leaf7.edx, 24);
      if (amx_bf16 && os_amx && request_amx_permission()) {
        info.detected = isa::amx;
      }
    }
  }
}
#endif

inline isa parse_isa(std::string_view text) {
  for (isa level : {isa::scalar, isa::neon, isa::sse2, isa::avx2, isa::avx512, isa::avx512_bf16, isa::amx}) {
    if (text == name(level)) {
      return level;
    }
  }
  kern::detail::fail("kern", "KERN_ISA = '", text,
                     "' is not one of scalar, sse2, avx2, avx512, avx512_bf16, amx, neon");
}

inline long sysconf_or(int name, long fallback) {
#if defined(__linux__)
  const long value = sysconf(name);
  return value > 0 ? value : fallback;
#else
  (void)name;
  return fallback;
#endif
}

inline cpu_info detect() {
  cpu_info info;
#if defined(KERN_X86)
  detect_x86(info);
#elif defined(__aarch64__)
  info.detected = isa::neon;
#endif
  info.active = info.detected;
  if (const char* env = std::getenv("KERN_ISA"); env != nullptr && *env != '\0') {
    info.isa_override = env;
    const isa cap = parse_isa(env);
    const bool same_family = (cap == isa::neon) == (info.detected == isa::neon) || cap == isa::scalar;
    require(same_family, "kern", "KERN_ISA = '", env, "' does not apply to this CPU (", name(info.detected), ")");
    if (cap < info.active) {
      info.active = cap;
    }
  }
#if defined(__linux__)
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    info.cores = CPU_COUNT(&set);
  }
#else
  info.cores = static_cast<int>(std::thread::hardware_concurrency());
#endif
  info.threads = default_thread_count();
#if defined(__linux__)
  info.l1d_bytes = sysconf_or(_SC_LEVEL1_DCACHE_SIZE, 32L * 1024);
  info.l2_bytes = sysconf_or(_SC_LEVEL2_CACHE_SIZE, 1024L * 1024);
  info.l3_bytes = sysconf_or(_SC_LEVEL3_CACHE_SIZE, 0);
#else
  info.l1d_bytes = 32L * 1024;
  info.l2_bytes = 1024L * 1024;
#endif
  return info;
}

} // namespace detail

// This process's CPU, detected on first use (thread-safe) and fixed from then on.
inline const cpu_info& info() {
  static const cpu_info detected = detail::detect();
  return detected;
}

inline isa active_isa() { return info().active; }

// One line for logs and benchmark headers: version, ISA, features, cores, threads, caches.
inline std::string describe() {
  const cpu_info& cpu = info();
  std::ostringstream out;
  out << "kern " << version_string << " | isa " << name(cpu.active);
  if (cpu.active != cpu.detected) {
    out << " (detected " << name(cpu.detected) << ", capped by KERN_ISA=" << cpu.isa_override << ")";
  }
  out << " | f16c " << (cpu.f16c ? "yes" : "no") << " | avx512_fp16 " << (cpu.avx512_fp16 ? "yes" : "no") << " | cores "
      << cpu.cores << " | threads " << cpu.threads << " | L1d " << cpu.l1d_bytes / 1024 << " KiB, L2 "
      << cpu.l2_bytes / 1024 << " KiB, L3 " << cpu.l3_bytes / 1024 << " KiB";
  return out.str();
}

} // namespace kern::cpu
