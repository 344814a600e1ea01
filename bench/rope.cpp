// kern::cpu::rope_forward / rope_backward against a plain scalar loop (what an engine writes without
// kern), in GB/s of x read and written, and as a fraction of the triad bandwidth. Shapes: GPT-2 small
// attention heads [4, 1024, 12, 64] and Llama-7B's [1, 4096, 32, 128], both far larger than L2, and
// [1, 64, 12, 64] (96 KiB f32) inside it.
#include <array>
#include <cmath>
#include <cstddef>
#include <string>
#include <vector>

#include "bench_common.hpp"
#include "kern/cpu.hpp"

namespace {

using kern::index_t;
using kern::ops::rope_pairing;
using namespace kern::bench;

using dims = std::array<index_t, 4>; // batch, seq, heads, head_dim

template <class T> void rope(benchmark::State& state, bool kern_impl, bool backward, rope_pairing pairing, dims d) {
  const index_t n = d[0] * d[1] * d[2] * d[3], half = d[3] / 2;
  kern::aligned_buffer<T> x(static_cast<std::size_t>(n));
  for (std::size_t i = 0; i < x.size(); ++i) {
    x[i] = T(static_cast<float>(static_cast<int>(i % 199) - 99) / 99.0f);
  }
  std::vector<float> cos_table(static_cast<std::size_t>(d[1] * half)), sin_table(cos_table.size());
  kern::ops::fill_rope_table(cos_table.data(), sin_table.data(), d[1], d[3]);
  kern::ops::rope_params<T> p;
  p.x = {x.data(), d};
  p.pairing = pairing;
  p.cos_table = cos_table.data();
  p.sin_table = sin_table.data();
  p.table_positions = d[1];
  const kern::cpu::context ctx(threads_of(state));
  for (auto _ : state) {
    if (kern_impl && backward) {
      kern::cpu::rope_backward(ctx, p);
    } else if (kern_impl) {
      kern::cpu::rope_forward(ctx, p);
    } else {
      // The direct loop over pairs, as llama2.c and reference PyTorch ports write it.
      const float sign = backward ? -1.0f : 1.0f;
      for (index_t b = 0; b < d[0]; ++b) {
        for (index_t s = 0; s < d[1]; ++s) {
          for (index_t h = 0; h < d[2]; ++h) {
            T* head = x.data() + ((b * d[1] + s) * d[2] + h) * d[3];
            for (index_t i = 0; i < half; ++i) {
              const float c = cos_table[static_cast<std::size_t>(s * half + i)];
              const float sn = sign * sin_table[static_cast<std::size_t>(s * half + i)];
              const index_t first = pairing == rope_pairing::adjacent ? 2 * i : i;
              const index_t second = pairing == rope_pairing::adjacent ? 2 * i + 1 : i + half;
              const float a = static_cast<float>(head[first]), v = static_cast<float>(head[second]);
              head[first] = T(a * c - v * sn);
              head[second] = T(a * sn + v * c);
            }
          }
        }
      }
    }
    benchmark::ClobberMemory();
  }
  report_bytes(state, 2.0 * static_cast<double>(n) * sizeof(T));
}

template <class T> void add_type(const char* dtype) {
  for (const dims& d : {dims{4, 1024, 12, 64}, dims{1, 4096, 32, 128}, dims{1, 64, 12, 64}}) {
    const std::string shape =
        std::to_string(d[0]) + "x" + std::to_string(d[1]) + "x" + std::to_string(d[2]) + "x" + std::to_string(d[3]);
    for (rope_pairing pairing : {rope_pairing::adjacent, rope_pairing::half}) {
      for (bool backward : {false, true}) {
        const std::string family = std::string("rope_") + (pairing == rope_pairing::adjacent ? "adjacent" : "half") +
                                   (backward ? "_bwd" : "_fwd");
        add(family, "kern", dtype, shape, [=](benchmark::State& s) { rope<T>(s, true, backward, pairing, d); });
        add(family, "scalar", dtype, shape, [=](benchmark::State& s) { rope<T>(s, false, backward, pairing, d); }, {1});
      }
    }
  }
}

const bool registered = [] {
  add_type<float>("f32");
  add_type<kern::bf16>("bf16");
  return true;
}();

} // namespace
