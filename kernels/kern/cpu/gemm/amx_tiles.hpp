// AMX tile operations for the CPU GEMM, in two implementations with one interface:
//
//   amx_hardware_tiles<Arch>   the instructions: ldtilecfg, tilezero, tileloadd, tilestored,
//                              tdpbf16ps, tilerelease (a CPU with AMX-TILE and AMX-BF16)
//   amx_emulated_tiles<Arch>   the same operations in plain C++ on software tiles, one set per
//                              thread, following the Intel SDM's pseudo-code; they check every use
//                              that the processor would fault on (#GP, #UD) or silently get wrong,
//                              and throw kern::error naming it
//
// so that the AMX micro-kernel, written once against this interface, runs and is tested on a CPU
// without AMX (KERN_CPU_AMX_EMULATED), as the GPU kernels run in their CPU execution mode.
//
// A tile operand is a type, amx_tile<Index, Rows, ColsBytes>: its register number (an immediate of
// the instructions) and the shape the code means it to have. The instructions take the shape from
// the loaded configuration; the emulation checks that the two agree.
//
// Both are templates on the ISA tag only so that each ISA translation unit has its own copy: an
// inline function compiled with AVX-512 flags must not be what the linker picks for a caller
// compiled for the baseline.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "kern/core/error.hpp"
#include "kern/core/view.hpp"

// Compiled with AMX-TILE and AMX-BF16 (GCC spells the macros __AMX_TILE__, clang __AMXTILE__).
#if (defined(__AMX_TILE__) && defined(__AMX_BF16__)) || (defined(__AMXTILE__) && defined(__AMXBF16__))
#define KERN_HAVE_AMX_HARDWARE_TILES 1
#include <immintrin.h>
#endif

