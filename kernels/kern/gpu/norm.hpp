// GPU LayerNorm / RMSNorm entry points. Parameters and semantics: kern/ops/norm.hpp; algorithm:
// docs/kernels/norm.md.
//
//   kern::gpu::norm_forward(params, stream)                  y = norm(x [+ residual]) * weight [+ bias]
//   kern::gpu::norm_backward(params, workspace, stream)      dx (= or +=), dweight +=, dbias +=
//   kern::gpu::norm_backward_workspace_bytes(params)         the workspace norm_backward needs
//
// A row belongs to one warp (short rows; a block holds several) or to one whole block (long rows).
// Each thread keeps its part of the row in registers, as 16-byte chunks of the storage type, so
// that the passes over a row (residual add, mean, variance, output) read global memory once. A row
// longer than a block can hold is cut into tiles that each pass reads again.
//
// The parameter gradients are deterministic without atomics: the backward's blocks each take a
// fixed group of rows (a function of the shape only) and write that group's per-column partial
// sums to the caller's workspace; a second kernel adds the groups in group order. Rows too long
// for one block's registers get their row sums from a first kernel and are split over blocks by
// column tile.
//
// Host side: validation, the launch shape, launches on the caller's stream. Nothing synchronizes
// and nothing allocates. The row machinery (row_layout, row_tile) is kern/gpu/rows.hpp.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "kern/core/error.hpp"
#include "kern/gpu/device.hpp"
#include "kern/gpu/rows.hpp"
#include "kern/gpu/runtime.hpp"
#include "kern/gpu/warp.hpp"
#include "kern/ops/norm.hpp"

namespace kern::gpu::detail {

// ---------------------------------------------------------------------------------------------
// Forward.

// Chunks per thread: up to 16 values of each row held with 16-byte access, 8 with single values
// (whose per-value checks cost registers).
template <class T> constexpr int norm_forward_chunks(bool vectorized) { return chunks_holding<T>(vectorized ? 16 : 8); }

template <class T, int Chunks, bool Vectorized> __global__ void __launch_bounds__(max_row_threads, 1)
    norm_forward_kernel(ops::norm_forward_params<T> p, index_t tiles) {
  using tile = row_tile<T, Chunks, Vectorized>;
  constexpr int width = tile::width;
  const index_t r = block_row(static_cast<index_t>(blockIdx.x) * blockDim.y);
  if (r >= p.x.rows) {
    return; // a warp without a row (a block's row count does not divide the rows)
  }
  const index_t n = p.x.cols, tile_size = static_cast<index_t>(blockDim.x) * Chunks * width;
  const bool fused = p.residual.data != nullptr, layernorm = p.kind == ops::norm_kind::layernorm;
  const T* x = p.x.data + r * p.x.ld;
  T* h_out = fused ? p.residual_out.data + r * p.residual_out.ld : nullptr;
  const T* h_row = fused ? h_out : x; // where h is once pass 1 has run
  tile h;

  // Pass 1: h (x + residual, rounded to T and stored) and its sum.
  float sum = 0.0f;
  for (index_t t = 0; t < tiles; ++t) {
    const index_t begin = t * tile_size;
    h.load(x, begin, n);
    if (fused) {
      tile residual;
      residual.load(p.residual.data + r * p.residual.ld, begin, n);
      for_each_value<tile>(begin, n, [&](int c, int k, index_t) { h.set(c, k, h.get(c, k) + residual.get(c, k)); });
      h.store(h_out, begin, n);
    }
    for_each_value<tile>(begin, n, [&](int c, int k, index_t) { sum += h.get(c, k); });
  }
  const auto count = static_cast<float>(n);
  const float mean = layernorm ? row_sum(sum) / count : 0.0f;

  // Pass 2: the squared deviations from the mean (rmsnorm: the squares), never E[h^2] - E[h]^2.
  float square_sum = 0.0f;
  for (index_t t = 0; t < tiles; ++t) {
    const index_t begin = t * tile_size;
    if (tiles > 1) {
      h.load(h_row, begin, n);
    }
    for_each_value<tile>(begin, n, [&](int c, int k, index_t) {
      const float d = h.get(c, k) - mean;
      square_sum += d * d;
    });
  }
  const float rstd = reciprocal_sqrt(row_sum(square_sum) / count + p.epsilon);
  if (threadIdx.x == 0) {
    if (p.mean != nullptr) {
      p.mean[r] = mean;
    }
    if (p.rstd != nullptr) {
      p.rstd[r] = rstd;
    }
  }

  // Pass 3: y = (h - mean) * rstd * weight + bias.
  T* y = p.y.data + r * p.y.ld;
  for (index_t t = 0; t < tiles; ++t) {
    const index_t begin = t * tile_size;
    if (tiles > 1) {
      h.load(h_row, begin, n);
    }
    for (int c = 0; c < Chunks; ++c) {
      float weight[width], bias[width] = {};
      load_floats<tile>(weight, p.weight, begin, c, n);
      if (p.bias != nullptr) {
        load_floats<tile>(bias, p.bias, begin, c, n);
      }
      for (int k = 0; k < width; ++k) {
        const float xhat = (h.get(c, k) - mean) * rstd;
        h.set(c, k, p.bias != nullptr ? fmaf(xhat, weight[k], bias[k]) : xhat * weight[k]);
      }
    }
    h.store(y, begin, n);
  }
}

// ---------------------------------------------------------------------------------------------
// Backward.

// Chunks per thread: the row's x and dy, and the thread's parameter-gradient sums (fp32, two per
// value) stay in registers: 2 chunks with 16-byte access, 8 values with single values.
template <class T> constexpr int norm_backward_chunks(bool vectorized) { return vectorized ? 2 : chunks_holding<T>(8); }
// With parameter gradients, rows are taken in groups, one group per block, each group's partial
// sums (2 x dim floats) written once: at least 2 rows per warp or block, and no more groups than
// keep about this many threads busy (enough to fill a large GPU; the partial sums stay a small part
// of the traffic).
inline constexpr index_t norm_gradient_threads = 131072;

struct norm_backward_plan {
  row_layout layout;
  index_t groups = 0;          // blocks along the rows; block g takes row slots g, g + groups, ...
  index_t partial_floats = 0;  // groups x [dweight | dbias] x dim partial sums, with parameter gradients
  index_t row_mean_floats = 0; // rows x [mean(g), mean(g * xhat)], when a row takes several tiles
  index_t shared_bytes = 0;    // a block of warps: each warp's sums, added in shared memory

