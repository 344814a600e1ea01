// kern::gpu::rope_forward / rope_backward on the query tensors of Llama 2 7B ([8, 1024, 32, 128],
// whole heads) and GPT-NeoX-style partial rotary ([8, 1024, 32, 80], 32 of 80 values rotated, the
// rest passed through), in both pairings. GB/s count the least traffic: each rotated value read and
// written once, and the two tables' rows read once.
#include <cstddef>
#include <string>
#include <vector>

#include "gpu/gpu_bench.hpp"
#include "kern/gpu/rope.hpp"

namespace {

using kern::bf16;
using kern::index_t;
using kern::ops::rope_pairing;

struct rope_shape {
  index_t batch, seq, heads, head_dim, rotary;
  std::string name() const {
    return std::to_string(batch) + "x" + std::to_string(seq) + "x" + std::to_string(heads) + "x" +
           std::to_string(head_dim) + "_rotary" + std::to_string(rotary);
  }
};

template <class T> void rope(benchmark::State& state, rope_shape shape, rope_pairing pairing, bool backward) {
  const index_t count = shape.batch * shape.seq * shape.heads * shape.head_dim, half = shape.rotary / 2;
  const auto x = kern::bench::device_filled<T>(static_cast<std::size_t>(count));
  std::vector<float> cos(static_cast<std::size_t>(shape.seq * half)), sin(cos.size());
  kern::ops::fill_rope_table(cos.data(), sin.data(), shape.seq, shape.rotary);
  kern::gpu::device_buffer<float> cos_table(cos.size()), sin_table(sin.size());
  kern::gpu::copy(cos_table.data(), cos.data(), cos.size(), nullptr);
  kern::gpu::copy(sin_table.data(), sin.data(), sin.size(), nullptr);
  kern::gpu::synchronize(nullptr);
  kern::ops::rope_params<T> p;
  p.x = {x.data(), {shape.batch, shape.seq, shape.heads, shape.head_dim}};
  p.pairing = pairing;
  p.rotary_dim = shape.rotary;
  p.cos_table = cos_table.data();
  p.sin_table = sin_table.data();
  p.table_positions = shape.seq;
  const double rotated = static_cast<double>(shape.batch * shape.seq * shape.heads * shape.rotary);
  const double bytes = 2.0 * rotated * sizeof(T) + 2.0 * static_cast<double>(cos.size()) * sizeof(float);
  kern::bench::time_on_gpu(state, bytes, [&](kern::gpu::stream_t s) {
    if (backward) {
      kern::gpu::rope_backward(p, s);
    } else {
      kern::gpu::rope_forward(p, s);
    }
  });
}

template <class Run> void add(const std::string& family, const std::string& dtype, const std::string& shape, Run run) {
  kern::bench::add_gpu_benchmark(family, dtype, shape, run);
}

template <class T> void register_type(const std::string& dtype) {
  for (const rope_shape& shape : {rope_shape{8, 1024, 32, 128, 128}, rope_shape{8, 1024, 32, 80, 32}}) {
    for (rope_pairing pairing : {rope_pairing::adjacent, rope_pairing::half}) {
      const std::string pairing_name = pairing == rope_pairing::adjacent ? "adjacent" : "half";
      for (bool backward : {false, true}) {
        add(std::string(backward ? "rope_backward_" : "rope_forward_") + pairing_name, dtype, shape.name(),
            [=](benchmark::State& s) { rope<T>(s, shape, pairing, backward); });
      }
    }
  }
}

[[maybe_unused]] const bool registered = [] {
  register_type<float>("f32");
  register_type<bf16>("bf16");
  return true;
}();

} // namespace
