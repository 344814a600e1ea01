// What the CPU and GPU benchmarks of one kernel family share: the workload and how its bytes are
// counted, so that the two report comparable figures.
#pragma once

#include <vector>

#include "kern/core/dtype.hpp"

namespace kern::bench {

// The parameter tensors of GPT-2 small (124M), in model order: token and position embeddings, then
// per layer ln_1, attention qkv and projection, ln_2, MLP up and down (weights and biases), then ln_f.
inline std::vector<index_t> gpt2_tensor_sizes() {
  constexpr index_t vocab = 50257, context = 1024, channels = 768, layers = 12;
  std::vector<index_t> sizes{vocab * channels, context * channels};
  for (index_t layer = 0; layer < layers; ++layer) {
    for (index_t size :
         {channels, channels, channels * 3 * channels, 3 * channels, channels * channels, channels, channels, channels,
          channels * 4 * channels, 4 * channels, 4 * channels * channels, channels}) {
      sizes.push_back(size);
    }
  }
  sizes.push_back(channels);
  sizes.push_back(channels);
  return sizes;
}

// A normalization pass: plain forward, forward with the residual add fused in, backward.
enum class norm_pass { forward, fused_forward, backward };

// Bytes a normalization pass over rows x dim values of T must move: activations in and out once,
// the saved statistics (mean and rstd per row) and the parameters (weight and bias) once.
template <class T> double norm_traffic(norm_pass which, index_t rows, index_t dim) {
  const double matrix = static_cast<double>(rows) * static_cast<double>(dim) * sizeof(T);
  const double vectors = static_cast<double>(rows) * 2 * sizeof(float) + static_cast<double>(dim) * 2 * sizeof(float);
  switch (which) {
  case norm_pass::forward:
    return 2 * matrix + vectors; // x in, y out
  case norm_pass::fused_forward:
    return 4 * matrix + vectors; // x and residual in, h and y out
  case norm_pass::backward:
    return 3 * matrix + vectors; // x and dy in, dx out
  }
  return 0.0;
}

} // namespace kern::bench
