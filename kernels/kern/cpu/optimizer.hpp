// CPU optimizer entry points. Parameters and semantics: kern/ops/optimizer.hpp; algorithm and
// measurements: docs/kernels/optimizer.md.
//
//   kern::cpu::adamw_step(ctx, params)         one AdamW step, in place (optionally a bf16 copy too)
//   kern::cpu::sgd_step(ctx, params)           one SGD step (momentum, dampening, Nesterov), in place
//   kern::cpu::global_grad_norm(ctx, grads)    sqrt(sum of g^2) over every gradient, in double
//   kern::cpu::clip_factor(norm, max_norm)     min(1, max_norm / (norm + 1e-6))
//
// The steps are memory-bound: one pass, every element loaded and stored once as a vector, fp32 math.
// Elements are independent, so the results do not depend on the thread count; the norm is summed in
// a blocking fixed by the sizes alone, so it does not either.
#pragma once

#include <array>
#include <cmath>
#include <span>

#include <xsimd/xsimd.hpp>

#include "kern/core/threading.hpp"
#include "kern/cpu/isa.hpp"
#include "kern/cpu/simd.hpp"
#include "kern/ops/optimizer.hpp"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

namespace kern::cpu::detail {

template <class Arch> using double_batch = xsimd::batch<double, Arch>;

// Below this many elements per thread a step is not worth a thread (~1 MB of traffic for AdamW).
inline constexpr index_t optimizer_elements_per_thread = index_t{1} << 15;
// Threads split a step on multiples of this many elements (a multiple of every ISA's lanes), so
// that only the last thread has a partial batch.
inline constexpr index_t optimizer_grain = 256;

// Calls body(begin, end) on disjoint chunks covering [0, count), one per thread that the size is worth.
template <class Body> void for_each_chunk(const context& ctx, index_t count, Body&& body) {
  const index_t worth = (count + optimizer_elements_per_thread - 1) / optimizer_elements_per_thread;
  const context run(worth < ctx.threads() ? static_cast<int>(worth < 1 ? 1 : worth) : ctx.threads());
  parallel_for(run, (count + optimizer_grain - 1) / optimizer_grain, [&](index_t first, index_t last) {
    const index_t end = last * optimizer_grain;
    body(first * optimizer_grain, end < count ? end : count);
  });
}

// Calls body(i, valid) for i = begin, begin + lanes, ... below end; valid is lanes except for a
// partial last step. Loop and body are inlined into the caller, where the body's per-call
// constants and pointers (a local object) stay in registers: a vector store may alias any memory,
// so values reached through memory would be reloaded after every store.
template <class Arch, class Body>
[[gnu::always_inline]] inline void for_each_batch_inline(index_t begin, index_t end, const Body& body) {
  constexpr index_t lanes = lanes_of<Arch>;
  index_t i = begin;
  for (; i + lanes <= end; i += lanes) {
    body(i, lanes);
  }
  if (i < end) {
    body(i, end - i);
  }
}

// One AdamW update of the `valid` elements at i, with the step's constants as vectors.
template <class Arch> struct adamw_update {
  using batch = fbatch<Arch>;
  ops::adamw_params p;
  batch step_size, inv_sqrt_correction2, decay, one_minus_beta1, one_minus_beta2, beta2, epsilon, grad_scale;

  // The bias corrections in double: 1 - beta^step loses digits in float for beta near 1.
  explicit adamw_update(const ops::adamw_params& params)
      : p(params),
        step_size(static_cast<float>(static_cast<double>(p.lr) /
                                     (1.0 - std::pow(static_cast<double>(p.beta1), static_cast<double>(p.step))))),
        inv_sqrt_correction2(static_cast<float>(
            1.0 / std::sqrt(1.0 - std::pow(static_cast<double>(p.beta2), static_cast<double>(p.step))))),
        decay(static_cast<float>(1.0 - static_cast<double>(p.lr) * static_cast<double>(p.weight_decay))),
        one_minus_beta1(static_cast<float>(1.0 - static_cast<double>(p.beta1))),
        one_minus_beta2(static_cast<float>(1.0 - static_cast<double>(p.beta2))), beta2(p.beta2), epsilon(p.epsilon),
        grad_scale(p.grad_scale) {}

  [[gnu::always_inline]] void operator()(index_t i, index_t valid) const {
    const batch g = load_float_n<Arch>(p.grad + i, valid) * grad_scale;
    const batch param = load_float_n<Arch>(p.param + i, valid);
    batch m = load_float_n<Arch>(p.m + i, valid);
    batch v = load_float_n<Arch>(p.v + i, valid);
    m = xsimd::fma(one_minus_beta1, g - m, m); // torch's lerp: m + (1 - beta1)(g - m)
    v = xsimd::fma(one_minus_beta2 * g, g, beta2 * v);
    const batch denominator = xsimd::fma(xsimd::sqrt(v), inv_sqrt_correction2, epsilon);
    const batch updated = xsimd::fnma(step_size, m / denominator, param * decay);
    store_from_float_n<Arch>(p.m + i, m, valid);
    store_from_float_n<Arch>(p.v + i, v, valid);
    store_from_float_n<Arch>(p.param + i, updated, valid);
    if (p.param_bf16 != nullptr) {
      store_from_float_n<Arch>(p.param_bf16 + i, updated, valid);
    }
  }
};

template <class Arch> void adamw_run(const context& ctx, const ops::adamw_params& p) {
  for_each_chunk(ctx, p.count,
                 [&](index_t begin, index_t end) { for_each_batch_inline<Arch>(begin, end, adamw_update<Arch>(p)); });
}

// One SGD update of the `valid` elements at i, with the step's constants as vectors.
template <class Arch> struct sgd_update {
  using batch = fbatch<Arch>;
  ops::sgd_params p;
  batch lr, weight_decay, momentum, one_minus_dampening, grad_scale;
  // torch.optim.SGD skips the decay term when weight_decay = 0: adding 0 * p would turn an Inf p into NaN.
  bool decays, uses_momentum;

  explicit sgd_update(const ops::sgd_params& params)
      : p(params), lr(p.lr), weight_decay(p.weight_decay), momentum(p.momentum),
        one_minus_dampening(static_cast<float>(1.0 - static_cast<double>(p.dampening))), grad_scale(p.grad_scale),
        decays(p.weight_decay != 0.0f), uses_momentum(p.momentum != 0.0f) {}

  [[gnu::always_inline]] void operator()(index_t i, index_t valid) const {
    const batch param = load_float_n<Arch>(p.param + i, valid);
    batch g = load_float_n<Arch>(p.grad + i, valid) * grad_scale;
    if (decays) {
      g = xsimd::fma(weight_decay, param, g);
    }
    if (uses_momentum) {
      const batch buffer = p.first_step ? g
                                        : xsimd::fma(momentum, load_float_n<Arch>(p.momentum_buffer + i, valid),
                                                     one_minus_dampening * g);
      store_from_float_n<Arch>(p.momentum_buffer + i, buffer, valid);
      g = p.nesterov ? xsimd::fma(momentum, buffer, g) : buffer;
    }
    store_from_float_n<Arch>(p.param + i, xsimd::fnma(lr, g, param), valid);
  }
};

template <class Arch> void sgd_run(const context& ctx, const ops::sgd_params& p) {
  for_each_chunk(ctx, p.count,
                 [&](index_t begin, index_t end) { for_each_batch_inline<Arch>(begin, end, sgd_update<Arch>(p)); });
}

// The two halves of a float batch, widened exactly to double.
template <class Arch> struct double_halves { double_batch<Arch> low, high; };

template <class Arch> double_halves<Arch> widen_to_double(fbatch<Arch> x) {
#if defined(__x86_64__) || defined(_M_X64)
  if constexpr (isa_of<Arch>() >= isa::avx512) {
    const __m512 v = x;
    const __m256 high = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
    return {_mm512_cvtps_pd(_mm512_castps512_ps256(v)), _mm512_cvtps_pd(high)};
  } else if constexpr (isa_of<Arch>() == isa::avx2) {
    const __m256 v = x;
    return {_mm256_cvtps_pd(_mm256_castps256_ps128(v)), _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1))};
  } else {
    const __m128 v = x;
    return {_mm_cvtps_pd(v), _mm_cvtps_pd(_mm_movehl_ps(v, v))};
  }
