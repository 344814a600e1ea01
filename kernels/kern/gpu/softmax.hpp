// GPU softmax and cross-entropy entry points. Parameters and semantics: kern/ops/softmax.hpp;
// algorithm: docs/kernels/softmax.md.
//
//   kern::gpu::softmax_forward(params, stream)                       y = softmax(scale * x) per row
//   kern::gpu::softmax_backward(params, stream)                      dx = y * (dy - sum(dy * y)) per row
//   kern::gpu::cross_entropy(params, result, workspace, stream)      per-row losses, the gradient written
//                                                                    over the logits, and the reduced loss
//                                                                    and row counts in *result (device)
//   kern::gpu::cross_entropy_workspace_bytes(params)                 the workspace cross_entropy needs
//
// Rows are spread over threads as in kern/gpu/rows.hpp: a warp per short row, a block per long row, the
// row held in registers between its passes (the maximum and the sum of exponentials, then the
// output), so that each element is read once and written once. Rows longer than a block holds are
// cut into tiles: the first pass keeps a running maximum and a sum of exponentials rescaled as the
// maximum grows (one pass for both), and the output pass reads the row again.
//
// Cross-entropy never reads the targets on the host and never synchronizes: the host checks every
// argument but the target values, and three kernels run in stream order: one block counts the
// counted rows and the rows with a target outside [0, vocab) into the result; the row kernel
// writes the per-row losses and the gradient (scaled by the count for the mean); one block adds
// the losses in a fixed order (double) into the result. A row with a bad target gets a NaN loss and
// a NaN gradient; nothing is read out of bounds. The row kernel takes a row whole, padding columns
// included (a padded vocabulary such as GPT-2's 50304 columns keeps 16-byte access): the padding
// reads as -inf and is written as 0.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>

#include "kern/core/error.hpp"
#include "kern/gpu/device.hpp"
#include "kern/gpu/rows.hpp"
#include "kern/gpu/runtime.hpp"
#include "kern/gpu/warp.hpp"
#include "kern/ops/softmax.hpp"

namespace kern::gpu {

// What cross_entropy writes in device memory, for the caller to copy back when it needs the loss:
// ops::cross_entropy_result and the rows the host could not check.
struct cross_entropy_device_result {
  double loss;             // the reduced loss (NaN for a mean over no counted row)
  index_t counted_rows;    // rows whose target is not ignore_index
  index_t nonfinite_rows;  // counted rows whose loss is NaN or Inf (bad targets included)
  index_t bad_target_rows; // counted rows whose target is outside [0, vocab): their loss and gradient are NaN
};

} // namespace kern::gpu

