// GPU activations (GELU, SiLU, SwiGLU) and bias ops. Parameters and semantics:
// kern/ops/activation.hpp; algorithm and tests: docs/kernels/activation.md.
//
//   kern::gpu::activation_forward(p, stream)     y = f(x)
//   kern::gpu::activation_backward(p, stream)    dx = f'(x) dy
//   kern::gpu::swiglu_forward(p, stream)         y = silu(gate) up
//   kern::gpu::swiglu_backward(p, stream)        dgate = dy up silu'(gate), dup = dy silu(gate)
//   kern::gpu::bias_add(p, stream)               x[i][j] += bias[j]
//   kern::gpu::bias_grad(p, workspace, stream)   dbias[j] += sum_i dy[i][j]
//   kern::gpu::bias_grad_workspace_bytes(p)      the workspace bias_grad needs (bytes)
//
// The element-wise ops share one kernel: a thread maps one 16-byte group of every operand through
// the op in fp32 (one element per thread when a pointer or leading dimension rules vectors out);
// blocks tile rows x column groups, and the rows are grid-strided. The bias gradient runs one
// column-sum kernel twice: blocks of 128 rows write partial sums to the workspace, then a second
// pass adds them up, in order, into dbias. Both passes split the work by the shape alone, so every
// dbias[j] is the same fixed-order sum on every run and every device; no atomics.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "kern/gpu/device.hpp"
#include "kern/gpu/runtime.hpp"
#include "kern/gpu/shared.hpp"
#include "kern/ops/activation.hpp"

