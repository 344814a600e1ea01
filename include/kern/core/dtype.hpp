// Element types: the 16-bit floating-point storage types bf16 and f16, and a runtime dtype tag.
//
// Both are plain 16-bit containers (standard layout, trivially copyable, size 2, align 2), the same
// layout as CUDA's __nv_bfloat16 / __half and HIP's equivalents, so one buffer can be shared between
// host code and device code. Arithmetic goes through float: a bf16 converts implicitly to float,
// and a float converts to bf16 explicitly (the conversion rounds, so it should be visible).
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>
#include <string_view>
#include <type_traits>

namespace kern {

namespace detail {

// float -> bf16 bits, IEEE round-to-nearest-even. bf16 is the upper half of a float, so this is a
// rounding of the low 16 bits: adding 0x7fff plus the lowest kept bit carries into the kept half
// exactly when the dropped half is above the midpoint, or at it with an odd kept half. Overflow
// rounds to Inf through the same carry; subnormals round like normals (no flush to zero).
constexpr std::uint16_t float_to_bf16_bits(float value) noexcept {
  const std::uint32_t bits = std::bit_cast<std::uint32_t>(value);
  if ((bits & 0x7fffffffu) > 0x7f800000u) {
    return static_cast<std::uint16_t>((bits >> 16) | 0x0040u); // NaN: keep sign and payload, make it quiet
  }
  const std::uint32_t rounding = 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<std::uint16_t>((bits + rounding) >> 16);
}

constexpr float bf16_bits_to_float(std::uint16_t bits) noexcept {
  return std::bit_cast<float>(static_cast<std::uint32_t>(bits) << 16);
}

// Rounds `value >> shift` to nearest, ties to even (shift >= 1).
constexpr std::uint32_t shift_right_round_even(std::uint32_t value, unsigned shift) noexcept {
  const std::uint32_t kept = value >> shift;
  const std::uint32_t dropped = value & ((1u << shift) - 1u);
  const std::uint32_t half = 1u << (shift - 1u);
  return kept + ((dropped > half || (dropped == half && (kept & 1u))) ? 1u : 0u);
}

// float -> IEEE binary16 bits, round-to-nearest-even, with gradual underflow and overflow to Inf.
constexpr std::uint16_t float_to_f16_bits(float value) noexcept {
  const std::uint32_t bits = std::bit_cast<std::uint32_t>(value);
  const auto sign = static_cast<std::uint16_t>((bits >> 16) & 0x8000u);
  const std::uint32_t magnitude = bits & 0x7fffffffu;
  if (magnitude > 0x7f800000u) { // NaN: keep the top of the payload, make it quiet
    return static_cast<std::uint16_t>(sign | 0x7e00u | ((magnitude >> 13) & 0x03ffu));
  }
  // 65520 = 0x477ff000 is halfway between the largest half (65504, odd mantissa) and 2^16: it and
  // everything above round to Inf.
  if (magnitude >= 0x477ff000u) {
    return static_cast<std::uint16_t>(sign | 0x7c00u);
  }
  const std::uint32_t exponent = magnitude >> 23;
  if (exponent >= 113) { // |value| >= 2^-14: a normal half. The carry of rounding may bump the exponent.
    const std::uint32_t rebased = magnitude - ((127u - 15u) << 23);
    return static_cast<std::uint16_t>(sign | shift_right_round_even(rebased, 13));
  }
  if (exponent < 102) { // |value| < 2^-25: below half the smallest subnormal, rounds to zero
    return sign;
  }
  // Subnormal half: value = significand * 2^(exponent - 150), in units of 2^-24.
  const std::uint32_t significand = (magnitude & 0x007fffffu) | 0x00800000u;
  return static_cast<std::uint16_t>(sign | shift_right_round_even(significand, 126u - exponent));
}

constexpr float f16_bits_to_float(std::uint16_t half) noexcept {
  const std::uint32_t sign = static_cast<std::uint32_t>(half & 0x8000u) << 16;
  const std::uint32_t exponent = (half >> 10) & 0x1fu;
  const std::uint32_t mantissa = half & 0x03ffu;
  if (exponent == 0x1fu) { // Inf or NaN (the payload is kept)
    return std::bit_cast<float>(sign | 0x7f800000u | (mantissa << 13));
  }
  if (exponent != 0) {
    return std::bit_cast<float>(sign | ((exponent + 127u - 15u) << 23) | (mantissa << 13));
  }
  // Zero or subnormal: mantissa * 2^-24 is exact in float.
  const float magnitude = static_cast<float>(mantissa) * 0x1p-24f;
  return sign ? -magnitude : magnitude;
}

} // namespace detail

// The two 16-bit types share this base: the bits, and arithmetic and comparison through float.
// Format describes one encoding: static to_float(bits) and from_float(value).
template <class Derived, class Format> struct float16_storage {
  std::uint16_t bits;

  float16_storage() = default;
  constexpr explicit float16_storage(std::uint16_t raw) noexcept : bits(raw) {}

  static constexpr Derived from_bits(std::uint16_t raw) noexcept { return Derived(raw, raw_bits_tag{}); }
  constexpr float to_float() const noexcept { return Format::to_float(bits); }
  // Implicit on purpose: widening to float is exact, and arithmetic goes through it.
  constexpr operator float() const noexcept { return to_float(); } // NOLINT(google-explicit-constructor)

  constexpr Derived& operator+=(float rhs) noexcept { return assign(to_float() + rhs); }
  constexpr Derived& operator-=(float rhs) noexcept { return assign(to_float() - rhs); }
  constexpr Derived& operator*=(float rhs) noexcept { return assign(to_float() * rhs); }
  constexpr Derived& operator/=(float rhs) noexcept { return assign(to_float() / rhs); }

protected:
  struct raw_bits_tag {};

private:
  constexpr Derived& assign(float value) noexcept {
    bits = Format::from_float(value);
    return static_cast<Derived&>(*this);
  }
};

namespace detail {
struct bf16_format {
  static constexpr float to_float(std::uint16_t bits) noexcept { return bf16_bits_to_float(bits); }
  static constexpr std::uint16_t from_float(float value) noexcept { return float_to_bf16_bits(value); }
};
struct f16_format {
  static constexpr float to_float(std::uint16_t bits) noexcept { return f16_bits_to_float(bits); }
  static constexpr std::uint16_t from_float(float value) noexcept { return float_to_f16_bits(value); }
};
} // namespace detail

// bfloat16: 1 sign, 8 exponent, 7 mantissa bits (the top half of a float).
struct bf16 : float16_storage<bf16, detail::bf16_format> {
  bf16() = default;
  constexpr explicit bf16(float value) noexcept : float16_storage(detail::float_to_bf16_bits(value)) {}
  constexpr bf16(std::uint16_t raw, raw_bits_tag) noexcept : float16_storage(raw) {}
};

// IEEE 754 binary16: 1 sign, 5 exponent, 10 mantissa bits.
struct f16 : float16_storage<f16, detail::f16_format> {
  f16() = default;
  constexpr explicit f16(float value) noexcept : float16_storage(detail::float_to_f16_bits(value)) {}
  constexpr f16(std::uint16_t raw, raw_bits_tag) noexcept : float16_storage(raw) {}
};

// The layout of CUDA's and HIP's 16-bit types: two bytes, two-byte aligned, plain data.
static_assert(sizeof(bf16) == 2 && sizeof(f16) == 2);
static_assert(alignof(bf16) == 2 && alignof(f16) == 2);
static_assert(std::is_standard_layout_v<bf16> && std::is_standard_layout_v<f16>);
static_assert(std::is_trivially_copyable_v<bf16> && std::is_trivially_copyable_v<f16>);
static_assert(std::is_trivially_default_constructible_v<bf16> && std::is_trivially_default_constructible_v<f16>);

// A runtime tag for the element types kern computes with.
enum class dtype : std::uint8_t { f32, bf16, f16 };

constexpr std::string_view name(dtype type) noexcept {
  switch (type) {
  case dtype::f32:
    return "f32";
  case dtype::bf16:
    return "bf16";
  case dtype::f16:
    return "f16";
  }
  return "?";
}

constexpr std::size_t size_of(dtype type) noexcept { return type == dtype::f32 ? 4 : 2; }

template <class T> inline constexpr bool is_element_type_v = false;
template <> inline constexpr bool is_element_type_v<float> = true;
template <> inline constexpr bool is_element_type_v<bf16> = true;
template <> inline constexpr bool is_element_type_v<f16> = true;

template <class T>
concept element_type = is_element_type_v<std::remove_const_t<T>>;

template <element_type T> inline constexpr dtype dtype_of_v = dtype::f32;
template <> inline constexpr dtype dtype_of_v<bf16> = dtype::bf16;
template <> inline constexpr dtype dtype_of_v<f16> = dtype::f16;
template <> inline constexpr dtype dtype_of_v<const bf16> = dtype::bf16;
template <> inline constexpr dtype dtype_of_v<const f16> = dtype::f16;

// Widening and narrowing between any element type and float, for generic code.
template <element_type T> constexpr float to_float(T value) noexcept { return static_cast<float>(value); }
template <element_type T> constexpr T from_float(float value) noexcept { return T(value); }

} // namespace kern
