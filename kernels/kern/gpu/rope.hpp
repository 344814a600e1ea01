// GPU rotary position embedding. Parameters and semantics: kern/ops/rope.hpp; algorithm and tests:
// docs/kernels/rope.md.
//
//   kern::gpu::rope_forward(p, stream)    rotates x in place by each position's angles
//   kern::gpu::rope_backward(p, stream)   rotates back (the gradient of rope_forward), in place
//
// Memory-bound: each rotated value is read once and written once. A block takes one (batch item,
// position) at a time, grid-strided, so that all its heads share one row of the tables; its
// threads take the heads' units. A unit is a 16-byte group of consecutive values (whole adjacent
// pairs), or for half pairing a 16-byte group of first values with the matching group of second
// values. A unit that would pass rotary_dim, or every unit when the pointer or a stride is not a
// multiple of 16 bytes (or half pairing's rotary_dim / 2 is not a multiple of the group), goes a
// pair at a time. Every pair is read before it is written, and units do not share values.
#pragma once

#include <string_view>

#include "kern/gpu/device.hpp"
#include "kern/gpu/runtime.hpp"
#include "kern/ops/rope.hpp"

namespace kern::gpu::detail {

template <class T> struct rope_operands {
  T* x;
  index_t seq, heads;
  index_t batch_stride, seq_stride, head_stride;
  index_t tokens;          // batch * seq
  index_t pairs;           // rotary_dim / 2 per head
  index_t units;           // per head
  index_t position_offset; // x's sequence index s is at position position_offset + s
  const float* cos_table;
  const float* sin_table;
  float sign; // 1: forward, -1: backward (the inverse rotation)
};

// (a, b) -> (a c - b s, a s + b c).
template <class T> KERN_DEVICE void rotate_pair(T* first, T* second, float c, float s) {
  const float a = load_float(first), b = load_float(second);
  *first = from_float_rn<T>(a * c - b * s);
  *second = from_float_rn<T>(a * s + b * c);
}

// Adjacent pairs: unit u holds values [u * Width, u * Width + Width) of the head (Width even), pairs
// (2i, 2i + 1). Width 2 is the pair-at-a-time path.
template <int Width, class T> KERN_DEVICE void
rotate_adjacent_unit(T* head, index_t unit, index_t pairs, const float* cos_row, const float* sin_row, float sign) {
  const index_t first_pair = unit * (Width / 2);
  if constexpr (Width > 2) {
    if (first_pair + Width / 2 <= pairs) {
      vector16<T> v = load_vector(head + 2 * first_pair);
      for (int k = 0; k < Width / 2; ++k) {
        const float c = cos_row[first_pair + k], s = sign * sin_row[first_pair + k];
        const float a = as_float(v.values[2 * k]), b = as_float(v.values[2 * k + 1]);
        v.values[2 * k] = from_float_rn<T>(a * c - b * s);
        v.values[2 * k + 1] = from_float_rn<T>(a * s + b * c);
      }
      store_vector(head + 2 * first_pair, v);
      return;
    }
  }
  const index_t end = first_pair + Width / 2 < pairs ? first_pair + Width / 2 : pairs;
  for (index_t i = first_pair; i < end; ++i) {
    rotate_pair(head + 2 * i, head + 2 * i + 1, cos_row[i], sign * sin_row[i]);
  }
}

// Half pairs: unit u holds pairs [u * Width, u * Width + Width), values i and i + pairs. Width 1 is
// the pair-at-a-time path; wider units need pairs to be a multiple of Width (whole units).
template <int Width, class T> KERN_DEVICE void
rotate_half_unit(T* head, index_t unit, index_t pairs, const float* cos_row, const float* sin_row, float sign) {
  const index_t first_pair = unit * Width;
  if constexpr (Width > 1) {
    vector16<T> a = load_vector(head + first_pair);
    vector16<T> b = load_vector(head + pairs + first_pair);
    for (int k = 0; k < Width; ++k) {
      const float c = cos_row[first_pair + k], s = sign * sin_row[first_pair + k];
      const float av = as_float(a.values[k]), bv = as_float(b.values[k]);
      a.values[k] = from_float_rn<T>(av * c - bv * s);
      b.values[k] = from_float_rn<T>(av * s + bv * c);
    }
    store_vector(head + first_pair, a);
    store_vector(head + pairs + first_pair, b);
  } else {
    rotate_pair(head + first_pair, head + pairs + first_pair, cos_row[first_pair], sign * sin_row[first_pair]);
  }
}

template <int Width, ops::rope_pairing Pairing, class T> __global__ void rope_kernel(rope_operands<T> r) {
  const index_t items = r.heads * r.units;
  for (index_t token = blockIdx.x; token < r.tokens; token += gridDim.x) {
    const index_t b = token / r.seq, s = token % r.seq;
    const index_t position = r.position_offset + s;
    const float* cos_row = r.cos_table + position * r.pairs;
    const float* sin_row = r.sin_table + position * r.pairs;
    T* token_values = r.x + b * r.batch_stride + s * r.seq_stride;
    for (index_t item = threadIdx.x; item < items; item += blockDim.x) {
      T* head = token_values + item / r.units * r.head_stride;
      if constexpr (Pairing == ops::rope_pairing::adjacent) {
        rotate_adjacent_unit<Width>(head, item % r.units, r.pairs, cos_row, sin_row, r.sign);
      } else {
        rotate_half_unit<Width>(head, item % r.units, r.pairs, cos_row, sin_row, r.sign);
      }
    }
  }
}

inline constexpr int rope_block_threads = 256;
inline constexpr index_t rope_max_blocks = index_t{1} << 20;

// Width: values per adjacent unit, pairs per half unit.
template <int Width, ops::rope_pairing Pairing, class T> void launch_rope(rope_operands<T> r, stream_t stream) {
  const index_t per_unit = Pairing == ops::rope_pairing::adjacent ? Width / 2 : Width;
  r.units = (r.pairs + per_unit - 1) / per_unit;
  const index_t items = r.heads * r.units;
  int threads = warp_size;
  while (threads < rope_block_threads && threads < items) {
    threads *= 2;
  }
  const index_t blocks = r.tokens < rope_max_blocks ? r.tokens : rope_max_blocks;
  launch(rope_kernel<Width, Pairing, T>, dim3(static_cast<unsigned>(blocks)), dim3(static_cast<unsigned>(threads)), 0,
         stream, r);
}

template <class T> void rope_run(const ops::rope_params<T>& p, bool inverse, stream_t stream) {
  const auto& shape = p.x.shape;
  const auto& strides = p.x.strides;
  const index_t pairs = p.rotated_dims() / 2;
  if (p.x.size() == 0 || pairs == 0) {
    return;
  }
  const rope_operands<T> r{p.x.data,
                           shape[1],
                           shape[2],
                           strides[0],
                           strides[1],
                           strides[2],
                           shape[0] * shape[1],
                           pairs,
                           0,
                           p.position_offset,
                           p.cos_table,
                           p.sin_table,
                           inverse ? -1.0f : 1.0f};
  constexpr int width = vector16<T>::size;
  bool vectors = vector_aligned(p.x.data);
  for (std::size_t d = 0; d < 3; ++d) {
    vectors = vectors && (shape[d] == 1 || strides[d] % width == 0);
  }
  if (p.pairing == ops::rope_pairing::adjacent) {
    if (vectors) {
      launch_rope<width, ops::rope_pairing::adjacent>(r, stream);
    } else {
      launch_rope<2, ops::rope_pairing::adjacent>(r, stream);
    }
  } else {
    if (vectors && pairs % width == 0) {
      launch_rope<width, ops::rope_pairing::half>(r, stream);
    } else {
      launch_rope<1, ops::rope_pairing::half>(r, stream);
    }
  }
}

} // namespace kern::gpu::detail

namespace kern::gpu {

template <element_type T> void rope_forward(const ops::rope_params<T>& p, stream_t stream) {
  ops::validate(KERN_GPU_OP("rope_forward"), p);
  detail::rope_run(p, false, stream);
}

template <element_type T> void rope_backward(const ops::rope_params<T>& p, stream_t stream) {
  ops::validate(KERN_GPU_OP("rope_backward"), p);
  detail::rope_run(p, true, stream);
}

} // namespace kern::gpu
