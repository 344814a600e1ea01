// GPU optimizer entry points. Parameters and semantics: kern/ops/optimizer.hpp; algorithm and tests:
// docs/kernels/optimizer.md.
//
//   kern::gpu::adamw_step(ops::adamw_multi_params, stream)   one AdamW step of many tensors, in one launch
//                                                            per 64 non-empty tensors (optionally bf16 copies)
//   kern::gpu::adamw_step(ops::adamw_params, stream)         the same for one tensor
//   kern::gpu::global_grad_norm_workspace_bytes(grads)       the device workspace the norm needs
//   kern::gpu::global_grad_norm(grads, norm, [clip_factor, max_norm,] workspace, stream)
//                                                            sqrt(sum of g^2) into a device float, and
//                                                            min(1, max_norm / (norm + 1e-6)) into another
//
// Everything is enqueued on `stream`: the host validates the arguments (it never reads device
// memory), packs the tensor list into kernel arguments and launches; nothing synchronizes or allocates.
//
// Multi-tensor apply: each launch takes up to a fixed number of tensors by value (pointers and
// counts, a few KB of kernel arguments) and lays them end to end in a flat element space, each
// start rounded up to a multiple of the vector group. Block b handles flat elements [b E, (b + 1) E)
// with whatever tensors lie there, so one tensor of millions of elements and a hundred of 768 are
// both spread evenly over the blocks. A block runs through the pieces of its range in order, all its
// threads on the same piece (the tensor table is read uniformly). Within a piece each thread moves
// 8 consecutive elements a step as 16-byte vectors when all of the tensor's pointers are 16-byte
// aligned, one element at a time otherwise; the per-element arithmetic is the same either way.
//
// AdamW's arithmetic is the CPU kernel's, in its order, rounded where it rounds: products and
// differences that the CPU rounds on their own are never fused into FMAs here, and sqrt and the
// division are IEEE, so each result is the fp32 value of a scalar model of the CPU's operations.
//
// The norm is deterministic: each block adds the squares of its range (widened to double, exact) in
// a fixed order and writes its sum to the workspace; then one block adds those sums in a fixed order
// and takes the square root. The blocking depends only on the sizes, never on the device.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

#include "kern/core/error.hpp"
#include "kern/gpu/device.hpp"
#include "kern/gpu/runtime.hpp"
#include "kern/gpu/shared.hpp"
#include "kern/gpu/warp.hpp"
#include "kern/ops/optimizer.hpp"

