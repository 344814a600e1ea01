// Row kernels' shared machinery: how a row of n values is spread over the threads of a warp or a
// block (row_layout), the registers a thread holds its part of a row in (row_tile), and the
// per-launch choice between 16-byte and single-value access. Used by the norm and softmax families
// (kern/gpu/norm.hpp, kern/gpu/softmax.hpp): a row is read from global memory once and all its
// passes run on registers.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "kern/core/view.hpp"
#include "kern/gpu/device.hpp"
#include "kern/gpu/runtime.hpp"
#include "kern/gpu/warp.hpp"

namespace kern::gpu::detail {

// The block size of launches whose rows take a warp each.
inline constexpr int warp_rows_block_threads = 256;

// How a kernel spreads a row of n values over threads. In one tile of the row each of the row's
// `threads` threads holds `chunks` chunks of vector16<T>::size consecutive values; chunk c of
// thread t starts at value (c * threads + t) * width of the tile, so that a warp's accesses are
// contiguous. threads == warp_size: a warp per row, rows_per_block rows per block; otherwise one
// row per block.
struct row_layout {
  int threads = warp_size;
  int rows_per_block = 1;
  int chunks = 1; // 1, 2 or 4: the kernel's template argument
  index_t tiles = 1;

  dim3 block() const { return {static_cast<unsigned>(threads), static_cast<unsigned>(rows_per_block)}; }
  index_t blocks_for(index_t rows) const { return (rows + rows_per_block - 1) / rows_per_block; }
};

// The smallest layout that holds a row of n values in at most max_chunks chunks per thread: a warp
// when it fits, else a block of up to max_threads threads, in several tiles beyond that.
// warp_rows_threads: the block size when rows share a block a warp each (fewer warps when there
// are fewer rows).
inline row_layout choose_row_layout(index_t rows, index_t n, int width, int max_chunks, int max_threads,
                                    int warp_rows_threads) {
  const auto pow2_at_least = [](index_t v) { return v <= 1 ? 1 : v <= 2 ? 2 : 4; };
  const index_t chunks_of_row = std::max<index_t>(1, (n + width - 1) / width);
  row_layout l;
  if (chunks_of_row <= index_t{warp_size} * max_chunks) {
    l.rows_per_block = static_cast<int>(std::clamp<index_t>(rows, 1, warp_rows_threads / warp_size));
    l.chunks = pow2_at_least((chunks_of_row + warp_size - 1) / warp_size);
    return l;
  }
  const index_t wanted = (chunks_of_row + max_chunks - 1) / max_chunks;
  l.threads = static_cast<int>(std::min<index_t>(max_threads, (wanted + warp_size - 1) / warp_size * warp_size));
  l.chunks = std::min(max_chunks, pow2_at_least((chunks_of_row + l.threads - 1) / l.threads));
  const index_t per_tile = index_t{l.threads} * l.chunks;
  l.tiles = (chunks_of_row + per_tile - 1) / per_tile;
  return l;
}

// The most threads a row kernel's block has: 128 registers per thread, room for a row's chunks
// (a 1024-thread block would leave 64). The kernels say __launch_bounds__(max_row_threads, 1):
// without the minimum of one block, ptxas may hold a kernel to 64 registers and spill.
inline constexpr int max_row_threads = 512;

// How a row kernel reads and writes its rows, fixed per launch (a template argument). Vectorized:
// every row starts 16-byte aligned and its length is a multiple of the chunk width, so that a chunk
// is one 16-byte access, wholly inside the row or wholly past its end. Otherwise single values,
// each checked against the row's end.
template <class T> bool rows_vector_aligned(matrix_view<T> m) { // null: an absent optional matrix
  return vector_aligned(m.data) && (m.rows <= 1 || (m.ld * static_cast<index_t>(sizeof(T))) % 16 == 0);
}

// The most chunks (1, 2 or 4) that hold at most `values` values of T.
template <class T> constexpr int chunks_holding(int values) {
  const int chunks = values / vector16<T>::size;
  return chunks >= 4 ? 4 : chunks >= 2 ? 2 : 1;
}

// Calls launch(std::integral_constant<int, chunks>{}, std::bool_constant<vectorized>{}): each kernel
// is instantiated for the chunk counts (1, 2 or 4, at most MaxChunks(vectorized)) its layouts can
// pick in each access mode. `chunks` comes from a layout chosen with MaxChunks(vectorized).
template <int (*MaxChunks)(bool), class Launch> void dispatch_row_kernel(int chunks, bool vectorized, Launch&& launch) {
  const auto launch_if_possible = [&](auto chunk_count, auto access) {
    if constexpr (decltype(chunk_count)::value <= MaxChunks(decltype(access)::value)) {
      launch(chunk_count, access);
    }
  };
  const auto with_access = [&](auto chunk_count) {
    if (vectorized) {
      launch_if_possible(chunk_count, std::true_type{});
    } else {
      launch_if_possible(chunk_count, std::false_type{});
    }
  };
  if (chunks == 1) {
    with_access(std::integral_constant<int, 1>{});
  } else if (chunks == 2) {
    with_access(std::integral_constant<int, 2>{});
  } else {
    with_access(std::integral_constant<int, 4>{});
  }
}

// The calling thread's first value of chunk c in the tile that starts at tile_begin.
KERN_DEVICE index_t chunk_begin(index_t tile_begin, int c, int width) {
  return tile_begin + (static_cast<index_t>(c) * blockDim.x + threadIdx.x) * width;
}

// The row this thread works on: its block's rows, one per warp (or the block's one row).
KERN_DEVICE index_t block_row(index_t first_block_row) { return first_block_row + threadIdx.y; }

// Sum and maximum over the threads of a row: its warp, or its whole block.
KERN_DEVICE float row_sum(float value) {
  return static_cast<int>(blockDim.x) == warp_size ? warp_sum(value) : block_sum(value);
}
KERN_DEVICE float row_max(float value) {
  return static_cast<int>(blockDim.x) == warp_size ? warp_max(value) : block_max(value);
}

// How many of the `width` values from `begin` lie inside a row of n values (0 to width).
KERN_DEVICE int values_inside(index_t begin, index_t n, int width) {
  return static_cast<int>(n <= begin ? 0 : n - begin >= width ? width : n - begin);
}

// The calling thread's part of one tile of a row, in the storage type (the registers a row lives
// in between passes), and its values as fp32. Values past the row's end read as 0 and are not
// written.
template <class T, int Chunks, bool Vectorized> struct row_tile {
  static constexpr int width = vector16<T>::size;
  static constexpr int chunks = Chunks;
  static constexpr bool vectorized = Vectorized;
  vector16<T> chunk[Chunks];

  KERN_DEVICE void load(const T* row, index_t tile_begin, index_t n) {
    const T zero = from_float_rn<T>(0.0f);
    for (int c = 0; c < Chunks; ++c) {
      const index_t begin = chunk_begin(tile_begin, c, width);
      if constexpr (Vectorized) {
        if (begin < n) {
          chunk[c] = load_vector(row + begin);
        } else {
          for (int k = 0; k < width; ++k) {
            chunk[c].values[k] = zero;
          }
        }
      } else {
        const int inside = values_inside(begin, n, width);
        for (int k = 0; k < width; ++k) {
          chunk[c].values[k] = k < inside ? row[begin + k] : zero;
        }
      }
    }
  }
  KERN_DEVICE void store(T* row, index_t tile_begin, index_t n) const {
    for (int c = 0; c < Chunks; ++c) {
      const index_t begin = chunk_begin(tile_begin, c, width);
      if constexpr (Vectorized) {
        if (begin < n) {
          store_vector(row + begin, chunk[c]);
        }
      } else {
        const int inside = values_inside(begin, n, width);
        for (int k = 0; k < width; ++k) {
          if (k < inside) {
            row[begin + k] = chunk[c].values[k];
          }
        }
      }
    }
  }
  KERN_DEVICE float get(int c, int k) const { return as_float(chunk[c].values[k]); }
  KERN_DEVICE void set(int c, int k, float value) { chunk[c].values[k] = from_float_rn<T>(value); }
};

// The fp32 values (weights) of chunk c of a Tile's row, 0 past n.
template <class Tile>
KERN_DEVICE void load_floats(float (&out)[Tile::width], const float* p, index_t tile_begin, int c, index_t n) {
  const index_t begin = chunk_begin(tile_begin, c, Tile::width);
  if constexpr (Tile::vectorized) {
    for (int q = 0; q < Tile::width / 4; ++q) {
      const vector16<float> v = begin < n ? load_vector(p + begin + index_t{4} * q) : vector16<float>{};
      for (int k = 0; k < 4; ++k) {
        out[4 * q + k] = v.values[k];
      }
    }
  } else {
    const int inside = values_inside(begin, n, Tile::width);
    for (int k = 0; k < Tile::width; ++k) {
      out[k] = k < inside ? p[begin + k] : 0.0f;
    }
  }
}

// fn(c, k, index) for each value of the calling thread's chunks of a Tile that lies inside the row.
template <class Tile, class Fn> KERN_DEVICE void for_each_value(index_t tile_begin, index_t n, Fn&& fn) {
  for (int c = 0; c < Tile::chunks; ++c) {
    const index_t begin = chunk_begin(tile_begin, c, Tile::width);
    const int inside = Tile::vectorized ? (begin < n ? Tile::width : 0) : values_inside(begin, n, Tile::width);
    for (int k = 0; k < Tile::width; ++k) {
      if (k < inside) {
        fn(c, k, begin + k);
      }
    }
  }
}

} // namespace kern::gpu::detail
