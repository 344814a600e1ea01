// Non-owning views: a pointer with a shape and strides, cheap to pass by value.
//
// Sizes and strides are signed 64-bit (index_t) so that a negative size from a caller is caught by
// validation instead of wrapping around. A view of T converts implicitly to a view of const T.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <type_traits>

namespace kern {

using index_t = std::int64_t;

// A row-major matrix: element (i, j) lives at data[i * ld + j]; ld >= cols.
template <class T> struct matrix_view {
  T* data = nullptr;
  index_t rows = 0;
  index_t cols = 0;
  index_t ld = 0;

  constexpr matrix_view() = default;
  constexpr matrix_view(T* data_, index_t rows_, index_t cols_, index_t ld_) noexcept
      : data(data_), rows(rows_), cols(cols_), ld(ld_) {}
  constexpr matrix_view(T* data_, index_t rows_, index_t cols_) noexcept : matrix_view(data_, rows_, cols_, cols_) {}

  // Implicit on purpose: a view of T is usable where a view of const T is expected.
  // NOLINTBEGIN(google-explicit-constructor)
  template <class U>
  requires(std::is_same_v<T, const U>) constexpr matrix_view(const matrix_view<U>& other) noexcept
      : data(other.data), rows(other.rows), cols(other.cols), ld(other.ld) {}
  // NOLINTEND(google-explicit-constructor)

  constexpr T& operator()(index_t i, index_t j) const noexcept { return data[i * ld + j]; }
  constexpr T* row(index_t i) const noexcept { return data + i * ld; }
  constexpr bool empty() const noexcept { return rows == 0 || cols == 0; }
  constexpr index_t size() const noexcept { return rows * cols; }

  // The rows [row0, row0 + n_rows) and columns [col0, col0 + n_cols) of this matrix.
  constexpr matrix_view block(index_t row0, index_t col0, index_t n_rows, index_t n_cols) const noexcept {
    return {data + row0 * ld + col0, n_rows, n_cols, ld};
  }

  // One past the last element the view can address (for overlap checks); data when empty.
  constexpr T* end() const noexcept { return empty() ? data : data + (rows - 1) * ld + cols; }
};

template <class T> matrix_view(T*, index_t, index_t, index_t) -> matrix_view<T>;
template <class T> matrix_view(T*, index_t, index_t) -> matrix_view<T>;

// A strided N-d tensor: element (i0, ..., iN-1) lives at data[sum(ik * strides[k])], in elements.
template <class T, std::size_t Rank> struct tensor_view {
  static_assert(Rank >= 1, "a tensor view has at least one dimension");
  using extents = std::array<index_t, Rank>;

  T* data = nullptr;
  extents shape{};
  extents strides{};

  constexpr tensor_view() = default;
  constexpr tensor_view(T* data_, extents shape_, extents strides_) noexcept
      : data(data_), shape(shape_), strides(strides_) {}
  // Contiguous (row-major) strides.
  constexpr tensor_view(T* data_, extents shape_) noexcept : data(data_), shape(shape_), strides(contiguous(shape_)) {}

  // Implicit on purpose: a view of T is usable where a view of const T is expected.
  // NOLINTBEGIN(google-explicit-constructor)
  template <class U>
  requires(std::is_same_v<T, const U>) constexpr tensor_view(const tensor_view<U, Rank>& other) noexcept
      : data(other.data), shape(other.shape), strides(other.strides) {}
  // NOLINTEND(google-explicit-constructor)

  static constexpr index_t rank() noexcept { return static_cast<index_t>(Rank); }

  template <class... I>
  requires(sizeof...(I) == Rank && (std::is_integral_v<I> && ...)) constexpr T& operator()(I... index) const noexcept {
    const std::array<index_t, Rank> at{static_cast<index_t>(index)...};
    index_t offset = 0;
    for (std::size_t k = 0; k < Rank; ++k) {
      offset += at[k] * strides[k];
    }
    return data[offset];
  }

  constexpr index_t size() const noexcept {
    index_t n = 1;
    for (index_t extent : shape) {
      n *= extent;
    }
    return n;
  }

  constexpr bool is_contiguous() const noexcept { return strides == contiguous(shape); }

  static constexpr extents contiguous(const extents& shape_) noexcept {
    extents result{};
    index_t stride = 1;
    for (std::size_t k = Rank; k-- > 0;) {
      result[k] = stride;
      stride *= shape_[k];
    }
    return result;
  }
};

} // namespace kern