namespace kern::gpu::detail {

inline constexpr int optimizer_block_threads = 256;

// The tensors of one launch laid end to end: tensor i holds flat elements [starts[i], starts[i] +
// tensors[i].count), each start a multiple of the group the kernel moves at once.
template <class Tensor, int Capacity> struct tensor_batch {
  static_assert((Capacity & (Capacity - 1)) == 0, "the block's tensor search halves a power of two");
  Tensor tensors[Capacity];
  index_t starts[Capacity];
  int size;
};

// Calls launch_batch(batch, flat_elements) for consecutive batches of the non-empty tensors.
template <int Capacity, class Tensor, class Launch>
void for_each_batch(std::span<const Tensor> tensors, index_t group, const Launch& launch_batch) {
  tensor_batch<Tensor, Capacity> batch{};
  index_t flat = 0;
  for (const Tensor& tensor : tensors) {
    if (tensor.count == 0) {
      continue;
    }
    if (batch.size == Capacity) {
      launch_batch(batch, flat);
      batch.size = 0;
      flat = 0;
    }
    batch.tensors[batch.size] = tensor;
    batch.starts[batch.size] = flat;
    ++batch.size;
    flat += (tensor.count + group - 1) / group * group;
  }
  if (batch.size > 0) {
    launch_batch(batch, flat);
  }
}

inline unsigned blocks_for(index_t flat_elements, index_t elements_per_block) {
  return static_cast<unsigned>((flat_elements + elements_per_block - 1) / elements_per_block);
}

// Calls piece(tensor, from, to) for elements [from, to) of each tensor that lies in flat elements
// [begin, end), in order. Every thread of the block sees the same pieces.
template <class Tensor, int Capacity, class Piece> KERN_DEVICE void
for_each_piece(const tensor_batch<Tensor, Capacity>& batch, index_t begin, index_t end, const Piece& piece) {
  int first = 0; // the last tensor that starts at or before `begin`
  for (int step = Capacity / 2; step > 0; step /= 2) {
    if (first + step < batch.size && batch.starts[first + step] <= begin) {
      first += step;
    }
  }
  for (int i = first; i < batch.size && batch.starts[i] < end; ++i) {
    const index_t start = batch.starts[i];
    const index_t from = begin > start ? begin - start : 0;
    const index_t to = end - start < batch.tensors[i].count ? end - start : batch.tensors[i].count;
    if (from < to) {
      piece(batch.tensors[i], from, to);
    }
  }
}

// fp32 operations rounded on their own. nvcc contracts a product followed by a sum into an FMA
// unless told not to (the __f*_rn intrinsics), and HIP-clang unless the pragma says so; the CPU
// kernel rounds these products and differences before using them.
KERN_DEVICE float multiply_rn(float a, float b) {
#if defined(KERN_GPU_CUDA)
  return __fmul_rn(a, b);
#else
#if defined(__clang__)
#pragma clang fp contract(off)
#endif
  return a * b;
#endif
}

KERN_DEVICE float subtract_rn(float a, float b) {
#if defined(KERN_GPU_CUDA)
  return __fsub_rn(a, b);
#else
#if defined(__clang__)
#pragma clang fp contract(off)
#endif
  return a - b;
#endif
}

// IEEE division and square root even under --use_fast_math (HIP's sqrtf and '/' are IEEE unless
// the fp32 correctly-rounded option is turned off).
KERN_DEVICE float divide_rn(float a, float b) {
#if defined(KERN_GPU_CUDA)
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}

KERN_DEVICE float sqrt_rn(float x) {
#if defined(KERN_GPU_CUDA)
  return __fsqrt_rn(x);
#else
  return sqrtf(x);
#endif
}

// ---------------------------------------------------------------------------------------------
// AdamW

inline constexpr int adamw_batch_capacity = 64;
inline constexpr index_t adamw_group = 8; // two 16-byte float vectors per buffer, one of the bf16 copy
inline constexpr index_t adamw_elements_per_block = index_t{optimizer_block_threads} * adamw_group * 4;
using adamw_batch = tensor_batch<ops::adamw_tensor, adamw_batch_capacity>;
static_assert(sizeof(adamw_batch) <= 3800, "a launch's kernel arguments stay under the portable 4 KB");

// One step's constants, as the CPU kernel computes them: the bias corrections in double (1 - beta^t
// loses digits in float for beta near 1), each rounded once to float.
struct adamw_constants {
  float step_size, inv_sqrt_correction2, decay, one_minus_beta1, one_minus_beta2, beta2, epsilon, grad_scale;
  const float* grad_scale_factor;
};

inline adamw_constants adamw_constants_of(const ops::adamw_multi_params& p) {
  const double lr = p.lr, step = static_cast<double>(p.step);
  return {static_cast<float>(lr / (1.0 - std::pow(static_cast<double>(p.beta1), step))),
          static_cast<float>(1.0 / std::sqrt(1.0 - std::pow(static_cast<double>(p.beta2), step))),
          static_cast<float>(1.0 - lr * static_cast<double>(p.weight_decay)),
          static_cast<float>(1.0 - static_cast<double>(p.beta1)),
          static_cast<float>(1.0 - static_cast<double>(p.beta2)),
          p.beta2,
          p.epsilon,
          p.grad_scale,
          p.grad_scale_factor};
}

// One element's update, in the CPU kernel's order of operations.
KERN_DEVICE void adamw_element(const adamw_constants& c, float grad_scale, float grad, float& param, float& m,
                               float& v) {
  const float g = multiply_rn(grad, grad_scale);
  m = fmaf(c.one_minus_beta1, subtract_rn(g, m), m); // torch's lerp: m + (1 - beta1)(g - m)
  v = fmaf(multiply_rn(c.one_minus_beta2, g), g, multiply_rn(c.beta2, v));
  const float denominator = fmaf(sqrt_rn(v), c.inv_sqrt_correction2, c.epsilon);
  param = fmaf(-c.step_size, divide_rn(m, denominator), multiply_rn(param, c.decay));
}

KERN_DEVICE void adamw_one(const ops::adamw_tensor& t, index_t i, const adamw_constants& c, float grad_scale) {
  float param = t.param[i], m = t.m[i], v = t.v[i];
  adamw_element(c, grad_scale, t.grad[i], param, m, v);
  t.param[i] = param;
  t.m[i] = m;
  t.v[i] = v;
  if (t.param_bf16 != nullptr) {
    t.param_bf16[i] = from_float_rn<bf16>(param);
  }
}

// Elements [i, i + 8), every pointer 16-byte aligned there.
KERN_DEVICE void adamw_eight(const ops::adamw_tensor& t, index_t i, const adamw_constants& c, float grad_scale) {
  constexpr index_t half = vector16<float>::size;
  vector16<float> param[2], grad[2], m[2], v[2];
  for (int h = 0; h < 2; ++h) {
    param[h] = load_vector(t.param + i + h * half);
    grad[h] = load_vector(t.grad + i + h * half);
    m[h] = load_vector(t.m + i + h * half);
    v[h] = load_vector(t.v + i + h * half);
  }
  for (int h = 0; h < 2; ++h) {
    for (index_t k = 0; k < half; ++k) {
      adamw_element(c, grad_scale, grad[h].values[k], param[h].values[k], m[h].values[k], v[h].values[k]);
    }
  }
  for (int h = 0; h < 2; ++h) {
    store_vector(t.param + i + h * half, param[h]);
    store_vector(t.m + i + h * half, m[h]);
    store_vector(t.v + i + h * half, v[h]);
  }
  if (t.param_bf16 != nullptr) {
    vector16<bf16> copy{};
    for (index_t k = 0; k < adamw_group; ++k) {
      copy.values[k] = from_float_rn<bf16>(param[k / half].values[k % half]);
    }
    store_vector(t.param_bf16 + i, copy);
  }
}

KERN_DEVICE bool adamw_vectorizable(const ops::adamw_tensor& t) {
  return vector_aligned(t.param) && vector_aligned(t.grad) && vector_aligned(t.m) && vector_aligned(t.v) &&
         vector_aligned(t.param_bf16);
}

template <int BlockThreads> __global__ void __launch_bounds__(BlockThreads)
    adamw_kernel(adamw_batch batch, adamw_constants c) {
  const float grad_scale =
      c.grad_scale_factor != nullptr ? multiply_rn(c.grad_scale, *c.grad_scale_factor) : c.grad_scale;
  const auto thread = static_cast<index_t>(threadIdx.x);
  const index_t begin = static_cast<index_t>(blockIdx.x) * adamw_elements_per_block;
  for_each_piece(batch, begin, begin + adamw_elements_per_block,
                 [&](const ops::adamw_tensor& t, index_t from, index_t to) {
                   if (adamw_vectorizable(t)) { // `from` is a multiple of the group: aligned too
                     const index_t vector_end = from + (to - from) / adamw_group * adamw_group;
                     for (index_t i = from + adamw_group * thread; i < vector_end; i += adamw_group * BlockThreads) {
                       adamw_eight(t, i, c, grad_scale);
                     }
                     if (vector_end + thread < to) {
                       adamw_one(t, vector_end + thread, c, grad_scale);
                     }
                   } else {
                     for (index_t i = from + thread; i < to; i += BlockThreads) {
                       adamw_one(t, i, c, grad_scale);
                     }
                   }
                 });
}

inline void adamw_run(const ops::adamw_multi_params& params, stream_t stream) {
  const adamw_constants constants = adamw_constants_of(params);
  for_each_batch<adamw_batch_capacity>(params.tensors, adamw_group, [&](const adamw_batch& batch, index_t flat) {
    launch(adamw_kernel<optimizer_block_threads>, dim3(blocks_for(flat, adamw_elements_per_block)),
           dim3(optimizer_block_threads), 0, stream, batch, constants);
  });
}

// ---------------------------------------------------------------------------------------------
// Global gradient norm

inline constexpr int norm_batch_capacity = 128;
inline constexpr index_t norm_group = vector16<float>::size;
inline constexpr index_t norm_elements_per_block = index_t{optimizer_block_threads} * norm_group * 8;
using norm_batch = tensor_batch<ops::gradient_span, norm_batch_capacity>;
static_assert(norm_group == 4, "the block sums add the four lane chains as two pairs");
static_assert(sizeof(norm_batch) <= 3800, "a launch's kernel arguments stay under the portable 4 KB");

// The square of a float is exact in double (24 + 24 significant bits): each addition rounds once.
KERN_DEVICE double add_square(double sum, float x) {
  const auto wide = static_cast<double>(x);
  return sum + wide * wide;
}

// Writes the sum of squares of block b's flat range to block_sums[b].
template <int BlockThreads> __global__ void __launch_bounds__(BlockThreads)
    grad_norm_block_sums_kernel(norm_batch batch, double* block_sums) {
  double lanes[norm_group] = {}; // one chain per vector lane
  const auto thread = static_cast<index_t>(threadIdx.x);
  const index_t begin = static_cast<index_t>(blockIdx.x) * norm_elements_per_block;
  for_each_piece(batch, begin, begin + norm_elements_per_block,
                 [&](const ops::gradient_span& g, index_t from, index_t to) {
                   if (vector_aligned(g.data)) { // `from` is a multiple of the group: aligned too
                     const index_t vector_end = from + (to - from) / norm_group * norm_group;
                     for (index_t i = from + norm_group * thread; i < vector_end; i += norm_group * BlockThreads) {
                       const vector16<float> x = load_vector(g.data + i);
                       for (index_t k = 0; k < norm_group; ++k) {
                         lanes[k] = add_square(lanes[k], x.values[k]);
                       }
                     }
                     if (vector_end + thread < to) {
                       lanes[0] = add_square(lanes[0], g.data[vector_end + thread]);
                     }
                   } else {
                     for (index_t i = from + thread; i < to; i += BlockThreads) {
                       lanes[0] = add_square(lanes[0], g.data[i]);
                     }
                   }
                 });
  const double sum = block_sum((lanes[0] + lanes[1]) + (lanes[2] + lanes[3]));
  if (threadIdx.x == 0) {
    block_sums[blockIdx.x] = sum;
  }
}

// Adds the block sums in a fixed order; writes the norm and, when clip_factor is not null,
// min(1, max_norm / (norm + 1e-6)) computed in double as ops::clip_factor does (NaN stays NaN).
template <int BlockThreads> __global__ void __launch_bounds__(BlockThreads)
    grad_norm_finish_kernel(const double* block_sums, index_t count, float* norm, float* clip_factor, float max_norm) {
  double sum = 0.0;
  for (auto i = static_cast<index_t>(threadIdx.x); i < count; i += BlockThreads) {
    sum += block_sums[i];
  }
  sum = block_sum(sum);
  if (threadIdx.x == 0) {
    const double result = sqrt(sum);
    *norm = static_cast<float>(result);
    if (clip_factor != nullptr) {
      const double factor = static_cast<double>(max_norm) / (result + 1e-6);
      *clip_factor = static_cast<float>(factor >= 1.0 ? 1.0 : factor);
    }
  }
}

// How many block sums the norm of these gradients writes.
inline std::size_t grad_norm_block_count(std::span<const ops::gradient_span> grads) {
  std::size_t blocks = 0;
  for_each_batch<norm_batch_capacity>(grads, norm_group, [&](const norm_batch& /*batch*/, index_t flat) {
    blocks += blocks_for(flat, norm_elements_per_block);
  });
  return blocks;
}

inline void grad_norm_run(std::span<const ops::gradient_span> grads, float* norm, float* clip_factor, float max_norm,
                          std::span<std::byte> workspace, stream_t stream) {
  auto* const block_sums = reinterpret_cast<double*>(workspace.data());
  std::size_t written = 0;
  for_each_batch<norm_batch_capacity>(grads, norm_group, [&](const norm_batch& batch, index_t flat) {
    const unsigned blocks = blocks_for(flat, norm_elements_per_block);
    launch(grad_norm_block_sums_kernel<optimizer_block_threads>, dim3(blocks), dim3(optimizer_block_threads), 0, stream,
           batch, block_sums + written);
    written += blocks;
  });
  // Runs even without gradients: the norm of nothing is 0, and its clip factor 1.
  launch(grad_norm_finish_kernel<optimizer_block_threads>, dim3(1), dim3(optimizer_block_threads), 0, stream,
         block_sums, static_cast<index_t>(written), norm, clip_factor, max_norm);
}

inline void validate_grad_norm(std::string_view op, std::span<const ops::gradient_span> grads, const float* norm,
                               const float* clip_factor, float max_norm, std::span<const std::byte> workspace) {
  ops::validate(op, grads);
  require(norm != nullptr, op, "norm is null: the result needs a device float");
  if (clip_factor != nullptr) {
    require(max_norm > 0.0f, op, "max_norm = ", max_norm, " must be positive");
    require(clip_factor != norm, op, "clip_factor and norm are the same float");
  }
  const std::size_t needed = grad_norm_block_count(grads) * sizeof(double);
  require(workspace.size() >= needed, op, "workspace holds ", workspace.size(), " bytes but ", needed,
          " are needed (global_grad_norm_workspace_bytes)");
  require(workspace.data() != nullptr || needed == 0, op, "workspace is null but ", needed, " bytes are needed");
  require(reinterpret_cast<std::uintptr_t>(workspace.data()) % alignof(double) == 0, op, "workspace at ",
          static_cast<const void*>(workspace.data()), " must be aligned to ", alignof(double), " bytes");
  const std::byte* workspace_end = workspace.data() + needed;
  require_disjoint(op, "norm", norm, norm + 1, "workspace", workspace.data(), workspace_end);
  if (clip_factor != nullptr) {
    require_disjoint(op, "clip_factor", clip_factor, clip_factor + 1, "workspace", workspace.data(), workspace_end);
  }
}

} // namespace kern::gpu::detail

