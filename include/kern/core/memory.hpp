// Owning host memory: 64-byte aligned (one cache line, one AVX-512 register), RAII, move-only.
#pragma once

#include <cstddef>
#include <cstring>
#include <new>
#include <span>
#include <string_view>
#include <type_traits>
#include <utility>

#include "kern/core/error.hpp"
#include "kern/core/view.hpp"

namespace kern {

inline constexpr std::size_t buffer_alignment = 64;

// A buffer of `size` elements of a trivially copyable T. The elements start uninitialized, as
// after malloc: kernels overwrite them, and zeroing gigabytes nobody reads costs time.
template <class T> class aligned_buffer {
  static_assert(std::is_trivially_copyable_v<T> && std::is_trivially_destructible_v<T>,
                "aligned_buffer holds plain numeric data");

public:
  aligned_buffer() noexcept = default;
  explicit aligned_buffer(std::size_t size) : size_(size) {
    if (size == 0) {
      return;
    }
    require(size <= max_size(), "kern::aligned_buffer", "size = ", size, " elements does not fit in memory");
    data_ = static_cast<T*>(::operator new (size * sizeof(T), std::align_val_t{buffer_alignment}));
  }
  aligned_buffer(std::size_t size, T value) : aligned_buffer(size) { fill(value); }

  aligned_buffer(const aligned_buffer&) = delete;
  aligned_buffer& operator=(const aligned_buffer&) = delete;
  aligned_buffer(aligned_buffer&& other) noexcept
      : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}
  aligned_buffer& operator=(aligned_buffer&& other) noexcept {
    if (this != &other) {
      release();
      data_ = std::exchange(other.data_, nullptr);
      size_ = std::exchange(other.size_, 0);
    }
    return *this;
  }
  ~aligned_buffer() { release(); }

  T* data() noexcept { return data_; }
  const T* data() const noexcept { return data_; }
  std::size_t size() const noexcept { return size_; }
  bool empty() const noexcept { return size_ == 0; }
  T& operator[](std::size_t i) noexcept { return data_[i]; }
  const T& operator[](std::size_t i) const noexcept { return data_[i]; }
  T* begin() noexcept { return data_; }
  T* end() noexcept { return data_ + size_; }
  const T* begin() const noexcept { return data_; }
  const T* end() const noexcept { return data_ + size_; }
  std::span<T> span() noexcept { return {data_, size_}; }
  std::span<const T> span() const noexcept { return {data_, size_}; }

  void fill(T value) noexcept {
    for (std::size_t i = 0; i < size_; ++i) {
      data_[i] = value;
    }
  }

  // A rows x cols view with leading dimension ld over the start of the buffer.
  matrix_view<T> matrix(index_t rows, index_t cols, index_t ld) {
    check_fits(rows, cols, ld);
    return {data_, rows, cols, ld};
  }
  matrix_view<T> matrix(index_t rows, index_t cols) { return matrix(rows, cols, cols); }

  static constexpr std::size_t max_size() noexcept { return static_cast<std::size_t>(-1) / 2 / sizeof(T); }

private:
  void check_fits(index_t rows, index_t cols, index_t ld) const {
    constexpr std::string_view op = "kern::aligned_buffer::matrix";
    require(rows >= 0 && cols >= 0 && ld >= cols, op, "rows = ", rows, ", cols = ", cols, ", ld = ", ld,
            " do not describe a matrix");
    const auto needed = rows == 0 ? 0 : static_cast<std::size_t>((rows - 1) * ld + cols);
    require(needed <= size_, op, rows, " x ", cols, " with ld = ", ld, " needs ", needed,
            " elements, the buffer holds ", size_);
  }
  void release() noexcept {
    if (data_ != nullptr) {
      ::operator delete (data_, std::align_val_t{buffer_alignment});
    }
    data_ = nullptr;
    size_ = 0;
  }

  T* data_ = nullptr;
  std::size_t size_ = 0;
};

} // namespace kern
