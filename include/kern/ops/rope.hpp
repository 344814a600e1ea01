// Rotary position embedding (RoPE), in place on a [batch, seq, heads, head_dim] tensor.
//
// The first rotary_dim values of each head are split into rotary_dim / 2 pairs; pair i at position
// p turns by the angle p * theta^(-2i / rotary_dim):
//
//   (a, b) -> (a cos - b sin, a sin + b cos),   cos, sin = table[p * (rotary_dim / 2) + i]
//
// The pairs are (x[2i], x[2i + 1]) with pairing = adjacent (llama2.c, Meta's Llama code) or
// (x[i], x[i + rotary_dim / 2]) with pairing = half (GPT-NeoX, Hugging Face Llama). The values past
// rotary_dim pass through (partial rotary, GPT-NeoX / Phi). Element s of the sequence is at position
// position_offset + s (decoding with a KV cache). The backward pass is the inverse rotation (the
// rotation is orthogonal: its transpose is its inverse), applied to the gradient in place.
//
// The cos and sin tables (table_positions x rotary_dim / 2 floats each) come from fill_rope_table,
// computed once for a model; they are read-only here.
#pragma once

#include <cmath>
#include <cstdint>
#include <string_view>

#include "kern/core/dtype.hpp"
#include "kern/core/error.hpp"
#include "kern/core/view.hpp"

namespace kern::ops {

enum class rope_pairing : std::uint8_t { adjacent, half };

// cos_table[p * (rotary_dim / 2) + i] = cos(p * theta^(-2i / rotary_dim)), sin_table likewise, for
// p < positions, computed in double and rounded once to float.
inline void fill_rope_table(float* cos_table, float* sin_table, index_t positions, index_t rotary_dim,
                            double theta = 10000.0) {
  constexpr std::string_view op = "kern::ops::fill_rope_table";
  require_non_negative(op, "positions", positions);
  require(rotary_dim >= 0 && rotary_dim % 2 == 0, op, "rotary_dim = ", rotary_dim, " must be even and not negative");
  require(theta > 0.0 && std::isfinite(theta), op, "theta = ", theta, " must be positive and finite");
  const index_t half = rotary_dim / 2;
  require_not_null(op, "cos_table", cos_table, positions * half);
  require_not_null(op, "sin_table", sin_table, positions * half);
  for (index_t i = 0; i < half; ++i) {
    const double frequency =
        std::pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(rotary_dim)); // radians per position
    for (index_t p = 0; p < positions; ++p) {
      const double angle = static_cast<double>(p) * frequency;
      cos_table[p * half + i] = static_cast<float>(std::cos(angle));
      sin_table[p * half + i] = static_cast<float>(std::sin(angle));
    }
  }
}

template <element_type T> struct rope_params {
  tensor_view<T, 4> x; // [batch, seq, heads, head_dim]; head_dim contiguous (strides[3] = 1)
  rope_pairing pairing = rope_pairing::adjacent;
  index_t rotary_dim = -1;          // the leading values of each head that rotate (even); -1: head_dim
  index_t position_offset = 0;      // x's sequence index s is at position position_offset + s
  const float* cos_table = nullptr; // table_positions x rotary_dim / 2
  const float* sin_table = nullptr;
  index_t table_positions = 0; // position_offset + seq must not exceed it

  index_t head_dim() const noexcept { return x.shape[3]; }
  index_t rotated_dims() const noexcept { return rotary_dim < 0 ? head_dim() : rotary_dim; }
};

template <element_type T> void validate(std::string_view op, const rope_params<T>& p) {
  const auto& shape = p.x.shape;
  const auto& strides = p.x.strides;
  for (std::size_t d = 0; d < 4; ++d) {
    require(shape[d] >= 0, op, "x.shape[", d, "] = ", shape[d], " must not be negative");
  }
  require_not_null(op, "x.data", p.x.data, p.x.size());
  require(p.rotary_dim >= -1, op, "rotary_dim = ", p.rotary_dim, " must be -1 (head_dim) or at least 0");
  const index_t rotary = p.rotated_dims();
  require(rotary % 2 == 0, op, "rotary_dim = ", rotary, " must be even");
  require(rotary <= p.head_dim(), op, "rotary_dim = ", rotary, " exceeds head_dim = ", p.head_dim());
  require(p.pairing == rope_pairing::adjacent || p.pairing == rope_pairing::half, op,
          "pairing = ", static_cast<int>(p.pairing), " is not adjacent or half");
  require_non_negative(op, "position_offset", p.position_offset);
  require_non_negative(op, "table_positions", p.table_positions);
  if (p.x.size() == 0 || rotary == 0) {
    return;
  }
  require(strides[3] == 1, op, "x.strides[3] = ", strides[3], " must be 1 (head_dim contiguous)");
  // Distinct elements (the rotation is in place): every outer stride at least the extent of what it
  // steps over, taken from the innermost outward.
  index_t order[3] = {0, 1, 2};
  for (int a = 0; a < 3; ++a) {
    for (int b = a + 1; b < 3; ++b) {
      if (strides[static_cast<std::size_t>(order[b])] < strides[static_cast<std::size_t>(order[a])]) {
        const index_t swap = order[a];
        order[a] = order[b];
        order[b] = swap;
      }
    }
  }
  index_t extent = shape[3];
  for (index_t d : order) {
    const auto k = static_cast<std::size_t>(d);
    if (shape[k] > 1) {
      require(strides[k] >= extent, op, "x.strides[", d, "] = ", strides[k],
              " makes elements of x overlap (it must be at least ", extent, ")");
      extent = strides[k] * (shape[k] - 1) + extent;
    }
  }
  require(p.position_offset + shape[1] <= p.table_positions, op, "position_offset + seq = ", p.position_offset, " + ",
          shape[1], " exceeds table_positions = ", p.table_positions);
  const index_t table_size = p.table_positions * (rotary / 2);
  require_not_null(op, "cos_table", p.cos_table, table_size);
  require_not_null(op, "sin_table", p.sin_table, table_size);
  require_disjoint(op, "x", p.x.data, p.x.data + extent, "cos_table", p.cos_table, p.cos_table + table_size);
  require_disjoint(op, "x", p.x.data, p.x.data + extent, "sin_table", p.sin_table, p.sin_table + table_size);
}

} // namespace kern::ops
