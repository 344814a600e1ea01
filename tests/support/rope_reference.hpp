// What the CPU and GPU RoPE tests share: a strided [batch, seq, heads, head_dim] host tensor whose
// padding holds a sentinel, the cos/sin tables, the parameters of a call, and the float64
// definition of the rotation (angles computed from theta, not read from the tables).
#pragma once

#include <array>
#include <cmath>
#include <cstddef>
#include <vector>

#include "kern/core/view.hpp"
#include "kern/ops/rope.hpp"
#include "support/kernel_test.hpp"

namespace kern::test {

inline constexpr double rope_theta = 10000.0;

struct rope_dims {
  index_t batch, seq, heads, head_dim;
  index_t count() const { return batch * seq * heads * head_dim; }
};

// A [batch, seq, heads, head_dim] tensor with `pad` unused elements after every head, position and
// batch item (all holding the sentinel).
template <class T> struct host_tensor {
  rope_dims d;
  std::array<index_t, 4> strides{};
  std::vector<T> storage;

  host_tensor(rope_dims d_, index_t pad) : d(d_) {
    strides[3] = 1;
    strides[2] = d.head_dim + pad;
    strides[1] = d.heads * strides[2] + pad;
    strides[0] = d.seq * strides[1] + pad;
    storage.assign(static_cast<std::size_t>(d.batch * strides[0] + pad), T(sentinel));
  }
  T& at(index_t b, index_t s, index_t h, index_t i) {
    return storage[static_cast<std::size_t>(b * strides[0] + s * strides[1] + h * strides[2] + i)];
  }
  // The same layout over other memory (a device copy of `storage`).
  tensor_view<T, 4> view_of(T* data) const { return {data, {d.batch, d.seq, d.heads, d.head_dim}, strides}; }
  tensor_view<T, 4> view() { return view_of(storage.data()); }

  // The elements in [b][s][h][i] order.
  std::vector<T> values() {
    std::vector<T> out;
    for_each([&](index_t b, index_t s, index_t h, index_t i) { out.push_back(at(b, s, h, i)); });
    return out;
  }
  void assign(const std::vector<T>& v) {
    std::size_t k = 0;
    for_each([&](index_t b, index_t s, index_t h, index_t i) { at(b, s, h, i) = v[k++]; });
  }
  std::size_t sentinels() const {
    std::size_t n = 0;
    for (const T& x : storage) {
      n += static_cast<float>(x) == sentinel ? 1 : 0;
    }
    return n;
  }
  template <class Fn> void for_each(Fn fn) const {
    for (index_t b = 0; b < d.batch; ++b) {
      for (index_t s = 0; s < d.seq; ++s) {
        for (index_t h = 0; h < d.heads; ++h) {
          for (index_t i = 0; i < d.head_dim; ++i) {
            fn(b, s, h, i);
          }
        }
      }
    }
  }
};

struct rope_tables {
  std::vector<float> cos, sin;
  index_t positions;
  rope_tables(index_t positions_, index_t rotary)
      : cos(static_cast<std::size_t>(positions_ * rotary / 2)), sin(cos.size()), positions(positions_) {
    ops::fill_rope_table(cos.data(), sin.data(), positions, rotary, rope_theta);
  }
};

// The parameters of a call on x with the given tables (host or device copies of them).
template <class T> ops::rope_params<T> rope_call(tensor_view<T, 4> x, ops::rope_pairing pairing, index_t rotary,
                                                 index_t offset, const float* cos_table, const float* sin_table,
                                                 index_t table_positions) {
  ops::rope_params<T> p;
  p.x = x;
  p.pairing = pairing;
  p.rotary_dim = rotary;
  p.position_offset = offset;
  p.cos_table = cos_table;
  p.sin_table = sin_table;
  p.table_positions = table_positions;
  return p;
}

// The definition, in double: pair i of a head at position p turns by p * theta^(-2i / rotary)
// (by minus that when inverse); values past rotary pass through.
inline std::vector<double> rope_ref(const std::vector<double>& x, rope_dims d, ops::rope_pairing pairing,
                                    index_t rotary, index_t offset, bool inverse) {
  std::vector<double> y = x;
  const index_t half = rotary / 2;
  for (index_t b = 0; b < d.batch; ++b) {
    for (index_t s = 0; s < d.seq; ++s) {
      for (index_t h = 0; h < d.heads; ++h) {
        const auto head = static_cast<std::size_t>(((b * d.seq + s) * d.heads + h) * d.head_dim);
        for (index_t i = 0; i < half; ++i) {
          const double angle = static_cast<double>(offset + s) *
                               std::pow(rope_theta, -2.0 * static_cast<double>(i) / static_cast<double>(rotary));
          const double c = std::cos(angle), sn = inverse ? -std::sin(angle) : std::sin(angle);
          const index_t first = pairing == ops::rope_pairing::adjacent ? 2 * i : i;
          const index_t second = pairing == ops::rope_pairing::adjacent ? 2 * i + 1 : i + half;
          const double a = x[head + static_cast<std::size_t>(first)], bb = x[head + static_cast<std::size_t>(second)];
          y[head + static_cast<std::size_t>(first)] = a * c - bb * sn;
          y[head + static_cast<std::size_t>(second)] = a * sn + bb * c;
        }
      }
    }
  }
  return y;
}

inline const char* pairing_name(ops::rope_pairing pairing) {
  return pairing == ops::rope_pairing::adjacent ? "adjacent" : "half";
}

} // namespace kern::test
