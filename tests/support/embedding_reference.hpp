// The float64 reference of the embedding ops (kern/ops/embedding.hpp) and the test inputs built
// with it, shared by the CPU and GPU tests (which differ only in how they run the kernels).
#pragma once

#include <cstddef>
#include <cstdint>
#include <random>
#include <vector>

#include "kern/core/view.hpp"
#include "kern/ops/embedding.hpp"
#include "support/kernel_test.hpp"

namespace kern::test {

// A table or gradient: the padding holds `padding` (the last row's too, so that a write past the
// last element shows), the elements NaN until a test fills them.
template <class T> host_matrix<T> make_matrix(index_t rows, index_t cols, index_t ld, float padding) {
  return host_matrix<T>(rows, cols, ld, padding, nan_value, buffer_end::last_row_padding);
}

inline std::vector<std::int32_t> random_tokens(std::mt19937& rng, index_t n, index_t vocab) {
  std::uniform_int_distribution<std::int32_t> pick(0, static_cast<std::int32_t>(vocab - 1));
  std::vector<std::int32_t> tokens(static_cast<std::size_t>(n));
  for (auto& t : tokens) {
    t = pick(rng);
  }
  return tokens;
}

// out[r] = wte[tokens[r]] + wpe[offset + r % seq] (no position term where wpe has no rows), rows
// of `seq` tokens, packed row by row.
inline std::vector<double> embedding_forward_reference(const std::vector<std::int32_t>& tokens,
                                                       const host_matrix<float>& wte, const host_matrix<float>& wpe,
                                                       index_t seq, index_t offset) {
  std::vector<double> out;
  for (std::size_t r = 0; r < tokens.size(); ++r) {
    for (index_t j = 0; j < wte.cols; ++j) {
      const double position = wpe.rows > 0 ? wpe.at(offset + static_cast<index_t>(r) % seq, j) : 0.0;
      out.push_back(static_cast<double>(wte.at(tokens[r], j)) + position);
    }
  }
  return out;
}

// The gradients the backward accumulates: dwte (and dwpe where it has rows) as they are plus each
// row of dout added at its token (and position), packed row by row.
template <class T> struct embedding_backward_reference {
  std::vector<double> dwte, dwpe;

  embedding_backward_reference(const std::vector<std::int32_t>& tokens, const host_matrix<T>& dout,
                               const host_matrix<float>& dwte_before, const host_matrix<float>& dwpe_before,
                               index_t seq, index_t offset)
      : dwte(widen(dwte_before.values())), dwpe(widen(dwpe_before.values())) {
    const index_t dim = dout.cols;
    for (index_t r = 0; r < dout.rows; ++r) {
      for (index_t j = 0; j < dim; ++j) {
        const double g = static_cast<float>(dout.at(r, j));
        dwte[static_cast<std::size_t>(tokens[static_cast<std::size_t>(r)] * dim + j)] += g;
        if (dwpe_before.rows > 0) {
          dwpe[static_cast<std::size_t>((offset + r % seq) * dim + j)] += g;
        }
      }
    }
  }
};

// For L = sum(w * embedding_forward(tokens)), embedding_backward(dout = w) is dL/d(tables): a small
// problem and the central differences of its float64 loss. Both tables are in one vector, the
// token table (vocab rows) then the position table (positions rows).
struct embedding_fd_problem {
  static constexpr index_t batch = 2, seq = 3, dim = 5, vocab = 4, positions = 6, offset = 1;
  std::vector<std::int32_t> tokens;
  host_matrix<float> w;
  std::vector<double> numeric;

  explicit embedding_fd_problem(std::mt19937& rng)
      : tokens(random_tokens(rng, batch * seq, vocab)), w(make_matrix<float>(batch * seq, dim, dim, 0.0f)) {
    w.fill_random(rng);
    std::vector<double> tables = widen(random_values<float>(rng, (vocab + positions) * dim));
    const auto loss = [&] {
      double l = 0.0;
      for (index_t r = 0; r < batch * seq; ++r) {
        for (index_t j = 0; j < dim; ++j) {
          const double e = tables[static_cast<std::size_t>(tokens[static_cast<std::size_t>(r)] * dim + j)] +
                           tables[static_cast<std::size_t>((vocab + offset + r % seq) * dim + j)];
          l += w.at(r, j) * e;
        }
      }
      return l;
    };
    numeric = numeric_gradient(tables, loss);
  }
};

} // namespace kern::test
