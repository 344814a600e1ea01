// kern::cpu::convert against a plain scalar loop (what an engine writes without kern), in GB/s of
// bytes read plus bytes written, and as a fraction of the triad bandwidth.
#include <string>

#include "bench_common.hpp"
#include "kern/cpu.hpp"

namespace {

using kern::index_t;
using namespace kern::bench;

template <class Src, class Dst> struct buffers {
  kern::aligned_buffer<Src> src;
  kern::aligned_buffer<Dst> dst;
  explicit buffers(index_t n) : src(static_cast<std::size_t>(n)), dst(static_cast<std::size_t>(n)) {
    for (index_t i = 0; i < n; ++i) {
      src[static_cast<std::size_t>(i)] = kern::from_float<Src>(static_cast<float>(i % 1000) * 0.37f);
      dst[static_cast<std::size_t>(i)] = kern::from_float<Dst>(0.0f);
    }
  }
};

template <class Src, class Dst> void kern_convert(benchmark::State& state, index_t n) {
  buffers<Src, Dst> b(n);
  const kern::cpu::context ctx(threads_of(state));
  for (auto _ : state) {
    kern::cpu::convert(ctx, kern::ops::convert_params{b.src.data(), b.dst.data(), n});
    benchmark::ClobberMemory();
  }
  report_bytes(state, static_cast<double>(n) * (sizeof(Src) + sizeof(Dst)));
}

// The loop a user writes by hand: one element at a time, one thread.
template <class Src, class Dst> void scalar_convert(benchmark::State& state, index_t n) {
  buffers<Src, Dst> b(n);
  for (auto _ : state) {
    for (index_t i = 0; i < n; ++i) {
      b.dst[static_cast<std::size_t>(i)] = Dst(static_cast<float>(b.src[static_cast<std::size_t>(i)]));
      benchmark::DoNotOptimize(b.dst[static_cast<std::size_t>(i)]);
    }
  }
  report_bytes(state, static_cast<double>(n) * (sizeof(Src) + sizeof(Dst)));
}

template <class Src, class Dst> void add_pair(std::string_view dtype) {
  for (index_t n : {index_t{1} << 16, index_t{1} << 24}) {
    const std::string shape = std::to_string(n);
    add("convert", "kern", dtype, shape, [n](benchmark::State& s) { kern_convert<Src, Dst>(s, n); });
    add("convert", "scalar", dtype, shape, [n](benchmark::State& s) { scalar_convert<Src, Dst>(s, n); }, {1});
  }
}

const bool registered = [] {
  add_pair<float, kern::bf16>("f32_to_bf16");
  add_pair<kern::bf16, float>("bf16_to_f32");
  add_pair<float, kern::f16>("f32_to_f16");
  add_pair<kern::f16, float>("f16_to_f32");
  return true;
}();

} // namespace
