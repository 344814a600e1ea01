// kern::cpu::attention_forward, attention_backward and attention_decode against float64 references.
//
// Every case draws fresh random inputs (the seed is in the failure message; KERN_TEST_SEED=<n>
// replays one), runs the kernel on outputs poisoned with NaN and checks
//   - o against a float64 forward (materialized scores, exact softmax, the masks of
//     kern::ops::visible_keys, the grouped-query head mapping) as the relative norm
//     ||o - ref|| / ||ref||, and the log-sum-exp element by element;
//   - dq, dk and dv against the analytic float64 backward; that backward, and kern's gradients
//     from its own forward, against central finite differences of the float64 forward on tiny shapes;
//   - strided views: q, k and v as head slices of one fused buffer, padding between heads, rows and
//     batches, a [batch, heads, seq, head_dim] memory order, KV-cache views with NaN beyond the
//     positions passed. Input padding holds NaN, so a kernel that reads it poisons a result; output
//     padding holds a sentinel that must survive.
// bf16 cases store the inputs as bf16 and give the reference the stored values. Further tests:
// bit-identical results across repeated calls and thread counts, flash-decoding against the
// forward, memory linear in the sequence, argument validation, NaN propagation, empty sizes.
// The ISA path is chosen by KERN_ISA (CMake runs this binary once per ISA level); the log names it.
#include <sys/resource.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "kern/cpu.hpp"
#include "support/kernel_test.hpp"

namespace {

using kern::bf16;
using kern::index_t;
using kern::ops::attention_tensor;
using extents = attention_tensor<float>::extents;
using kern::test::bits_of;
using kern::test::nan_value;
using kern::test::type_name;

constexpr double infinity = std::numeric_limits<double>::infinity();

template <class T> double to_double(T x) { return static_cast<double>(kern::to_float(x)); }
template <class T> T nan_of() { return kern::from_float<T>(nan_value); }
template <class T> T sentinel() { return kern::from_float<T>(777.0f); }

template <class Fn> void for_each_index(const extents& shape, Fn&& fn) {
  for (index_t b = 0; b < shape[0]; ++b) {
    for (index_t s = 0; s < shape[1]; ++s) {
      for (index_t h = 0; h < shape[2]; ++h) {
        for (index_t d = 0; d < shape[3]; ++d) {
          fn(b, s, h, d);
        }
      }
    }
  }
}

index_t element_count(const extents& shape) { return shape[0] * shape[1] * shape[2] * shape[3]; }

// ---------------------------------------------------------------------------------------------
// Tensors: strided [batch, seq, heads, head_dim] views over buffers the test owns.

// How a tensor lies in memory.
enum class layout {
  contiguous,  // packed, allocated to its last element exactly (ASan catches a read past it)
  padded,      // gaps between heads, rows and batches
  heads_major, // [batch, heads, seq, head_dim] in memory, as a transposed PyTorch tensor
  fused_qkv,   // q, k, v: head slices of one [batch, seq, heads_q + 2 heads_kv, head_dim] buffer whose rows
               // are padded (GPT-2's c_attn output; needs seq_q = seq_kv); o and the gradients: padded
  kv_cache,    // k, v: the first seq_kv positions of a [batch, seq_kv + 37, heads_kv, head_dim] cache whose
               // later positions hold NaN; q, o and the gradients: padded
};

const char* name(layout mem) {
  switch (mem) {
  case layout::contiguous:
    return "contiguous";
  case layout::padded:
    return "padded";
  case layout::heads_major:
    return "heads-major";
  case layout::fused_qkv:
    return "fused-qkv";
  case layout::kv_cache:
    return "kv-cache";
  }
  return "?";
}

// The layout of a tensor that is not a fused or cached input.
layout own_layout(layout mem) { return mem == layout::fused_qkv || mem == layout::kv_cache ? layout::padded : mem; }

// One past the last element that a view with these shape and strides addresses; 0 when empty.
index_t extent_of(const extents& shape, const extents& strides) {
  index_t last = 0;
  for (std::size_t d = 0; d < 4; ++d) {
    if (shape[d] == 0) {
      return 0;
    }
    last += (shape[d] - 1) * strides[d];
  }
  return last + 1;
}

// A strided tensor over (a part of) a buffer that views of q, k and v may share.
template <class T> struct tensor {
  std::shared_ptr<std::vector<T>> storage = std::make_shared<std::vector<T>>();
  index_t offset = 0;
  extents shape{};
  extents strides{};

  attention_tensor<T> view() const { return {storage->data() + offset, shape, strides}; }
  index_t at(index_t b, index_t s, index_t h, index_t d) const {
    return offset + b * strides[0] + s * strides[1] + h * strides[2] + d * strides[3];
  }
  T& operator()(index_t b, index_t s, index_t h, index_t d) const {
    return (*storage)[static_cast<std::size_t>(at(b, s, h, d))];
  }
};

template <class T> tensor<T> make_tensor(const extents& shape, layout mem, T fill) {
  const index_t seq = shape[1], heads = shape[2], d = shape[3];
  extents strides = attention_tensor<T>::contiguous(shape);
  if (mem == layout::heads_major) {
    strides = {heads * seq * d, d, seq * d, 1};
  } else if (mem != layout::contiguous) {
    const index_t head = d + 3, row = heads * head + 5;
    strides = {seq * row + 7, row, head, 1};
  }
  return {std::make_shared<std::vector<T>>(static_cast<std::size_t>(extent_of(shape, strides)), fill), 0, shape,
          strides};
}

// An output: NaN where the view points, the sentinel in its padding.
template <class T> tensor<T> make_output(const extents& shape, layout mem) {
  tensor<T> x = make_tensor<T>(shape, own_layout(mem), sentinel<T>());
  for_each_index(shape, [&](index_t b, index_t s, index_t h, index_t d) { x(b, s, h, d) = nan_of<T>(); });
  return x;
}

template <class T> void fill_random(const tensor<T>& x, std::mt19937& rng, float range) {
  std::uniform_real_distribution<float> dist(-range, range);
  for_each_index(x.shape,
                 [&](index_t b, index_t s, index_t h, index_t d) { x(b, s, h, d) = kern::from_float<T>(dist(rng)); });
}

// Whether every element of x's buffer outside the view still holds `fill`: outputs never write their padding.
template <class T> bool padding_untouched(const tensor<T>& x, T fill) {
  std::vector<bool> covered(x.storage->size(), false);
  for_each_index(x.shape, [&](index_t b, index_t s, index_t h, index_t d) {
    covered[static_cast<std::size_t>(x.at(b, s, h, d))] = true;
  });
  for (std::size_t i = 0; i < covered.size(); ++i) {
    if (!covered[i] && bits_of((*x.storage)[i]) != bits_of(fill)) {
      return false;
    }
  }
  return true;
}

// A packed float64 [batch, seq, heads, head_dim] array: what the references read and write.
struct dense {
  extents shape{};
  std::vector<double> values;

