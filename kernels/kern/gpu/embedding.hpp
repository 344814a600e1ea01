// GPU embedding lookup and its deterministic gradient. Parameters and semantics:
// kern/ops/embedding.hpp; algorithm and tests: docs/kernels/embedding.md.
//
//   kern::gpu::embedding_forward(p, invalid_tokens, stream)
//   kern::gpu::embedding_backward(p, workspace, invalid_tokens, stream)
//   kern::gpu::embedding_backward_workspace_bytes(p)   the workspace embedding_backward needs (bytes)
//
// Forward: threads over rows x 16-byte column groups, each group the token row (+ position row)
// rounded once to the output type.
//
// Backward, the same bits on every run without atomics on floats:
//  1. Sort the rows by token id. A key is (id, row) in 64 bits, so keys are unique and ascending
//     keys are rows grouped by id in increasing row order. Blocks sort chunks of up to 1024 keys
//     in shared memory (bitonic); with several chunks each key then finds its global rank by
//     binary search in every other chunk and is scattered there.
//  2. Cut the sorted keys into tiles of 32. Per tile and column group, a thread walks the tile's
//     rows in order: a run of one id that lies inside the tile is added onto its gradient row in
//     row order (the CPU backend's order); a piece of a run that crosses a tile edge is summed into
//     one of the tile's two partial slots in the workspace.
//  3. The tile holding the first piece of such a run adds the gradient, its piece and the later
//     tiles' pieces, in tile order, and stores the gradient row.
//  The position gradient is independent of the ids: per position and column group, a thread adds
//  the batch items' rows in batch order onto it.
//
// Token ids cannot be checked on the host (they are in device memory). On the device an id outside
// [0, vocab) never reads or writes outside the tables: the forward writes NaN across that output
// row, the backward leaves the token gradient without that row's contribution (its position
// gradient still gets it), and both add the number of such rows to *invalid_tokens when the
// caller passes a counter (device memory; the caller zeroes it and reads it after the work).
#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>
#include <string_view>
#include <type_traits>

#include "kern/gpu/device.hpp"
#include "kern/gpu/runtime.hpp"
#include "kern/gpu/shared.hpp"
#include "kern/ops/embedding.hpp"