namespace kern::gpu {

// One AdamW step of every tensor of the list with the shared hyperparameters, in stream order.
inline void adamw_step(const ops::adamw_multi_params& params, stream_t stream) {
  ops::validate(KERN_GPU_OP("adamw_step"), params);
  detail::adamw_run(params, stream);
}

// One AdamW step of one tensor, in stream order.
inline void adamw_step(const ops::adamw_params& params, stream_t stream) {
  ops::validate(KERN_GPU_OP("adamw_step"), params);
  const ops::adamw_tensor tensor{params.param, params.grad, params.m, params.v, params.param_bf16, params.count};
  ops::adamw_multi_params multi;
  multi.tensors = {&tensor, 1};
  multi.lr = params.lr;
  multi.beta1 = params.beta1;
  multi.beta2 = params.beta2;
  multi.epsilon = params.epsilon;
  multi.weight_decay = params.weight_decay;
  multi.step = params.step;
  multi.grad_scale = params.grad_scale;
  detail::adamw_run(multi, stream);
}

// The bytes of device workspace global_grad_norm needs for these gradients (0 for none).
inline std::size_t global_grad_norm_workspace_bytes(std::span<const ops::gradient_span> grads) {
  ops::validate(KERN_GPU_OP("global_grad_norm_workspace_bytes"), grads);
  return detail::grad_norm_block_count(grads) * sizeof(double);
}

// Writes the L2 norm of all the gradients together to *norm (a device float), in stream order; NaN if
// any element is NaN, Inf if any is infinite. `workspace`: device memory of at least
// global_grad_norm_workspace_bytes(grads), 8-byte aligned.
inline void global_grad_norm(std::span<const ops::gradient_span> grads, float* norm, std::span<std::byte> workspace,
                             stream_t stream) {
  detail::validate_grad_norm(KERN_GPU_OP("global_grad_norm"), grads, norm, nullptr, 0.0f, workspace);
  detail::grad_norm_run(grads, norm, nullptr, 0.0f, workspace, stream);
}

// The same, and torch's clip_grad_norm_ coefficient min(1, max_norm / (norm + 1e-6)) to *clip_factor
// (a device float; pass it to adamw_step as ops::adamw_multi_params::grad_scale_factor).
inline void global_grad_norm(std::span<const ops::gradient_span> grads, float* norm, float* clip_factor, float max_norm,
                             std::span<std::byte> workspace, stream_t stream) {
  require(clip_factor != nullptr, KERN_GPU_OP("global_grad_norm"), "clip_factor is null: pass a device float");
  detail::validate_grad_norm(KERN_GPU_OP("global_grad_norm"), grads, norm, clip_factor, max_norm, workspace);
  detail::grad_norm_run(grads, norm, clip_factor, max_norm, workspace, stream);
}

} // namespace kern::gpu