namespace kern::gpu::detail {

// Chunks per thread. Forward and cross-entropy hold one row: 4 chunks with 16-byte access, 16
// values with single values (whose per-value checks cost registers). The backward holds two (y
// and dy): 2 chunks, or 8 single values.
template <class T> constexpr int softmax_chunks(bool vectorized) { return vectorized ? 4 : chunks_holding<T>(16); }
template <class T> constexpr int softmax_backward_chunks(bool vectorized) {
  return vectorized ? 2 : chunks_holding<T>(8);
}

template <class T> row_layout softmax_layout(index_t rows, index_t n, int max_chunks) {
  return choose_row_layout(rows, n, vector16<T>::size, max_chunks, max_row_threads, warp_rows_block_threads);
}

// A softmax denominator in the making: the largest value seen and the sum of exp(value - max).
struct exp_sum {
  float max = -INFINITY;
  float sum = 0.0f;
};

// Adds the calling thread's values of one tile, value(c, k, index) each, to its running sum: the
// sum is rescaled when the maximum grows. -inf adds exactly 0 (even while the maximum is -inf);
// NaN reaches the sum.
template <class Tile, class Value>
KERN_DEVICE void add_exponentials(exp_sum& running, index_t begin, index_t n, Value&& value) {
  float tile_max = -INFINITY;
  for_each_value<Tile>(begin, n, [&](int c, int k, index_t j) { tile_max = fmaxf(tile_max, value(c, k, j)); });
  const float max = fmaxf(running.max, tile_max);
  float sum = max == running.max ? running.sum : running.sum * expf(running.max - max);
  for_each_value<Tile>(begin, n, [&](int c, int k, index_t j) {
    const float s = value(c, k, j);
    sum += s == -INFINITY ? 0.0f : expf(s - max);
  });
  running = {max, sum};
}

// The row's maximum and sum of exponentials from its threads' running sums.
KERN_DEVICE exp_sum combine_row(const exp_sum& mine) {
  const float max = row_max(mine.max);
  return {max, row_sum(mine.max == max ? mine.sum : mine.sum * expf(mine.max - max))};
}

template <class T, int Chunks, bool Vectorized> __global__ void __launch_bounds__(max_row_threads, 1)
    softmax_forward_kernel(ops::softmax_forward_params<T> p, index_t tiles) {
  using tile = row_tile<T, Chunks, Vectorized>;
  constexpr int width = tile::width;
  const index_t r = block_row(static_cast<index_t>(blockIdx.x) * blockDim.y);
  if (r >= p.x.rows) {
    return; // a warp without a row
  }
  const index_t n = p.x.cols, tile_size = static_cast<index_t>(blockDim.x) * Chunks * width;
  const T* x = p.x.data + r * p.x.ld;
  T* y = p.y.data + r * p.y.ld; // may be x: each thread reads its values before it writes them
  tile values;
  exp_sum running;
  for (index_t t = 0; t < tiles; ++t) {
    values.load(x, t * tile_size, n);
    add_exponentials<tile>(running, t * tile_size, n,
                           [&](int c, int k, index_t) { return p.scale * values.get(c, k); });
  }
  const exp_sum row = combine_row(running);
  const float inverse_sum = 1.0f / row.sum;
  for (index_t t = 0; t < tiles; ++t) {
    const index_t begin = t * tile_size;
    if (tiles > 1) {
      values.load(x, begin, n);
    }
    for_each_value<tile>(begin, n, [&](int c, int k, index_t) {
      values.set(c, k, expf(p.scale * values.get(c, k) - row.max) * inverse_sum);
    });
    values.store(y, begin, n);
  }
}

template <class T, int Chunks, bool Vectorized> __global__ void __launch_bounds__(max_row_threads, 1)
    softmax_backward_kernel(ops::softmax_backward_params<T> p, index_t tiles) {
  using tile = row_tile<T, Chunks, Vectorized>;
  constexpr int width = tile::width;
  const index_t r = block_row(static_cast<index_t>(blockIdx.x) * blockDim.y);
  if (r >= p.y.rows) {
    return;
  }
  const index_t n = p.y.cols, tile_size = static_cast<index_t>(blockDim.x) * Chunks * width;
  const T* y_row = p.y.data + r * p.y.ld;
  const T* dy_row = p.dy.data + r * p.dy.ld;
  T* dx_row = p.dx.data + r * p.dx.ld; // may be dy
  tile y, dy;
  float dot = 0.0f;
  for (index_t t = 0; t < tiles; ++t) {
    y.load(y_row, t * tile_size, n);
    dy.load(dy_row, t * tile_size, n);
    for_each_value<tile>(t * tile_size, n, [&](int c, int k, index_t) { dot = fmaf(y.get(c, k), dy.get(c, k), dot); });
  }
  dot = row_sum(dot);
  for (index_t t = 0; t < tiles; ++t) {
    const index_t begin = t * tile_size;
    if (tiles > 1) {
      y.load(y_row, begin, n);
      dy.load(dy_row, begin, n);
    }
    for_each_value<tile>(begin, n, [&](int c, int k, index_t) { dy.set(c, k, y.get(c, k) * (dy.get(c, k) - dot)); });
    dy.store(dx_row, begin, n);
  }
}

// Threads of the one-block kernels that count the rows and add the losses.
inline constexpr int cross_entropy_summary_threads = 256;

// A block's sum of counts or of doubles with the same bits on every run: butterflies within each
// warp, then the warps' sums in warp order.
template <class V> KERN_DEVICE V ordered_block_sum(V value) {
  for (int offset = warp_size / 2; offset > 0; offset /= 2) {
    value += shfl_xor(value, offset);
  }
  KERN_SHARED(V, per_warp, max_block_warps);
  if (lane_id() == 0) {
    per_warp[static_cast<std::size_t>(warp_id())] = value;
  }
  __syncthreads();
  V total = 0;
  for (int w = 0; w < block_thread_count() / warp_size; ++w) {
    total += per_warp[static_cast<std::size_t>(w)];
  }
  __syncthreads(); // per_warp may be used again right away
  return total;
}

__global__ void __launch_bounds__(cross_entropy_summary_threads)
    cross_entropy_count_kernel(const std::int32_t* targets, index_t rows, std::int32_t ignore_index, index_t vocab,
                               cross_entropy_device_result* result) {
  index_t counted = 0, bad = 0;
  for (index_t i = threadIdx.x; i < rows; i += blockDim.x) {
    const std::int32_t target = targets[i];
    if (target != ignore_index) {
      ++counted;
      bad += target < 0 || target >= vocab ? 1 : 0;
    }
  }
  counted = ordered_block_sum(counted);
  bad = ordered_block_sum(bad);
  if (threadIdx.x == 0) {
    result->counted_rows = counted;
    result->bad_target_rows = bad;
  }
}

// One row: the loss and, with write_gradient, (softmax - onehot(target)) * gradient scale over
// the classes and 0 over the padding columns. The row is accessed whole (padding included, so that
// a padded vocabulary keeps 16-byte access); the padding reads as -inf. The logits are read before
// any of them is written: the target's logit by the thread that holds it, which writes the loss.
template <class T, int Chunks, bool Vectorized> __global__ void __launch_bounds__(max_row_threads, 1)
    cross_entropy_kernel(ops::cross_entropy_params<T> p, index_t vocab, const cross_entropy_device_result* result,
                         float* losses, index_t tiles) {
  using tile = row_tile<T, Chunks, Vectorized>;
  const index_t r = block_row(static_cast<index_t>(blockIdx.x) * blockDim.y);
  if (r >= p.logits.rows) {
    return;
  }
  const index_t cols = p.logits.cols, tile_size = static_cast<index_t>(blockDim.x) * Chunks * tile::width;
  T* row = p.logits.data + r * p.logits.ld;
  const std::int32_t target = p.targets[r];
  if (target == p.ignore_index || target < 0 || target >= vocab) { // ignored: 0; a bad target: NaN
    const float value = target == p.ignore_index ? 0.0f : std::numeric_limits<float>::quiet_NaN();
    if (threadIdx.x == 0) {
      losses[r] = value;
    }
    if (p.write_gradient) {
      const T classes = from_float_rn<T>(value), padding = from_float_rn<T>(0.0f);
      for (index_t j = threadIdx.x; j < cols; j += blockDim.x) {
        row[j] = j < vocab ? classes : padding;
      }
    }
    return;
  }

  tile logits;
  // Per chunk of the tile at hand: how many of its values are classes, and where the target is
  // (-1: elsewhere). Small integers, so that the per-value tests stay 32-bit.
  int classes[Chunks], target_at[Chunks];
  const auto locate = [&](index_t begin) {
    for (int c = 0; c < Chunks; ++c) {
      const index_t first = chunk_begin(begin, c, tile::width);
      classes[c] = values_inside(first, vocab, tile::width);
      target_at[c] = target >= first && target < first + tile::width ? static_cast<int>(target - first) : -1;
    }
  };
  exp_sum running;
  float picked = 0.0f;
  bool holds_target = false;
  for (index_t t = 0; t < tiles; ++t) {
    const index_t begin = t * tile_size;
    logits.load(row, begin, cols);
    locate(begin);
    add_exponentials<tile>(running, begin, cols,
                           [&](int c, int k, index_t) { return k < classes[c] ? logits.get(c, k) : -INFINITY; });
    for (int c = 0; c < Chunks; ++c) {
      for (int k = 0; k < tile::width; ++k) {
        if (k == target_at[c]) {
          picked = logits.get(c, k);
          holds_target = true;
        }
      }
    }
  }
  const exp_sum stats = combine_row(running);
  if (holds_target) { // two terms that are never negative: no cancellation
    losses[r] = (stats.max - picked) + logf(stats.sum);
  }
  if (!p.write_gradient) {
    return;
  }
  const index_t counted = result->counted_rows;
  const bool mean = p.reduction == ops::loss_reduction::mean;
  const float gradient_scale = mean && counted > 0 ? p.grad_scale / static_cast<float>(counted) : p.grad_scale;
  const float inverse_sum = 1.0f / stats.sum, factor = inverse_sum * gradient_scale;
  for (index_t t = 0; t < tiles; ++t) {
    const index_t begin = t * tile_size;
    if (tiles > 1) {
      logits.load(row, begin, cols);
      locate(begin);
    }
    for_each_value<tile>(begin, cols, [&](int c, int k, index_t) {
      const float e = expf(logits.get(c, k) - stats.max);
      logits.set(c, k,
                 k >= classes[c]     ? 0.0f
                 : k == target_at[c] ? (e * inverse_sum - 1.0f) * gradient_scale
                                     : e * factor);
    });
    logits.store(row, begin, cols);
  }
}

// The reduced loss (double, in a fixed order) and the non-finite count, after the row kernel.
__global__ void __launch_bounds__(cross_entropy_summary_threads)
    cross_entropy_finish_kernel(const float* losses, const std::int32_t* targets, index_t rows,
                                std::int32_t ignore_index, bool mean, cross_entropy_device_result* result) {
  double total = 0.0;
  index_t nonfinite = 0;
  for (index_t i = threadIdx.x; i < rows; i += blockDim.x) {
    if (targets[i] != ignore_index) {
      total += static_cast<double>(losses[i]);
      nonfinite += fabsf(losses[i]) <= std::numeric_limits<float>::max() ? 0 : 1; // NaN compares false
    }
  }
  total = ordered_block_sum(total);
  nonfinite = ordered_block_sum(nonfinite);
  if (threadIdx.x == 0) {
    const index_t counted = result->counted_rows;
    result->nonfinite_rows = nonfinite;
    result->loss = !mean         ? total
                   : counted > 0 ? total / static_cast<double>(counted)
                                 : std::numeric_limits<double>::quiet_NaN();
  }
}

} // namespace kern::gpu::detail

