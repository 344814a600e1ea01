// Token (and learned position) embedding lookup, and its gradient.
//
//   embedding_forward    out[r] = token_table[tokens[r]] + position_table[position_offset + s]
//   embedding_backward   token_grad[tokens[r]] += dout[r],  position_grad[position_offset + s] += dout[r]
//
// for every row r = b * seq + s of the batch x seq token ids (row-major). The position table is
// optional (empty data: none, as in Llama, whose positions come from RoPE). Tables and their
// gradients are fp32 (master weights); out and dout are f32 or bf16. The gradients are accumulated,
// so that a tied output projection (GPT-2) or several micro-batches add into the same buffers.
//
// Every token id is checked to lie in [0, vocab) before anything is written (validate reads the ids;
// validate_except_token_ids leaves them to backends whose ids live in device memory).
#pragma once

#include <cstdint>
#include <string_view>

#include "kern/core/dtype.hpp"
#include "kern/core/error.hpp"
#include "kern/core/view.hpp"
#include "kern/ops/gemm.hpp"

namespace kern::ops {

template <element_type T> struct embedding_forward_params {
  const std::int32_t* tokens = nullptr; // batch x seq ids, row-major
  index_t batch = 0;
  index_t seq = 0;
  matrix_view<const float> token_table;      // vocab x dim (wte)
  matrix_view<const float> position_table{}; // positions x dim (wpe), or empty (data null)
  index_t position_offset = 0;               // x's sequence index s is at position position_offset + s
  matrix_view<T> out;                        // (batch * seq) x dim

  index_t rows() const noexcept { return batch * seq; }
};

template <element_type T> struct embedding_backward_params {
  const std::int32_t* tokens = nullptr; // batch x seq ids, row-major
  index_t batch = 0;
  index_t seq = 0;
  matrix_view<const T> dout;          // (batch * seq) x dim
  matrix_view<float> token_grad;      // vocab x dim, accumulated (+=)
  matrix_view<float> position_grad{}; // positions x dim, accumulated, or empty (data null)
  index_t position_offset = 0;

  index_t rows() const noexcept { return batch * seq; }
};

namespace detail {

// Sizes and the optional position table shared by both passes (not the ids' values).
template <class Rows, class Positions>
void validate_embedding(std::string_view op, const std::int32_t* tokens, index_t batch, index_t seq,
                        std::string_view rows_name, Rows rows, std::string_view positions_name, Positions positions,
                        index_t position_offset, index_t dim) {
  require_non_negative(op, "batch", batch);
  require_non_negative(op, "seq", seq);
  require_non_negative(op, "position_offset", position_offset);
  const index_t n = batch * seq;
  require_not_null(op, "tokens", tokens, n);
  require(rows.rows == n && rows.cols == dim, op, rows_name, " is ", rows.rows, " x ", rows.cols,
          " but batch * seq x dim is ", n, " x ", dim);
  if (positions.data != nullptr) {
    require_matrix(op, positions_name, positions);
    require(positions.cols == dim, op, positions_name, " has ", positions.cols, " columns but dim is ", dim);
    require(position_offset + seq <= positions.rows, op, "position_offset + seq = ", position_offset, " + ", seq,
            " exceeds the ", positions.rows, " rows of ", positions_name);
  }
  if (!rows.empty()) {
    require_disjoint(op, rows_name, rows.data, rows.end(), "tokens", tokens, tokens + n);
  }
}

// Every token id in [0, vocab): reads the ids, so host memory only.
inline void require_token_ids(std::string_view op, const std::int32_t* tokens, index_t batch, index_t seq,
                              index_t vocab) {
  for (index_t r = 0; r < batch * seq; ++r) {
    require(tokens[r] >= 0 && tokens[r] < vocab, op, "tokens[", r, "] = ", tokens[r], " (batch ", r / seq,
            ", position ", r % seq, ") is outside the vocabulary [0, ", vocab, ")");
  }
}

} // namespace detail

// Every check but the token ids' range, which needs the ids in host memory: a GPU backend, whose
// ids are in device memory, runs these and deals with bad ids on the device.
template <element_type T> void validate_except_token_ids(std::string_view op, const embedding_forward_params<T>& p) {
  detail::require_matrix(op, "token_table", p.token_table);
  detail::require_matrix(op, "out", p.out);
  detail::validate_embedding(op, p.tokens, p.batch, p.seq, "out", p.out, "position_table", p.position_table,
                             p.position_offset, p.token_table.cols);
  detail::require_disjoint_views(op, "out", p.out, "token_table", p.token_table);
  if (p.position_table.data != nullptr) {
    detail::require_disjoint_views(op, "out", p.out, "position_table", p.position_table);
  }
}

template <element_type T> void validate(std::string_view op, const embedding_forward_params<T>& p) {
  validate_except_token_ids(op, p);
  detail::require_token_ids(op, p.tokens, p.batch, p.seq, p.token_table.rows);
}

template <element_type T> void validate_except_token_ids(std::string_view op, const embedding_backward_params<T>& p) {
  detail::require_matrix(op, "token_grad", p.token_grad);
  detail::require_matrix(op, "dout", p.dout);
  detail::validate_embedding(op, p.tokens, p.batch, p.seq, "dout", p.dout, "position_grad", p.position_grad,
                             p.position_offset, p.token_grad.cols);
  detail::require_disjoint_views(op, "token_grad", p.token_grad, "dout", p.dout);
  if (!p.token_grad.empty()) {
    require_disjoint(op, "token_grad", p.token_grad.data, p.token_grad.end(), "tokens", p.tokens, p.tokens + p.rows());
  }
  if (p.position_grad.data != nullptr) {
    detail::require_disjoint_views(op, "position_grad", p.position_grad, "dout", p.dout);
    detail::require_disjoint_views(op, "position_grad", p.position_grad, "token_grad", p.token_grad);
    if (!p.position_grad.empty()) {
      require_disjoint(op, "position_grad", p.position_grad.data, p.position_grad.end(), "tokens", p.tokens,
                       p.tokens + p.rows());
    }
  }
}

template <element_type T> void validate(std::string_view op, const embedding_backward_params<T>& p) {
  validate_except_token_ids(op, p);
  detail::require_token_ids(op, p.tokens, p.batch, p.seq, p.token_grad.rows);
}

} // namespace kern::ops
