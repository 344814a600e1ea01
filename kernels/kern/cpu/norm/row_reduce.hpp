// Row reductions shared by the row-wise kernels (norm, softmax, cross-entropy): the sum or the
// maximum of a per-batch term over one row, and how many threads a row-wise kernel is worth.
//
// A row is walked in fp32 batches with four independent accumulators (to hide the add latency) in a
// fixed order, so that a row's result depends only on the row and the ISA: never on the thread
// count or on which thread took the row. The last, partial batch is masked, so a term may hold
// anything in the lanes past the row's end.
#pragma once

#include <algorithm>
#include <limits>

#include <xsimd/xsimd.hpp>

#include "kern/core/threading.hpp"
#include "kern/cpu/simd.hpp"

namespace kern::cpu::detail {

// True in lanes [0, valid).
template <class Arch> xsimd::batch_bool<float, Arch> lanes_below(index_t valid) {
  static_assert(fbatch<Arch>::size <= 16, "lane indices below cover 16 lanes");
  alignas(64) static constexpr float lane_index[16] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
  return fbatch<Arch>::load_aligned(lane_index) < fbatch<Arch>(static_cast<float>(valid));
}

// Folds term(i, valid) (a batch for the columns from i; valid < lanes only in the last one) over a
// row of n > 0 columns with `combine`, starting from `identity`; the tail's extra lanes get identity.
template <class Arch, class Combine, class Term>
fbatch<Arch> row_fold(index_t n, float identity, Combine&& combine, Term&& term) {
  using batch = fbatch<Arch>;
  constexpr index_t lanes = lanes_of<Arch>;
  batch acc0(identity), acc1(identity), acc2(identity), acc3(identity);
  index_t i = 0;
  for (; i + 4 * lanes <= n; i += 4 * lanes) {
    acc0 = combine(acc0, term(i, lanes));
    acc1 = combine(acc1, term(i + lanes, lanes));
    acc2 = combine(acc2, term(i + 2 * lanes, lanes));
    acc3 = combine(acc3, term(i + 3 * lanes, lanes));
  }
  for (; i + lanes <= n; i += lanes) {
    acc0 = combine(acc0, term(i, lanes));
  }
  if (i < n) {
    acc1 = combine(acc1, xsimd::select(lanes_below<Arch>(n - i), term(i, n - i), batch(identity)));
  }
  return combine(combine(acc0, acc1), combine(acc2, acc3));
}

// The sum over a row of n > 0 columns of term(i, valid).
template <class Arch, class Term> float row_sum(index_t n, Term&& term) {
  const auto add = [](fbatch<Arch> a, fbatch<Arch> b) { return a + b; };
  return reduce_sum<Arch>(row_fold<Arch>(n, 0.0f, add, term));
}

// The maximum over a row of n > 0 columns of term(i, valid). A NaN need not win here: the kernels
// that use it sum exp(term - max) next, which a NaN term turns into NaN.
template <class Arch, class Term> float row_max(index_t n, Term&& term) {
  const auto max = [](fbatch<Arch> a, fbatch<Arch> b) { return xsimd::max(a, b); };
  return reduce_max<Arch>(row_fold<Arch>(n, -std::numeric_limits<float>::infinity(), max, term));
}

// A context with no more threads than `elements` of row-wise work keep busy: below about 32 K
// elements per thread, starting a thread costs more than it saves.
inline context context_for_elements(const context& ctx, index_t elements) {
  constexpr index_t elements_per_thread = index_t{1} << 15;
  const index_t useful = std::max<index_t>(1, elements / elements_per_thread);
  return context(static_cast<int>(std::min<index_t>(useful, ctx.threads())));
}

} // namespace kern::cpu::detail