namespace kern::gpu::detail {

// ---------------------------------------------------------------------------------------------
// Width consecutive values as floats, 16-byte accesses where Width spans whole vectors of T (the
// host picks Width so that those are aligned); `valid` < Width at the end of a row.

template <int Width, class T> KERN_DEVICE void load_group(const T* p, index_t valid, float (&v)[Width]) {
  constexpr int per_vector = vector16<T>::size;
  if constexpr (Width % per_vector == 0) {
    if (valid == Width) {
      for (int q = 0; q < Width / per_vector; ++q) {
        const vector16<T> x = load_vector(p + q * per_vector);
        for (int e = 0; e < per_vector; ++e) {
          v[q * per_vector + e] = as_float(x.values[e]);
        }
      }
      return;
    }
  }
  for (int e = 0; e < Width; ++e) {
    v[e] = e < valid ? load_float(p + e) : 0.0f;
  }
}

template <int Width, class T> KERN_DEVICE void store_group(T* p, index_t valid, const float (&v)[Width]) {
  constexpr int per_vector = vector16<T>::size;
  if constexpr (Width % per_vector == 0) {
    if (valid == Width) {
      for (int q = 0; q < Width / per_vector; ++q) {
        vector16<T> x{};
        for (int e = 0; e < per_vector; ++e) {
          x.values[e] = from_float_rn<T>(v[q * per_vector + e]);
        }
        store_vector(p + q * per_vector, x);
      }
      return;
    }
  }
  for (index_t e = 0; e < valid; ++e) {
    p[e] = from_float_rn<T>(v[e]);
  }
}

template <int Width, class T> KERN_DEVICE void add_group(const T* p, index_t valid, float (&sum)[Width]) {
  float v[Width];
  load_group<Width>(p, valid, v);
  for (int e = 0; e < Width; ++e) {
    sum[e] += v[e];
  }
}

// Thread (x, y): column group x of rows y, y + grid rows, ...; calls body(row, column, valid).
template <int Width, class Body> KERN_DEVICE void for_each_row_group(index_t rows, index_t cols, Body&& body) {
  const index_t column = (static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x) * Width;
  if (column >= cols) {
    return;
  }
  const index_t valid = cols - column < Width ? cols - column : Width;
  const index_t step = static_cast<index_t>(gridDim.y) * blockDim.y;
  for (index_t row = static_cast<index_t>(blockIdx.y) * blockDim.y + threadIdx.y; row < rows; row += step) {
    body(row, column, valid);
  }
}

// ---------------------------------------------------------------------------------------------
// Forward

template <class T> struct embedding_forward_operands {
  const std::int32_t* tokens;
  index_t rows, seq, dim, vocab;
  const float* token_table;
  index_t token_ld;
  const float* position_table; // null: none
  index_t position_ld;
  index_t position_offset;
  T* out;
  index_t out_ld;
  std::uint32_t* invalid_tokens; // null: not counted
};

template <int Width, class T> __global__ void embedding_forward_kernel(embedding_forward_operands<T> f) {
  for_each_row_group<Width>(f.rows, f.dim, [&](index_t row, index_t column, index_t valid) {
    const std::int32_t id = f.tokens[row];
    float v[Width];
    if (id < 0 || id >= f.vocab) {
      for (float& x : v) {
        x = std::numeric_limits<float>::quiet_NaN();
      }
      if (column == 0 && f.invalid_tokens != nullptr) {
        atomicAdd(f.invalid_tokens, 1u);
      }
    } else {
      load_group<Width>(f.token_table + id * f.token_ld + column, valid, v);
      if (f.position_table != nullptr) {
        add_group<Width>(f.position_table + (f.position_offset + row % f.seq) * f.position_ld + column, valid, v);
      }
    }
    store_group<Width>(f.out + row * f.out_ld + column, valid, v);
  });
}

// ---------------------------------------------------------------------------------------------
// Backward, step 1: the sort.

using sort_key = std::uint64_t;
inline constexpr std::uint32_t invalid_id = 0xffffffffu; // sorts after every valid id
inline constexpr int sort_chunk = 1024;                  // keys per block-local sort

KERN_HOST_DEVICE inline std::uint32_t id_of(sort_key key) { return static_cast<std::uint32_t>(key >> 32); }
KERN_HOST_DEVICE inline index_t row_of(sort_key key) { return static_cast<index_t>(key & 0xffffffffu); }

// Sorts the rows' (id, row) keys in chunks of Chunk rows, each on its own, into out; counts the
// rows whose id is outside [0, vocab). Chunk / 2 threads.
template <int Chunk> __global__ void sort_chunks_kernel(const std::int32_t* tokens, index_t rows, index_t vocab,
                                                        sort_key* out, std::uint32_t* invalid_tokens) {
  KERN_SHARED(sort_key, keys, Chunk);
  const index_t chunk_begin = static_cast<index_t>(blockIdx.x) * Chunk;
  for (int k = static_cast<int>(threadIdx.x); k < Chunk; k += Chunk / 2) {
    const index_t row = chunk_begin + k;
    sort_key key = std::numeric_limits<sort_key>::max(); // padding past the last row sorts last
    if (row < rows) {
      const std::int32_t id = tokens[row];
      const bool valid = id >= 0 && id < vocab;
      if (!valid && invalid_tokens != nullptr) {
        atomicAdd(invalid_tokens, 1u);
      }
      key = sort_key{valid ? static_cast<std::uint32_t>(id) : invalid_id} << 32 | static_cast<sort_key>(row);
    }
    keys[static_cast<std::size_t>(k)] = key;
  }
  for (int size = 2; size <= Chunk; size *= 2) {
    for (int stride = size / 2; stride > 0; stride /= 2) {
      __syncthreads();
      const int pair = static_cast<int>(threadIdx.x);
      const int low = 2 * pair - (pair & (stride - 1)), high = low + stride;
      const sort_key a = keys[static_cast<std::size_t>(low)], b = keys[static_cast<std::size_t>(high)];
      const bool ascending = (low & size) == 0;
      if ((a > b) == ascending) {
        keys[static_cast<std::size_t>(low)] = b;
        keys[static_cast<std::size_t>(high)] = a;
      }
    }
  }
  __syncthreads();
  for (int k = static_cast<int>(threadIdx.x); k < Chunk && chunk_begin + k < rows; k += Chunk / 2) {
    out[chunk_begin + k] = keys[static_cast<std::size_t>(k)];
  }
}

// The number of keys in sorted[0, count) below key.
KERN_DEVICE index_t count_below(const sort_key* sorted, index_t count, sort_key key) {
  index_t low = 0, high = count;
  while (low < high) {
    const index_t middle = (low + high) / 2;
    if (sorted[middle] < key) {
      low = middle + 1;
    } else {
      high = middle;
    }
  }
  return low;
}

// Keys are unique, so a key's place in the whole sorted order is the number of keys below it:
// its index in its own chunk plus its rank in each other chunk.
template <int Chunk> __global__ void merge_chunks_kernel(const sort_key* chunked, index_t rows, sort_key* sorted) {
  const index_t k = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (k >= rows) {
    return;
  }
  const sort_key key = chunked[k];
  const index_t own = k / Chunk;
  index_t rank = k - own * Chunk;
  for (index_t begin = 0; begin < rows; begin += Chunk) {
    if (begin != own * Chunk) {
      const index_t count = rows - begin < Chunk ? rows - begin : Chunk;
      rank += count_below(chunked + begin, count, key);
    }
  }
  sorted[rank] = key;
}

// ---------------------------------------------------------------------------------------------
// Backward, steps 2 and 3: the token gradient from the sorted keys.

inline constexpr index_t gradient_tile = 32; // sorted rows per tile
inline constexpr int gradient_threads = 64;  // column groups per block

template <class T> struct token_gradient_operands {
  const sort_key* sorted;
  index_t rows, dim;
  const T* dout;
  index_t dout_ld;
  float* token_grad;
  index_t grad_ld;
  float* partials; // two slots of partial_ld floats per tile
  index_t partial_ld;
};

// Whether the run of the key at `last` (the last of a tile) goes on past the tile.
KERN_DEVICE bool run_continues_after(const sort_key* sorted, index_t rows, index_t last) {
  return last + 1 < rows && id_of(sorted[last + 1]) == id_of(sorted[last]);
}

// The first column of the calling thread's group in the gradient kernels' grid (tiles x groups).
template <int Width> KERN_DEVICE index_t tile_column() {
  return (static_cast<index_t>(blockIdx.y) * blockDim.x + threadIdx.x) * Width;
}

template <int Width, class T> __global__ void token_gradient_tiles_kernel(token_gradient_operands<T> g) {
  const index_t column = tile_column<Width>();
  if (column >= g.dim) {
    return;
  }
  const index_t valid = g.dim - column < Width ? g.dim - column : Width;
  const index_t tile = blockIdx.x, begin = tile * gradient_tile;
  const index_t end = begin + gradient_tile < g.rows ? begin + gradient_tile : g.rows;
  const bool continues_in = begin > 0 && id_of(g.sorted[begin - 1]) == id_of(g.sorted[begin]);
  const bool continues_out = run_continues_after(g.sorted, g.rows, end - 1);
  for (index_t piece = begin; piece < end;) {
    const std::uint32_t id = id_of(g.sorted[piece]);
    index_t piece_end = piece + 1;
    while (piece_end < end && id_of(g.sorted[piece_end]) == id) {
      ++piece_end;
    }
    if (id != invalid_id) {
      const bool after_edge = piece == begin && continues_in, before_edge = piece_end == end && continues_out;
      float sum[Width];
      float* target = nullptr;
      index_t next = piece;
      if (after_edge || before_edge) { // part of a longer run: its own sum, to a slot
        target = g.partials + (2 * tile + (after_edge ? 0 : 1)) * g.partial_ld + column;
        load_group<Width>(g.dout + row_of(g.sorted[next++]) * g.dout_ld + column, valid, sum);
      } else { // a whole run: onto the gradient, in row order
        target = g.token_grad + static_cast<index_t>(id) * g.grad_ld + column;
        load_group<Width>(target, valid, sum);
      }
      for (; next < piece_end; ++next) {
        add_group<Width>(g.dout + row_of(g.sorted[next]) * g.dout_ld + column, valid, sum);
      }
      store_group<Width>(target, valid, sum);
    }
    piece = piece_end;
  }
}

// The tile holding the first piece of a run that crosses tile edges adds the run's pieces, in
// tile order, onto the gradient.
template <int Width, class T> __global__ void token_gradient_runs_kernel(token_gradient_operands<T> g) {
  const index_t column = tile_column<Width>();
  const index_t tile = blockIdx.x, begin = tile * gradient_tile;
  const index_t last = (begin + gradient_tile < g.rows ? begin + gradient_tile : g.rows) - 1;
  const std::uint32_t id = id_of(g.sorted[last]);
  if (column >= g.dim || id == invalid_id || !run_continues_after(g.sorted, g.rows, last) ||
      (begin > 0 && id_of(g.sorted[begin - 1]) == id)) {
    return;
  }
  const index_t valid = g.dim - column < Width ? g.dim - column : Width;
  float* target = g.token_grad + static_cast<index_t>(id) * g.grad_ld + column;
  float sum[Width];
  load_group<Width>(target, valid, sum);
  add_group<Width>(g.partials + (2 * tile + 1) * g.partial_ld + column, valid, sum);
  // The run goes on through every tile whose first key has its id.
  for (index_t next = tile + 1; next * gradient_tile < g.rows && id_of(g.sorted[next * gradient_tile]) == id; ++next) {
    add_group<Width>(g.partials + 2 * next * g.partial_ld + column, valid, sum);
  }
  store_group<Width>(target, valid, sum);
}

// The position gradient: per position and column group, the batch items' rows in batch order.
template <class T> struct position_gradient_operands {
  index_t batch, seq, dim;
  const T* dout;
  index_t dout_ld;
  float* position_grad; // at position_offset already
  index_t grad_ld;
};

template <int Width, class T> __global__ void position_gradient_kernel(position_gradient_operands<T> g) {
  for_each_row_group<Width>(g.seq, g.dim, [&](index_t s, index_t column, index_t valid) {
    float* target = g.position_grad + s * g.grad_ld + column;
    float sum[Width];
    load_group<Width>(target, valid, sum);
    for (index_t b = 0; b < g.batch; ++b) {
      add_group<Width>(g.dout + (b * g.seq + s) * g.dout_ld + column, valid, sum);
    }
    store_group<Width>(target, valid, sum);
  });
}

// ---------------------------------------------------------------------------------------------
// Host side.

// Whether a matrix's rows can be accessed as groups of `width` values from 16-byte aligned starts.
template <class U> bool groups_aligned(const U* data, index_t rows, index_t ld, int width) {
  const index_t per_vector = 16 / static_cast<index_t>(sizeof(U));
  return vector_aligned(data) && (rows <= 1 || ld % per_vector == 0) && width % per_vector == 0;
}

// Calls launch(std::integral_constant<int, width>) with the group width every operand allows.
template <class T, class Launch> void with_group_width(bool vectors, Launch&& launch) {
  if (vectors) {
    launch(std::integral_constant<int, vector16<T>::size>{});
  } else {
    launch(std::integral_constant<int, 1>{});
  }
}

// The workspace: [chunk-sorted keys (more than one chunk)] [sorted keys] [partial slots], each part
// 16-byte aligned.
struct embedding_backward_plan {
  index_t rows = 0, chunks = 0, tiles = 0, partial_ld = 0;