#else
  constexpr std::size_t half = double_batch<Arch>::size;
  alignas(64) float lanes[2 * half];
  alignas(64) double wide[2 * half];
  x.store_aligned(lanes);
  for (std::size_t l = 0; l < 2 * half; ++l) {
    wide[l] = static_cast<double>(lanes[l]);
  }
  return {double_batch<Arch>::load_aligned(wide), double_batch<Arch>::load_aligned(wide + half)};
#endif
}

// The norm's blocking: the concatenated gradients are cut into parts that depend only on the total
// size; each part is summed on its own (vector lanes in double, then across lanes), and the part sums
// are added in order. Threads take whole parts, so the bits do not depend on the thread count.
inline constexpr index_t grad_norm_elements_per_part = index_t{1} << 15;
inline constexpr int grad_norm_max_parts = 256;

// Adds the squares of data[0, n) to four double accumulators: two float batches a step, so that
// four FMA chains are in flight (each waits for its own previous FMA). The accumulators live in
// registers during the loop.
template <class Arch> void add_gradient_squares(const float* data, index_t n, std::array<double_batch<Arch>, 4>& sums) {
  constexpr index_t lanes = lanes_of<Arch>;
  double_batch<Arch> s0 = sums[0], s1 = sums[1], s2 = sums[2], s3 = sums[3];
  index_t i = 0;
  for (; i + 2 * lanes <= n; i += 2 * lanes) {
    const double_halves<Arch> a = widen_to_double<Arch>(load_float<Arch>(data + i));
    const double_halves<Arch> b = widen_to_double<Arch>(load_float<Arch>(data + i + lanes));
    s0 = xsimd::fma(a.low, a.low, s0);
    s1 = xsimd::fma(a.high, a.high, s1);
    s2 = xsimd::fma(b.low, b.low, s2);
    s3 = xsimd::fma(b.high, b.high, s3);
  }
  for_each_batch<Arch>(n - i, [&](index_t j, index_t valid) {
    const double_halves<Arch> a = widen_to_double<Arch>(load_float_n<Arch>(data + i + j, valid));
    s0 = xsimd::fma(a.low, a.low, s0);
    s1 = xsimd::fma(a.high, a.high, s1);
  });
  sums = {s0, s1, s2, s3};
}