namespace kern::cpu::detail {

template <int Index, int Rows, int ColsBytes> struct amx_tile {
  static constexpr int index = Index;
  static constexpr int rows = Rows;
  static constexpr int colsb = ColsBytes;
};

// Palette 1 (the only one AMX defines): 8 tiles of at most 16 rows of 64 bytes.
inline constexpr int amx_tile_count = 8;
inline constexpr int amx_max_rows = 16;
inline constexpr int amx_max_colsb = 64;

// The 64-byte memory operand of ldtilecfg.
struct alignas(64) amx_tile_config {
  std::uint8_t palette = 1;
  std::uint8_t start_row = 0; // where an interrupted tileloadd/tilestored resumes; 0 to start
  std::uint8_t reserved[14] = {};
  std::uint16_t colsb[16] = {}; // bytes per row of tile i
  std::uint8_t rows[16] = {};
};
static_assert(sizeof(amx_tile_config) == 64);

// The configuration that gives each of Tiles its shape (the others stay unconfigured).
template <class... Tiles> constexpr amx_tile_config amx_config_of() {
  amx_tile_config config;
  ((config.rows[Tiles::index] = static_cast<std::uint8_t>(Tiles::rows),
    config.colsb[Tiles::index] = static_cast<std::uint16_t>(Tiles::colsb)),
   ...);
  return config;
}

#if defined(KERN_HAVE_AMX_HARDWARE_TILES)
// GCC's _tile_zero / _tile_loadd / _tile_stored / _tile_dpbf16ps are macros that paste their tile
// number into the assembly text, so they accept a literal but not a template parameter. These are
// the same instructions with the number as an immediate operand ("%c"), and with the memory
// clobbers that tell the compiler a tile load reads memory (GCC's tileloadd has none).
template <class Arch> struct amx_hardware_tiles {
  static constexpr const char* name = "amx";

  static void load_config(const amx_tile_config* config) { _tile_loadconfig(config); }
  static void release() { _tile_release(); }

  template <class T> static void zero(T) {
    static_assert(T::index >= 0 && T::index < amx_tile_count);
    __asm__ volatile("tilezero %%tmm%c0" ::"n"(T::index));
  }
  template <class T> static void load(T, const void* base, index_t stride_bytes) {
    static_assert(T::index >= 0 && T::index < amx_tile_count);
    __asm__ volatile("tileloadd (%0,%1,1), %%tmm%c2" ::"r"(base), "r"(stride_bytes), "n"(T::index) : "memory");
  }
  template <class T> static void store(T, void* base, index_t stride_bytes) {
    static_assert(T::index >= 0 && T::index < amx_tile_count);
    __asm__ volatile("tilestored %%tmm%c2, (%0,%1,1)" ::"r"(base), "r"(stride_bytes), "n"(T::index) : "memory");
  }
  // C += A B: C is M x N fp32, A is M x K bf16 pairs, B is K pairs x N (the emulation's checks, at compile time).
  template <class C, class A, class B> static void dpbf16ps(C, A, B) {
    static_assert(C::index != A::index && C::index != B::index && A::index != B::index);
    static_assert(A::colsb / 4 == B::rows && C::rows == A::rows && C::colsb == B::colsb);
    __asm__ volatile("tdpbf16ps %%tmm%c2, %%tmm%c1, %%tmm%c0" ::"n"(C::index), "n"(A::index), "n"(B::index));
  }
};
#endif

// The emulation. Each thread has its own tiles and configuration, as each core has its own.
template <class Arch> struct amx_emulated_tiles {
  static constexpr const char* name = "amx (emulated)";

  struct state {
    bool configured = false;
    amx_tile_config config;
    alignas(64) std::uint8_t data[amx_tile_count][amx_max_rows][amx_max_colsb] = {};
  };
  static state& tiles() {
    thread_local state s;
    return s;
  }

  static void load_config(const amx_tile_config* config) {
    constexpr const char* op = "AMX ldtilecfg (emulated)";
    require(config != nullptr, op, "the configuration pointer is null");
    require(config->palette == 1, op, "palette ", int{config->palette}, " is not supported (only palette 1)");
    require(config->start_row == 0, op, "start_row = ", int{config->start_row},
            " (only a restarted load or store sets it; the emulation starts at row 0)");
    for (std::uint8_t byte : config->reserved) {
      require(byte == 0, op, "reserved bytes 2..15 must be zero");
    }
    for (int t = 0; t < 16; ++t) {
      const int rows = config->rows[t], colsb = config->colsb[t];
      if (t >= amx_tile_count) {
        require(rows == 0 && colsb == 0, op, "tile ", t, " does not exist in palette 1 but is given ", rows, " rows x ",
                colsb, " bytes");
        continue;
      }
      require(rows <= amx_max_rows, op, "tile ", t, " has ", rows, " rows (at most ", amx_max_rows, ")");
      require(colsb <= amx_max_colsb, op, "tile ", t, " has ", colsb, " bytes per row (at most ", amx_max_colsb, ")");
      require((rows == 0) == (colsb == 0), op, "tile ", t, " is half configured: ", rows, " rows x ", colsb, " bytes");
    }
    state& s = tiles();
    s = state{};
    s.config = *config;
    s.configured = true;
  }

  static void release() { tiles() = state{}; }

  template <class T> static void zero(T) {
    auto& tile = checked<T>("AMX tilezero (emulated)");
    std::memset(tile, 0, sizeof(tile));
  }

  // Rows of colsb bytes from base, stride_bytes apart; the rest of the tile becomes zero.
  template <class T> static void load(T, const void* base, index_t stride_bytes) {
    constexpr const char* op = "AMX tileloadd (emulated)";
    auto& tile = checked<T>(op);
    require(base != nullptr, op, "tmm", T::index, ": the base address is null");
    std::memset(tile, 0, sizeof(tile));
    for (int r = 0; r < T::rows; ++r) {
      std::memcpy(tile[r], static_cast<const std::uint8_t*>(base) + r * stride_bytes, T::colsb);
    }
  }

  template <class T> static void store(T, void* base, index_t stride_bytes) {
    constexpr const char* op = "AMX tilestored (emulated)";
    const auto& tile = checked<T>(op);
    require(base != nullptr, op, "tmm", T::index, ": the base address is null");
    for (int r = 0; r < T::rows; ++r) {
      std::memcpy(static_cast<std::uint8_t*>(base) + r * stride_bytes, tile[r], T::colsb);
    }
  }

  // TDPBF16PS as the SDM writes it: per row of C, the products of the even and of the odd bf16 of
  // each pair are summed separately over all K pairs (fp32 FMAs), then added together, then to C.
  // Inputs are DAZ (subnormal bf16 read as zero), every result FTZ (subnormal results become
  // zero), rounding to nearest even; MXCSR plays no part.
  template <class C, class A, class B> static void dpbf16ps(C, A, B) {
    constexpr const char* op = "AMX tdpbf16ps (emulated)";
    auto& c = checked<C>(op);
    const auto& a = checked<A>(op);
    const auto& b = checked<B>(op);
    require(C::index != A::index && C::index != B::index && A::index != B::index, op, "operands tmm", C::index, ", tmm",
            A::index, ", tmm", B::index, " must be three different tiles");
    require(C::colsb % 4 == 0 && A::colsb % 4 == 0 && B::colsb % 4 == 0, op,
            "every operand's bytes per row must be a multiple of 4 (C ", C::colsb, ", A ", A::colsb, ", B ", B::colsb,
            ")");
    require(A::colsb / 4 == B::rows, op, "A (tmm", A::index, ") holds ", A::colsb / 4, " bf16 pairs per row but B (tmm",
            B::index, ") has ", B::rows, " rows");
    require(C::rows == A::rows, op, "C (tmm", C::index, ") has ", C::rows, " rows but A (tmm", A::index, ") has ",
            A::rows);
    require(C::colsb == B::colsb, op, "C (tmm", C::index, ") has ", C::colsb, " bytes per row but B (tmm", B::index,
            ") has ", B::colsb);
    constexpr int pairs = A::colsb / 4, columns = C::colsb / 4;
    // B widened once, the even and the odd halves of its pairs apart (contiguous loops over n).
    constexpr int most = amx_max_colsb / 4;
    float b_even[most][most], b_odd[most][most];
    for (int k = 0; k < pairs; ++k) {
      for (int n = 0; n < columns; ++n) {
        b_even[k][n] = bf16_daz(b[k], 4 * n);
        b_odd[k][n] = bf16_daz(b[k], 4 * n + 2);
      }
    }
    for (int m = 0; m < C::rows; ++m) {
      float even[most] = {}, odd[most] = {};
      for (int k = 0; k < pairs; ++k) {
        const float a0 = bf16_daz(a[m], 4 * k), a1 = bf16_daz(a[m], 4 * k + 2);
        for (int n = 0; n < columns; ++n) {
          even[n] = ftz(std::fma(a0, b_even[k][n], even[n]));
          odd[n] = ftz(std::fma(a1, b_odd[k][n], odd[n]));
        }
      }
      for (int n = 0; n < columns; ++n) {
        float sum;
        std::memcpy(&sum, c[m] + 4 * n, 4);
        sum = ftz(daz(sum) + ftz(even[n] + odd[n]));
        std::memcpy(c[m] + 4 * n, &sum, 4);
      }
      std::memset(c[m] + C::colsb, 0, amx_max_colsb - C::colsb);
    }
    for (int m = C::rows; m < amx_max_rows; ++m) {
      std::memset(c[m], 0, amx_max_colsb);
    }
  }

private:
  // The tile T names, after checking that a configuration is loaded and gives T its shape.
  template <class T> static auto& checked(const char* op) {
    state& s = tiles();
    require(s.configured, op, "no tile configuration is loaded on this thread (ldtilecfg first)");
    require(T::index >= 0 && T::index < amx_tile_count, op, "tile index ", T::index, " is out of range (tmm0..tmm",
            amx_tile_count - 1, ")");
    // T::index where it is in range (the check above has thrown where it is not), so that no
    // compiler sees an out-of-bounds constant index in the code that follows.
    constexpr int index = T::index >= 0 && T::index < amx_tile_count ? T::index : 0;
    const int rows = s.config.rows[index], colsb = s.config.colsb[index];
    require(rows != 0, op, "tmm", index, " is not configured (0 rows)");
    require(rows == T::rows && colsb == T::colsb, op, "tmm", index, " is configured as ", rows, " rows x ", colsb,
            " bytes but used as ", T::rows, " rows x ", T::colsb, " bytes");
    return s.data[index];
  }

  static float daz(float x) { return std::fpclassify(x) == FP_SUBNORMAL ? std::copysign(0.0f, x) : x; }
  static float ftz(float x) { return std::abs(x) < std::numeric_limits<float>::min() ? std::copysign(0.0f, x) : x; }
  // The bf16 at byte `offset` of a tile row, widened to fp32 (it is the upper half of one), DAZ.
  static float bf16_daz(const std::uint8_t* row, int offset) {
    std::uint16_t bits;
    std::memcpy(&bits, row + offset, 2);
    if ((bits & 0x7f80u) == 0) {
      bits &= 0x8000u;
    }
    const std::uint32_t wide = static_cast<std::uint32_t>(bits) << 16;
    float value;
    std::memcpy(&value, &wide, 4);
    return value;
  }
};

} // namespace kern::cpu::detail