  static std::size_t round16(std::size_t bytes) { return (bytes + 15) / 16 * 16; }
  std::size_t key_bytes() const { return round16(static_cast<std::size_t>(rows) * sizeof(sort_key)); }
  std::size_t chunked_offset() const { return 0; }
  std::size_t sorted_offset() const { return chunks > 1 ? key_bytes() : 0; }
  std::size_t partials_offset() const { return sorted_offset() + key_bytes(); }
  std::size_t bytes() const {
    return rows == 0 ? 0 : partials_offset() + static_cast<std::size_t>(2 * tiles * partial_ld) * sizeof(float);
  }
};

// One block per chunk; a single chunk is sorted in the smallest power of two that holds it (at least
// 128 keys: 64 threads, whole warps of either size), which saves barriers on short batches.
inline void launch_sort(const embedding_backward_plan& plan, const std::int32_t* tokens, index_t vocab, sort_key* out,
                        std::uint32_t* invalid_tokens, stream_t stream) {
  const auto run = [&](auto chunk) {
    constexpr int keys = decltype(chunk)::value;
    launch(sort_chunks_kernel<keys>, dim3(static_cast<unsigned>(plan.chunks)), dim3(keys / 2), 0, stream, tokens,
           plan.rows, vocab, out, invalid_tokens);
  };
  if (plan.rows <= 128) {
    run(std::integral_constant<int, 128>{});
  } else if (plan.rows <= 256) {
    run(std::integral_constant<int, 256>{});
  } else if (plan.rows <= 512) {
    run(std::integral_constant<int, 512>{});
  } else {
    run(std::integral_constant<int, sort_chunk>{});
  }
}

inline embedding_backward_plan plan_embedding_backward(index_t rows, index_t dim) {
  embedding_backward_plan plan;
  if (rows <= 0 || dim <= 0) {
    return plan;
  }
  plan.rows = rows;
  plan.chunks = (rows + sort_chunk - 1) / sort_chunk;
  plan.tiles = (rows + gradient_tile - 1) / gradient_tile;
  plan.partial_ld = (dim + 7) / 8 * 8;
  return plan;
}

} // namespace kern::gpu::detail