  explicit dense(const extents& shape_) : shape(shape_), values(static_cast<std::size_t>(element_count(shape_)), 0.0) {}
  std::size_t at(index_t b, index_t s, index_t h, index_t d) const {
    return static_cast<std::size_t>(((b * shape[1] + s) * shape[2] + h) * shape[3] + d);
  }
  double& operator()(index_t b, index_t s, index_t h, index_t d) { return values[at(b, s, h, d)]; }
  double operator()(index_t b, index_t s, index_t h, index_t d) const { return values[at(b, s, h, d)]; }
};

// The stored values, exactly.
template <class T> dense widen(const tensor<T>& x) {
  dense out(x.shape);
  for_each_index(x.shape,
                 [&](index_t b, index_t s, index_t h, index_t d) { out(b, s, h, d) = to_double(x(b, s, h, d)); });
  return out;
}

// The view's elements, packed in the order of `dense`.
template <class T> std::vector<T> gather(const tensor<T>& x) {
  std::vector<T> out;
  out.reserve(static_cast<std::size_t>(element_count(x.shape)));
  for_each_index(x.shape, [&](index_t b, index_t s, index_t h, index_t d) { out.push_back(x(b, s, h, d)); });
  return out;
}

template <class T> void scatter(const tensor<T>& x, const dense& values) {
  for_each_index(x.shape, [&](index_t b, index_t s, index_t h, index_t d) {
    x(b, s, h, d) = kern::from_float<T>(static_cast<float>(values(b, s, h, d)));
  });
}

// ---------------------------------------------------------------------------------------------
// The float64 references.

struct mask {
  bool causal = false;
  index_t window = 0;
};

struct forward_result {
  dense o;
  std::vector<double> lse; // [batch, heads_q, seq_q]
};

double dot(const dense& a, index_t b, index_t i, index_t ha, const dense& c, index_t j, index_t hc) {
  double sum = 0.0;
  for (index_t d = 0; d < a.shape[3]; ++d) {
    sum += a(b, i, ha, d) * c(b, j, hc, d);
  }
  return sum;
}

// softmax(scale q k^T + mask) v per (batch, query head), every score materialized; query head h
// reads key/value head h / (heads_q / heads_kv).
forward_result reference_forward(const dense& q, const dense& k, const dense& v, double scale, mask m) {
  const index_t batch = q.shape[0], seq_q = q.shape[1], heads_q = q.shape[2], head_dim = q.shape[3];
  const index_t seq_kv = k.shape[1], group = k.shape[2] == 0 ? 1 : heads_q / k.shape[2];
  forward_result r{dense(q.shape), std::vector<double>(static_cast<std::size_t>(batch * heads_q * seq_q))};
  std::vector<double> p(static_cast<std::size_t>(seq_kv));
  for (index_t b = 0; b < batch; ++b) {
    for (index_t h = 0; h < heads_q; ++h) {
      const index_t g = h / group;
      for (index_t i = 0; i < seq_q; ++i) {
        const auto [first, last] = kern::ops::visible_keys(i, seq_q, seq_kv, m.causal, m.window);
        double max = -infinity;
        for (index_t j = first; j < last; ++j) {
          p[static_cast<std::size_t>(j)] = scale * dot(q, b, i, h, k, j, g);
          max = std::max(max, p[static_cast<std::size_t>(j)]);
        }
        double sum = 0.0;
        for (index_t j = first; j < last; ++j) {
          p[static_cast<std::size_t>(j)] = std::exp(p[static_cast<std::size_t>(j)] - max);
          sum += p[static_cast<std::size_t>(j)];
        }
        for (index_t d = 0; d < head_dim; ++d) {
          double acc = 0.0;
          for (index_t j = first; j < last; ++j) {
            acc += p[static_cast<std::size_t>(j)] * v(b, j, g, d);
          }
          r.o(b, i, h, d) = first == last ? 0.0 : acc / sum;
        }
        r.lse[static_cast<std::size_t>((b * heads_q + h) * seq_q + i)] =
            first == last ? -infinity : max + std::log(sum);
      }
    }
  }
  return r;
}

struct gradients {
  dense dq, dk, dv;
  // The typical size of each element's sum: the root-sum-square of its terms, with |dS_ij| taken as
  // P_ij (|dO_i . V_j| + |D_i|). Where the softmax is peaked, dO_i . V_j - D_i cancels and a gradient is
  // far smaller than its terms, whose fp32 rounding then dominates: errors are measured against this
  // size where it exceeds the gradient.
  dense dq_size, dk_size, dv_size;
};

// The analytic gradients of the forward above, given its result f: with P_ij = exp(scale q_i.k_j - lse_i)
// and D_i = dO_i . O_i,
//   dV_j = sum_i P_ij dO_i,   dS_ij = P_ij (dO_i . V_j - D_i),
//   dQ_i = scale sum_j dS_ij K_j,   dK_j = scale sum_i dS_ij Q_i,
// dK and dV summed over the query heads that share a key/value head.
gradients reference_backward(const dense& q, const dense& k, const dense& v, const dense& d_o, const forward_result& f,
                             double scale, mask m) {
  const index_t batch = q.shape[0], seq_q = q.shape[1], heads_q = q.shape[2], head_dim = q.shape[3];
  const index_t seq_kv = k.shape[1], group = k.shape[2] == 0 ? 1 : heads_q / k.shape[2];
  gradients g{dense(q.shape), dense(k.shape), dense(v.shape), dense(q.shape), dense(k.shape), dense(v.shape)};
  for (index_t b = 0; b < batch; ++b) {
    for (index_t h = 0; h < heads_q; ++h) {
      const index_t kv = h / group;
      for (index_t i = 0; i < seq_q; ++i) {
        const auto [first, last] = kern::ops::visible_keys(i, seq_q, seq_kv, m.causal, m.window);
        const double lse = f.lse[static_cast<std::size_t>((b * heads_q + h) * seq_q + i)];
        const double row_dot = dot(d_o, b, i, h, f.o, i, h);
        for (index_t j = first; j < last; ++j) {
          const double p = std::exp(scale * dot(q, b, i, h, k, j, kv) - lse);
          const double dp = dot(d_o, b, i, h, v, j, kv);
          const double ds = p * (dp - row_dot), ds_size = p * (std::abs(dp) + std::abs(row_dot));
          for (index_t d = 0; d < head_dim; ++d) {
            g.dv(b, j, kv, d) += p * d_o(b, i, h, d);
            g.dq(b, i, h, d) += scale * ds * k(b, j, kv, d);
            g.dk(b, j, kv, d) += scale * ds * q(b, i, h, d);
            g.dv_size(b, j, kv, d) += std::pow(p * d_o(b, i, h, d), 2);
            g.dq_size(b, i, h, d) += std::pow(scale * ds_size * k(b, j, kv, d), 2);
            g.dk_size(b, j, kv, d) += std::pow(scale * ds_size * q(b, i, h, d), 2);
          }
        }
      }
    }
  }
  for (dense* size : {&g.dq_size, &g.dk_size, &g.dv_size}) {
    std::transform(size->values.begin(), size->values.end(), size->values.begin(),
                   [](double x) { return std::sqrt(x); });
  }
  return g;
}

// ---------------------------------------------------------------------------------------------
// One case: a shape and every knob of the parameters.

struct attention_case {
  index_t batch = 1, seq_q = 1, seq_kv = 1, heads_q = 1, heads_kv = 1, head_dim = 32;
  std::optional<float> scale = std::nullopt; // unset: 1 / sqrt(head_dim)
  layout mem = layout::contiguous;
  int threads = 1;
  float q_range = 1.0f; // q uniform in [-q_range, q_range): 1 gives a flat softmax at the default scale, 4 a peaked one
  bool causal = false;
  index_t window = 0;