  std::size_t workspace_bytes() const {
    return static_cast<std::size_t>(partial_floats + row_mean_floats) * sizeof(float);
  }
};

template <class T> norm_backward_plan plan_norm_backward(const ops::norm_backward_params<T>& p, bool vectorized) {
  norm_backward_plan plan;
  const index_t rows = p.x.rows, dim = p.x.cols;
  plan.layout = choose_row_layout(rows, dim, vector16<T>::size, norm_backward_chunks<T>(vectorized), max_row_threads,
                                  warp_rows_block_threads);
  const row_layout& l = plan.layout;
  plan.groups = l.blocks_for(rows);
  if (p.dweight != nullptr || p.dbias != nullptr) {
    const index_t block_threads = index_t{l.threads} * l.rows_per_block;
    plan.groups = std::min((plan.groups + 1) / 2, std::max<index_t>(1, norm_gradient_threads / block_threads));
    plan.partial_floats = plan.groups * 2 * dim;
    if (l.rows_per_block > 1) {
      plan.shared_bytes = block_threads * l.chunks * vector16<T>::size * 2 * static_cast<index_t>(sizeof(float));
    }
  }
  if (l.tiles > 1) {
    plan.row_mean_floats = 2 * rows;
  }
  return plan;
}

// A thread's part of the row sums of g = dy * weight and of g * xhat, over its chunks of tiles.
template <class Tile> struct gradient_sums {
  float g = 0.0f, g_xhat = 0.0f;

  KERN_DEVICE void add(const Tile& x, const Tile& dy, const float* weight_row, index_t begin, index_t n, float mean,
                       float rstd) {
    for (int c = 0; c < Tile::chunks; ++c) {
      float weight[Tile::width];
      load_floats<Tile>(weight, weight_row, begin, c, n);
      for (int k = 0; k < Tile::width; ++k) { // past the row dy and weight are 0: no term counts there
        const float gk = dy.get(c, k) * weight[k];
        g += gk;
        g_xhat = fmaf(gk, (x.get(c, k) - mean) * rstd, g_xhat);
      }
    }
  }
};

// For rows of several tiles: each row's mean(g) (0 for rmsnorm) and mean(g * xhat), g = dy * weight.
template <class T, int Chunks, bool Vectorized> __global__ void __launch_bounds__(max_row_threads, 1)
    norm_backward_row_means_kernel(ops::norm_backward_params<T> p, float* row_means, index_t tiles) {
  using tile = row_tile<T, Chunks, Vectorized>;
  const index_t r = block_row(static_cast<index_t>(blockIdx.x) * blockDim.y);
  if (r >= p.x.rows) {
    return;
  }
  const index_t n = p.x.cols, tile_size = static_cast<index_t>(blockDim.x) * Chunks * tile::width;
  const bool layernorm = p.kind == ops::norm_kind::layernorm;
  const float mean = layernorm ? p.mean[r] : 0.0f, rstd = p.rstd[r];
  gradient_sums<tile> sums;
  for (index_t t = 0; t < tiles; ++t) {
    tile x, dy;
    x.load(p.x.data + r * p.x.ld, t * tile_size, n);
    dy.load(p.dy.data + r * p.dy.ld, t * tile_size, n);
    sums.add(x, dy, p.weight, t * tile_size, n, mean, rstd);
  }
  const auto count = static_cast<float>(n);
  const float g_mean = layernorm ? row_sum(sums.g) / count : 0.0f;
  const float g_xhat_mean = row_sum(sums.g_xhat) / count;
  if (threadIdx.x == 0) {
    row_means[2 * r] = g_mean;
    row_means[2 * r + 1] = g_xhat_mean;
  }
}

// dx for the rows of group blockIdx.x, in column tile blockIdx.y, and (partials != null) the
// group's parameter-gradient partial sums over those columns. row_means: null when a row is one
// tile (its sums are then made here).
template <class T, int Chunks, bool Vectorized> __global__ void __launch_bounds__(max_row_threads, 1)
    norm_backward_kernel(ops::norm_backward_params<T> p, const float* row_means, float* partials) {
  using tile = row_tile<T, Chunks, Vectorized>;
  constexpr int width = tile::width;
  const index_t rows = p.x.rows, n = p.x.cols, tile_size = static_cast<index_t>(blockDim.x) * Chunks * width;
  const index_t begin = static_cast<index_t>(blockIdx.y) * tile_size;
  const index_t row_step = static_cast<index_t>(gridDim.x) * blockDim.y;
  const bool layernorm = p.kind == ops::norm_kind::layernorm;
  const auto count = static_cast<float>(n);
  float dweight[Chunks][width] = {}, dbias[Chunks][width] = {}; // over this thread's rows, per column

  for (index_t r = block_row(static_cast<index_t>(blockIdx.x) * blockDim.y); r < rows; r += row_step) {
    tile x, dy;
    x.load(p.x.data + r * p.x.ld, begin, n);
    dy.load(p.dy.data + r * p.dy.ld, begin, n);
    const float mean = layernorm ? p.mean[r] : 0.0f, rstd = p.rstd[r];
    float g_mean = 0.0f, g_xhat_mean = 0.0f;
    if (row_means == nullptr) {
      gradient_sums<tile> sums;
      sums.add(x, dy, p.weight, begin, n, mean, rstd);
      g_mean = layernorm ? row_sum(sums.g) / count : 0.0f;
      g_xhat_mean = row_sum(sums.g_xhat) / count;
    } else {
      g_mean = row_means[2 * r];
      g_xhat_mean = row_means[2 * r + 1];
    }
    T* dx_row = p.dx.data + r * p.dx.ld;
    tile dx;
    if (p.accumulate_dx) {
      dx.load(dx_row, begin, n);
    }
    for (int c = 0; c < Chunks; ++c) {
      float weight[width];
      load_floats<tile>(weight, p.weight, begin, c, n);
      for (int k = 0; k < width; ++k) {
        const float d = dy.get(c, k), xhat = (x.get(c, k) - mean) * rstd;
        const float out = rstd * (d * weight[k] - g_mean - xhat * g_xhat_mean);
        dx.set(c, k, p.accumulate_dx ? out + dx.get(c, k) : out);
        dweight[c][k] = fmaf(d, xhat, dweight[c][k]);
        dbias[c][k] += d;
      }
    }
    dx.store(dx_row, begin, n);
  }
  if (partials == nullptr) {
    return;
  }

  float* group_partials = partials + static_cast<index_t>(blockIdx.x) * 2 * n;
  if (blockDim.y == 1) {
    for_each_value<tile>(begin, n, [&](int c, int k, index_t column) {
      group_partials[column] = dweight[c][k];
      group_partials[n + column] = dbias[c][k];
    });
    return;
  }
  // A block of warps (one tile: the warp's columns): each warp's sums to shared memory, then the
  // block's threads add the warps in warp order, a column each.
  KERN_DYNAMIC_SHARED(float, warp_sums); // [warp][dweight | dbias][column]
  constexpr int columns = warp_size * Chunks * width;
  const auto warp_base = static_cast<std::size_t>(threadIdx.y) * 2 * columns;
  for (int c = 0; c < Chunks; ++c) {
    for (int k = 0; k < width; ++k) {
      const auto column = static_cast<std::size_t>((c * warp_size + static_cast<int>(threadIdx.x)) * width + k);
      warp_sums[warp_base + column] = dweight[c][k];
      warp_sums[warp_base + columns + column] = dbias[c][k];
    }
  }
  __syncthreads();
  const int block_threads = static_cast<int>(blockDim.x * blockDim.y);
  for (int e = linear_thread_id(); e < 2 * columns; e += block_threads) {
    const index_t column = e % columns;
    if (column >= n) {
      continue;
    }
    float total = 0.0f;
    for (int w = 0; w < static_cast<int>(blockDim.y); ++w) {
      total += warp_sums[static_cast<std::size_t>(w) * 2 * columns + static_cast<std::size_t>(e)];
    }
    group_partials[(e / columns) * n + column] = total;
  }
}

// dweight (blockIdx.y 0) or dbias (1) += the groups' partial sums, added in group order. A block
// takes 4 adjacent columns per thread across a warp's width; its slices of threads (threadIdx.y)
// sum every slices-th group, then slice 0 adds the slices in order.
inline constexpr int gradient_sum_width = 4, gradient_sum_slices = 8;
inline constexpr int gradient_sum_columns = 32 * gradient_sum_width; // per block

__global__ void __launch_bounds__(32 * gradient_sum_slices)
    norm_parameter_gradient_kernel(const float* partials, index_t groups, index_t n, float* dweight, float* dbias) {
  float* gradient = blockIdx.y == 0 ? dweight : dbias;
  if (gradient == nullptr) {
    return; // the whole block
  }
  KERN_SHARED(float, slice_sums, std::size_t{gradient_sum_columns} * gradient_sum_slices);
  const int first = static_cast<int>(threadIdx.x) * gradient_sum_width;
  const index_t column = static_cast<index_t>(blockIdx.x) * gradient_sum_columns + first;
  float sum[gradient_sum_width] = {};
  for (index_t g = threadIdx.y; g < groups; g += gradient_sum_slices) {
    const float* partial = partials + (g * 2 + blockIdx.y) * n;
    for (int k = 0; k < gradient_sum_width; ++k) {
      sum[k] += column + k < n ? partial[column + k] : 0.0f;
    }
  }
  for (int k = 0; k < gradient_sum_width; ++k) {
    slice_sums[threadIdx.y * gradient_sum_columns + static_cast<unsigned>(first + k)] = sum[k];
  }
  __syncthreads();
  if (threadIdx.y != 0) {
    return;
  }
  for (int k = 0; k < gradient_sum_width && column + k < n; ++k) {
    float total = 0.0f;
    for (int s = 0; s < gradient_sum_slices; ++s) {
      total += slice_sums[static_cast<std::size_t>(s) * gradient_sum_columns + static_cast<std::size_t>(first + k)];
    }
    gradient[column + k] += total;
  }
}

} // namespace kern::gpu::detail

