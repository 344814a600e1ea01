// kern::cpu::norm_forward / norm_backward (LayerNorm, RMSNorm, and the residual add fused into the
// forward) against a plain scalar loop (what an engine writes without kern), in GB/s of the minimum
// memory traffic (each activation read once, each output written once) and as a fraction of the
// triad bandwidth. Shapes: GPT-2 small (768) and Llama-size (4096) rows, far larger than L2, and one
// L2-resident shape.
#include <cmath>
#include <string>
#include <vector>

#include "bench_common.hpp"
#include "kern/cpu.hpp"
#include "workloads.hpp"

namespace {

using kern::index_t;
using kern::ops::norm_kind;
using namespace kern::bench;

struct shape {
  index_t rows, dim;
  std::string name() const { return std::to_string(rows) + "x" + std::to_string(dim); }
  index_t size() const { return rows * dim; }
};

template <class T> kern::aligned_buffer<T> filled(index_t n, float offset) {
  kern::aligned_buffer<T> out(static_cast<std::size_t>(n));
  for (index_t i = 0; i < n; ++i) {
    out[static_cast<std::size_t>(i)] = T(static_cast<float>(i % 997) * 0.002f - 1.0f + offset);
  }
  return out;
}

// Everything one forward or backward call touches.
template <class T> struct buffers {
  kern::aligned_buffer<T> x, residual, h, y, dy, dx;
  kern::aligned_buffer<float> weight, bias, mean, rstd, dweight, dbias;
  explicit buffers(shape s)
      : x(filled<T>(s.size(), 0.5f)), residual(filled<T>(s.size(), 0.0f)), h(filled<T>(s.size(), 0.0f)),
        y(filled<T>(s.size(), 0.0f)), dy(filled<T>(s.size(), 0.1f)), dx(filled<T>(s.size(), 0.0f)),
        weight(filled<float>(s.dim, 2.0f)), bias(filled<float>(s.dim, 0.0f)), mean(filled<float>(s.rows, 0.0f)),
        rstd(filled<float>(s.rows, 2.0f)), dweight(filled<float>(s.dim, 0.0f)), dbias(filled<float>(s.dim, 0.0f)) {}
};

using pass = norm_pass;

template <class T> void kern_norm(benchmark::State& state, norm_kind kind, pass which, shape s) {
  buffers<T> b(s);
  const kern::cpu::context ctx(threads_of(state));
  const bool layernorm = kind == norm_kind::layernorm;
  kern::ops::norm_forward_params<T> f;
  f.kind = kind;
  f.x = {b.x.data(), s.rows, s.dim};
  if (which == pass::fused_forward) {
    f.residual = {b.residual.data(), s.rows, s.dim};
    f.residual_out = {b.h.data(), s.rows, s.dim};
  }
  f.weight = b.weight.data();
  f.bias = layernorm ? b.bias.data() : nullptr;
  f.y = {b.y.data(), s.rows, s.dim};
  f.mean = layernorm ? b.mean.data() : nullptr;
  f.rstd = b.rstd.data();
  kern::ops::norm_backward_params<T> g;
  g.kind = kind;
  g.x = {b.x.data(), s.rows, s.dim};
  g.dy = {b.dy.data(), s.rows, s.dim};
  g.weight = b.weight.data();
  g.mean = f.mean;
  g.rstd = b.rstd.data();
  g.dx = {b.dx.data(), s.rows, s.dim};
  g.dweight = b.dweight.data();
  g.dbias = layernorm ? b.dbias.data() : nullptr;
  kern::cpu::norm_forward(ctx, f); // the statistics the backward reads
  for (auto _ : state) {
    if (which == pass::backward) {
      kern::cpu::norm_backward(ctx, g);
    } else {
      kern::cpu::norm_forward(ctx, f);
    }
    benchmark::ClobberMemory();
  }
  report_bytes(state, norm_traffic<T>(which, s.rows, s.dim));
}

// The loops a user writes by hand: one row at a time, one element at a time, one thread.
template <class T> void scalar_norm(benchmark::State& state, norm_kind kind, pass which, shape s) {
  buffers<T> b(s);
  const bool layernorm = kind == norm_kind::layernorm;
  const auto n = static_cast<float>(s.dim);
  const auto at = [&](index_t r, index_t j) { return static_cast<std::size_t>(r * s.dim + j); };
  for (auto _ : state) {
    for (index_t r = 0; r < s.rows; ++r) {
      if (which == pass::backward) {
        const float mean = layernorm ? b.mean[static_cast<std::size_t>(r)] : 0.0f;
        const float rstd = b.rstd[static_cast<std::size_t>(r)];
        float g_sum = 0.0f, g_xhat_sum = 0.0f;
        for (index_t j = 0; j < s.dim; ++j) {
          const float xhat = (static_cast<float>(b.x[at(r, j)]) - mean) * rstd;
          const float dy = static_cast<float>(b.dy[at(r, j)]);
          const float g = dy * b.weight[static_cast<std::size_t>(j)];
          g_sum += g;
          g_xhat_sum += g * xhat;
          b.dweight[static_cast<std::size_t>(j)] += dy * xhat;
          b.dbias[static_cast<std::size_t>(j)] += dy;
        }
        const float g_mean = layernorm ? g_sum / n : 0.0f, g_xhat_mean = g_xhat_sum / n;
        for (index_t j = 0; j < s.dim; ++j) {
          const float xhat = (static_cast<float>(b.x[at(r, j)]) - mean) * rstd;
          const float g = static_cast<float>(b.dy[at(r, j)]) * b.weight[static_cast<std::size_t>(j)];
          b.dx[at(r, j)] = T(rstd * (g - g_mean - xhat * g_xhat_mean));
        }
        continue;
      }
      const kern::aligned_buffer<T>& in = which == pass::fused_forward ? b.h : b.x;
      if (which == pass::fused_forward) {
        for (index_t j = 0; j < s.dim; ++j) {
          b.h[at(r, j)] = T(static_cast<float>(b.x[at(r, j)]) + static_cast<float>(b.residual[at(r, j)]));
        }
      }
      float mean = 0.0f;
      if (layernorm) {
        for (index_t j = 0; j < s.dim; ++j) {
          mean += static_cast<float>(in[at(r, j)]);
        }
        mean /= n;
      }
      float square = 0.0f;
      for (index_t j = 0; j < s.dim; ++j) {
        const float d = static_cast<float>(in[at(r, j)]) - mean;
        square += d * d;
      }
      const float rstd = 1.0f / std::sqrt(square / n + 1e-5f);
      for (index_t j = 0; j < s.dim; ++j) {
        const float xhat = (static_cast<float>(in[at(r, j)]) - mean) * rstd;
        const float bias = layernorm ? b.bias[static_cast<std::size_t>(j)] : 0.0f;
        b.y[at(r, j)] = T(xhat * b.weight[static_cast<std::size_t>(j)] + bias);
      }
    }
    benchmark::ClobberMemory();
  }
  report_bytes(state, norm_traffic<T>(which, s.rows, s.dim));
}

template <class T> void add_all(std::string_view dtype) {
  const shape shapes[] = {{64, 768}, {4096, 768}, {16384, 768}, {1024, 4096}};
  struct op {
    const char* family;
    norm_kind kind;
    pass which;
  };
  const op ops[] = {{"layernorm_forward", norm_kind::layernorm, pass::forward},
                    {"rmsnorm_forward", norm_kind::rmsnorm, pass::forward},
                    {"add_layernorm_forward", norm_kind::layernorm, pass::fused_forward},
                    {"layernorm_backward", norm_kind::layernorm, pass::backward},
                    {"rmsnorm_backward", norm_kind::rmsnorm, pass::backward}};
  for (const op& o : ops) {
    for (const shape s : shapes) {
      add(o.family, "kern", dtype, s.name(), [o, s](benchmark::State& st) { kern_norm<T>(st, o.kind, o.which, s); });
      add(o.family, "scalar", dtype, s.name(), [o, s](benchmark::State& st) { scalar_norm<T>(st, o.kind, o.which, s); },
          {1});
    }
  }
}

const bool registered = [] {
  add_all<float>("f32");
  add_all<kern::bf16>("bf16");
  return true;
}();

} // namespace