// The sum of squares of elements [begin, end) of the gradients laid end to end.
template <class Arch>
double gradient_sum_of_squares(std::span<const ops::gradient_span> grads, index_t begin, index_t end) {
  std::array<double_batch<Arch>, 4> sums{double_batch<Arch>(0.0), double_batch<Arch>(0.0), double_batch<Arch>(0.0),
                                         double_batch<Arch>(0.0)};
  index_t span_start = 0;
  for (const ops::gradient_span& grad : grads) {
    const index_t from = begin > span_start ? begin - span_start : 0;
    const index_t to = end - span_start < grad.count ? end - span_start : grad.count;
    if (from < to) {
      add_gradient_squares<Arch>(grad.data + from, to - from, sums);
    }
    span_start += grad.count;
    if (span_start >= end) {
      break;
    }
  }
  return xsimd::hadd((sums[0] + sums[1]) + (sums[2] + sums[3]));
}

template <class Arch> double grad_norm_run(const context& ctx, std::span<const ops::gradient_span> grads) {
  index_t total = 0;
  for (const ops::gradient_span& grad : grads) {
    total += grad.count;
  }
  const index_t wanted = (total + grad_norm_elements_per_part - 1) / grad_norm_elements_per_part;
  const int parts = wanted < 1 ? 1 : (wanted > grad_norm_max_parts ? grad_norm_max_parts : static_cast<int>(wanted));
  std::array<double, grad_norm_max_parts> part_sums{};
  parallel_for(ctx, parts, [&](index_t first, index_t last) {
    for (index_t part = first; part < last; ++part) {
      const range elements = split_evenly(total, parts, static_cast<int>(part));
      part_sums[static_cast<std::size_t>(part)] = gradient_sum_of_squares<Arch>(grads, elements.begin, elements.end);
    }
  });
  double sum = 0.0;
  for (int part = 0; part < parts; ++part) {
    sum += part_sums[static_cast<std::size_t>(part)];
  }
  return std::sqrt(sum);
}

} // namespace kern::cpu::detail

// The entries each ISA translation unit instantiates (kern_enable_isa_dispatch), and that every
// other translation unit of a dispatching target declares extern; EXTERN is `extern` or empty.
// NOLINTBEGIN(bugprone-macro-parentheses): EXTERN and the types are declaration parts, not expressions
#define KERN_CPU_OPTIMIZER_INSTANCES(ARCH, EXTERN)                                                                     \
  EXTERN template void kern::cpu::detail::adamw_run<ARCH>(const ::kern::cpu::context&,                                 \
                                                          const ::kern::ops::adamw_params&);                           \
  EXTERN template void kern::cpu::detail::sgd_run<ARCH>(const ::kern::cpu::context&, const ::kern::ops::sgd_params&);  \
  EXTERN template double kern::cpu::detail::grad_norm_run<ARCH>(const ::kern::cpu::context&,                           \
                                                                std::span<const ::kern::ops::gradient_span>);
// NOLINTEND(bugprone-macro-parentheses)
KERN_CPU_EXTERN_INSTANCES(KERN_CPU_OPTIMIZER_INSTANCES)

namespace kern::cpu {

inline void adamw_step(const context& ctx, const ops::adamw_params& params) {
  ops::validate("kern::cpu::adamw_step", params);
  detail::dispatch([&](auto arch) { detail::adamw_run<decltype(arch)>(ctx, params); });
}

inline void sgd_step(const context& ctx, const ops::sgd_params& params) {
  ops::validate("kern::cpu::sgd_step", params);
  detail::dispatch([&](auto arch) { detail::sgd_run<decltype(arch)>(ctx, params); });
}

// The L2 norm of all the gradients together; NaN if any element is NaN, Inf if any is infinite.
inline double global_grad_norm(const context& ctx, std::span<const ops::gradient_span> grads) {
  ops::validate("kern::cpu::global_grad_norm", grads);
  return detail::dispatch([&](auto arch) { return detail::grad_norm_run<decltype(arch)>(ctx, grads); });
}

// PyTorch's clip_grad_norm_ coefficient: multiply the gradients (grad_scale) by it.
inline float clip_factor(double norm, float max_norm) {
  return ops::clip_factor("kern::cpu::clip_factor", norm, max_norm);
}

} // namespace kern::cpu
