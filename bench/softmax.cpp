// kern::cpu::softmax_forward / softmax_backward / cross_entropy against a plain scalar loop (what an
// engine writes without kern), in GB/s of the minimum memory traffic (each matrix read once, each
// output written once: a row, even a 50304-wide vocabulary row, stays in L2 between the passes) and
// as a fraction of the triad bandwidth.
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "bench_common.hpp"
#include "kern/cpu.hpp"

namespace {

using kern::index_t;
using namespace kern::bench;

struct shape {
  index_t rows, cols;
  std::string name() const { return std::to_string(rows) + "x" + std::to_string(cols); }
  index_t size() const { return rows * cols; }
};

template <class T> kern::aligned_buffer<T> filled(index_t n, float scale) {
  kern::aligned_buffer<T> out(static_cast<std::size_t>(n));
  for (index_t i = 0; i < n; ++i) {
    out[static_cast<std::size_t>(i)] = T(static_cast<float>(i % 997) * scale - 1.0f);
  }
  return out;
}

template <class T> double matrix_bytes(shape s) { return static_cast<double>(s.size()) * sizeof(T); }

template <class T> void kern_softmax(benchmark::State& state, bool backward, shape s) {
  auto x = filled<T>(s.size(), 0.004f), y = filled<T>(s.size(), 0.0f), dy = filled<T>(s.size(), 0.001f);
  const kern::cpu::context ctx(threads_of(state));
  const kern::matrix_view<T> xv{x.data(), s.rows, s.cols}, yv{y.data(), s.rows, s.cols}, dyv{dy.data(), s.rows, s.cols};
  kern::cpu::softmax_forward(ctx, kern::ops::softmax_forward_params<T>{xv, yv, 0.125f});
  for (auto _ : state) {
    if (backward) {
      kern::cpu::softmax_backward(ctx, kern::ops::softmax_backward_params<T>{yv, dyv, xv});
    } else {
      kern::cpu::softmax_forward(ctx, kern::ops::softmax_forward_params<T>{xv, yv, 0.125f});
    }
    benchmark::ClobberMemory();
  }
  report_bytes(state, (backward ? 3 : 2) * matrix_bytes<T>(s));
}

template <class T> void scalar_softmax(benchmark::State& state, bool backward, shape s) {
  auto x = filled<T>(s.size(), 0.004f), y = filled<T>(s.size(), 0.0f), dy = filled<T>(s.size(), 0.001f);
  for (auto _ : state) {
    for (index_t r = 0; r < s.rows; ++r) {
      T* xr = x.data() + r * s.cols;
      T* yr = y.data() + r * s.cols;
      if (backward) {
        const T* dyr = dy.data() + r * s.cols;
        float dot = 0.0f;
        for (index_t j = 0; j < s.cols; ++j) {
          dot += static_cast<float>(dyr[j]) * static_cast<float>(yr[j]);
        }
        for (index_t j = 0; j < s.cols; ++j) {
          xr[j] = T(static_cast<float>(yr[j]) * (static_cast<float>(dyr[j]) - dot));
        }
        continue;
      }
      float max = -INFINITY;
      for (index_t j = 0; j < s.cols; ++j) {
        max = std::fmax(max, 0.125f * static_cast<float>(xr[j]));
      }
      float sum = 0.0f;
      for (index_t j = 0; j < s.cols; ++j) {
        sum += std::exp(0.125f * static_cast<float>(xr[j]) - max);
      }
      for (index_t j = 0; j < s.cols; ++j) {
        yr[j] = T(std::exp(0.125f * static_cast<float>(xr[j]) - max) / sum);
      }
    }
    benchmark::ClobberMemory();
  }
  report_bytes(state, (backward ? 3 : 2) * matrix_bytes<T>(s));
}

// GPT-2's padded vocabulary: 50304 columns, 50257 classes.
constexpr index_t gpt2_vocab = 50257;

std::vector<std::int32_t> targets_for(index_t rows) {
  std::vector<std::int32_t> targets(static_cast<std::size_t>(rows));
  for (std::size_t i = 0; i < targets.size(); ++i) {
    targets[i] = static_cast<std::int32_t>((i * 7919) % gpt2_vocab);
  }
  return targets;
}

// The gradient overwrites the logits, and the next iteration starts from it: the same work.
template <class T> void kern_cross_entropy(benchmark::State& state, shape s) {
  auto logits = filled<T>(s.size(), 0.01f);
  const std::vector<std::int32_t> targets = targets_for(s.rows);
  const kern::cpu::context ctx(threads_of(state));
  kern::ops::cross_entropy_params<T> p;
  p.logits = {logits.data(), s.rows, s.cols};
  p.targets = targets.data();
  p.vocab = gpt2_vocab;
  for (auto _ : state) {
    benchmark::DoNotOptimize(kern::cpu::cross_entropy(ctx, p).loss);
    benchmark::ClobberMemory();
  }
  report_bytes(state, 2 * matrix_bytes<T>(s));
}

template <class T> void scalar_cross_entropy(benchmark::State& state, shape s) {
  auto logits = filled<T>(s.size(), 0.01f);
  const std::vector<std::int32_t> targets = targets_for(s.rows);
  for (auto _ : state) {
    double total = 0.0;
    for (index_t r = 0; r < s.rows; ++r) {
      T* row = logits.data() + r * s.cols;
      const std::int32_t t = targets[static_cast<std::size_t>(r)];
      float max = -INFINITY;
      for (index_t j = 0; j < gpt2_vocab; ++j) {
        max = std::fmax(max, static_cast<float>(row[j]));
      }
      float sum = 0.0f;
      for (index_t j = 0; j < gpt2_vocab; ++j) {
        sum += std::exp(static_cast<float>(row[j]) - max);
      }
      total += max + std::log(sum) - static_cast<float>(row[t]);
      const float scale = 1.0f / static_cast<float>(s.rows);
      for (index_t j = 0; j < gpt2_vocab; ++j) {
        row[j] = T((std::exp(static_cast<float>(row[j]) - max) / sum - (j == t ? 1.0f : 0.0f)) * scale);
      }
      for (index_t j = gpt2_vocab; j < s.cols; ++j) {
        row[j] = T(0.0f);
      }
    }
    benchmark::DoNotOptimize(total);
    benchmark::ClobberMemory();
  }
  report_bytes(state, 2 * matrix_bytes<T>(s));
}

template <class T> void add_all(std::string_view dtype) {
  for (const shape s : {shape{64, 1024}, shape{1024, 4096}, shape{12288, 1024}}) {
    for (bool backward : {false, true}) {
      const char* family = backward ? "softmax_backward" : "softmax_forward";
      add(family, "kern", dtype, s.name(), [=](benchmark::State& st) { kern_softmax<T>(st, backward, s); });
      add(family, "scalar", dtype, s.name(), [=](benchmark::State& st) { scalar_softmax<T>(st, backward, s); }, {1});
    }
  }
  for (const shape s : {shape{4, 50304}, shape{256, 50304}, shape{1024, 50304}}) {
    add("cross_entropy", "kern", dtype, s.name(), [=](benchmark::State& st) { kern_cross_entropy<T>(st, s); });
    add("cross_entropy", "scalar", dtype, s.name(), [=](benchmark::State& st) { scalar_cross_entropy<T>(st, s); }, {1});
  }
}

const bool registered = [] {
  add_all<float>("f32");
  add_all<kern::bf16>("bf16");
  return true;
}();

} // namespace
