// Packing of the CPU GEMM: copies a block of op(A) or op(B) into the order the micro-kernel reads,
// converting to fp32 on the way (bf16 widened; f32 optionally rounded to bf16 first), and pads the
// edges with zeros so that the micro-kernel never sees a partial tile.
#pragma once

#include <algorithm>

#include "kern/core/dtype.hpp"
#include "kern/core/view.hpp"

namespace kern::cpu::detail {

// The value the micro-kernel multiplies: the element widened to float, or rounded through bf16.
template <bool RoundToBf16, class T> inline float packed_value(T x) {
  if constexpr (RoundToBf16) {
    return static_cast<float>(bf16(static_cast<float>(x)));
  } else {
    return static_cast<float>(x);
  }
}

// op(X) as a read-only view in logical (row, col) coordinates, whatever X's storage order.
template <class T> struct op_view {
  const T* data;
  index_t ld;
  bool transposed; // element (r, c) of op(X) is data[c * ld + r] instead of data[r * ld + c]
};

// Packs rows [row0, row0 + rows) x columns [col0, col0 + depth) of op(A) into MR-row micro-panels:
// panel p holds depth steps of MR values, dst[p * depth * MR + k * MR + i]. Rows past `rows` are 0.
template <class Arch, int MR, bool RoundToBf16, class T>
void pack_a(const op_view<T>& a, index_t row0, index_t rows, index_t col0, index_t depth, float* dst) {
  for (index_t p0 = 0; p0 < rows; p0 += MR) {
    const index_t valid = std::min<index_t>(MR, rows - p0);
    float* panel = dst + (p0 / MR) * depth * MR;
    if (!a.transposed) {
      for (index_t i = 0; i < MR; ++i) {
        if (i < valid) {
          const T* src = a.data + (row0 + p0 + i) * a.ld + col0;
          for (index_t k = 0; k < depth; ++k) {
            panel[k * MR + i] = packed_value<RoundToBf16>(src[k]);
          }
        } else {
          for (index_t k = 0; k < depth; ++k) {
            panel[k * MR + i] = 0.0f;
          }
        }
      }
    } else {
      for (index_t k = 0; k < depth; ++k) {
        const T* src = a.data + (col0 + k) * a.ld + row0 + p0;
        for (index_t i = 0; i < MR; ++i) {
          panel[k * MR + i] = i < valid ? packed_value<RoundToBf16>(src[i]) : 0.0f;
        }
      }
    }
  }
}

// Packs rows [row0, row0 + depth) x columns [col0, col0 + cols) of op(B) into NR-column
// micro-panels: panel p holds depth steps of NR values, dst[p * depth * NR + k * NR + j].
template <class Arch, int NR, bool RoundToBf16, class T>
void pack_b_panel(const op_view<T>& b, index_t row0, index_t depth, index_t col0, index_t cols, float* panel) {
  const index_t valid = std::min<index_t>(NR, cols);
  if (!b.transposed) {
    for (index_t k = 0; k < depth; ++k) {
      const T* src = b.data + (row0 + k) * b.ld + col0;
      float* out = panel + k * NR;
      for (index_t j = 0; j < valid; ++j) {
        out[j] = packed_value<RoundToBf16>(src[j]);
      }
      for (index_t j = valid; j < NR; ++j) {
        out[j] = 0.0f;
      }
    }
  } else {
    for (index_t j = 0; j < NR; ++j) {
      if (j < valid) {
        const T* src = b.data + (col0 + j) * b.ld + row0;
        for (index_t k = 0; k < depth; ++k) {
          panel[k * NR + j] = packed_value<RoundToBf16>(src[k]);
        }
      } else {
        for (index_t k = 0; k < depth; ++k) {
          panel[k * NR + j] = 0.0f;
        }
      }
    }
  }
}

} // namespace kern::cpu::detail
