// kern::gpu::norm_forward / norm_backward (LayerNorm, RMSNorm, and the residual add fused into the
// forward) on GPT-2 (16384 tokens x 768) and Llama (8192 tokens x 4096) activations. GB/s count the
// least traffic each op needs: every activation read once and written once, the saved statistics
// and the parameters once (as the CPU benchmark counts them).
#include <cstddef>
#include <string>

#include "gpu/gpu_bench.hpp"
#include "kern/gpu/norm.hpp"
#include "workloads.hpp"

namespace {

using kern::bf16;
using kern::index_t;
using kern::ops::norm_kind;

using pass = kern::bench::norm_pass;

// Everything one forward or backward call touches.
template <class T> struct buffers {
  kern::gpu::device_buffer<T> x, residual, h, y, dy, dx;
  kern::gpu::device_buffer<float> weight, bias, mean, rstd, dweight, dbias;
  buffers(index_t rows, index_t dim)
      : x(matrix(rows, dim)), residual(matrix(rows, dim)), h(matrix(rows, dim)), y(matrix(rows, dim)),
        dy(matrix(rows, dim)), dx(matrix(rows, dim)), weight(vector(dim, 0.5f, 1.5f)), bias(vector(dim, -0.5f, 0.5f)),
        mean(vector(rows, -0.1f, 0.1f)), rstd(vector(rows, 0.5f, 2.0f)), dweight(vector(dim, 0.0f, 0.0f)),
        dbias(vector(dim, 0.0f, 0.0f)) {}

private:
  static kern::gpu::device_buffer<T> matrix(index_t rows, index_t dim) {
    return kern::bench::device_filled<T>(static_cast<std::size_t>(rows * dim));
  }
  static kern::gpu::device_buffer<float> vector(index_t n, float lo, float hi) {
    return kern::bench::device_filled<float>(static_cast<std::size_t>(n), lo, hi);
  }
};

template <class T> void norm(benchmark::State& state, norm_kind kind, pass which, index_t rows, index_t dim) {
  buffers<T> b(rows, dim);
  const bool layernorm = kind == norm_kind::layernorm;
  kern::ops::norm_forward_params<T> f;
  f.kind = kind;
  f.x = {b.x.data(), rows, dim};
  if (which == pass::fused_forward) {
    f.residual = {b.residual.data(), rows, dim};
    f.residual_out = {b.h.data(), rows, dim};
  }
  f.weight = b.weight.data();
  f.bias = layernorm ? b.bias.data() : nullptr;
  f.y = {b.y.data(), rows, dim};
  f.mean = layernorm ? b.mean.data() : nullptr;
  f.rstd = b.rstd.data();
  if (which != pass::backward) {
    kern::bench::time_on_gpu(state, kern::bench::norm_traffic<T>(which, rows, dim),
                             [&](kern::gpu::stream_t s) { kern::gpu::norm_forward(f, s); });
    return;
  }
  kern::ops::norm_backward_params<T> g;
  g.kind = kind;
  g.x = {b.x.data(), rows, dim};
  g.dy = {b.dy.data(), rows, dim};
  g.weight = b.weight.data();
  g.mean = f.mean;
  g.rstd = b.rstd.data();
  g.dx = {b.dx.data(), rows, dim};
  g.dweight = b.dweight.data();
  g.dbias = layernorm ? b.dbias.data() : nullptr;
  kern::gpu::device_buffer<std::byte> workspace(kern::gpu::norm_backward_workspace_bytes(g));
  kern::bench::time_on_gpu(state, kern::bench::norm_traffic<T>(which, rows, dim),
                           [&](kern::gpu::stream_t s) { kern::gpu::norm_backward(g, workspace.data(), s); });
}

template <class Run> void add(const std::string& family, const std::string& dtype, const std::string& shape, Run run) {
  kern::bench::add_gpu_benchmark(family, dtype, shape, run);
}

template <class T> void register_type(const std::string& dtype) {
  struct op {
    const char* family;
    norm_kind kind;
    pass which;
  };
  const op ops[] = {{"layernorm_forward", norm_kind::layernorm, pass::forward},
                    {"rmsnorm_forward", norm_kind::rmsnorm, pass::forward},
                    {"add_layernorm_forward", norm_kind::layernorm, pass::fused_forward},
                    {"add_rmsnorm_forward", norm_kind::rmsnorm, pass::fused_forward},
                    {"layernorm_backward", norm_kind::layernorm, pass::backward},
                    {"rmsnorm_backward", norm_kind::rmsnorm, pass::backward}};
  const index_t shapes[][2] = {{16384, 768}, {8192, 4096}};
  for (const op& o : ops) {
    for (const auto& shape : shapes) {
      const index_t rows = shape[0], dim = shape[1];
      add(o.family, dtype, std::to_string(rows) + "x" + std::to_string(dim),
          [=](benchmark::State& s) { norm<T>(s, o.kind, o.which, rows, dim); });
    }
  }
}

[[maybe_unused]] const bool registered = [] {
  register_type<float>("f32");
  register_type<bf16>("bf16");
  return true;
}();

} // namespace
