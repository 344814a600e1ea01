// The epilogue of the CPU GEMM: how a finished MR x NR tile of fp32 sums reaches C.
//
// The tile is scaled by alpha and merged with beta * C (first K block; C is not read when beta is
// 0) or with the partial sums of earlier K blocks; on the last K block bias, GELU and the residual
// are applied before the one store to C, in C's type.
#pragma once

#include <cmath>
#include <type_traits>

#include <xsimd/xsimd.hpp>

#include "kern/core/dtype.hpp"
#include "kern/core/view.hpp"
#include "kern/cpu/isa.hpp"
#include "kern/cpu/simd.hpp"
#include "kern/ops/gemm.hpp"

namespace kern::cpu::detail {

// Where and how a finished tile goes. Partial sums of earlier K blocks live in `partial` (fp32);
// for an f32 C that is usually C itself.
template <class TC> struct tile_target {
  float alpha;
  float beta;
  bool first; // the first K block: merge with beta * C (C is not read when beta == 0)
  bool last;  // the last K block: apply the epilogue and store to C
  float* partial;
  index_t ld_partial;
  TC* c;
  index_t ldc;
  const TC* bias; // at this tile's first column, or null
  bool gelu;
  const TC* residual; // at this tile's first element, or null
  index_t ld_residual;
};

// The target of the tile whose first element is C(row, col), in the K block [first, last]; partial
// sums in `partial` (row stride ld_partial), or in C itself when partial is null (f32 C only).
template <class TA, class TB, class TC>
tile_target<TC> tile_target_at(const ops::gemm_params<TA, TB, TC>& p, index_t row, index_t col, float alpha, bool first,
                               bool last, float* partial, index_t ld_partial) {
  tile_target<TC> t{alpha,
                    p.beta,
                    first,
                    last,
                    partial,
                    ld_partial,
                    p.c.data + row * p.c.ld + col,
                    p.c.ld,
                    p.bias ? p.bias + col : nullptr,
                    p.gelu,
                    p.residual.data ? p.residual.data + row * p.residual.ld + col : nullptr,
                    p.residual.ld};
  if constexpr (std::is_same_v<TC, float>) {
    if (partial == nullptr) {
      t.partial = t.c;
      t.ld_partial = t.ldc;
    }
  }
  return t;
}

// Whether the last K block adds anything after the sums (bias, GELU, residual).
template <class TC> bool has_epilogue(const tile_target<TC>& t) {
  return t.bias != nullptr || t.gelu || t.residual != nullptr;
}

// One element or one vector of the tile through the whole update; V is float or a batch, and the
// loads and stores are passed in so that both widths share the arithmetic. Without Epilogue the
// caller has made sure that the tile has none (!t.last or !has_epilogue(t)).
template <bool Epilogue = true, class V, class TC, class Load, class Store>
void finish_element(const tile_target<TC>& t, V acc, index_t i, index_t j, Load load, Store store) {
  V v = V(t.alpha) * acc;
  if (!t.first) {
    v = v + load(t.partial + i * t.ld_partial + j);
  } else if (t.beta != 0.0f) {
    v = v + V(t.beta) * load(t.c + i * t.ldc + j);
  }
  if (!t.last) {
    store(t.partial + i * t.ld_partial + j, v);
    return;
  }
  if constexpr (Epilogue) {
    if (t.bias != nullptr) {
      v = v + load(t.bias + j);
    }
    if (t.gelu) {
      v = gelu_tanh(v);
    }
    if (t.residual != nullptr) {
      v = v + load(t.residual + i * t.ld_residual + j);
    }
  }
  store(t.c + i * t.ldc + j, v);
}

// Row i of a full tile with no epilogue, straight from the kernel's registers: the same arithmetic
// as write_tile, without the trip through memory.
template <class Arch, class TC, int NV>
void finish_row(const tile_target<TC>& t, index_t i, const xsimd::batch<float, Arch> (&values)[NV]) {
  using batch = xsimd::batch<float, Arch>;
  constexpr index_t lanes = static_cast<index_t>(batch::size);
  const auto load = [](const auto* p) { return load_float<Arch>(p); };
  const auto store = [](auto* p, batch v) { store_from_float<Arch>(p, v); };
  for (int v = 0; v < NV; ++v) {
    finish_element<false>(t, values[v], i, v * lanes, load, store);
  }
}

// Writes the valid mr x nr part of a tile of fp32 sums with row stride ld_tile (a multiple of lanes).
template <class Arch, class TC>
void write_tile(const float* tile, index_t ld_tile, index_t mr, index_t nr, const tile_target<TC>& t) {
  using batch = xsimd::batch<float, Arch>;
  constexpr index_t lanes = static_cast<index_t>(batch::size);
  const auto vec_load = [](const auto* p) { return load_float<Arch>(p); };
  const auto vec_store = [](auto* p, batch v) { store_from_float<Arch>(p, v); };
  const auto scalar_load = [](const auto* p) { return static_cast<float>(*p); };
  const auto scalar_store = [](auto* p, float v) { *p = static_cast<std::remove_pointer_t<decltype(p)>>(v); };
  const index_t full = nr - nr % lanes;
  for (index_t i = 0; i < mr; ++i) {
    for (index_t j = 0; j < full; j += lanes) {
      finish_element(t, batch::load_aligned(tile + i * ld_tile + j), i, j, vec_load, vec_store);
    }
    for (index_t j = full; j < nr; ++j) {
      finish_element(t, tile[i * ld_tile + j], i, j, scalar_load, scalar_store);
    }
  }
}

} // namespace kern::cpu::detail