namespace kern::gpu {

template <element_type T> void norm_forward(const ops::norm_forward_params<T>& p, stream_t stream) {
  ops::validate(KERN_GPU_OP("norm_forward"), p);
  if (p.x.empty()) {
    return;
  }
  const bool vectorized = p.x.cols % vector16<T>::size == 0 && detail::rows_vector_aligned(p.x) &&
                          detail::rows_vector_aligned(p.y) && detail::rows_vector_aligned(p.residual) &&
                          detail::rows_vector_aligned(p.residual_out) && vector_aligned(p.weight) &&
                          vector_aligned(p.bias);
  const detail::row_layout layout =
      detail::choose_row_layout(p.x.rows, p.x.cols, vector16<T>::size, detail::norm_forward_chunks<T>(vectorized),
                                detail::max_row_threads, detail::warp_rows_block_threads);
  detail::dispatch_row_kernel<detail::norm_forward_chunks<T>>(layout.chunks, vectorized, [&](auto chunks, auto access) {
    launch(detail::norm_forward_kernel<T, decltype(chunks)::value, decltype(access)::value>,
           dim3(static_cast<unsigned>(layout.blocks_for(p.x.rows))), layout.block(), 0, stream, p, layout.tiles);
  });
}

// Bytes of device memory norm_backward(p, workspace, stream) needs at `workspace` (0: none). It
// depends on the shape and on whether dweight or dbias is given, not on the pointers' alignment.
template <element_type T> std::size_t norm_backward_workspace_bytes(const ops::norm_backward_params<T>& p) {
  if (p.x.rows <= 0 || p.x.cols <= 0) {
    return 0;
  }
  return std::max(detail::plan_norm_backward(p, true).workspace_bytes(),
                  detail::plan_norm_backward(p, false).workspace_bytes());
}

// workspace: norm_backward_workspace_bytes(p) bytes of device memory, 4-byte aligned, that no other
// work in flight uses (its contents need no initialization).
template <element_type T> void norm_backward(const ops::norm_backward_params<T>& p, void* workspace, stream_t stream) {
  constexpr const char* op = KERN_GPU_OP("norm_backward");
  ops::validate(op, p);
  if (p.x.empty()) {
    return;
  }
  const bool vectorized = p.x.cols % vector16<T>::size == 0 && detail::rows_vector_aligned(p.x) &&
                          detail::rows_vector_aligned(p.dy) && detail::rows_vector_aligned(p.dx) &&
                          vector_aligned(p.weight);
  const detail::norm_backward_plan plan = detail::plan_norm_backward(p, vectorized);
  require(workspace != nullptr || plan.workspace_bytes() == 0, op, "workspace is null but ",
          norm_backward_workspace_bytes(p), " bytes are needed (norm_backward_workspace_bytes)");
  require(reinterpret_cast<std::uintptr_t>(workspace) % alignof(float) == 0, op, "workspace = ", workspace,
          " is not aligned to ", alignof(float), " bytes");
  auto* partials = static_cast<float*>(workspace);
  float* row_means = plan.row_mean_floats > 0 ? partials + plan.partial_floats : nullptr;
  const detail::row_layout& layout = plan.layout;
  detail::dispatch_row_kernel<detail::norm_backward_chunks<T>>(
      layout.chunks, vectorized, [&](auto chunks, auto access) {
        constexpr int chunk_count = decltype(chunks)::value;
        constexpr bool vector_access = decltype(access)::value;
        if (row_means != nullptr) {
          launch(detail::norm_backward_row_means_kernel<T, chunk_count, vector_access>,
                 dim3(static_cast<unsigned>(layout.blocks_for(p.x.rows))), layout.block(), 0, stream, p, row_means,
                 layout.tiles);
        }
        launch(detail::norm_backward_kernel<T, chunk_count, vector_access>,
               dim3(static_cast<unsigned>(plan.groups), static_cast<unsigned>(layout.tiles)), layout.block(),
               static_cast<std::size_t>(plan.shared_bytes), stream, p, row_means,
               plan.partial_floats > 0 ? partials : nullptr);
      });
  if (plan.partial_floats > 0) {
    const index_t column_blocks = (p.x.cols + detail::gradient_sum_columns - 1) / detail::gradient_sum_columns;
    launch(detail::norm_parameter_gradient_kernel, dim3(static_cast<unsigned>(column_blocks), 2),
           dim3(32, detail::gradient_sum_slices), 0, stream, partials, plan.groups, p.x.cols, p.dweight, p.dbias);
  }
}

} // namespace kern::gpu
