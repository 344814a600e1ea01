// What every CPU kernel test shares: the ISA it runs on in the log, fresh seeds (replayable),
// random inputs in a storage type, poisoned outputs, strided host matrices, bit-exact comparison,
// and the error against a float64 reference.
#pragma once

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <iostream>
#include <limits>
#include <random>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "kern/core/cpu_info.hpp"
#include "kern/core/dtype.hpp"
#include "kern/core/error.hpp"
#include "kern/core/view.hpp"
#include "support/isa_level.hpp"

namespace kern::test {

// What an unwritten output holds, and what input padding holds (a kernel that reads it poisons a result).
inline constexpr float nan_value = std::numeric_limits<float>::quiet_NaN();
// What output padding holds: a kernel that writes it changes it. Exact in bf16 too.
inline constexpr float sentinel = 12288.0f;

// "f32" or "bf16", for SCOPED_TRACE messages.
template <class T> constexpr std::string_view type_name() { return kern::name(dtype_of_v<T>); }

// The bits of a float, bf16 or f16 value, to compare results bit for bit (NaN included).
template <class T> std::uint32_t bits_of(T value) {
  static_assert(is_element_type_v<T>, "bits_of: float, bf16 or f16");
  if constexpr (std::is_same_v<T, float>) {
    return std::bit_cast<std::uint32_t>(value);
  } else {
    return value.bits;
  }
}

// The bits of every value (EXPECT_EQ on two of these prints the values that differ).
template <class T> std::vector<std::uint32_t> bits_of(const std::vector<T>& values) {
  std::vector<std::uint32_t> out;
  out.reserve(values.size());
  for (const T& value : values) {
    out.push_back(bits_of(value));
  }
  return out;
}

template <class T> bool same_bits(const std::vector<T>& a, const std::vector<T>& b) { return bits_of(a) == bits_of(b); }

// Prints kern::cpu::describe() once per test program, so that a log says which ISA path ran.
class describe_isa : public testing::Environment {
public:
  void SetUp() override { std::cout << "[ kern     ] " << kern::cpu::describe() << std::endl; }
};
// NOLINTNEXTLINE(cert-err58-cpp): GoogleTest registers environments at static initialization
[[maybe_unused]] inline testing::Environment* const isa_environment =
    testing::AddGlobalTestEnvironment(new describe_isa);

// A new seed per case; KERN_TEST_SEED=<n> replays one. Tests put it in their SCOPED_TRACE.
inline std::uint32_t fresh_seed() {
  static std::random_device device;
  if (const char* replay = std::getenv("KERN_TEST_SEED"); replay != nullptr && *replay != '\0') {
    return static_cast<std::uint32_t>(std::strtoul(replay, nullptr, 10));
  }
  return device();
}

// n values uniform in [lo, hi), stored as T (rounded for bf16).
template <class T> std::vector<T> random_values(std::mt19937& rng, index_t n, float lo = -1.0f, float hi = 1.0f) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<T> out(static_cast<std::size_t>(n));
  for (T& x : out) {
    x = T(dist(rng));
  }
  return out;
}

// The stored values as doubles (the exact inputs a float64 reference should see).
template <class T> std::vector<double> widen(const std::vector<T>& x) {
  std::vector<double> out(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) {
    out[i] = static_cast<double>(static_cast<float>(x[i]));
  }
  return out;
}

// A buffer of n values of T, all NaN: an element the kernel forgets to write fails the check.
template <class T> std::vector<T> poisoned(index_t n) {
  return std::vector<T>(static_cast<std::size_t>(n), T(std::numeric_limits<float>::quiet_NaN()));
}

// The squared norms ||out - ref||^2 and ||scale||^2; the first infinite when an output is NaN or Inf
// where the reference is finite, so that NaN never passes.
template <class T> std::pair<double, double> squared_norms(const std::vector<T>& out, const std::vector<double>& ref,
                                                           const std::vector<double>& scale) {
  double diff = 0.0, norm = 0.0;
  for (std::size_t i = 0; i < ref.size(); ++i) {
    const double o = static_cast<double>(static_cast<float>(out[i]));
    if (!std::isfinite(o) && std::isfinite(ref[i])) {
      return {std::numeric_limits<double>::infinity(), 1.0};
    }
    diff += (o - ref[i]) * (o - ref[i]);
    norm += scale[i] * scale[i];
  }
  return {diff, norm};
}

// ||out - ref|| / ||ref||; infinite when an output is NaN or Inf where the reference is finite. A
// zero reference gives the absolute norm of out.
template <class T> double relative_error(const std::vector<T>& out, const std::vector<double>& ref) {
  const auto [diff, norm] = squared_norms(out, ref, ref);
  return norm > 0.0 ? std::sqrt(diff / norm) : std::sqrt(diff);
}

// ||out - ref|| / ||scale||, where scale holds, per element, the size of the terms that make it (a
// result can cancel to near zero; the rounding of its terms cannot). Infinite when an output is NaN
// or Inf where the reference is finite. Where every term is zero (a LayerNorm row of zeros) the
// result must be exact: 0 if it is, infinite if not.
template <class T>
double scaled_error(const std::vector<T>& out, const std::vector<double>& ref, const std::vector<double>& scale) {
  const auto [diff, norm] = squared_norms(out, ref, scale);
  if (norm == 0.0) {
    return diff == 0.0 ? 0.0 : std::numeric_limits<double>::infinity();
  }
  return std::sqrt(diff / norm);
}

