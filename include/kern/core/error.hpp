// kern::error and the argument checks every public entry point runs before it touches memory.
//
// Messages name the operation, the argument and the offending values, e.g.
//   "kern::cpu::gemm: a.ld = 3 must be at least the row length 5"
// Building the message costs nothing unless the check fails.
#pragma once

#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>

namespace kern {

class error : public std::runtime_error {
public:
  using std::runtime_error::runtime_error;
};

namespace detail {

template <class... Parts> [[noreturn, gnu::cold, gnu::noinline]] void fail(std::string_view op, const Parts&... parts) {
  std::ostringstream message;
  message << op << ": ";
  (message << ... << parts);
  throw error(message.str());
}

} // namespace detail

// The one validation helper: throws kern::error with "<op>: <parts...>" when `ok` is false.
template <class... Parts> constexpr void require(bool ok, std::string_view op, const Parts&... parts) {
  if (!ok) [[unlikely]] {
    detail::fail(op, parts...);
  }
}

// Common argument checks, each phrased once so that every op reports the same way.
inline void require_non_negative(std::string_view op, std::string_view arg, std::int64_t value) {
  require(value >= 0, op, arg, " = ", value, " must not be negative");
}

inline void require_not_null(std::string_view op, std::string_view arg, const void* pointer, std::int64_t elements) {
  require(pointer != nullptr || elements == 0, op, arg, " is null but holds ", elements, " elements");
}

inline void require_leading_dimension(std::string_view op, std::string_view arg, std::int64_t ld,
                                      std::int64_t row_length) {
  require(ld >= row_length && ld >= 1, op, arg, " = ", ld, " must be at least the row length ", row_length,
          " (and at least 1)");
}

// Byte ranges [begin, end) of two buffers; an output must not overlap an input.
inline void require_disjoint(std::string_view op, std::string_view out_name, const void* out_begin, const void* out_end,
                             std::string_view in_name, const void* in_begin, const void* in_end) {
  const auto ob = reinterpret_cast<std::uintptr_t>(out_begin);
  const auto oe = reinterpret_cast<std::uintptr_t>(out_end);
  const auto ib = reinterpret_cast<std::uintptr_t>(in_begin);
  const auto ie = reinterpret_cast<std::uintptr_t>(in_end);
  const bool empty = ob == oe || ib == ie;
  require(empty || oe <= ib || ie <= ob, op, out_name, " overlaps ", in_name, " (", out_name, " bytes [", out_begin,
          ", ", out_end, "), ", in_name, " bytes [", in_begin, ", ", in_end, "))");
}

} // namespace kern
