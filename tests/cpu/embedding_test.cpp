// kern::cpu::embedding_forward / embedding_backward against float64 references.
//
// Token ids are random with many repeats (a small vocabulary), tables and outputs are strided views
// (ld > dim), outputs are poisoned with NaN, gradients start from random values (they accumulate);
// fresh seed per case, in the trace (KERN_TEST_SEED replays). The backward pass is also checked
// against finite differences of the float64 forward, and for the same bits at 1 and 2 threads.
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "kern/cpu.hpp"
#include "support/embedding_reference.hpp"
#include "support/kernel_test.hpp"

namespace {

using kern::bf16;
using kern::index_t;
using namespace kern::test;

struct embedding_case {
  index_t batch, seq, dim, vocab, positions; // positions 0: no position table
};
constexpr embedding_case cases[] = {{1, 1, 1, 1, 0},       {1, 1, 1, 1, 4},      {2, 3, 17, 11, 9},
                                    {3, 7, 64, 5, 0},      {3, 7, 64, 50, 12},   {4, 33, 131, 97, 40},
                                    {2, 16, 768, 300, 20}, {1, 200, 400, 7, 210}};

template <class T> void check_embedding(const embedding_case& c, index_t offset, int threads) {
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(testing::Message() << type_name<T>() << " " << c.batch << "x" << c.seq << " dim " << c.dim << " vocab "
                                  << c.vocab << " positions " << c.positions << " offset " << offset << " threads "
                                  << threads << " seed " << seed);
  std::mt19937 rng(seed);
  const kern::cpu::context ctx(threads);
  const index_t rows = c.batch * c.seq;
  const bool has_positions = c.positions > 0;
  const std::vector<std::int32_t> tokens = random_tokens(rng, rows, c.vocab);
  host_matrix<float> wte = make_matrix<float>(c.vocab, c.dim, c.dim + 3, nan_value);
  host_matrix<float> wpe = make_matrix<float>(c.positions, c.dim, c.dim + 1, nan_value);
  wte.fill_random(rng);
  wpe.fill_random(rng);

  // Forward.
  host_matrix<T> out = make_matrix<T>(rows, c.dim, c.dim + 2, 7.0f);
  const std::vector<double> out_ref = embedding_forward_reference(tokens, wte, wpe, c.seq, offset);
  kern::ops::embedding_forward_params<T> fwd;
  fwd.tokens = tokens.data();
  fwd.batch = c.batch;
  fwd.seq = c.seq;
  fwd.token_table = wte.cview();
  if (has_positions) {
    fwd.position_table = wpe.cview();
  }
  fwd.position_offset = offset;
  fwd.out = out.view();
  kern::cpu::embedding_forward(ctx, fwd);
  EXPECT_LT(relative_error(out.values(), out_ref), output_tolerance<T>());
  EXPECT_EQ(static_cast<float>(out.data.back()), 7.0f) << "wrote into out's padding";

  // Backward, accumulating onto random gradients.
  host_matrix<T> dout = make_matrix<T>(rows, c.dim, c.dim + 5, nan_value);
  dout.fill_random(rng);
  host_matrix<float> dwte = make_matrix<float>(c.vocab, c.dim, c.dim + 1, nan_value);
  host_matrix<float> dwpe = make_matrix<float>(c.positions, c.dim, c.dim, nan_value);
  dwte.fill_random(rng);
  dwpe.fill_random(rng);
  const embedding_backward_reference<T> ref(tokens, dout, dwte, dwpe, c.seq, offset);
  kern::ops::embedding_backward_params<T> bwd;
  bwd.tokens = tokens.data();
  bwd.batch = c.batch;
  bwd.seq = c.seq;
  bwd.dout = dout.cview();
  bwd.token_grad = dwte.view();
  if (has_positions) {
    bwd.position_grad = dwpe.view();
  }
  bwd.position_offset = offset;
  kern::cpu::embedding_backward(ctx, bwd);
  EXPECT_LT(relative_error(dwte.values(), ref.dwte), 1e-6);
  EXPECT_LT(relative_error(dwpe.values(), ref.dwpe), 1e-6);
}

TEST(CpuEmbedding, MatchesReference) {
  for (const embedding_case& c : cases) {
    for (int threads : {1, 2}) {
      for (index_t offset : {0, 2}) {
        if (c.positions > 0 && offset + c.seq > c.positions) {
          continue;
        }
        check_embedding<float>(c, offset, threads);
        check_embedding<bf16>(c, offset, threads);
      }
    }
  }
}

// For L = sum(w * embedding_forward(tokens)), embedding_backward(dout = w) is dL/d(tables).
TEST(CpuEmbedding, BackwardMatchesFiniteDifferences) {
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  const embedding_fd_problem fd(rng);
  std::vector<float> grads(fd.numeric.size(), 0.0f);
  kern::ops::embedding_backward_params<float> bwd;
  bwd.tokens = fd.tokens.data();
  bwd.batch = fd.batch;
  bwd.seq = fd.seq;
  bwd.dout = fd.w.cview();
  bwd.token_grad = {grads.data(), fd.vocab, fd.dim};
  bwd.position_grad = {grads.data() + fd.vocab * fd.dim, fd.positions, fd.dim};
  bwd.position_offset = fd.offset;
  kern::cpu::embedding_backward(kern::cpu::context(1), bwd);
  EXPECT_LT(relative_error(grads, fd.numeric), 1e-6);
}

// Many rows share few token ids: the sums must not depend on the thread count or the run.
TEST(CpuEmbedding, BackwardDeterministicAcrossThreadCounts) {
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  const index_t batch = 4, seq = 100, dim = 200, vocab = 3;
  const std::vector<std::int32_t> tokens = random_tokens(rng, batch * seq, vocab);
  host_matrix<bf16> dout = make_matrix<bf16>(batch * seq, dim, dim, 0.0f);
  dout.fill_random(rng);
  std::vector<std::vector<float>> results;
  for (int threads : {1, 2, 2}) {
    std::vector<float> grads(static_cast<std::size_t>((vocab + seq) * dim), 0.25f);
    kern::ops::embedding_backward_params<bf16> bwd;
    bwd.tokens = tokens.data();
    bwd.batch = batch;
    bwd.seq = seq;
    bwd.dout = dout.cview();
    bwd.token_grad = {grads.data(), vocab, dim};
    bwd.position_grad = {grads.data() + vocab * dim, seq, dim};
    kern::cpu::embedding_backward(kern::cpu::context(threads), bwd);
    results.push_back(grads);
  }
  EXPECT_TRUE(same_bits(results[0], results[1]));
  EXPECT_TRUE(same_bits(results[0], results[2]));
}

TEST(CpuEmbedding, NanPropagates) {
  const index_t dim = 20, vocab = 4;
  const std::vector<std::int32_t> tokens = {0, 2, 1, 2, 3};
  const auto rows = static_cast<index_t>(tokens.size());
  std::vector<float> wte(static_cast<std::size_t>(vocab * dim), 1.0f);
  wte[2 * dim + 7] = nan_value; // token 2, column 7
  std::vector<float> out(static_cast<std::size_t>(rows * dim));
  kern::ops::embedding_forward_params<float> fwd;
  fwd.tokens = tokens.data();
  fwd.batch = 1;
  fwd.seq = rows;
  fwd.token_table = {wte.data(), vocab, dim};
  fwd.out = {out.data(), rows, dim};
  kern::cpu::embedding_forward(kern::cpu::context(1), fwd);
  for (index_t r = 0; r < rows; ++r) {
    for (index_t j = 0; j < dim; ++j) {
      EXPECT_EQ(std::isnan(out[static_cast<std::size_t>(r * dim + j)]),
                tokens[static_cast<std::size_t>(r)] == 2 && j == 7);
    }
  }
  // The backward pass: a NaN in row 2 of dout (token 1) reaches token 1's gradient only.
  std::vector<float> dout(out.size(), 1.0f), grad(wte.size(), 0.0f);
  dout[2 * dim + 3] = nan_value;
  kern::ops::embedding_backward_params<float> bwd;
  bwd.tokens = tokens.data();
  bwd.batch = 1;
  bwd.seq = rows;
  bwd.dout = {dout.data(), rows, dim};
  bwd.token_grad = {grad.data(), vocab, dim};
  kern::cpu::embedding_backward(kern::cpu::context(1), bwd);
  for (index_t v = 0; v < vocab; ++v) {
    for (index_t j = 0; j < dim; ++j) {
      EXPECT_EQ(std::isnan(grad[static_cast<std::size_t>(v * dim + j)]), v == 1 && j == 3);
    }
  }
}

TEST(CpuEmbedding, RejectsBadArguments) {
  const kern::cpu::context ctx(1);
  const index_t batch = 2, seq = 3, dim = 8, vocab = 10, positions = 4;
  std::vector<std::int32_t> tokens = {1, 2, 3, 4, 5, 6};
  std::vector<float> wte(static_cast<std::size_t>(vocab * dim), 1.0f), wpe(static_cast<std::size_t>(positions * dim));
  std::vector<float> out(static_cast<std::size_t>(batch * seq * dim), nan_value);
  const auto forward = [&](auto edit) {
    return [&, edit] {
      kern::ops::embedding_forward_params<float> p;
      p.tokens = tokens.data();
      p.batch = batch;
      p.seq = seq;
      p.token_table = {wte.data(), vocab, dim};
      p.position_table = {wpe.data(), positions, dim};
      p.out = {out.data(), batch * seq, dim};
      edit(p);
      kern::cpu::embedding_forward(ctx, p);
    };
  };
  using F = kern::ops::embedding_forward_params<float>;
  tokens[4] = 10;
  expect_error(forward([](F&) {}), "tokens[4] = 10 (batch 1, position 1) is outside the vocabulary [0, 10)");
  tokens[4] = -1;
  expect_error(forward([](F&) {}), "tokens[4] = -1");
  for (float v : out) {
    ASSERT_TRUE(std::isnan(v)) << "wrote before rejecting a token id";
  }
  tokens[4] = 5;
  expect_error(forward([](F& p) { p.position_offset = 2; }), "position_offset + seq = 2 + 3 exceeds the 4 rows");
  expect_error(forward([](F& p) { p.position_offset = -1; }), "position_offset = -1");
  expect_error(forward([](F& p) { p.out.cols = 7; }), "out is 6 x 7");
  expect_error(forward([](F& p) { p.position_table.cols = 7; }), "position_table has 7 columns");
  expect_error(forward([](F& p) { p.tokens = nullptr; }), "tokens is null");
  expect_error(forward([](F& p) { p.batch = -2; }), "batch = -2");
  expect_error(forward([&](F& p) { p.out = {wte.data(), batch * seq, dim}; }), "out overlaps token_table");
  EXPECT_NO_THROW(forward([](F& p) { p.position_table = {}; })());
  EXPECT_NO_THROW(forward([](F& p) {
    p.batch = 0;
    p.tokens = nullptr;
    p.out = {nullptr, 0, 8};
  })());

  std::vector<float> grads(static_cast<std::size_t>((vocab + positions) * dim));
  const auto backward = [&](auto edit) {
    return [&, edit] {
      kern::ops::embedding_backward_params<float> p;
      p.tokens = tokens.data();
      p.batch = batch;
      p.seq = seq;
      p.dout = {out.data(), batch * seq, dim};
      p.token_grad = {grads.data(), vocab, dim};
      p.position_grad = {grads.data() + vocab * dim, positions, dim};
      edit(p);
      kern::cpu::embedding_backward(ctx, p);
    };
  };
  using B = kern::ops::embedding_backward_params<float>;
  expect_error(backward([&](B& p) {
                 p.position_grad = {grads.data() + dim, positions, dim};
               }),
               "position_grad overlaps token_grad");
  expect_error(backward([](B& p) { p.token_grad.rows = 3; }), "tokens[2] = 3 (batch 0, position 2) is outside");
  expect_error(backward([](B& p) { p.dout.rows = 5; }), "dout is 5 x 8");
  expect_error(backward([&](B& p) { p.dout = {grads.data(), batch * seq, dim}; }), "token_grad overlaps dout");
}

} // namespace
