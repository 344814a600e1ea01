// convert: dst[i] = Dst(src[i]) for i < count, between f32, bf16 and f16 (rounding to nearest even
// when narrowing, NaN kept NaN). The storage conversion around every mixed-precision kernel: bf16
// weights from fp32 master weights, fp32 activations from bf16 ones.
#pragma once

#include <string_view>

#include "kern/core/dtype.hpp"
#include "kern/core/error.hpp"
#include "kern/core/view.hpp"

namespace kern::ops {

template <element_type Src, element_type Dst> struct convert_params {
  const Src* src = nullptr;
  Dst* dst = nullptr;
  index_t count = 0;
};

template <element_type Src, element_type Dst> convert_params(const Src*, Dst*, index_t) -> convert_params<Src, Dst>;

template <element_type Src, element_type Dst> void validate(std::string_view op, const convert_params<Src, Dst>& p) {
  require_non_negative(op, "count", p.count);
  require_not_null(op, "src", p.src, p.count);
  require_not_null(op, "dst", p.dst, p.count);
  require_disjoint(op, "dst", p.dst, p.dst + p.count, "src", p.src, p.src + p.count);
}

} // namespace kern::ops