namespace kern::gpu::detail {

// The same functions as the CPU backend (kern/cpu/activation.hpp), written once per element.
struct sigmoid_parts {
  float s;
  float one_minus_s;
};

// sigmoid(x) and 1 - sigmoid(x) from t = exp(-|x|) in (0, 1]: no overflow, no cancellation.
KERN_DEVICE sigmoid_parts sigmoid_of(float x) {
  const float t = expf(-fabsf(x));
  const float r = 1.0f / (1.0f + t);
  return x >= 0.0f ? sigmoid_parts{r, t * r} : sigmoid_parts{t * r, r};
}

KERN_DEVICE float silu(float x) { return x * sigmoid_of(x).s; }

KERN_DEVICE float silu_derivative(float x) {
  const sigmoid_parts sig = sigmoid_of(x);
  return sig.s * (1.0f + x * sig.one_minus_s);
}

inline constexpr float gelu_k0 = 0.7978845608028654f, gelu_k1 = 0.044715f;

// x sigmoid(2u), u = sqrt(2/pi) (x + 0.044715 x^3): the tanh form of GELU without its cancellation.
KERN_DEVICE float gelu_tanh(float x) {
  const float u = gelu_k0 * (x + gelu_k1 * x * x * x);
  return x / (1.0f + expf(-2.0f * u));
}

// gelu'(x) = s + 2 x s (1 - s) u'(x), s = sigmoid(2u), with s (1 - s) = t / (1 + t)^2 for
// t = exp(-2|u|). Where t is 0 the second term is dropped, so that huge or infinite x gives 1 or 0
// rather than Inf * 0.
KERN_DEVICE float gelu_tanh_derivative(float x) {
  const float x2 = x * x;
  const float u = gelu_k0 * (x + gelu_k1 * x2 * x);
  const float du = gelu_k0 * (1.0f + 3.0f * gelu_k1 * x2);
  const float t = expf(-2.0f * fabsf(u));
  const float r = 1.0f / (1.0f + t);
  const float s = u >= 0.0f ? r : t * r;
  return t == 0.0f ? s : s + 2.0f * x * (t * r * r) * du;
}

// The ops, as functors of one element's inputs (fp32) that write its outputs; `column` is the
// element's column.
struct gelu_forward_op {
  KERN_DEVICE void operator()(const float (&in)[1], float (&out)[1], index_t /*column*/) const {
    out[0] = gelu_tanh(in[0]);
  }
};
struct silu_forward_op {
  KERN_DEVICE void operator()(const float (&in)[1], float (&out)[1], index_t /*column*/) const { out[0] = silu(in[0]); }
};
struct gelu_backward_op { // in: x, dy
  KERN_DEVICE void operator()(const float (&in)[2], float (&out)[1], index_t /*column*/) const {
    out[0] = gelu_tanh_derivative(in[0]) * in[1];
  }
};
struct silu_backward_op { // in: x, dy
  KERN_DEVICE void operator()(const float (&in)[2], float (&out)[1], index_t /*column*/) const {
    out[0] = silu_derivative(in[0]) * in[1];
  }
};
struct swiglu_forward_op { // in: gate, up
  KERN_DEVICE void operator()(const float (&in)[2], float (&out)[1], index_t /*column*/) const {
    out[0] = silu(in[0]) * in[1];
  }
};
struct swiglu_backward_op { // in: gate, up, dy; out: dgate, dup
  KERN_DEVICE void operator()(const float (&in)[3], float (&out)[2], index_t /*column*/) const {
    const sigmoid_parts sig = sigmoid_of(in[0]);
    out[0] = in[2] * in[1] * (sig.s * (1.0f + in[0] * sig.one_minus_s));
    out[1] = in[2] * (in[0] * sig.s);
  }
};
struct bias_add_op {
  const float* bias;
  KERN_DEVICE void operator()(const float (&in)[1], float (&out)[1], index_t column) const {
    out[0] = in[0] + bias[column];
  }
};

// The matrices of one element-wise call: all rows x cols, each with its own leading dimension.
template <class T, int Inputs, int Outputs> struct elementwise_operands {
  const T* in[Inputs];
  index_t in_ld[Inputs];
  T* out[Outputs];
  index_t out_ld[Outputs];
  index_t rows;
  index_t cols;
};

// Every input of an element is read before any output is written, so an output may be an input.
template <class T, int Inputs, int Outputs, class Op> KERN_DEVICE void
apply_scalar(const elementwise_operands<T, Inputs, Outputs>& m, const Op& op, index_t row, index_t column) {
  float in[Inputs];
  float out[Outputs];
  for (int k = 0; k < Inputs; ++k) {
    in[k] = load_float(m.in[k] + row * m.in_ld[k] + column);
  }
  op(in, out, column);
  for (int k = 0; k < Outputs; ++k) {
    m.out[k][row * m.out_ld[k] + column] = from_float_rn<T>(out[k]);
  }
}

template <class T, int Inputs, int Outputs, class Op> KERN_DEVICE void
apply_vector(const elementwise_operands<T, Inputs, Outputs>& m, const Op& op, index_t row, index_t column) {
  constexpr int width = vector16<T>::size;
  vector16<T> in_vectors[Inputs];
  vector16<T> out_vectors[Outputs];
  for (int k = 0; k < Inputs; ++k) {
    in_vectors[k] = load_vector(m.in[k] + row * m.in_ld[k] + column);
  }
  for (int e = 0; e < width; ++e) {
    float in[Inputs];
    float out[Outputs];
    for (int k = 0; k < Inputs; ++k) {
      in[k] = as_float(in_vectors[k].values[e]);
    }
    op(in, out, column + e);
    for (int k = 0; k < Outputs; ++k) {
      out_vectors[k].values[e] = from_float_rn<T>(out[k]);
    }
  }
  for (int k = 0; k < Outputs; ++k) {
    store_vector(m.out[k] + row * m.out_ld[k] + column, out_vectors[k]);
  }
}

// Thread (x, y) of the grid takes column group x (Width elements) of rows y, y + grid rows, ...
template <int Width, class T, int Inputs, int Outputs, class Op>
__global__ void elementwise_kernel(elementwise_operands<T, Inputs, Outputs> m, Op op) {
  const index_t column = (static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x) * Width;
  if (column >= m.cols) {
    return;
  }
  const index_t valid = m.cols - column < Width ? m.cols - column : Width;
  const index_t row_step = static_cast<index_t>(gridDim.y) * blockDim.y;
  for (index_t row = static_cast<index_t>(blockIdx.y) * blockDim.y + threadIdx.y; row < m.rows; row += row_step) {
    if constexpr (Width > 1) {
      if (valid == Width) {
        apply_vector(m, op, row, column);
        continue;
      }
    }
    for (index_t e = 0; e < valid; ++e) {
      apply_scalar(m, op, row, column + e);
    }
  }
}

// Whether every operand can be read and written as 16-byte groups.
template <class T, int Inputs, int Outputs> bool vectorizable(const elementwise_operands<T, Inputs, Outputs>& m) {
  constexpr int width = vector16<T>::size;
  const auto fits = [&](const T* p, index_t ld) { return vector_aligned(p) && (m.rows == 1 || ld % width == 0); };
  bool ok = true;
  for (int k = 0; k < Inputs; ++k) {
    ok = ok && fits(m.in[k], m.in_ld[k]);
  }
  for (int k = 0; k < Outputs; ++k) {
    ok = ok && fits(m.out[k], m.out_ld[k]);
  }
  return ok;
}

template <class T, int Inputs, int Outputs, class Op>
void run_elementwise(const elementwise_operands<T, Inputs, Outputs>& m, const Op& op, stream_t stream) {
  if (m.rows == 0 || m.cols == 0) {
    return;
  }
  constexpr int width = vector16<T>::size;
  if (vectorizable(m)) {
    const launch_shape shape = rows_by_column_groups(m.rows, (m.cols + width - 1) / width);
    launch(elementwise_kernel<width, T, Inputs, Outputs, Op>, shape.grid, shape.block, 0, stream, m, op);
  } else {
    const launch_shape shape = rows_by_column_groups(m.rows, m.cols);
    launch(elementwise_kernel<1, T, Inputs, Outputs, Op>, shape.grid, shape.block, 0, stream, m, op);
  }
}

// The column sums: blocks of 32 column groups x 8 row lanes; lane y of a block sums rows y, y + 8,
// ... of the block's split, and the 8 lane sums are added in lane order.
inline constexpr int column_sum_groups = 32;
inline constexpr int column_sum_lanes = 8;
inline constexpr index_t column_sum_split_rows = 128;

// Where lane `lane`'s sum of value e of column group `group` waits for lane 0: consecutive groups
// in consecutive banks.
template <int Width> KERN_DEVICE std::size_t lane_sum_index(int lane, index_t e, int group) {
  return static_cast<std::size_t>((lane * index_t{Width} + e) * column_sum_groups + group);
}

// out[j] (+)= sum over rows [blockIdx.y * split_rows, + split_rows) of in[row][j].
template <int Width, class T> __global__ void column_sum_kernel(const T* in, index_t ld, index_t rows, index_t cols,
                                                                index_t split_rows, float* out, index_t out_ld,
                                                                bool accumulate) {
  constexpr std::size_t lane_sum_count = std::size_t{column_sum_lanes} * Width * column_sum_groups;
  KERN_SHARED(float, lane_sums, lane_sum_count);
  const int group = static_cast<int>(threadIdx.x), lane = static_cast<int>(threadIdx.y);
  const index_t column = (static_cast<index_t>(blockIdx.x) * column_sum_groups + group) * Width;
  const index_t valid = column >= cols ? 0 : (cols - column < Width ? cols - column : Width);
  const index_t first = static_cast<index_t>(blockIdx.y) * split_rows;
  const index_t end = first + split_rows < rows ? first + split_rows : rows;
  float sum[Width] = {};
  for (index_t row = first + lane; row < end && valid > 0; row += column_sum_lanes) {
    const T* p = in + row * ld + column;
    if constexpr (Width > 1) {
      if (valid == Width) {
        const vector16<T> v = load_vector(p);
        for (int e = 0; e < Width; ++e) {
          sum[e] += as_float(v.values[e]);
        }
        continue;
      }
    }
    for (index_t e = 0; e < valid; ++e) {
      sum[e] += load_float(p + e);
    }
  }
  for (int e = 0; e < Width; ++e) {
    lane_sums[lane_sum_index<Width>(lane, e, group)] = sum[e];
  }
  __syncthreads();
  if (lane == 0) {
    float* target = out + static_cast<index_t>(blockIdx.y) * out_ld + column;
    for (index_t e = 0; e < valid; ++e) {
      float total = sum[e];
      for (int l = 1; l < column_sum_lanes; ++l) {
        total += lane_sums[lane_sum_index<Width>(l, e, group)];
      }
      target[e] = accumulate ? target[e] + total : total;
    }
  }
}

template <int Width, class T> void launch_column_sum(const T* in, index_t ld, index_t rows, index_t cols,
                                                     index_t split_rows, float* out, index_t out_ld, bool accumulate,
                                                     stream_t stream) {
  const index_t groups = (cols + Width - 1) / Width;
  const dim3 grid(static_cast<unsigned>((groups + column_sum_groups - 1) / column_sum_groups),
                  static_cast<unsigned>((rows + split_rows - 1) / split_rows));
  launch(column_sum_kernel<Width, T>, grid, dim3(column_sum_groups, column_sum_lanes), 0, stream, in, ld, rows, cols,
         split_rows, out, out_ld, accumulate);
}

// Rows per split of the first pass: 128, or more where that many splits would not fit a grid.
inline index_t bias_grad_split_rows(index_t rows) {
  const index_t fitting = (rows + max_grid_y - 1) / max_grid_y;
  const index_t lanes_rounded = (fitting + column_sum_lanes - 1) / column_sum_lanes * column_sum_lanes;
  return lanes_rounded > column_sum_split_rows ? lanes_rounded : column_sum_split_rows;
}

// The partial sums' leading dimension: whole 16-byte groups of floats.
inline index_t bias_grad_partial_ld(index_t cols) { return (cols + 3) / 4 * 4; }

} // namespace kern::gpu::detail