// The central-difference gradient of loss() with respect to every value of `input`, which loss()
// reads: each value is moved by a step of 1e-6 times its size (at least 1e-6) both ways, in float64.
template <class Loss> std::vector<double> numeric_gradient(std::vector<double>& input, const Loss& loss) {
  std::vector<double> gradient;
  gradient.reserve(input.size());
  for (double& v : input) {
    const double saved = v, step = 1e-6 * std::max(1.0, std::abs(v));
    v = saved + step;
    const double up = loss();
    v = saved - step;
    const double down = loss();
    v = saved;
    gradient.push_back((up - down) / (2 * step));
  }
  return gradient;
}

// The error bound a kernel's output in storage type T is held to: fp32 math throughout, so an f32
// output is close to the float64 result; a bf16 output carries its own rounding (2^-9 relative), an
// f16 output its own (2^-12).
template <class T> constexpr double output_tolerance() {
  return dtype_of_v<T> == dtype::bf16 ? 8e-3 : dtype_of_v<T> == dtype::f16 ? 1e-3 : 5e-6;
}

// A gradient with cancellation in it (a row's mean, projection or dot product subtracted) is held
// to a few fp32 roundings of its terms; a 16-bit one to its own rounding.
template <class T> constexpr double gradient_tolerance() {
  return dtype_of_v<T> == dtype::f32 ? 1e-5 : output_tolerance<T>();
}

// The message of the kern::error that call throws, or "(no error)".
inline std::string error_of(const std::function<void()>& call) {
  try {
    call();
  } catch (const kern::error& e) {
    return e.what();
  }
  return "(no error)";
}

// Runs fn, expects kern::error whose message contains `names`.
template <class Fn> void expect_error(Fn fn, const std::string& names) {
  try {
    fn();
    ADD_FAILURE() << "no kern::error (expected one naming '" << names << "')";
  } catch (const kern::error& e) {
    EXPECT_NE(std::string(e.what()).find(names), std::string::npos) << e.what();
  }
}

// Where a host_matrix's buffer ends.
enum class buffer_end {
  last_element,     // at element (rows - 1, cols - 1): ASan catches a read past the matrix
  last_row_padding, // after the last row's padding too, where padding_is sees a write past the matrix
};

// A rows x cols matrix of T with leading dimension ld in a buffer the test owns: the elements hold
// `fill`, the ld padding holds `padding` (NaN in an input, so that a kernel that reads it poisons a
// result; the sentinel in an output, so that padding_is sees a kernel that writes it).
template <class T> struct host_matrix {
  index_t rows = 0, cols = 0, ld = 0;
  std::vector<T> data;

  host_matrix(index_t rows_, index_t cols_, index_t ld_, float padding, float fill = nan_value,
              buffer_end end = buffer_end::last_element)
      : rows(rows_), cols(cols_), ld(ld_), data(buffer_size(rows_, cols_, ld_, end), T(padding)) {
    for_each_element([&](index_t i, index_t j) { at(i, j) = T(fill); });
  }

  T& at(index_t i, index_t j) { return data[static_cast<std::size_t>(i * ld + j)]; }
  const T& at(index_t i, index_t j) const { return data[static_cast<std::size_t>(i * ld + j)]; }
  matrix_view<T> view() { return {data.data(), rows, cols, ld}; }
  matrix_view<const T> cview() const { return {data.data(), rows, cols, ld}; }

  // The elements, uniform in [lo, hi), drawn row by row (the values of random_values).
  void fill_random(std::mt19937& rng, float lo = -1.0f, float hi = 1.0f) {
    const std::vector<T> v = random_values<T>(rng, rows * cols, lo, hi);
    for_each_element([&](index_t i, index_t j) { at(i, j) = v[static_cast<std::size_t>(i * cols + j)]; });
  }
  // The rows x cols elements, packed row by row.
  std::vector<T> values() const {
    std::vector<T> out;
    out.reserve(static_cast<std::size_t>(rows * cols));
    for_each_element([&](index_t i, index_t j) { out.push_back(at(i, j)); });
    return out;
  }
  void set_padding(float value) {
    for_each_padding([&](std::size_t k) { data[k] = T(value); });
  }
  // Whether every padding element in the buffer holds T(value), bit for bit.
  bool padding_is(float value) const {
    bool same = true;
    for_each_padding([&](std::size_t k) { same = same && bits_of(data[k]) == bits_of(T(value)); });
    return same;
  }

private:
  static std::size_t buffer_size(index_t rows, index_t cols, index_t ld, buffer_end end) {
    if (rows == 0) {
      return 0;
    }
    return static_cast<std::size_t>((rows - 1) * ld + (end == buffer_end::last_element ? cols : ld));
  }
  template <class Fn> void for_each_element(Fn fn) const {
    for (index_t i = 0; i < rows; ++i) {
      for (index_t j = 0; j < cols; ++j) {
        fn(i, j);
      }
    }
  }
  template <class Fn> void for_each_padding(Fn fn) const {
    for (index_t i = 0; i < rows; ++i) {
      for (index_t j = cols; j < ld; ++j) {
        const auto k = static_cast<std::size_t>(i * ld + j);
        if (k < data.size()) {
          fn(k);
        }
      }
    }
  }
};

} // namespace kern::test