  extents q_shape() const { return {batch, seq_q, heads_q, head_dim}; }
  extents kv_shape() const { return {batch, seq_kv, heads_kv, head_dim}; }
  std::size_t lse_size() const { return static_cast<std::size_t>(batch * heads_q * seq_q); }
  mask masking() const { return {causal, window}; }
  double used_scale() const {
    return scale ? *scale : static_cast<double>(1.0f / std::sqrt(static_cast<float>(head_dim)));
  }
};

template <class T> std::string describe(std::string_view what, const attention_case& c, std::uint32_t seed) {
  std::ostringstream out;
  out << what << "<" << type_name<T>() << "> batch " << c.batch << " seq_q " << c.seq_q << " seq_kv " << c.seq_kv
      << " heads " << c.heads_q << "/" << c.heads_kv << " head_dim " << c.head_dim
      << (c.causal ? " causal" : " non-causal") << " window " << c.window << " scale ";
  if (c.scale) {
    out << *c.scale;
  } else {
    out << "default";
  }
  out << " layout " << name(c.mem) << " threads " << c.threads << " q_range " << c.q_range << " seed " << seed;
  return out.str();
}

template <class T> struct inputs { tensor<T> q, k, v; };

// q, k and v of a case, random, their padding NaN.
template <class T> inputs<T> make_inputs(const attention_case& c, std::mt19937& rng) {
  inputs<T> x;
  if (c.mem == layout::fused_qkv) {
    const index_t d = c.head_dim, row = (c.heads_q + 2 * c.heads_kv) * d + 4;
    const extents strides{c.seq_q * row, row, d, 1};
    const index_t k_offset = c.heads_q * d, v_offset = (c.heads_q + c.heads_kv) * d;
    const index_t size = std::max(extent_of(c.q_shape(), strides), v_offset + extent_of(c.kv_shape(), strides));
    const auto storage = std::make_shared<std::vector<T>>(static_cast<std::size_t>(size), nan_of<T>());
    x.q = {storage, 0, c.q_shape(), strides};
    x.k = {storage, k_offset, c.kv_shape(), strides};
    x.v = {storage, v_offset, c.kv_shape(), strides};
  } else if (c.mem == layout::kv_cache) {
    x.q = make_tensor<T>(c.q_shape(), layout::padded, nan_of<T>());
    for (tensor<T>* cache : {&x.k, &x.v}) {
      *cache = make_tensor<T>({c.batch, c.seq_kv + 37, c.heads_kv, c.head_dim}, layout::contiguous, nan_of<T>());
      cache->shape[1] = c.seq_kv;
    }
  } else {
    x.q = make_tensor<T>(c.q_shape(), c.mem, nan_of<T>());
    x.k = make_tensor<T>(c.kv_shape(), c.mem, nan_of<T>());
    x.v = make_tensor<T>(c.kv_shape(), c.mem, nan_of<T>());
  }
  fill_random(x.q, rng, c.q_range);
  fill_random(x.k, rng, 1.0f);
  fill_random(x.v, rng, 1.0f);
  return x;
}

template <class T> kern::ops::attention_forward_params<T> forward_params(const attention_case& c, const inputs<T>& x,
                                                                         const tensor<T>& o, float* lse) {
  kern::ops::attention_forward_params<T> p;
  p.q = x.q.view();
  p.k = x.k.view();
  p.v = x.v.view();
  p.o = o.view();
  p.lse = lse;
  p.scale = c.scale;
  p.causal = c.causal;
  p.window = c.window;
  return p;
}

// ---------------------------------------------------------------------------------------------
// Tolerances and comparisons.

// fp32 math throughout: an f32 output is held to 1e-5 relative. Its sums over the keys carry a rounding
// error that grows like sqrt(keys) on random data, so key sequences past 1024 get proportionally more.
// A bf16 output carries its own rounding (2^-9 relative).
template <class T> double output_tolerance(index_t seq_kv) {
  if constexpr (std::is_same_v<T, bf16>) {
    return 1e-2;
  } else {
    return 1e-5 * std::max(1.0, std::sqrt(static_cast<double>(seq_kv) / 1024.0));
  }
}

// The gradients go through one more product than the forward (dS from dP - D) and sum over the
// queries as well as the keys.
template <class T> double gradient_tolerance(index_t seq_q, index_t seq_kv) {
  if constexpr (std::is_same_v<T, bf16>) {
    return 1e-2;
  } else {
    return 2e-5 * std::max(1.0, std::sqrt(static_cast<double>(std::max(seq_q, seq_kv)) / 1024.0));
  }
}

// The log-sum-exp is a score-sized number computed in fp32 whatever the storage type.
constexpr double lse_tolerance = 1e-5;

// ||out - ref|| / ||max(|ref|, size)|| (size: the typical size of each element, where given; else
// ||out - ref|| / ||ref||) below tol, NaN never passing; else a failure naming the worst element.
template <class T>
bool expect_close(const char* what, const tensor<T>& out, const dense& ref, double tol, const dense* size = nullptr) {
  double err = kern::test::relative_error(gather(out), ref.values);
  if (size != nullptr && std::isfinite(err)) {
    double diff2 = 0.0, norm2 = 0.0;
    for_each_index(out.shape, [&](index_t b, index_t s, index_t h, index_t d) {
      diff2 += std::pow(to_double(out(b, s, h, d)) - ref(b, s, h, d), 2);
      norm2 += std::pow(std::max(std::abs(ref(b, s, h, d)), (*size)(b, s, h, d)), 2);
    });
    err = norm2 > 0.0 ? std::sqrt(diff2 / norm2) : std::sqrt(diff2);
  }
  if (err < tol) {
    return true;
  }
  double worst = -1.0;
  extents at{};
  for_each_index(out.shape, [&](index_t b, index_t s, index_t h, index_t d) {
    const double diff = std::abs(to_double(out(b, s, h, d)) - ref(b, s, h, d));
    const double rank = std::isnan(diff) ? std::numeric_limits<double>::max() : diff; // a NaN first
    if (rank > worst) {
      worst = rank;
      at = {b, s, h, d};
    }
  });
  ADD_FAILURE() << what << ": relative error " << err << " >= " << tol << "; largest difference at " << what << "("
                << at[0] << ", " << at[1] << ", " << at[2] << ", " << at[3]
                << ") = " << to_double(out(at[0], at[1], at[2], at[3])) << ", expected "
                << ref(at[0], at[1], at[2], at[3]);
  return false;
}

// Every log-sum-exp within tol * max(1, |ref|) (an empty row: -inf exactly).
bool expect_lse_close(const char* what, const std::vector<float>& lse, const std::vector<double>& ref, double tol) {
  for (std::size_t i = 0; i < ref.size(); ++i) {
    const double got = static_cast<double>(lse[i]);
    const bool ok =
        std::isinf(ref[i]) ? got == ref[i] : std::abs(got - ref[i]) <= tol * std::max(1.0, std::abs(ref[i]));
    if (!ok) {
      ADD_FAILURE() << what << "[" << i << "] (flat [batch, heads_q, seq_q] index) = " << got << ", expected " << ref[i]
                    << " (tolerance " << tol << " relative)";
      return false;
    }
  }
  return true;
}

template <class T> bool expect_padding_untouched(const char* what, const tensor<T>& out) {
  if (padding_untouched(out, sentinel<T>())) {
    return true;
  }
  ADD_FAILURE() << "wrote the padding of " << what;
  return false;
}

// Runs call(); a thrown exception fails the case.
template <class Call> bool runs(Call&& call) {
  try {
    call();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "threw: " << e.what();
    return false;
  }
  return true;
}

// ---------------------------------------------------------------------------------------------
// One case of each kind: run, compare, report. Each returns whether it passed.

template <class T> bool check_forward(const attention_case& c) {
  const std::uint32_t seed = kern::test::fresh_seed();
  SCOPED_TRACE(describe<T>("attention_forward", c, seed));
  std::mt19937 rng(seed);
  const inputs<T> x = make_inputs<T>(c, rng);
  const tensor<T> o = make_output<T>(c.q_shape(), c.mem);
  std::vector<float> lse(c.lse_size(), nan_value);
  if (!runs(
          [&] { kern::cpu::attention_forward(kern::cpu::context(c.threads), forward_params(c, x, o, lse.data())); })) {
    return false;
  }
  const forward_result ref = reference_forward(widen(x.q), widen(x.k), widen(x.v), c.used_scale(), c.masking());
  bool ok = expect_padding_untouched("o", o);
  ok = expect_close("o", o, ref.o, output_tolerance<T>(c.seq_kv)) && ok;
  return expect_lse_close("lse", lse, ref.lse, lse_tolerance) && ok;
}

// attention_decode against the reference and against attention_forward on the same inputs (the two
// sum in different orders: close, not necessarily the same bits).
template <class T> bool check_decode(const attention_case& c) {
  const std::uint32_t seed = kern::test::fresh_seed();
  SCOPED_TRACE(describe<T>("attention_decode", c, seed));
  std::mt19937 rng(seed);
  const inputs<T> x = make_inputs<T>(c, rng);
  const tensor<T> o = make_output<T>(c.q_shape(), c.mem), o_forward = make_output<T>(c.q_shape(), c.mem);
  std::vector<float> lse(c.lse_size(), nan_value), lse_forward(c.lse_size(), nan_value);
  const kern::cpu::context ctx(c.threads);
  if (!runs([&] {
        kern::cpu::attention_decode(ctx, forward_params(c, x, o, lse.data()));
        kern::cpu::attention_forward(ctx, forward_params(c, x, o_forward, lse_forward.data()));
      })) {
    return false;
  }
  const forward_result ref = reference_forward(widen(x.q), widen(x.k), widen(x.v), c.used_scale(), c.masking());
  bool ok = expect_padding_untouched("o", o);
  ok = expect_close("o", o, ref.o, output_tolerance<T>(c.seq_kv)) && ok;
  ok = expect_lse_close("lse", lse, ref.lse, lse_tolerance) && ok;
  // Decode against forward: two fp32 computations of one result, each about 1e-6 from it, so closer
  // to each other than to the bound each meets (a bf16 output may differ by one rounding step in a
  // few elements).
  const double agreement = std::is_same_v<T, bf16> ? 1e-2 : 0.5 * output_tolerance<T>(c.seq_kv);
  ok = expect_close("o (decode against forward)", o, widen(o_forward), agreement) && ok;
  const std::vector<double> lse_f(lse_forward.begin(), lse_forward.end());
  return expect_lse_close("lse (decode against forward)", lse, lse_f, 0.2 * lse_tolerance) && ok;
}

template <class T> struct backward_problem {
  inputs<T> x;
  tensor<T> d_o, o, dq, dk, dv;
  std::vector<float> lse;

  kern::ops::attention_backward_params<T> params(const attention_case& c) const {
    kern::ops::attention_backward_params<T> p;
    p.q = x.q.view();
    p.k = x.k.view();
    p.v = x.v.view();
    p.o = o.view();
    p.d_o = d_o.view();
    p.lse = lse.data();
    p.dq = dq.view();
    p.dk = dk.view();
    p.dv = dv.view();
    p.scale = c.scale;
    p.causal = c.causal;
    p.window = c.window;
    return p;
  }
};

// Random inputs and output gradient, gradients poisoned; o and lse left for the caller.
template <class T> backward_problem<T> make_backward_problem(const attention_case& c, std::mt19937& rng) {
  backward_problem<T> b{make_inputs<T>(c, rng),
                        make_tensor<T>(c.q_shape(), own_layout(c.mem), nan_of<T>()),
                        make_tensor<T>(c.q_shape(), own_layout(c.mem), nan_of<T>()),
                        make_output<T>(c.q_shape(), c.mem),
                        make_output<T>(c.kv_shape(), c.mem),
                        make_output<T>(c.kv_shape(), c.mem),
                        std::vector<float>(c.lse_size(), nan_value)};
  fill_random(b.d_o, rng, 1.0f);
  return b;
}

template <class T> bool expect_gradients_close(const backward_problem<T>& b, const gradients& ref, double tol) {
  bool ok = true;
  for (const auto& [what, out, want, size] :
       {std::tuple{"dq", &b.dq, &ref.dq, &ref.dq_size}, std::tuple{"dk", &b.dk, &ref.dk, &ref.dk_size},
        std::tuple{"dv", &b.dv, &ref.dv, &ref.dv_size}}) {
    ok = expect_padding_untouched(what, *out) && ok;
    ok = expect_close(what, *out, *want, tol, size) && ok;
  }
  return ok;
}

// The backward on the reference's o and lse (rounded to the storage types), so that this checks the
// backward alone; the finite-difference test runs it on kern's own forward. The reference reads the
// stored o and lse as the kernel does: D = dO . O cancels against dO . V where the softmax is peaked,
// and a bf16 o's rounding, amplified there, belongs to the inputs, not to the kernel.
template <class T> bool check_backward(const attention_case& c) {
  const std::uint32_t seed = kern::test::fresh_seed();
  SCOPED_TRACE(describe<T>("attention_backward", c, seed));
  std::mt19937 rng(seed);
  backward_problem<T> b = make_backward_problem<T>(c, rng);
  const dense q = widen(b.x.q), k = widen(b.x.k), v = widen(b.x.v), d_o = widen(b.d_o);
  const forward_result f = reference_forward(q, k, v, c.used_scale(), c.masking());
  scatter(b.o, f.o);
  std::transform(f.lse.begin(), f.lse.end(), b.lse.begin(), [](double x) { return static_cast<float>(x); });
  if (!runs([&] { kern::cpu::attention_backward(kern::cpu::context(c.threads), b.params(c)); })) {
    return false;
  }
  const forward_result stored{widen(b.o), std::vector<double>(b.lse.begin(), b.lse.end())};
  const gradients ref = reference_backward(q, k, v, d_o, stored, c.used_scale(), c.masking());
  return expect_gradients_close(b, ref, gradient_tolerance<T>(c.seq_q, c.seq_kv));
}

// Runs cases until a few have failed (one broken path would otherwise print hundreds).
template <class Check> void check_all(const std::vector<attention_case>& cases, Check&& check) {
  int failed = 0;
  for (const attention_case& c : cases) {
    if (!check(c) && ++failed == 3) {
      FAIL() << "stopping after 3 failed cases";
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Case lists. A fixed-seed generator picks the variants, so that every run covers the same
// combinations (the data stays fresh).

struct head_config {
  index_t q, kv;
};
constexpr head_config head_configs[] = {{1, 1}, {4, 4}, {4, 2}, {6, 1}, {8, 2}};
// The head sizes of real models, and odd ones that are not a multiple of any SIMD width.
constexpr index_t head_dims[] = {1, 8, 17, 32, 40, 64, 80, 96, 128, 256};
constexpr index_t windows[] = {1, 5, 64};

class picker {
public:
  explicit picker(std::uint32_t seed) : rng_(seed) {}
  template <class List> auto one_of(const List& list) { return list[rng_() % std::size(list)]; }
  bool coin() { return (rng_() & 1) != 0; }

  // Draws the knobs a case leaves open: scale, layout, threads, q's range and (where asked) the mask.
  attention_case complete(attention_case c, bool draw_mask) {
    static constexpr std::optional<float> scales[] = {std::nullopt, 0.5f, 0.125f};
    static constexpr layout layouts[] = {layout::contiguous, layout::padded, layout::heads_major, layout::fused_qkv,
                                         layout::kv_cache};
    static constexpr float q_ranges[] = {1.0f, 4.0f};
    c.scale = one_of(scales);
    c.mem = one_of(layouts);
    if (c.mem == layout::fused_qkv && c.seq_q != c.seq_kv) {
      c.mem = layout::kv_cache;
    }
    c.threads = coin() ? 2 : 1;
    c.q_range = one_of(q_ranges);
    if (draw_mask) {
      c.causal = c.seq_q <= c.seq_kv && coin();
      c.window = c.causal && coin() ? one_of(windows) : 0;
    }
    return c;
  }

private:
  std::mt19937 rng_;
};

// batch * heads_q * seq_q * seq_kv * head_dim: what the reference's time grows with.
index_t work(const attention_case& c) { return c.batch * c.heads_q * c.seq_q * c.seq_kv * c.head_dim; }

// Fewer heads and one sequence where the reference would take long.
attention_case within(attention_case c, index_t budget) {
  if (work(c) > budget) {
    c.batch = 1;
  }
  if (work(c) > budget) {
    c.heads_q = c.heads_q / c.heads_kv; // one key/value head, its group kept
    c.heads_kv = 1;
  }
  if (work(c) > budget) {
    c.heads_q = 1;
  }
  return c;
}

constexpr index_t case_budget = 4'000'000;

std::vector<attention_case> forward_cases() {
  picker pick(2025);
  std::vector<attention_case> cases;
  // Every head size at every length (seq_q = seq_kv: 1, primes, and either side of the kernel's blocks
  // of 8 to 32 queries and 128 keys).
  for (index_t d : head_dims) {
    for (index_t s : {1, 2, 7, 13, 31, 64, 100, 129, 257}) {
      const head_config h = pick.one_of(head_configs);
      const attention_case c{
          .batch = pick.coin() ? 2 : 1, .seq_q = s, .seq_kv = s, .heads_q = h.q, .heads_kv = h.kv, .head_dim = d};
      cases.push_back(within(pick.complete(c, true), case_budget));
    }
  }
  // Fewer queries than keys (the newest positions of a sequence), with and without the causal mask.
  struct lengths {
    index_t q, kv;
  };
  for (const lengths n : {lengths{5, 300}, lengths{1, 77}, lengths{3, 64}, lengths{16, 129}, lengths{33, 200},
                          lengths{7, 1000}, lengths{40, 41}}) {
    for (bool causal : {false, true}) {
      const head_config h = pick.one_of(head_configs);
      attention_case c{.batch = pick.coin() ? 2 : 1,
                       .seq_q = n.q,
                       .seq_kv = n.kv,
                       .heads_q = h.q,
                       .heads_kv = h.kv,
                       .head_dim = pick.one_of(head_dims)};
      c = pick.complete(c, false);
      c.causal = causal;
      c.window = causal && pick.coin() ? pick.one_of(windows) : 0;
      cases.push_back(within(c, case_budget));
    }
  }
  // Every head configuration with every mask.
  for (const head_config h : head_configs) {
    for (index_t window : {-1, 0, 1, 5, 64}) { // -1: not causal
      attention_case c{.batch = 2, .seq_q = 70, .seq_kv = 70, .heads_q = h.q, .heads_kv = h.kv, .head_dim = 40};
      c = pick.complete(c, false);
      c.causal = window >= 0;
      c.window = std::max<index_t>(window, 0);
      cases.push_back(c);
    }
  }
  // The large end: GPT-2 small's 12 heads of 64, a Llama-like 32/8 grouping, head_dim 256 over four key blocks.
  const attention_case large[] = {
      {.seq_q = 300, .seq_kv = 300, .heads_q = 12, .heads_kv = 12, .head_dim = 64, .causal = true},
      {.seq_q = 257, .seq_kv = 257, .heads_q = 32, .heads_kv = 8, .head_dim = 64, .causal = true, .window = 100},
      {.batch = 2, .seq_q = 200, .seq_kv = 390, .heads_q = 2, .heads_kv = 1, .head_dim = 256},
  };
  for (const attention_case& c : large) {
    cases.push_back(pick.complete(c, false));
  }
  return cases;
}

std::vector<attention_case> backward_cases() {
  picker pick(77);
  std::vector<attention_case> cases;
  constexpr index_t lengths[] = {1, 2, 13, 33, 64, 100, 129};
  for (index_t d : head_dims) {
    for (int repeat = 0; repeat < 2; ++repeat) {
      const head_config h = pick.one_of(head_configs);
      const index_t s = pick.one_of(lengths);
      const attention_case c{
          .batch = pick.coin() ? 2 : 1, .seq_q = s, .seq_kv = s, .heads_q = h.q, .heads_kv = h.kv, .head_dim = d};
      cases.push_back(within(pick.complete(c, true), case_budget / 2));
    }
  }
  struct lengths_pair {
    index_t q, kv;
  };
  for (const lengths_pair n : {lengths_pair{5, 300}, lengths_pair{1, 77}, lengths_pair{16, 129}, lengths_pair{40, 41},
                               lengths_pair{130, 260}}) {
    for (bool causal : {false, true}) {
      const head_config h = pick.one_of(head_configs);
      attention_case c{.batch = pick.coin() ? 2 : 1,
                       .seq_q = n.q,
                       .seq_kv = n.kv,
                       .heads_q = h.q,
                       .heads_kv = h.kv,
                       .head_dim = pick.one_of(head_dims)};
      c = pick.complete(c, false);
      c.causal = causal;
      c.window = causal && pick.coin() ? pick.one_of(windows) : 0;
      cases.push_back(within(c, case_budget / 2));
    }
  }
  for (const head_config h : head_configs) {
    for (index_t window : {-1, 0, 5}) { // -1: not causal
      attention_case c{.batch = 2, .seq_q = 50, .seq_kv = 50, .heads_q = h.q, .heads_kv = h.kv, .head_dim = 32};
      c = pick.complete(c, false);
      c.causal = window >= 0;
      c.window = std::max<index_t>(window, 0);
      cases.push_back(c);
    }
  }
  return cases;
}

// A few queries against a long cache, as a sampler's decode step (and a speculative one's).
std::vector<attention_case> decode_cases() {
  picker pick(4097);
  std::vector<attention_case> cases;
  constexpr head_config decode_heads[] = {{1, 1}, {4, 4}, {8, 2}, {6, 1}};
  constexpr index_t decode_dims[] = {17, 64, 80, 128};
  for (index_t seq_q : {1, 2, 4}) {
    for (index_t seq_kv : {1, 33, 1000, 4097}) {
      for (bool causal : {false, true}) {
        if (causal && seq_q > seq_kv) {
          continue; // invalid: the first queries would see no key
        }
        const head_config h = pick.one_of(decode_heads);
        attention_case c{.batch = pick.coin() ? 2 : 1,
                         .seq_q = seq_q,
                         .seq_kv = seq_kv,
                         .heads_q = h.q,
                         .heads_kv = h.kv,
                         .head_dim = pick.one_of(decode_dims)};
        c = pick.complete(c, false);
        c.mem = pick.coin() ? layout::kv_cache : c.mem; // mostly cache views
        c.causal = causal;
        c.window = causal && pick.coin() ? pick.one_of(windows) : 0;
        cases.push_back(c);
      }
    }
  }
  return cases;
}

// Every other case: bf16 shares the paths that do not depend on the element type.
std::vector<attention_case> every_other(const std::vector<attention_case>& cases) {
  std::vector<attention_case> out;
  for (std::size_t i = 0; i < cases.size(); i += 2) {
    out.push_back(cases[i]);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Memory: a materialized score matrix for seq 8192 is 256 MB. Declared first, so that no earlier
// test has raised the process's peak resident size (ctest runs each test in a process of its own).

#if defined(__SANITIZE_ADDRESS__)
#define KERN_TEST_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define KERN_TEST_SANITIZED 1
#endif
#endif

#if !defined(KERN_TEST_SANITIZED)
// The process's peak resident size in bytes (ru_maxrss is in KiB on Linux).
long peak_resident_bytes() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_maxrss * 1024L;
}
#endif

TEST(CpuAttentionForward, MemoryIsLinearInSequence) {
#if defined(KERN_TEST_SANITIZED)
  GTEST_SKIP() << "the sanitizer's shadow memory and quarantine hide the kernel's own peak";
#else
  const std::uint32_t seed = kern::test::fresh_seed();
  SCOPED_TRACE(testing::Message() << "batch 1 seq 8192 heads 1 head_dim 64 causal threads 1 seed " << seed);
  std::mt19937 rng(seed);
  const extents shape{1, 8192, 1, 64};
  // Every buffer written before the measurement, so that its pages are resident already.
  inputs<float> x{make_tensor<float>(shape, layout::contiguous, 0.0f),
                  make_tensor<float>(shape, layout::contiguous, 0.0f),
                  make_tensor<float>(shape, layout::contiguous, 0.0f)};
  fill_random(x.q, rng, 1.0f);
  fill_random(x.k, rng, 1.0f);
  fill_random(x.v, rng, 1.0f);
  const tensor<float> o = make_output<float>(shape, layout::contiguous);
  std::vector<float> lse(8192, nan_value);
  const attention_case c{.seq_q = 8192, .seq_kv = 8192, .head_dim = 64, .causal = true};

  const long before = peak_resident_bytes();
  kern::cpu::attention_forward(kern::cpu::context(1), forward_params(c, x, o, lse.data()));
  const long growth = peak_resident_bytes() - before;
  EXPECT_LT(growth, 32L << 20) << "the peak resident size grew by " << growth / (1 << 20)
                               << " MiB during the call (a score matrix would be 256 MiB)";
  // The call did its work: every output is finite.
  EXPECT_TRUE(std::all_of(o.storage->begin(), o.storage->end(), [](float value) { return std::isfinite(value); }));
  EXPECT_TRUE(std::all_of(lse.begin(), lse.end(), [](float value) { return std::isfinite(value); }));
#endif
}

// ---------------------------------------------------------------------------------------------
// Against the references.

TEST(CpuAttentionForward, F32MatchesReference) { check_all(forward_cases(), check_forward<float>); }
TEST(CpuAttentionForward, Bf16MatchesReference) { check_all(every_other(forward_cases()), check_forward<bf16>); }
TEST(CpuAttentionBackward, F32MatchesReference) { check_all(backward_cases(), check_backward<float>); }
TEST(CpuAttentionBackward, Bf16MatchesReference) { check_all(every_other(backward_cases()), check_backward<bf16>); }
TEST(CpuAttentionDecode, F32MatchesForwardAndReference) { check_all(decode_cases(), check_decode<float>); }
TEST(CpuAttentionDecode, Bf16MatchesForwardAndReference) { check_all(every_other(decode_cases()), check_decode<bf16>); }

// The analytic reference backward, and kern's backward run on kern's own forward (as a training step
// does), against central differences of the float64 forward of the loss L = sum(W * O), W random
// (so dO = W), on tiny shapes.
TEST(CpuAttentionBackward, MatchesFiniteDifferences) {
  const attention_case cases[] = {
      {.seq_q = 5, .seq_kv = 5, .heads_q = 4, .heads_kv = 2, .head_dim = 8, .causal = true, .window = 3},
      {.batch = 2, .seq_q = 5, .seq_kv = 5, .heads_q = 2, .heads_kv = 2, .head_dim = 8, .threads = 2},
      {.seq_q = 3, .seq_kv = 7, .heads_q = 4, .heads_kv = 1, .head_dim = 5, .causal = true, .window = 2},
      {.seq_q = 2, .seq_kv = 6, .heads_q = 3, .heads_kv = 3, .head_dim = 17, .scale = 0.7f, .q_range = 3.0f},
      {.seq_q = 4, .seq_kv = 4, .heads_q = 2, .heads_kv = 1, .head_dim = 1, .mem = layout::padded, .causal = true},
  };
  for (const attention_case& c : cases) {
    const std::uint32_t seed = kern::test::fresh_seed();
    SCOPED_TRACE(describe<float>("finite differences", c, seed));
    std::mt19937 rng(seed);
    backward_problem<float> b = make_backward_problem<float>(c, rng);
    const kern::cpu::context ctx(c.threads);
    ASSERT_TRUE(runs([&] {
      kern::cpu::attention_forward(ctx, forward_params(c, b.x, b.o, b.lse.data()));
      kern::cpu::attention_backward(ctx, b.params(c));
    }));

    dense q = widen(b.x.q), k = widen(b.x.k), v = widen(b.x.v);
    const dense w = widen(b.d_o);
    const double scale = c.used_scale();
    const auto loss = [&] {
      const forward_result f = reference_forward(q, k, v, scale, c.masking());
      double sum = 0.0;
      for (std::size_t i = 0; i < w.values.size(); ++i) {
        sum += w.values[i] * f.o.values[i];
      }
      return sum;
    };
    // Central differences with step h: truncation error ~h^2, rounding ~1e-16 / h, both far below 1e-7.
    constexpr double h = 1e-5;
    const auto numeric = [&](dense& x) {
      dense grad(x.shape);
      for (std::size_t i = 0; i < x.values.size(); ++i) {
        const double saved = x.values[i];
        x.values[i] = saved + h;
        const double up = loss();
        x.values[i] = saved - h;
        const double down = loss();
        x.values[i] = saved;
        grad.values[i] = (up - down) / (2.0 * h);
      }
      return grad;
    };
    const gradients analytic =
        reference_backward(q, k, v, w, reference_forward(q, k, v, scale, c.masking()), scale, c.masking());
    const gradients fd{numeric(q), numeric(k), numeric(v), analytic.dq_size, analytic.dk_size, analytic.dv_size};
    for (const auto& [what, ref, num] :
         {std::tuple{"reference dq", &analytic.dq, &fd.dq}, std::tuple{"reference dk", &analytic.dk, &fd.dk},
          std::tuple{"reference dv", &analytic.dv, &fd.dv}}) {
      EXPECT_LT(kern::test::relative_error(ref->values, num->values), 1e-7) << what << " against finite differences";
    }
    EXPECT_TRUE(expect_gradients_close(b, fd, gradient_tolerance<float>(c.seq_q, c.seq_kv)));
  }
}

// ---------------------------------------------------------------------------------------------
// Determinism: the same call gives the same bits, on any number of threads (the work is split so
// that no sum's order depends on the thread count).

template <class T> std::vector<std::uint32_t> bits_of_all(const tensor<T>& x) {
  std::vector<std::uint32_t> out;
  for (const T& value : gather(x)) {
    out.push_back(bits_of(value));
  }
  return out;
}

template <class T> void check_bit_identical(const attention_case& c) {
  const std::uint32_t seed = kern::test::fresh_seed();
  SCOPED_TRACE(describe<T>("determinism", c, seed));
  std::mt19937 rng(seed);
  backward_problem<T> b = make_backward_problem<T>(c, rng);
  // Forward: one thread twice, then 2 and 3 threads, each against the first run.
  std::vector<std::uint32_t> o_first, lse_first;
  for (int threads : {1, 1, 2, 3}) {
    SCOPED_TRACE(testing::Message() << "forward, threads " << threads);
    const tensor<T> o = make_output<T>(c.q_shape(), c.mem);
    std::vector<float> lse(c.lse_size(), nan_value);
    kern::cpu::attention_forward(kern::cpu::context(threads), forward_params(c, b.x, o, lse.data()));
    std::vector<std::uint32_t> lse_bits(lse.size());
    std::transform(lse.begin(), lse.end(), lse_bits.begin(), [](float x) { return bits_of(x); });
    if (o_first.empty()) {
      o_first = bits_of_all(o);
      lse_first = lse_bits;
      b.o = o;
      b.lse = lse;
      continue;
    }
    EXPECT_TRUE(bits_of_all(o) == o_first) << "o differs from the first run's (1 thread)";
    EXPECT_TRUE(lse_bits == lse_first) << "lse differs from the first run's (1 thread)";
  }
  // Backward on that forward's o and lse.
  std::vector<std::uint32_t> first[3];
  for (int threads : {1, 1, 2, 3}) {
    SCOPED_TRACE(testing::Message() << "backward, threads " << threads);
    b.dq = make_output<T>(c.q_shape(), c.mem);
    b.dk = make_output<T>(c.kv_shape(), c.mem);
    b.dv = make_output<T>(c.kv_shape(), c.mem);
    kern::cpu::attention_backward(kern::cpu::context(threads), b.params(c));
    const std::vector<std::uint32_t> now[3] = {bits_of_all(b.dq), bits_of_all(b.dk), bits_of_all(b.dv)};
    for (int i = 0; i < 3; ++i) {
      if (first[i].empty()) {
        first[i] = now[i];
      } else {
        EXPECT_TRUE(now[i] == first[i]) << (i == 0   ? "dq"
                                            : i == 1 ? "dk"
                                                     : "dv")
                                        << " differs from the first run's (1 thread)";
      }
    }
  }
}

const attention_case determinism_cases[] = {
    {.batch = 2, .seq_q = 150, .seq_kv = 150, .heads_q = 4, .heads_kv = 2, .head_dim = 64, .causal = true},
    {.seq_q = 40, .seq_kv = 300, .heads_q = 6, .heads_kv = 1, .head_dim = 80, .mem = layout::kv_cache},
    {.batch = 2, .seq_q = 97, .seq_kv = 97, .heads_q = 3, .heads_kv = 3, .head_dim = 17, .causal = true, .window = 20},
};

TEST(CpuAttention, F32IsBitIdenticalAcrossRunsAndThreads) {
  for (const attention_case& c : determinism_cases) {
    check_bit_identical<float>(c);
  }
}
TEST(CpuAttention, Bf16IsBitIdenticalAcrossRunsAndThreads) {
  for (const attention_case& c : determinism_cases) {
    check_bit_identical<bf16>(c);
  }
}

// Decode splits the keys into chunks merged afterwards, in an order that does not depend on the
// threads: the same bits on any number of threads.
TEST(CpuAttentionDecode, IsBitIdenticalAcrossRunsAndThreads) {
  const attention_case c{.batch = 2,
                         .seq_q = 2,
                         .seq_kv = 3000,
                         .heads_q = 8,
                         .heads_kv = 2,
                         .head_dim = 64,
                         .mem = layout::kv_cache,
                         .causal = true};
  const std::uint32_t seed = kern::test::fresh_seed();
  SCOPED_TRACE(describe<float>("attention_decode", c, seed));
  std::mt19937 rng(seed);
  const inputs<float> x = make_inputs<float>(c, rng);
  std::vector<std::uint32_t> first;
  for (int threads : {1, 1, 2, 3}) {
    const tensor<float> o = make_output<float>(c.q_shape(), c.mem);
    std::vector<float> lse(c.lse_size(), nan_value);
    kern::cpu::attention_decode(kern::cpu::context(threads), forward_params(c, x, o, lse.data()));
    std::vector<std::uint32_t> now = bits_of_all(o);
    for (float value : lse) {
      now.push_back(bits_of(value));
    }
    if (first.empty()) {
      first = now;
    } else {
      EXPECT_TRUE(now == first) << "o or lse on " << threads << " threads differs from the first run's (1 thread)";
    }
  }
}

// ---------------------------------------------------------------------------------------------
// NaN and Inf: not clamped, and confined to the outputs whose inputs hold them.

// The (batch, query, query head) rows of o that are not finite, as a set of flat indices.
template <class T> std::vector<bool> nonfinite_rows(const tensor<T>& o) {
  std::vector<bool> rows(static_cast<std::size_t>(o.shape[0] * o.shape[1] * o.shape[2]), false);
  for_each_index(o.shape, [&](index_t b, index_t s, index_t h, index_t d) {
    if (!std::isfinite(to_double(o(b, s, h, d)))) {
      rows[static_cast<std::size_t>((b * o.shape[1] + s) * o.shape[2] + h)] = true;
    }
  });
  return rows;
}

template <class T> void check_nan_propagation(bool causal, index_t window) {
  const attention_case c{.batch = 2,
                         .seq_q = 40,
                         .seq_kv = 45,
                         .heads_q = 4,
                         .heads_kv = 2,
                         .head_dim = 16,
                         .threads = 2,
                         .causal = causal,
                         .window = window};
  const std::uint32_t seed = kern::test::fresh_seed();
  SCOPED_TRACE(describe<T>("NaN propagation", c, seed));
  std::mt19937 rng(seed);
  struct result {
    tensor<T> o;
    std::vector<float> lse;
  };
  const auto run = [&](const std::function<void(inputs<T>&)>& poison) {
    inputs<T> x = make_inputs<T>(c, rng);
    poison(x);
    const tensor<T> o = make_output<T>(c.q_shape(), c.mem);
    std::vector<float> lse(c.lse_size(), 0.0f);
    kern::cpu::attention_forward(kern::cpu::context(c.threads), forward_params(c, x, o, lse.data()));
    return result{o, lse};
  };
  const auto row = [&](index_t b, index_t i, index_t h) {
    return static_cast<std::size_t>((b * c.seq_q + i) * c.heads_q + h);
  };
  const auto lse_at = [&](index_t b, index_t i, index_t h) {
    return static_cast<std::size_t>((b * c.heads_q + h) * c.seq_q + i);
  };
  const auto sees = [&](index_t i, index_t j) {
    const auto [first, last] = kern::ops::visible_keys(i, c.seq_q, c.seq_kv, c.causal, c.window);
    return first <= j && j < last;
  };

  { // NaN in one element of q: that query's row of o (every element) and its lse, nothing else.
    const result r = run([](inputs<T>& x) { x.q(1, 17, 3, 5) = nan_of<T>(); });
    const std::vector<bool> bad = nonfinite_rows(r.o);
    for_each_index(r.o.shape, [&](index_t b, index_t i, index_t h, index_t d) {
      const bool hit = b == 1 && i == 17 && h == 3;
      EXPECT_EQ(std::isnan(to_double(r.o(b, i, h, d))), hit) << "NaN in q(1, 17, 3, 5): o(" << b << ", " << i << ", "
                                                             << h << ", " << d << ") = " << to_double(r.o(b, i, h, d));
    });
    EXPECT_TRUE(std::isnan(r.lse[lse_at(1, 17, 3)]));
    EXPECT_EQ(std::count(bad.begin(), bad.end(), true), 1);
  }
  { // NaN in key 21 of key/value head 1 in batch 0: the rows of query heads 2 and 3 that see key 21.
    const result r = run([](inputs<T>& x) { x.k(0, 21, 1, 2) = nan_of<T>(); });
    const std::vector<bool> bad = nonfinite_rows(r.o);
    for (index_t b = 0; b < c.batch; ++b) {
      for (index_t i = 0; i < c.seq_q; ++i) {
        for (index_t h = 0; h < c.heads_q; ++h) {
          const bool hit = b == 0 && h / 2 == 1 && sees(i, 21);
          EXPECT_EQ(bad[row(b, i, h)], hit) << "NaN in k(0, 21, 1, 2): row (" << b << ", " << i << ", " << h << ")";
          EXPECT_EQ(std::isnan(r.lse[lse_at(b, i, h)]), hit)
              << "NaN in k(0, 21, 1, 2): lse of (" << b << ", " << i << ", " << h << ")";
        }
      }
    }
  }
  { // NaN in v: element 3 of the rows that see the key; rows of the other batch and head group stay finite.
    const result r = run([](inputs<T>& x) { x.v(1, 30, 0, 3) = nan_of<T>(); });
    const std::vector<bool> bad = nonfinite_rows(r.o);
    for (index_t b = 0; b < c.batch; ++b) {
      for (index_t i = 0; i < c.seq_q; ++i) {
        for (index_t h = 0; h < c.heads_q; ++h) {
          if (b == 1 && h / 2 == 0) {
            if (sees(i, 30)) {
              EXPECT_TRUE(std::isnan(to_double(r.o(b, i, h, 3))))
                  << "NaN in v(1, 30, 0, 3): o(1, " << i << ", " << h << ", 3) = " << to_double(r.o(b, i, h, 3));
            }
          } else {
            EXPECT_FALSE(bad[row(b, i, h)])
                << "NaN in v(1, 30, 0, 3) reached row (" << b << ", " << i << ", " << h << ")";
          }
        }
      }
    }
  }
  { // +inf in q against a positive key element: an infinite score, and inf - inf = NaN in the softmax.
    const result r = run([](inputs<T>& x) {
      x.q(0, 9, 0, 0) = kern::from_float<T>(std::numeric_limits<float>::infinity());
      x.k(0, 9 + 5, 0, 0) = kern::from_float<T>(1.0f); // key 14 is query 9's own position (seq_kv - seq_q = 5)
    });
    const std::vector<bool> bad = nonfinite_rows(r.o);
    for_each_index(r.o.shape, [&](index_t b, index_t i, index_t h, index_t d) {
      EXPECT_EQ(std::isnan(to_double(r.o(b, i, h, d))), b == 0 && i == 9 && h == 0)
          << "+inf in q(0, 9, 0, 0): o(" << b << ", " << i << ", " << h << ", " << d << ")";
    });
    EXPECT_EQ(std::count(bad.begin(), bad.end(), true), 1);
  }
}

TEST(CpuAttentionForward, NanReachesTheRowsThatSeeIt) {
  check_nan_propagation<float>(false, 0);
  check_nan_propagation<float>(true, 0);
  check_nan_propagation<float>(true, 8);
  check_nan_propagation<bf16>(true, 0);
}

// ---------------------------------------------------------------------------------------------
// Empty sizes: nothing to do is not an error; a query without keys gets o = 0 and lse = -inf.

TEST(CpuAttention, EmptySizes) {
  const kern::cpu::context ctx(2);
  std::vector<float> q(static_cast<std::size_t>(2 * 5 * 4 * 8), 0.5f),
      kv(static_cast<std::size_t>(2 * 7 * 2 * 8), 0.25f), o(q.size(), 9.0f), lse(40, 9.0f);
  using forward = kern::ops::attention_forward_params<float>;
  const auto make = [&](extents q_shape, extents kv_shape, bool causal) {
    forward p;
    p.q = {element_count(q_shape) == 0 ? nullptr : q.data(), q_shape};
    p.k = {element_count(kv_shape) == 0 ? nullptr : kv.data(), kv_shape};
    p.v = p.k;
    p.o = {element_count(q_shape) == 0 ? nullptr : o.data(), q_shape};
    p.lse = lse.data();
    p.causal = causal;
    return p;
  };
  const auto untouched = [&] {
    return std::all_of(o.begin(), o.end(), [](float x) { return x == 9.0f; }) &&
           std::all_of(lse.begin(), lse.end(), [](float x) { return x == 9.0f; });
  };
  for (auto* entry : {&kern::cpu::attention_forward<float>, &kern::cpu::attention_decode<float>}) {
    SCOPED_TRACE(entry == &kern::cpu::attention_forward<float> ? "attention_forward" : "attention_decode");
    std::fill(o.begin(), o.end(), 9.0f);
    std::fill(lse.begin(), lse.end(), 9.0f);
    // No batch, no queries: nothing is written (empty tensors may be null).
    EXPECT_NO_THROW(entry(ctx, make({0, 5, 4, 8}, {0, 7, 2, 8}, true)));
    EXPECT_NO_THROW(entry(ctx, make({2, 0, 4, 8}, {2, 7, 2, 8}, true)));
    EXPECT_NO_THROW(entry(ctx, make({2, 0, 4, 8}, {2, 0, 2, 8}, true)));
    EXPECT_TRUE(untouched()) << "an empty call wrote o or lse";
    // No keys (not causal: causal would leave the queries no position): o = 0, lse = -inf.
    EXPECT_NO_THROW(entry(ctx, make({2, 5, 4, 8}, {2, 0, 2, 8}, false)));
    EXPECT_TRUE(std::all_of(o.begin(), o.end(), [](float x) { return x == 0.0f; })) << "o is not 0 without keys";
    EXPECT_TRUE(std::all_of(lse.begin(), lse.end(), [](float x) {
      return x == -std::numeric_limits<float>::infinity();
    })) << "lse is not -inf without keys";
  }

  // Backward: no keys gives dq = 0; no queries gives dk = dv = 0 (both written); no batch writes nothing.
  std::vector<float> d_o(q.size(), 0.5f), dq(q.size(), 9.0f), dk(kv.size(), 9.0f), dv(kv.size(), 9.0f);
  std::vector<float> o_in(q.size(), 0.0f), lse_in(40, -std::numeric_limits<float>::infinity());
  const auto backward = [&](extents q_shape, extents kv_shape) {
    const auto data = [](auto& buffer, const extents& shape) {
      return element_count(shape) == 0 ? nullptr : buffer.data();
    };
    kern::ops::attention_backward_params<float> p;
    p.q = {data(q, q_shape), q_shape};
    p.k = {data(kv, kv_shape), kv_shape};
    p.v = p.k;
    p.o = {data(o_in, q_shape), q_shape};
    p.d_o = {data(d_o, q_shape), q_shape};
    p.lse = lse_in.data();
    p.dq = {data(dq, q_shape), q_shape};
    p.dk = {data(dk, kv_shape), kv_shape};
    p.dv = {data(dv, kv_shape), kv_shape};
    kern::cpu::attention_backward(ctx, p);
  };
  const auto all_equal = [](const std::vector<float>& x, float value) {
    return std::all_of(x.begin(), x.end(), [&](float e) { return e == value; });
  };
  EXPECT_NO_THROW(backward({0, 5, 4, 8}, {0, 7, 2, 8}));
  EXPECT_TRUE(all_equal(dq, 9.0f) && all_equal(dk, 9.0f) && all_equal(dv, 9.0f)) << "no batch: wrote a gradient";
  EXPECT_NO_THROW(backward({2, 5, 4, 8}, {2, 0, 2, 8}));
  EXPECT_TRUE(all_equal(dq, 0.0f)) << "no keys: dq is not 0";
  EXPECT_NO_THROW(backward({2, 0, 4, 8}, {2, 7, 2, 8}));
  EXPECT_TRUE(all_equal(dk, 0.0f) && all_equal(dv, 0.0f)) << "no queries: dk or dv is not 0";
}

// ---------------------------------------------------------------------------------------------
// Argument checks: each throws kern::error naming the argument, before writing any output.

testing::AssertionResult names(const std::string& message, std::string_view op, const std::string& part) {
  if (message.starts_with(std::string(op) + ": ") && message.find(part) != std::string::npos) {
    return testing::AssertionSuccess();
  }
  return testing::AssertionFailure() << "expected a " << op << " error naming \"" << part << "\", got \"" << message
                                     << "\"";
}

constexpr std::string_view no_error = "(no kern::error thrown)";

// Valid when unchanged: q and o [2, 5, 4, 8], k and v [2, 7, 2, 8], in buffers big enough for every
// change below (head_dim up to 300).
struct argument_buffers {
  std::vector<float> q = std::vector<float>(static_cast<std::size_t>(2 * 5 * 4 * 300), 1.0f),
                     k = std::vector<float>(static_cast<std::size_t>(2 * 7 * 2 * 300), 1.0f), v = k, o = q, d_o = q,
                     dq = q, dk = k, dv = k, lse = std::vector<float>(40, 0.0f);
  std::vector<float> outputs() const {
    std::vector<float> all = o;
    for (const std::vector<float>* x : {&dq, &dk, &dv, &lse}) {
      all.insert(all.end(), x->begin(), x->end());
    }
    return all;
  }
};

template <class Params, class Entry>
std::string message_of(argument_buffers& buffers, Params p, const std::function<void(Params&)>& change, Entry entry) {
  change(p);
  const std::vector<float> before = buffers.outputs();
  std::string message(no_error);
  try {
    entry(kern::cpu::context(1), p);
  } catch (const kern::error& e) {
    message = e.what();
  }
  if (message != no_error) {
    EXPECT_TRUE(buffers.outputs() == before) << "a rejected call wrote an output: " << message;
  }
  return message;
}

TEST(CpuAttention, RejectsBadArguments) {
  argument_buffers buf;
  using forward = kern::ops::attention_forward_params<float>;
  forward valid;
  valid.q = {buf.q.data(), {2, 5, 4, 8}};
  valid.k = {buf.k.data(), {2, 7, 2, 8}};
  valid.v = {buf.v.data(), {2, 7, 2, 8}};
  valid.o = {buf.o.data(), {2, 5, 4, 8}};
  valid.lse = buf.lse.data();

  for (const auto& [op, entry] :
       {std::pair{std::string_view("kern::cpu::attention_forward"), &kern::cpu::attention_forward<float>},
        std::pair{std::string_view("kern::cpu::attention_decode"), &kern::cpu::attention_decode<float>}}) {
    SCOPED_TRACE(op);
    const auto with = [&, entry = entry](const std::function<void(forward&)>& change) {
      return message_of(buf, valid, change, entry);
    };
    const auto set_head_dim = [](forward& p, index_t d) {
      for (auto* x : {&p.q.shape, &p.k.shape, &p.v.shape, &p.o.shape}) {
        (*x)[3] = d;
      }
      p.q.strides = attention_tensor<float>::contiguous(p.q.shape);
      p.o.strides = p.q.strides;
      p.k.strides = attention_tensor<float>::contiguous(p.k.shape);
      p.v.strides = p.k.strides;
    };
    const auto set_kv = [](forward& p, index_t dim, index_t value) {
      p.k.shape[static_cast<std::size_t>(dim)] = value;
      p.v.shape[static_cast<std::size_t>(dim)] = value;
    };
    EXPECT_EQ(with([](forward&) {}), no_error);
    // Sizes and strides.
    EXPECT_TRUE(names(with([](forward& p) { p.q.shape[1] = -1; }), op, "q.shape[1] = -1 must not be negative"));
    EXPECT_TRUE(
        names(with([](forward& p) { p.k.strides[3] = 2; }), op, "k.strides[3] = 2: head_dim must be contiguous"));
    EXPECT_TRUE(names(with([](forward& p) { p.o.strides[3] = 3; }), op, "o.strides[3] = 3"));
    EXPECT_TRUE(names(with([](forward& p) { p.v.strides[1] = -16; }), op, "v.strides[1] = -16 must not be negative"));
    // Null data with elements.
    EXPECT_TRUE(names(with([](forward& p) { p.q.data = nullptr; }), op, "q.data is null"));
    EXPECT_TRUE(names(with([](forward& p) { p.k.data = nullptr; }), op, "k.data is null"));
    EXPECT_TRUE(names(with([](forward& p) { p.v.data = nullptr; }), op, "v.data is null"));
    EXPECT_TRUE(names(with([](forward& p) { p.o.data = nullptr; }), op, "o.data is null"));
    // Shapes that do not agree.
    EXPECT_TRUE(names(with([](forward& p) { p.v.shape[1] = 6; }), op, "k is [2, 7, 2, 8] but v is [2, 6, 2, 8]"));
    EXPECT_TRUE(names(with([&](forward& p) { set_kv(p, 0, 1); }), op, "k has batch 1 but q has 2"));
    EXPECT_TRUE(names(with([&](forward& p) { set_kv(p, 3, 4); }), op, "k has head_dim 4 but q has 8"));
    EXPECT_TRUE(names(with([](forward& p) { p.o.shape[3] = 7; }), op, "o is [2, 5, 4, 7] but q is [2, 5, 4, 8]"));
    EXPECT_TRUE(names(with([](forward& p) { p.o.shape[0] = 1; }), op, "o is [1, 5, 4, 8] but q is [2, 5, 4, 8]"));
    // Head sizes and head counts.
    EXPECT_TRUE(names(with([&](forward& p) { set_head_dim(p, 300); }), op, "head_dim = 300 is not supported"));
    EXPECT_TRUE(names(with([&](forward& p) { set_head_dim(p, 257); }), op, "head_dim = 257 is not supported"));
    EXPECT_EQ(with([&](forward& p) { set_head_dim(p, 256); }), no_error);
    EXPECT_TRUE(names(with([&](forward& p) { set_kv(p, 2, 3); }), op, "heads_kv = 3 does not divide heads_q = 4"));
    EXPECT_TRUE(names(with([&](forward& p) { set_kv(p, 2, 0); }), op, "heads_kv = 0 with queries to answer"));
    // Scale and mask.
    EXPECT_TRUE(names(with([](forward& p) { p.scale = std::numeric_limits<float>::infinity(); }), op,
                      "scale = inf is not finite"));
    EXPECT_TRUE(names(with([](forward& p) { p.scale = nan_value; }), op, "is not finite"));
    EXPECT_TRUE(names(with([](forward& p) {
                        p.causal = true;
                        p.window = -1;
                      }),
                      op, "window = -1 must not be negative"));
    EXPECT_TRUE(names(with([](forward& p) { p.window = 3; }), op, "window = 3 needs causal = true"));
    EXPECT_TRUE(names(with([&](forward& p) {
                        p.causal = true;
                        set_kv(p, 1, 3);
                      }),
                      op, "causal with seq_q = 5 > seq_kv = 3"));
    EXPECT_EQ(with([](forward& p) { p.causal = true; }), no_error);
    // Outputs overlapping inputs.
    EXPECT_TRUE(names(with([&](forward& p) { p.o.data = buf.q.data(); }), op, "o overlaps q"));
    EXPECT_TRUE(names(with([&](forward& p) { p.o.data = buf.v.data() + 100; }), op, "o overlaps v"));
    EXPECT_TRUE(names(with([&](forward& p) { p.lse = buf.o.data() + 10; }), op, "lse overlaps o"));
  }

  using backward = kern::ops::attention_backward_params<float>;
  backward valid_backward;
  valid_backward.q = valid.q;
  valid_backward.k = valid.k;
  valid_backward.v = valid.v;
  valid_backward.o = valid.o;
  valid_backward.d_o = {buf.d_o.data(), {2, 5, 4, 8}};
  valid_backward.lse = buf.lse.data();
  valid_backward.dq = {buf.dq.data(), {2, 5, 4, 8}};
  valid_backward.dk = {buf.dk.data(), {2, 7, 2, 8}};
  valid_backward.dv = {buf.dv.data(), {2, 7, 2, 8}};
  constexpr std::string_view op = "kern::cpu::attention_backward";
  const auto with = [&](const std::function<void(backward&)>& change) {
    return message_of(buf, valid_backward, change, &kern::cpu::attention_backward<float>);
  };
  EXPECT_EQ(with([](backward&) {}), no_error);
  EXPECT_TRUE(names(with([](backward& p) { p.lse = nullptr; }), op, "lse is null"));
  EXPECT_TRUE(names(with([&](backward& p) { p.dk.data = buf.dv.data(); }), op, "dk overlaps dv"));
  EXPECT_TRUE(names(with([&](backward& p) { p.dq.data = buf.d_o.data() + 4; }), op, "dq overlaps d_o"));
  EXPECT_TRUE(names(with([&](backward& p) { p.dv.data = buf.k.data(); }), op, "dv overlaps k"));
  EXPECT_TRUE(names(with([&](backward& p) { p.dq.data = buf.o.data(); }), op, "dq overlaps o"));
  EXPECT_TRUE(names(with([](backward& p) { p.d_o.shape[1] = 4; }), op, "d_o is [2, 4, 4, 8] but q is [2, 5, 4, 8]"));
  EXPECT_TRUE(names(with([](backward& p) { p.dq.shape[2] = 2; }), op, "dq is [2, 5, 2, 8] but q is [2, 5, 4, 8]"));
  EXPECT_TRUE(names(with([](backward& p) { p.dk.shape[1] = 6; }), op, "dk is [2, 6, 2, 8] but k is [2, 7, 2, 8]"));
  EXPECT_TRUE(names(with([](backward& p) { p.dv.shape[2] = 1; }), op, "dv is [2, 7, 1, 8] but v is [2, 7, 2, 8]"));
  EXPECT_TRUE(names(with([](backward& p) { p.o.shape[1] = 6; }), op, "o is [2, 6, 4, 8] but q is [2, 5, 4, 8]"));
  EXPECT_TRUE(names(with([](backward& p) { p.dq.strides[3] = 2; }), op, "dq.strides[3] = 2"));
  EXPECT_TRUE(names(with([](backward& p) { p.d_o.data = nullptr; }), op, "d_o.data is null"));
  EXPECT_TRUE(names(with([](backward& p) { p.window = 2; }), op, "window = 2 needs causal = true"));
  EXPECT_TRUE(names(with([](backward& p) {
                      p.k.shape[2] = 3;
                      p.v.shape[2] = 3;
                      p.dk.shape[2] = 3;
                      p.dv.shape[2] = 3;
                    }),
                    op, "heads_kv = 3 does not divide heads_q = 4"));
}

} // namespace