namespace kern::gpu {

template <element_type T> void softmax_forward(const ops::softmax_forward_params<T>& p, stream_t stream) {
  ops::validate(KERN_GPU_OP("softmax_forward"), p);
  if (p.x.empty()) {
    return;
  }
  const bool vectorized =
      p.x.cols % vector16<T>::size == 0 && detail::rows_vector_aligned(p.x) && detail::rows_vector_aligned(p.y);
  const detail::row_layout layout =
      detail::softmax_layout<T>(p.x.rows, p.x.cols, detail::softmax_chunks<T>(vectorized));
  detail::dispatch_row_kernel<detail::softmax_chunks<T>>(layout.chunks, vectorized, [&](auto chunks, auto access) {
    launch(detail::softmax_forward_kernel<T, decltype(chunks)::value, decltype(access)::value>,
           dim3(static_cast<unsigned>(layout.blocks_for(p.x.rows))), layout.block(), 0, stream, p, layout.tiles);
  });
}

template <element_type T> void softmax_backward(const ops::softmax_backward_params<T>& p, stream_t stream) {
  ops::validate(KERN_GPU_OP("softmax_backward"), p);
  if (p.y.empty()) {
    return;
  }
  const bool vectorized = p.y.cols % vector16<T>::size == 0 && detail::rows_vector_aligned(p.y) &&
                          detail::rows_vector_aligned(p.dy) && detail::rows_vector_aligned(p.dx);
  const detail::row_layout layout =
      detail::softmax_layout<T>(p.y.rows, p.y.cols, detail::softmax_backward_chunks<T>(vectorized));
  detail::dispatch_row_kernel<detail::softmax_backward_chunks<T>>(
      layout.chunks, vectorized, [&](auto chunks, auto access) {
        launch(detail::softmax_backward_kernel<T, decltype(chunks)::value, decltype(access)::value>,
               dim3(static_cast<unsigned>(layout.blocks_for(p.y.rows))), layout.block(), 0, stream, p, layout.tiles);
      });
}

// Bytes of device memory cross_entropy(p, ...) needs at `workspace`: the per-row losses when
// p.losses is null (0 otherwise).
template <element_type T> std::size_t cross_entropy_workspace_bytes(const ops::cross_entropy_params<T>& p) {
  return p.losses == nullptr && p.logits.rows > 0 ? static_cast<std::size_t>(p.logits.rows) * sizeof(float) : 0;
}

// targets, losses, *result and workspace are device memory. Everything but the target values is
// checked here; *result receives the reduced loss and the counts when the work completes.
template <element_type T> void cross_entropy(const ops::cross_entropy_params<T>& p, cross_entropy_device_result* result,
                                             void* workspace, stream_t stream) {
  constexpr const char* op = KERN_GPU_OP("cross_entropy");
  ops::validate_except_target_values(op, p);
  require(result != nullptr, op, "result is null");
  const std::size_t workspace_bytes = cross_entropy_workspace_bytes(p);
  require(workspace != nullptr || workspace_bytes == 0, op, "workspace is null but ", workspace_bytes,
          " bytes are needed (cross_entropy_workspace_bytes)");
  require(reinterpret_cast<std::uintptr_t>(workspace) % alignof(float) == 0, op, "workspace = ", workspace,
          " is not aligned to ", alignof(float), " bytes");
  const index_t rows = p.logits.rows, vocab = p.classes();
  float* losses = p.losses != nullptr ? p.losses : static_cast<float*>(workspace);
  const bool mean = p.reduction == ops::loss_reduction::mean;
  const dim3 summary_block(detail::cross_entropy_summary_threads);
  launch(detail::cross_entropy_count_kernel, dim3(1), summary_block, 0, stream, p.targets, rows, p.ignore_index, vocab,
         result);
  if (rows > 0) {
    const bool vectorized = p.logits.cols % vector16<T>::size == 0 && detail::rows_vector_aligned(p.logits);
    const detail::row_layout layout =
        detail::softmax_layout<T>(rows, p.logits.cols, detail::softmax_chunks<T>(vectorized));
    detail::dispatch_row_kernel<detail::softmax_chunks<T>>(layout.chunks, vectorized, [&](auto chunks, auto access) {
      launch(detail::cross_entropy_kernel<T, decltype(chunks)::value, decltype(access)::value>,
             dim3(static_cast<unsigned>(layout.blocks_for(rows))), layout.block(), 0, stream, p, vocab,
             static_cast<const cross_entropy_device_result*>(result), losses, layout.tiles);
    });
  }
  launch(detail::cross_entropy_finish_kernel, dim3(1), summary_block, 0, stream, losses, p.targets, rows,
         p.ignore_index, mean, result);
}

} // namespace kern::gpu