namespace kern::gpu {

// Bytes of device memory bias_grad(p, workspace, stream) needs at `workspace`: none when one pass
// suffices (dy.rows <= 128). Depends on the shape of dy only.
template <element_type T> std::size_t bias_grad_workspace_bytes(const ops::bias_grad_params<T>& p) {
  const index_t rows = p.dy.rows, cols = p.dy.cols;
  if (rows <= 0 || cols <= 0) {
    return 0;
  }
  const index_t split_rows = detail::bias_grad_split_rows(rows);
  const index_t splits = (rows + split_rows - 1) / split_rows;
  return splits > 1 ? static_cast<std::size_t>(splits * detail::bias_grad_partial_ld(cols)) * sizeof(float) : 0;
}

template <element_type T> void activation_forward(const ops::activation_forward_params<T>& p, stream_t stream) {
  ops::validate(KERN_GPU_OP("activation_forward"), p);
  const detail::elementwise_operands<T, 1, 1> m{{p.x.data}, {p.x.ld}, {p.y.data}, {p.y.ld}, p.x.rows, p.x.cols};
  if (p.kind == ops::activation::gelu_tanh) {
    detail::run_elementwise(m, detail::gelu_forward_op{}, stream);
  } else {
    detail::run_elementwise(m, detail::silu_forward_op{}, stream);
  }
}

template <element_type T> void activation_backward(const ops::activation_backward_params<T>& p, stream_t stream) {
  ops::validate(KERN_GPU_OP("activation_backward"), p);
  const detail::elementwise_operands<T, 2, 1> m{
      {p.x.data, p.dy.data}, {p.x.ld, p.dy.ld}, {p.dx.data}, {p.dx.ld}, p.x.rows, p.x.cols};
  if (p.kind == ops::activation::gelu_tanh) {
    detail::run_elementwise(m, detail::gelu_backward_op{}, stream);
  } else {
    detail::run_elementwise(m, detail::silu_backward_op{}, stream);
  }
}

template <element_type T> void swiglu_forward(const ops::swiglu_forward_params<T>& p, stream_t stream) {
  ops::validate(KERN_GPU_OP("swiglu_forward"), p);
  const detail::elementwise_operands<T, 2, 1> m{
      {p.gate.data, p.up.data}, {p.gate.ld, p.up.ld}, {p.y.data}, {p.y.ld}, p.gate.rows, p.gate.cols};
  detail::run_elementwise(m, detail::swiglu_forward_op{}, stream);
}

template <element_type T> void swiglu_backward(const ops::swiglu_backward_params<T>& p, stream_t stream) {
  ops::validate(KERN_GPU_OP("swiglu_backward"), p);
  const detail::elementwise_operands<T, 3, 2> m{{p.gate.data, p.up.data, p.dy.data},
                                                {p.gate.ld, p.up.ld, p.dy.ld},
                                                {p.dgate.data, p.dup.data},
                                                {p.dgate.ld, p.dup.ld},
                                                p.gate.rows,
                                                p.gate.cols};
  detail::run_elementwise(m, detail::swiglu_backward_op{}, stream);
}

template <element_type T> void bias_add(const ops::bias_add_params<T>& p, stream_t stream) {
  ops::validate(KERN_GPU_OP("bias_add"), p);
  const detail::elementwise_operands<T, 1, 1> m{{p.x.data}, {p.x.ld}, {p.x.data}, {p.x.ld}, p.x.rows, p.x.cols};
  detail::run_elementwise(m, detail::bias_add_op{p.bias}, stream);
}

// dbias += the column sums of dy. `workspace`: bias_grad_workspace_bytes(p) bytes of device memory,
// 4-byte aligned, apart from dy and dbias (may be null when that is 0).
template <element_type T> void bias_grad(const ops::bias_grad_params<T>& p, void* workspace, stream_t stream) {
  constexpr std::string_view op = KERN_GPU_OP("bias_grad");
  ops::validate(op, p);
  const index_t rows = p.dy.rows, cols = p.dy.cols;
  const std::size_t bytes = bias_grad_workspace_bytes(p);
  require(workspace != nullptr || bytes == 0, op, "workspace is null but ", bytes,
          " bytes are needed (bias_grad_workspace_bytes)");
  if (bytes > 0) {
    require(reinterpret_cast<std::uintptr_t>(workspace) % alignof(float) == 0, op, "workspace = ", workspace,
            " is not 4-byte aligned");
    const auto* workspace_end = static_cast<const unsigned char*>(workspace) + bytes;
    require_disjoint(op, "workspace", workspace, workspace_end, "dy", p.dy.data, p.dy.end());
    require_disjoint(op, "workspace", workspace, workspace_end, "dbias", p.dbias, p.dbias + cols);
  }
  if (rows == 0 || cols == 0) {
    return;
  }
  constexpr int width = vector16<T>::size;
  const bool vectors = vector_aligned(p.dy.data) && (rows == 1 || p.dy.ld % width == 0);
  const auto first_pass = [&](float* out, index_t out_ld, index_t split_rows, bool accumulate) {
    if (vectors) {
      detail::launch_column_sum<width>(p.dy.data, p.dy.ld, rows, cols, split_rows, out, out_ld, accumulate, stream);
    } else {
      detail::launch_column_sum<1>(p.dy.data, p.dy.ld, rows, cols, split_rows, out, out_ld, accumulate, stream);
    }
  };
  if (bytes == 0) {
    first_pass(p.dbias, 0, rows, true);
    return;
  }
  const index_t split_rows = detail::bias_grad_split_rows(rows);
  const index_t splits = (rows + split_rows - 1) / split_rows;
  const index_t partial_ld = detail::bias_grad_partial_ld(cols);
  auto* partials = static_cast<float*>(workspace);
  first_pass(partials, partial_ld, split_rows, false);
  if (vector_aligned(partials)) {
    detail::launch_column_sum<vector16<float>::size>(static_cast<const float*>(partials), partial_ld, splits, cols,
                                                     splits, p.dbias, 0, true, stream);
  } else {
    detail::launch_column_sum<1>(static_cast<const float*>(partials), partial_ld, splits, cols, splits, p.dbias, 0,
                                 true, stream);
  }
}

} // namespace kern::gpu