namespace kern::gpu {

// out[r] = token_table[tokens[r]] (+ position_table[position_offset + r % seq]). A row whose id
// is outside [0, vocab) gets NaN and, when invalid_tokens is not null, adds 1 to *invalid_tokens.
template <element_type T>
void embedding_forward(const ops::embedding_forward_params<T>& p, std::uint32_t* invalid_tokens, stream_t stream) {
  constexpr std::string_view op = KERN_GPU_OP("embedding_forward");
  ops::validate_except_token_ids(op, p);
  const index_t rows = p.rows(), dim = p.out.cols;
  if (rows == 0 || dim == 0) {
    return;
  }
  const bool has_positions = p.position_table.data != nullptr;
  constexpr int width = vector16<T>::size;
  const bool vectors = detail::groups_aligned(p.out.data, rows, p.out.ld, width) &&
                       detail::groups_aligned(p.token_table.data, p.token_table.rows, p.token_table.ld, width) &&
                       (!has_positions || detail::groups_aligned(p.position_table.data, p.position_table.rows,
                                                                 p.position_table.ld, width));
  const detail::embedding_forward_operands<T> f{p.tokens,
                                                rows,
                                                p.seq,
                                                dim,
                                                p.token_table.rows,
                                                p.token_table.data,
                                                p.token_table.ld,
                                                p.position_table.data,
                                                p.position_table.ld,
                                                p.position_offset,
                                                p.out.data,
                                                p.out.ld,
                                                invalid_tokens};
  detail::with_group_width<T>(vectors, [&](auto group) {
    constexpr int w = decltype(group)::value;
    const launch_shape shape = rows_by_column_groups(rows, (dim + w - 1) / w);
    launch(detail::embedding_forward_kernel<w, T>, shape.grid, shape.block, 0, stream, f);
  });
}

// Bytes of device memory embedding_backward(p, ...) needs at `workspace`; depends on batch * seq
// and dim only.
template <element_type T> std::size_t embedding_backward_workspace_bytes(const ops::embedding_backward_params<T>& p) {
  return detail::plan_embedding_backward(p.rows(), p.dout.cols).bytes();
}

// token_grad[tokens[r]] += dout[r] and position_grad[position_offset + r % seq] += dout[r], each
// gradient element a fixed-order sum (the same bits on every run). workspace:
// embedding_backward_workspace_bytes(p) bytes of device memory, 16-byte aligned, apart from every
// operand. A row whose id is outside [0, vocab) adds nothing to token_grad and, when
// invalid_tokens is not null, adds 1 to *invalid_tokens.
template <element_type T> void embedding_backward(const ops::embedding_backward_params<T>& p, void* workspace,
                                                  std::uint32_t* invalid_tokens, stream_t stream) {
  constexpr std::string_view op = KERN_GPU_OP("embedding_backward");
  ops::validate_except_token_ids(op, p);
  const index_t rows = p.rows(), dim = p.dout.cols;
  require(rows <= std::numeric_limits<std::int32_t>::max(), op, "batch * seq = ", rows,
          " rows exceed the 2^31 - 1 the device sort handles");
  const detail::embedding_backward_plan plan = detail::plan_embedding_backward(rows, dim);
  require(workspace != nullptr || plan.bytes() == 0, op, "workspace is null but ", plan.bytes(),
          " bytes are needed (embedding_backward_workspace_bytes)");
  if (plan.bytes() == 0) {
    return;
  }
  require(vector_aligned(workspace), op, "workspace = ", workspace, " is not 16-byte aligned");
  auto* bytes = static_cast<unsigned char*>(workspace);
  const unsigned char* end = bytes + plan.bytes();
  require_disjoint(op, "workspace", bytes, end, "dout", p.dout.data, p.dout.end());
  require_disjoint(op, "workspace", bytes, end, "token_grad", p.token_grad.data, p.token_grad.end());
  require_disjoint(op, "workspace", bytes, end, "tokens", p.tokens, p.tokens + rows);
  if (p.position_grad.data != nullptr) {
    require_disjoint(op, "workspace", bytes, end, "position_grad", p.position_grad.data, p.position_grad.end());
  }

  auto* sorted = reinterpret_cast<detail::sort_key*>(bytes + plan.sorted_offset());
  auto* chunked = plan.chunks > 1 ? reinterpret_cast<detail::sort_key*>(bytes + plan.chunked_offset()) : sorted;
  detail::launch_sort(plan, p.tokens, p.token_grad.rows, chunked, invalid_tokens, stream);
  if (plan.chunks > 1) {
    constexpr int threads = 256;
    launch(detail::merge_chunks_kernel<detail::sort_chunk>, dim3(static_cast<unsigned>((rows + threads - 1) / threads)),
           dim3(threads), 0, stream, static_cast<const detail::sort_key*>(chunked), rows, sorted);
  }

  constexpr int width = vector16<T>::size;
  const bool token_vectors = detail::groups_aligned(p.dout.data, rows, p.dout.ld, width) &&
                             detail::groups_aligned(p.token_grad.data, p.token_grad.rows, p.token_grad.ld, width);
  const detail::token_gradient_operands<T> g{sorted,
                                             rows,
                                             dim,
                                             p.dout.data,
                                             p.dout.ld,
                                             p.token_grad.data,
                                             p.token_grad.ld,
                                             reinterpret_cast<float*>(bytes + plan.partials_offset()),
                                             plan.partial_ld};
  detail::with_group_width<T>(token_vectors, [&](auto group) {
    constexpr int w = decltype(group)::value;
    const index_t groups = (dim + w - 1) / w;
    const dim3 grid(static_cast<unsigned>(plan.tiles),
                    static_cast<unsigned>((groups + detail::gradient_threads - 1) / detail::gradient_threads));
    launch(detail::token_gradient_tiles_kernel<w, T>, grid, dim3(detail::gradient_threads), 0, stream, g);
    launch(detail::token_gradient_runs_kernel<w, T>, grid, dim3(detail::gradient_threads), 0, stream, g);
  });

  if (p.position_grad.data != nullptr) {
    const bool position_vectors =
        detail::groups_aligned(p.dout.data, rows, p.dout.ld, width) &&
        detail::groups_aligned(p.position_grad.data, p.position_grad.rows, p.position_grad.ld, width);
    const detail::position_gradient_operands<T> pg{
        p.batch,           p.seq,     dim,
        p.dout.data,       p.dout.ld, p.position_grad.data + p.position_offset * p.position_grad.ld,
        p.position_grad.ld};
    detail::with_group_width<T>(position_vectors, [&](auto group) {
      constexpr int w = decltype(group)::value;
      const launch_shape shape = rows_by_column_groups(p.seq, (dim + w - 1) / w);
      launch(detail::position_gradient_kernel<w, T>, shape.grid, shape.block, 0, stream, pg);
    });
  }
}

} // namespace kern::gpu
