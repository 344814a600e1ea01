// kern::gpu's AdamW step and global gradient norm over GPT-2 124M's 124,439,808 parameters: as its
// 148 tensors (one multi-tensor step, most tensors of 768 to 3072 elements next to a 38.6 M-element
// embedding), and as one flat tensor (the same bytes in one piece, the multi-tensor machinery's
// best case). GBps count the least traffic each op needs: AdamW reads p, g, m, v and writes p, m, v
// (28 bytes a parameter, 30 with the bf16 copy); the norm reads g (4).
#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "gpu/gpu_bench.hpp"
#include "kern/gpu/optimizer.hpp"
#include "workloads.hpp"

namespace {

using kern::bf16;
using kern::index_t;
using kern::bench::gpt2_tensor_sizes;

constexpr index_t gpt2_parameters = 124'439'808;

// Where each tensor starts in the buffers: 256-byte aligned, as an allocator would place them.
std::vector<index_t> offsets_of(const std::vector<index_t>& sizes) {
  std::vector<index_t> offsets;
  index_t end = 0;
  for (index_t size : sizes) {
    offsets.push_back(end);
    end += (size + 63) / 64 * 64;
  }
  offsets.push_back(end);
  return offsets;
}

// One set of device buffers for every benchmark (2.3 GB: filling it per run would dominate the
// program's time). Values stay finite over any number of steps.
struct arena {
  kern::gpu::device_buffer<float> param, grad, m, v;
  kern::gpu::device_buffer<bf16> param_bf16;
  explicit arena(index_t n)
      : param(kern::bench::device_filled<float>(static_cast<std::size_t>(n))),
        grad(kern::bench::device_filled<float>(static_cast<std::size_t>(n))),
        m(kern::bench::device_filled<float>(static_cast<std::size_t>(n), -0.1f, 0.1f)),
        v(kern::bench::device_filled<float>(static_cast<std::size_t>(n), 0.0f, 0.01f)),
        param_bf16(kern::bench::device_filled<bf16>(static_cast<std::size_t>(n))) {}
};

arena& shared_arena() {
  static const std::unique_ptr<arena> buffers = std::make_unique<arena>(offsets_of(gpt2_tensor_sizes()).back());
  return *buffers;
}

void adamw(benchmark::State& state, const std::vector<index_t>& sizes, bool bf16_copy) {
  arena& a = shared_arena();
  const std::vector<index_t> offsets = offsets_of(sizes);
  std::vector<kern::ops::adamw_tensor> tensors;
  for (std::size_t i = 0; i < sizes.size(); ++i) {
    const auto at = static_cast<std::size_t>(offsets[i]);
    tensors.push_back({a.param.data() + at, a.grad.data() + at, a.m.data() + at, a.v.data() + at,
                       bf16_copy ? a.param_bf16.data() + at : nullptr, sizes[i]});
  }
  kern::ops::adamw_multi_params p;
  p.tensors = tensors;
  p.lr = 3e-4f;
  p.weight_decay = 0.1f;
  p.step = 10;
  const double bytes_per_parameter = 7 * sizeof(float) + (bf16_copy ? sizeof(bf16) : 0);
  kern::bench::time_on_gpu(state, static_cast<double>(gpt2_parameters) * bytes_per_parameter,
                           [&](kern::gpu::stream_t stream) { kern::gpu::adamw_step(p, stream); });
}

void grad_norm(benchmark::State& state) {
  arena& a = shared_arena();
  const std::vector<index_t> sizes = gpt2_tensor_sizes();
  const std::vector<index_t> offsets = offsets_of(sizes);
  std::vector<kern::ops::gradient_span> spans;
  for (std::size_t i = 0; i < sizes.size(); ++i) {
    spans.push_back({a.grad.data() + offsets[i], sizes[i]});
  }
  kern::gpu::device_buffer<std::byte> workspace(kern::gpu::global_grad_norm_workspace_bytes(spans));
  kern::gpu::device_buffer<float> out(2);
  kern::bench::time_on_gpu(state, static_cast<double>(gpt2_parameters) * sizeof(float), [&](kern::gpu::stream_t s) {
    kern::gpu::global_grad_norm(spans, out.data(), out.data() + 1, 1.0f, {workspace.data(), workspace.size()}, s);
  });
}

template <class Run> void add(const std::string& family, const std::string& dtype, const std::string& shape, Run run) {
  kern::bench::add_gpu_benchmark(family, dtype, shape, run);
}

[[maybe_unused]] const bool registered = [] {
  const std::string tensors = std::to_string(gpt2_parameters) + "_in_148_tensors";
  const std::string flat = std::to_string(gpt2_parameters);
  for (bool bf16_copy : {false, true}) {
    const std::string dtype = bf16_copy ? "f32_bf16copy" : "f32";
    add("adamw", dtype, tensors, [=](benchmark::State& s) { adamw(s, gpt2_tensor_sizes(), bf16_copy); });
    add("adamw", dtype, flat, [=](benchmark::State& s) { adamw(s, {gpt2_parameters}, bf16_copy); });
  }
  add("grad_norm", "f32", tensors, grad_norm);
  return true;
}();

} // namespace
