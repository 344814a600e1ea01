// attention: softmax(scale * Q K^T + mask) V per (batch, query head), and its gradients.
//
// Layouts (as FlashAttention): q and o are [batch, seq_q, heads_q, head_dim], k and v are
// [batch, seq_kv, heads_kv, head_dim], each with its own strides (the head_dim stride must be 1).
// Grouped-query attention: heads_kv divides heads_q and query head h reads key/value head
// h / (heads_q / heads_kv) (multi-query: heads_kv = 1). The log-sum-exp of each query's scores
// (scaled, natural log) is [batch, heads_q, seq_q], contiguous; the backward pass reads it.
//
// Masks. Queries sit at the end of the key sequence: query i is at position
// seq_kv - seq_q + i (the same position as key i when seq_q = seq_kv; the newest positions of a
// KV cache when seq_q < seq_kv). With causal, query position p sees keys j <= p; a window w > 0
// further limits it to keys j > p - w (a sliding window of w keys, the query's own included).
// A query that sees no key (seq_kv = 0) gets a zero output and a log-sum-exp of -inf.
//
// Element types: f32 and bf16 storage, fp32 math.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

#include "kern/core/dtype.hpp"
#include "kern/core/error.hpp"
#include "kern/core/view.hpp"

namespace kern::ops {

// [batch, seq, heads, head_dim]
template <class T> using attention_tensor = tensor_view<T, 4>;

inline constexpr index_t attention_max_head_dim = 256;

template <element_type T> struct attention_forward_params {
  attention_tensor<const T> q;
  attention_tensor<const T> k;
  attention_tensor<const T> v;
  attention_tensor<T> o;
  float* lse = nullptr;       // [batch, heads_q, seq_q], optional (the backward pass needs it)
  std::optional<float> scale; // softmax scale; unset: 1 / sqrt(head_dim)
  bool causal = false;
  index_t window = 0; // sliding window in keys (causal only); 0: none

  index_t batch() const noexcept { return q.shape[0]; }
  index_t seq_q() const noexcept { return q.shape[1]; }
  index_t seq_kv() const noexcept { return k.shape[1]; }
  index_t heads_q() const noexcept { return q.shape[2]; }
  index_t heads_kv() const noexcept { return k.shape[2]; }
  index_t head_dim() const noexcept { return q.shape[3]; }
};

template <element_type T> struct attention_backward_params {
  attention_tensor<const T> q;
  attention_tensor<const T> k;
  attention_tensor<const T> v;
  attention_tensor<const T> o;   // the forward output
  attention_tensor<const T> d_o; // the gradient of the loss with respect to o
  const float* lse = nullptr;    // from the forward pass, [batch, heads_q, seq_q]
  attention_tensor<T> dq;        // written (like q)
  attention_tensor<T> dk;        // written (like k): summed over the query heads that share it
  attention_tensor<T> dv;        // written (like v)
  std::optional<float> scale;
  bool causal = false;
  index_t window = 0;

  index_t batch() const noexcept { return q.shape[0]; }
  index_t seq_q() const noexcept { return q.shape[1]; }
  index_t seq_kv() const noexcept { return k.shape[1]; }
  index_t heads_q() const noexcept { return q.shape[2]; }
  index_t heads_kv() const noexcept { return k.shape[2]; }
  index_t head_dim() const noexcept { return q.shape[3]; }
};

// The scale a call uses.
template <class Params> float attention_scale(const Params& p) {
  return p.scale ? *p.scale : 1.0f / std::sqrt(static_cast<float>(p.head_dim()));
}

// The keys [first, last) that query i (of seq_q, against seq_kv keys) sees under the mask.
struct key_range {
  index_t first;
  index_t last;
};
constexpr key_range visible_keys(index_t i, index_t seq_q, index_t seq_kv, bool causal, index_t window) noexcept {
  if (!causal) {
    return {0, seq_kv};
  }
  const index_t position = seq_kv - seq_q + i;
  index_t first = window > 0 ? position - window + 1 : 0;
  first = first < 0 ? 0 : first;
  index_t last = position + 1;
  last = last > seq_kv ? seq_kv : last;
  return {first, last < first ? first : last};
}

namespace detail {

template <class T>
void require_attention_tensor(std::string_view op, std::string_view name, const attention_tensor<T>& x) {
  for (int d = 0; d < 4; ++d) {
    require(x.shape[d] >= 0, op, name, ".shape[", d, "] = ", x.shape[d], " must not be negative");
  }
  require(x.strides[3] == 1 || x.shape[3] <= 1, op, name, ".strides[3] = ", x.strides[3],
          ": head_dim must be contiguous");
  for (int d = 0; d < 3; ++d) {
    require(x.strides[d] >= 0, op, name, ".strides[", d, "] = ", x.strides[d], " must not be negative");
  }
  require_not_null(op, std::string(name) + ".data", x.data, x.size());
}

template <class T, class U> void require_same_shape(std::string_view op, std::string_view a_name,
                                                    const attention_tensor<T>& a, std::string_view b_name,
                                                    const attention_tensor<U>& b) {
  require(a.shape == b.shape, op, a_name, " is [", a.shape[0], ", ", a.shape[1], ", ", a.shape[2], ", ", a.shape[3],
          "] but ", b_name, " is [", b.shape[0], ", ", b.shape[1], ", ", b.shape[2], ", ", b.shape[3], "]");
}

// One past the last element a tensor view addresses (its data when empty).
template <class T> T* tensor_end(const attention_tensor<T>& x) {
  if (x.size() == 0) {
    return x.data;
  }
  index_t last = 0;
  for (int d = 0; d < 4; ++d) {
    last += (x.shape[d] - 1) * x.strides[d];
  }
  return x.data + last + 1;
}

// Whether two views with the same strides, the second `delta` elements after the first, have an
// element in common: index differences t_k = i_k - j_k in range with sum t_k strides_k = delta, up to
// the overlap of two head_dim rows. Only the few t_k that can still reach delta are tried at each
// level, so views into one fused buffer (q|k|v heads side by side) are told apart exactly.
inline bool strided_overlap(index_t delta, const std::array<index_t, 4>& a, const std::array<index_t, 4>& b,
                            const std::array<index_t, 4>& strides, int dim = 0) {
  if (dim == 3) {
    return delta > -b[3] && delta < a[3];
  }
  index_t reach = std::max(a[3], b[3]); // how far the deeper dimensions can move an element
  for (int k = dim + 1; k < 3; ++k) {
    reach += (std::max(a[k], b[k]) - 1) * strides[k];
  }
  const index_t s = strides[dim];
  if (s == 0) {
    return strided_overlap(delta, a, b, strides, dim + 1);
  }
  const auto floor_div = [](index_t x, index_t y) { return x >= 0 ? x / y : -((-x + y - 1) / y); };
  const index_t lo = std::max(-(b[dim] - 1), floor_div(delta - reach, s));
  const index_t hi = std::min(a[dim] - 1, floor_div(delta + reach, s) + 1);
  for (index_t t = lo; t <= hi; ++t) {
    if (strided_overlap(delta - t * s, a, b, strides, dim + 1)) {
      return true;
    }
  }
  return false;
}

template <class T, class U> void require_disjoint_tensors(std::string_view op, std::string_view out_name,
                                                          const attention_tensor<T>& out, std::string_view in_name,
                                                          const attention_tensor<U>& in) {
  if (out.size() == 0 || in.size() == 0) {
    return;
  }
  const void* out_end = tensor_end(out);
  const void* in_end = tensor_end(in);
  const auto* a = reinterpret_cast<const std::byte*>(out.data);
  const auto* b = reinterpret_cast<const std::byte*>(in.data);
  const bool ranges_apart =
      reinterpret_cast<const std::byte*>(out_end) <= b || reinterpret_cast<const std::byte*>(in_end) <= a;
  if (!ranges_apart && std::is_same_v<std::remove_const_t<T>, std::remove_const_t<U>> && out.strides == in.strides &&
      (b - a) % static_cast<std::ptrdiff_t>(sizeof(T)) == 0 &&
      !strided_overlap(static_cast<index_t>((b - a) / static_cast<std::ptrdiff_t>(sizeof(T))), out.shape, in.shape,
                       out.strides)) {
    return; // interleaved, as the heads of a fused q|k|v buffer
  }
  require_disjoint(op, out_name, out.data, out_end, in_name, in.data, in_end);
}

// What forward and backward share: q/k/v shapes, heads, head_dim, scale and mask.
template <class Params> void validate_attention_shapes(std::string_view op, const Params& p) {
  require_attention_tensor(op, "q", p.q);
  require_attention_tensor(op, "k", p.k);
  require_attention_tensor(op, "v", p.v);
  require_same_shape(op, "k", p.k, "v", p.v);
  require(p.k.shape[0] == p.q.shape[0], op, "k has batch ", p.k.shape[0], " but q has ", p.q.shape[0]);
  require(p.k.shape[3] == p.q.shape[3], op, "k has head_dim ", p.k.shape[3], " but q has ", p.q.shape[3]);
  const index_t d = p.head_dim();
  require(p.q.size() == 0 || (d >= 1 && d <= attention_max_head_dim), op, "head_dim = ", d, " is not supported (1 to ",
          attention_max_head_dim, ")");
  require(p.heads_kv() > 0 || p.q.size() == 0, op, "heads_kv = 0 with queries to answer");
  require(p.heads_kv() == 0 || p.heads_q() % p.heads_kv() == 0, op, "heads_kv = ", p.heads_kv(),
          " does not divide heads_q = ", p.heads_q());
  if (p.scale) {
    require(std::isfinite(*p.scale), op, "scale = ", *p.scale, " is not finite");
  }
  require(p.window >= 0, op, "window = ", p.window, " must not be negative");
  require(p.window == 0 || p.causal, op, "window = ", p.window, " needs causal = true");
  require(!p.causal || p.seq_q() <= p.seq_kv() || p.q.size() == 0, op, "causal with seq_q = ", p.seq_q(),
          " > seq_kv = ", p.seq_kv(), ": the first queries would see no key");
}

} // namespace detail

template <element_type T> void validate(std::string_view op, const attention_forward_params<T>& p) {
  detail::validate_attention_shapes(op, p);
  detail::require_attention_tensor(op, "o", p.o);
  detail::require_same_shape(op, "o", p.o, "q", p.q);
  for (const auto& [name, in] : {std::pair{"q", p.q}, std::pair{"k", p.k}, std::pair{"v", p.v}}) {
    detail::require_disjoint_tensors(op, "o", p.o, name, in);
  }
  if (p.lse != nullptr && p.q.size() > 0) {
    const index_t n = p.batch() * p.heads_q() * p.seq_q();
    require_disjoint(op, "lse", p.lse, p.lse + n, "o", p.o.data, detail::tensor_end(p.o));
  }
}

template <element_type T> void validate(std::string_view op, const attention_backward_params<T>& p) {
  detail::validate_attention_shapes(op, p);
  detail::require_attention_tensor(op, "o", p.o);
  detail::require_attention_tensor(op, "d_o", p.d_o);
  detail::require_attention_tensor(op, "dq", p.dq);
  detail::require_attention_tensor(op, "dk", p.dk);
  detail::require_attention_tensor(op, "dv", p.dv);
  detail::require_same_shape(op, "o", p.o, "q", p.q);
  detail::require_same_shape(op, "d_o", p.d_o, "q", p.q);
  detail::require_same_shape(op, "dq", p.dq, "q", p.q);
  detail::require_same_shape(op, "dk", p.dk, "k", p.k);
  detail::require_same_shape(op, "dv", p.dv, "v", p.v);
  require_not_null(op, "lse", p.lse, p.q.size() > 0 ? p.batch() * p.heads_q() * p.seq_q() : 0);
  const std::pair<const char*, attention_tensor<const T>> inputs[] = {
      {"q", p.q}, {"k", p.k}, {"v", p.v}, {"o", p.o}, {"d_o", p.d_o}};
  const std::pair<const char*, attention_tensor<const T>> outputs[] = {{"dq", p.dq}, {"dk", p.dk}, {"dv", p.dv}};
  for (std::size_t a = 0; a < 3; ++a) {
    for (const auto& [name, in] : inputs) {
      detail::require_disjoint_tensors(op, outputs[a].first, outputs[a].second, name, in);
    }
    for (std::size_t b = a + 1; b < 3; ++b) {
      detail::require_disjoint_tensors(op, outputs[a].first, outputs[a].second, outputs[b].first, outputs[b].second);
    }
  }
}

} // namespace kern::ops
