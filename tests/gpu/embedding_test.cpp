// kern::gpu::embedding_forward / embedding_backward against float64 references (the CPU tests'
// cases and tolerances), and the backward bit for bit against the fixed order of additions it
// documents, computed here on the host.
//
// Token ids repeat (small vocabularies; 1200 and 1100 rows to sort in several chunks, with runs of
// one id across many tiles). Each case runs with the CPU test's strided views, with rows padded to
// 16-byte multiples (the vector path, tails included), and with the CPU test's views one element
// off 16-byte alignment (the scalar path). Input padding holds NaN, output padding a sentinel that
// must survive; gradients start from random values (they accumulate). Then bad token ids (NaN rows,
// skipped gradient rows, counted, nothing written outside the tables), determinism, finite
// differences, NaN, bad arguments. Fresh seed per case, in the trace (KERN_TEST_SEED replays).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <type_traits>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "kern/gpu/embedding.hpp"
#include "support/embedding_reference.hpp"
#include "support/gpu_test.hpp"

namespace {

using kern::bf16;
using kern::f16;
using kern::index_t;
using namespace kern::test;

// A device counter of invalid token ids, starting at 0.
struct counter {
  kern::gpu::device_buffer<std::uint32_t> value = to_device(std::vector<std::uint32_t>{0});
  std::uint32_t* get() const { return value.data(); }
  std::uint32_t read() const { return to_host(value)[0]; }
};

struct workspace {
  kern::gpu::device_buffer<unsigned char> buffer;
  explicit workspace(std::size_t bytes) : buffer(bytes) {}
  void* get() const { return buffer.data(); }
};

bool valid_id(std::int32_t id, index_t vocab) { return id >= 0 && id < vocab; }

// The token gradient in the order embedding_backward documents: the rows of each id in increasing
// row order; their (id, row) list, sorted, cut into tiles of gradient_tile; a run of one id inside a
// tile added onto the gradient row by row, a longer run as the sums of its tile pieces (each from
// its first row, in row order) added in tile order. Rows with an invalid id add nothing.
template <class T> void fixed_order_token_grad(const std::vector<std::int32_t>& tokens, const host_matrix<T>& dout,
                                               host_matrix<float>& grad) {
  std::vector<std::pair<std::int32_t, index_t>> keys;
  for (std::size_t r = 0; r < tokens.size(); ++r) {
    if (valid_id(tokens[r], grad.rows)) {
      keys.emplace_back(tokens[r], static_cast<index_t>(r));
    }
  }
  std::sort(keys.begin(), keys.end());
  const auto n = static_cast<index_t>(keys.size());
  const index_t tile = kern::gpu::detail::gradient_tile;
  const auto value = [&](index_t k, index_t j) {
    return static_cast<float>(dout.at(keys[static_cast<std::size_t>(k)].second, j));
  };
  for (index_t first = 0; first < n;) {
    const std::int32_t id = keys[static_cast<std::size_t>(first)].first;
    index_t end = first;
    while (end < n && keys[static_cast<std::size_t>(end)].first == id) {
      ++end;
    }
    for (index_t j = 0; j < grad.cols; ++j) {
      float sum = grad.at(id, j);
      if (first / tile == (end - 1) / tile) {
        for (index_t k = first; k < end; ++k) {
          sum += value(k, j);
        }
      } else {
        for (index_t k = first; k < end;) {
          const index_t piece_end = std::min(end, (k / tile + 1) * tile);
          float piece = value(k, j);
          for (++k; k < piece_end; ++k) {
            piece += value(k, j);
          }
          sum += piece;
        }
      }
      grad.at(id, j) = sum;
    }
    first = end;
  }
}

// The position gradient's order: per position, the batch items' rows in batch order.
template <class T> void fixed_order_position_grad(index_t batch, index_t seq, index_t offset,
                                                  const host_matrix<T>& dout, host_matrix<float>& grad) {
  for (index_t s = 0; s < seq; ++s) {
    for (index_t j = 0; j < grad.cols; ++j) {
      float sum = grad.at(offset + s, j);
      for (index_t b = 0; b < batch; ++b) {
        sum += static_cast<float>(dout.at(b * seq + s, j));
      }
      grad.at(offset + s, j) = sum;
    }
  }
}

// How a case lays its matrices out.
enum class layout : std::uint8_t { cpu_padding, vector_rows, misaligned };
constexpr layout layouts[] = {layout::cpu_padding, layout::vector_rows, layout::misaligned};
const char* layout_name(layout l) {
  return l == layout::cpu_padding ? "cpu padding" : l == layout::vector_rows ? "16-byte rows" : "misaligned";
}
// cpu_pad: the CPU test's padding of this matrix.
index_t ld_of(layout l, index_t dim, index_t cpu_pad) {
  return l == layout::vector_rows ? (dim / 8 + 1) * 8 : dim + cpu_pad;
}
index_t shift_of(layout l) { return l == layout::misaligned ? 1 : 0; }

struct embedding_case {
  index_t batch, seq, dim, vocab, positions; // positions 0: no position table
};
constexpr embedding_case cases[] = {
    {1, 1, 1, 1, 0},      {1, 1, 1, 1, 4},       {2, 3, 17, 11, 9},     {3, 7, 64, 5, 0},     {3, 7, 64, 50, 12},
    {4, 33, 131, 97, 40}, {2, 16, 768, 300, 20}, {1, 200, 400, 7, 210}, {4, 300, 24, 3, 302}, {1, 1100, 9, 1000, 0},
};

template <class T> void check_embedding(const embedding_case& c, index_t offset, layout l) {
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(testing::Message() << type_name<T>() << " " << c.batch << "x" << c.seq << " dim " << c.dim << " vocab "
                                  << c.vocab << " positions " << c.positions << " offset " << offset << " "
                                  << layout_name(l) << " seed " << seed);
  std::mt19937 rng(seed);
  const index_t rows = c.batch * c.seq, shift = shift_of(l);
  const bool has_positions = c.positions > 0;
  const std::vector<std::int32_t> tokens = random_tokens(rng, rows, c.vocab);
  const auto d_tokens = to_device(tokens);
  host_matrix<float> wte = make_matrix<float>(c.vocab, c.dim, ld_of(l, c.dim, 3), nan_value);
  host_matrix<float> wpe = make_matrix<float>(c.positions, c.dim, ld_of(l, c.dim, 1), nan_value);
  wte.fill_random(rng);
  wpe.fill_random(rng);
  const device_matrix<float> d_wte(wte, shift), d_wpe(wpe, shift);

  // Forward.
  const std::vector<double> out_ref = embedding_forward_reference(tokens, wte, wpe, c.seq, offset);
  const device_matrix<T> out(make_matrix<T>(rows, c.dim, ld_of(l, c.dim, 2), sentinel), shift);
  kern::ops::embedding_forward_params<T> fwd;
  fwd.tokens = d_tokens.data();
  fwd.batch = c.batch;
  fwd.seq = c.seq;
  fwd.token_table = d_wte.cview();
  if (has_positions) {
    fwd.position_table = d_wpe.cview();
  }
  fwd.position_offset = offset;
  fwd.out = out.view();
  const counter invalid;
  kern::gpu::embedding_forward(fwd, invalid.get(), nullptr);
  const host_matrix<T> out_host = out.read();
  EXPECT_LT(relative_error(out_host.values(), out_ref), output_tolerance<T>());
  EXPECT_TRUE(out_host.padding_is(sentinel)) << "wrote into out's padding";

  // Backward, accumulating onto random gradients.
  host_matrix<T> dout = make_matrix<T>(rows, c.dim, ld_of(l, c.dim, 5), nan_value);
  dout.fill_random(rng);
  host_matrix<float> dwte = make_matrix<float>(c.vocab, c.dim, ld_of(l, c.dim, 1), sentinel);
  host_matrix<float> dwpe = make_matrix<float>(c.positions, c.dim, ld_of(l, c.dim, 0), sentinel);
  dwte.fill_random(rng);
  dwpe.fill_random(rng);
  const embedding_backward_reference<T> ref(tokens, dout, dwte, dwpe, c.seq, offset);
  const device_matrix<T> d_dout(dout, shift);
  const device_matrix<float> d_dwte(dwte, shift), d_dwpe(dwpe, shift);
  kern::ops::embedding_backward_params<T> bwd;
  bwd.tokens = d_tokens.data();
  bwd.batch = c.batch;
  bwd.seq = c.seq;
  bwd.dout = d_dout.cview();
  bwd.token_grad = d_dwte.view();
  if (has_positions) {
    bwd.position_grad = d_dwpe.view();
  }
  bwd.position_offset = offset;
  const workspace scratch(kern::gpu::embedding_backward_workspace_bytes(bwd));
  kern::gpu::embedding_backward(bwd, scratch.get(), invalid.get(), nullptr);
  EXPECT_EQ(invalid.read(), 0U);
  const host_matrix<float> dwte_out = d_dwte.read(), dwpe_out = d_dwpe.read();
  EXPECT_LT(relative_error(dwte_out.values(), ref.dwte), 1e-6);
  EXPECT_LT(relative_error(dwpe_out.values(), ref.dwpe), 1e-6);
  EXPECT_TRUE(dwte_out.padding_is(sentinel) && dwpe_out.padding_is(sentinel)) << "wrote into a gradient's padding";

  fixed_order_token_grad(tokens, dout, dwte);
  EXPECT_TRUE(same_bits(dwte_out.values(), dwte.values())) << "token_grad is not the documented fixed-order sum";
  if (has_positions) {
    fixed_order_position_grad(c.batch, c.seq, offset, dout, dwpe);
  }
  EXPECT_TRUE(same_bits(dwpe_out.values(), dwpe.values())) << "position_grad is not the documented fixed-order sum";
}

// Every case in the vector layout, at offsets 0 and 2 where there is a position table; the small
// cases in the other layouts at offset 0 (in the CPU execution mode every GPU thread is a fiber,
// and the scalar path runs one per value). The sorts of more than one chunk (which do not depend on
// the storage type) in f32.
template <class T> void check_embedding_cases() {
  for (const embedding_case& c : cases) {
    const index_t rows = c.batch * c.seq;
    if (rows > kern::gpu::detail::sort_chunk && !std::is_same_v<T, float>) {
      continue;
    }
    for (index_t offset : {0, 2}) {
      if (offset != 0 && (c.positions == 0 || offset + c.seq > c.positions)) {
        continue;
      }
      for (layout l : layouts) {
        if (l != layout::vector_rows && (offset != 0 || rows * c.dim > 20000)) {
          continue;
        }
        check_embedding<T>(c, offset, l);
      }
    }
  }
}

TEST(GpuEmbedding, MatchesReferenceF32) {
  KERN_REQUIRE_GPU();
  check_embedding_cases<float>();
}
TEST(GpuEmbedding, MatchesReferenceBf16) {
  KERN_REQUIRE_GPU();
  check_embedding_cases<bf16>();
}
TEST(GpuEmbedding, MatchesReferenceF16) {
  KERN_REQUIRE_GPU();
  check_embedding_cases<f16>();
}

// Ids outside [0, vocab): NaN output rows, no token gradient from those rows (their position
// gradient still), each such row counted once per call, and no write outside the tables (the
// token gradient sits between guard rows that must keep the sentinel).
TEST(GpuEmbedding, InvalidTokenIds) {
  KERN_REQUIRE_GPU();
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  const index_t batch = 4, seq = 300, dim = 12, vocab = 5, guard = 2, rows = batch * seq;
  std::vector<std::int32_t> tokens = random_tokens(rng, rows, vocab);
  const std::vector<std::int32_t> bad = {-1, static_cast<std::int32_t>(vocab), std::numeric_limits<std::int32_t>::min(),
                                         std::numeric_limits<std::int32_t>::max()};
  std::uniform_int_distribution<index_t> pick_row(0, rows - 1);
  std::vector<bool> is_bad(static_cast<std::size_t>(rows), false);
  for (int k = 0; k < 100; ++k) {
    const auto r = k < 2 ? static_cast<std::size_t>(k * (rows - 1)) : static_cast<std::size_t>(pick_row(rng));
    tokens[r] = bad[static_cast<std::size_t>(k) % bad.size()];
    is_bad[r] = true;
  }
  const auto bad_rows = static_cast<std::uint32_t>(std::count(is_bad.begin(), is_bad.end(), true));
  const auto d_tokens = to_device(tokens);

  host_matrix<float> wte = make_matrix<float>(vocab, dim, dim, nan_value);
  wte.fill_random(rng);
  const device_matrix<float> d_wte(wte, 0);
  const device_matrix<float> out(make_matrix<float>(rows, dim, dim, sentinel), 0);
  kern::ops::embedding_forward_params<float> fwd;
  fwd.tokens = d_tokens.data();
  fwd.batch = batch;
  fwd.seq = seq;
  fwd.token_table = d_wte.cview();
  fwd.out = out.view();
  const counter forward_invalid;
  kern::gpu::embedding_forward(fwd, forward_invalid.get(), nullptr);
  EXPECT_EQ(forward_invalid.read(), bad_rows);
  const host_matrix<float> out_host = out.read();
  for (index_t r = 0; r < rows; ++r) {
    for (index_t j = 0; j < dim; ++j) {
      const float expected =
          is_bad[static_cast<std::size_t>(r)] ? nan_value : wte.at(tokens[static_cast<std::size_t>(r)], j);
      ASSERT_EQ(bits_of(out_host.at(r, j)), bits_of(expected)) << "row " << r << " column " << j;
    }
  }

  host_matrix<float> dout = make_matrix<float>(rows, dim, dim, nan_value);
  dout.fill_random(rng);
  // The token gradient is rows [guard, guard + vocab) of a buffer with guard rows on both sides.
  host_matrix<float> guarded = make_matrix<float>(vocab + 2 * guard, dim, dim, sentinel);
  guarded.fill_random(rng);
  for (index_t j = 0; j < dim; ++j) {
    for (index_t g = 0; g < guard; ++g) {
      guarded.at(g, j) = sentinel;
      guarded.at(vocab + guard + g, j) = sentinel;
    }
  }
  host_matrix<float> dwpe = make_matrix<float>(seq, dim, dim, sentinel);
  dwpe.fill_random(rng);
  const device_matrix<float> d_dout(dout, 0), d_guarded(guarded, 0), d_dwpe(dwpe, 0);
  kern::ops::embedding_backward_params<float> bwd;
  bwd.tokens = d_tokens.data();
  bwd.batch = batch;
  bwd.seq = seq;
  bwd.dout = d_dout.cview();
  bwd.token_grad = d_guarded.view().block(guard, 0, vocab, dim);
  bwd.position_grad = d_dwpe.view();
  const counter backward_invalid;
  const workspace scratch(kern::gpu::embedding_backward_workspace_bytes(bwd));
  kern::gpu::embedding_backward(bwd, scratch.get(), backward_invalid.get(), nullptr);
  EXPECT_EQ(backward_invalid.read(), bad_rows);

  host_matrix<float> expected = make_matrix<float>(vocab, dim, dim, sentinel);
  for (index_t v = 0; v < vocab; ++v) {
    for (index_t j = 0; j < dim; ++j) {
      expected.at(v, j) = guarded.at(guard + v, j);
    }
  }
  fixed_order_token_grad(tokens, dout, expected); // skips the invalid ids
  const host_matrix<float> guarded_out = d_guarded.read();
  for (index_t v = 0; v < vocab + 2 * guard; ++v) {
    const bool in_table = v >= guard && v < guard + vocab;
    for (index_t j = 0; j < dim; ++j) {
      ASSERT_EQ(bits_of(guarded_out.at(v, j)), bits_of(in_table ? expected.at(v - guard, j) : sentinel))
          << "gradient row " << v - guard << " column " << j;
    }
  }
  fixed_order_position_grad(batch, seq, 0, dout, dwpe); // every row
  EXPECT_TRUE(same_bits(d_dwpe.read().values(), dwpe.values()));
}

// Many rows share few ids: the same bits on every run.
TEST(GpuEmbedding, BackwardDeterministic) {
  KERN_REQUIRE_GPU();
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  const index_t batch = 4, seq = 300, dim = 16, vocab = 3, rows = batch * seq;
  const auto d_tokens = to_device(random_tokens(rng, rows, vocab));
  host_matrix<bf16> dout = make_matrix<bf16>(rows, dim, dim, 0.0f);
  dout.fill_random(rng);
  const device_matrix<bf16> d_dout(dout, 0);
  std::vector<std::vector<float>> results;
  for (int run = 0; run < 2; ++run) {
    const auto grads = to_device(std::vector<float>(static_cast<std::size_t>((vocab + seq) * dim), 0.25f));
    kern::ops::embedding_backward_params<bf16> bwd;
    bwd.tokens = d_tokens.data();
    bwd.batch = batch;
    bwd.seq = seq;
    bwd.dout = d_dout.cview();
    bwd.token_grad = {grads.data(), vocab, dim};
    bwd.position_grad = {grads.data() + vocab * dim, seq, dim};
    const workspace scratch(kern::gpu::embedding_backward_workspace_bytes(bwd));
    kern::gpu::embedding_backward(bwd, scratch.get(), nullptr, nullptr);
    results.push_back(to_host(grads));
  }
  EXPECT_TRUE(same_bits(results[0], results[1]));
}

// For L = sum(w * embedding_forward(tokens)), embedding_backward(dout = w) is dL/d(tables).
TEST(GpuEmbedding, BackwardMatchesFiniteDifferences) {
  KERN_REQUIRE_GPU();
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  const embedding_fd_problem fd(rng);
  const auto d_tokens = to_device(fd.tokens);
  const device_matrix<float> d_w(fd.w, 0);
  const auto grads = to_device(std::vector<float>(fd.numeric.size(), 0.0f));
  kern::ops::embedding_backward_params<float> bwd;
  bwd.tokens = d_tokens.data();
  bwd.batch = fd.batch;
  bwd.seq = fd.seq;
  bwd.dout = d_w.cview();
  bwd.token_grad = {grads.data(), fd.vocab, fd.dim};
  bwd.position_grad = {grads.data() + fd.vocab * fd.dim, fd.positions, fd.dim};
  bwd.position_offset = fd.offset;
  const workspace scratch(kern::gpu::embedding_backward_workspace_bytes(bwd));
  kern::gpu::embedding_backward(bwd, scratch.get(), nullptr, nullptr);
  EXPECT_LT(relative_error(to_host(grads), fd.numeric), 1e-6);
}

TEST(GpuEmbedding, NanPropagates) {
  KERN_REQUIRE_GPU();
  const index_t dim = 20, vocab = 4;
  const std::vector<std::int32_t> tokens = {0, 2, 1, 2, 3};
  const auto rows = static_cast<index_t>(tokens.size());
  const auto d_tokens = to_device(tokens);
  std::vector<float> wte(static_cast<std::size_t>(vocab * dim), 1.0f);
  wte[2 * dim + 7] = nan_value; // token 2, column 7
  const auto d_wte = to_device(wte);
  kern::gpu::device_buffer<float> out(static_cast<std::size_t>(rows * dim));
  kern::ops::embedding_forward_params<float> fwd;
  fwd.tokens = d_tokens.data();
  fwd.batch = 1;
  fwd.seq = rows;
  fwd.token_table = {d_wte.data(), vocab, dim};
  fwd.out = {out.data(), rows, dim};
  kern::gpu::embedding_forward(fwd, nullptr, nullptr);
  const std::vector<float> out_host = to_host(out);
  for (index_t r = 0; r < rows; ++r) {
    for (index_t j = 0; j < dim; ++j) {
      EXPECT_EQ(std::isnan(out_host[static_cast<std::size_t>(r * dim + j)]),
                tokens[static_cast<std::size_t>(r)] == 2 && j == 7);
    }
  }
  // The backward pass: a NaN in row 2 of dout (token 1) reaches token 1's gradient only.
  std::vector<float> dout(out_host.size(), 1.0f);
  dout[2 * dim + 3] = nan_value;
  const auto d_dout = to_device(dout);
  const auto grad = to_device(std::vector<float>(wte.size(), 0.0f));
  kern::ops::embedding_backward_params<float> bwd;
  bwd.tokens = d_tokens.data();
  bwd.batch = 1;
  bwd.seq = rows;
  bwd.dout = {d_dout.data(), rows, dim};
  bwd.token_grad = {grad.data(), vocab, dim};
  const workspace scratch(kern::gpu::embedding_backward_workspace_bytes(bwd));
  kern::gpu::embedding_backward(bwd, scratch.get(), nullptr, nullptr);
  const std::vector<float> grad_host = to_host(grad);
  for (index_t v = 0; v < vocab; ++v) {
    for (index_t j = 0; j < dim; ++j) {
      EXPECT_EQ(std::isnan(grad_host[static_cast<std::size_t>(v * dim + j)]), v == 1 && j == 3);
    }
  }
}

// Validation runs on the host before any launch, so host buffers stand in for device ones. The ids'
// values are not checked there (they live in device memory): InvalidTokenIds covers them.
TEST(GpuEmbedding, RejectsBadArguments) {
  KERN_REQUIRE_GPU();
  const index_t batch = 2, seq = 3, dim = 8, vocab = 10, positions = 4;
  const std::vector<std::int32_t> tokens = {1, 2, 3, 4, 5, 6};
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
      kern::gpu::embedding_forward(p, nullptr, nullptr);
    };
  };
  using F = kern::ops::embedding_forward_params<float>;
  expect_error(forward([](F& p) { p.position_offset = 2; }), "position_offset + seq = 2 + 3 exceeds the 4 rows");
  expect_error(forward([](F& p) { p.position_offset = -1; }), "position_offset = -1");
  expect_error(forward([](F& p) { p.out.cols = 7; }), "out is 6 x 7");
  expect_error(forward([](F& p) { p.position_table.cols = 7; }), "position_table has 7 columns");
  expect_error(forward([](F& p) { p.tokens = nullptr; }), "tokens is null");
  expect_error(forward([](F& p) { p.batch = -2; }), "batch = -2");
  expect_error(forward([&](F& p) { p.out = {wte.data(), batch * seq, dim}; }), "out overlaps token_table");
  EXPECT_NO_THROW(forward([](F& p) {
    p.batch = 0;
    p.tokens = nullptr;
    p.out = {nullptr, 0, 8};
  })());

  std::vector<float> grads(static_cast<std::size_t>((vocab + positions) * dim));
  std::vector<float> scratch(1024);
  const auto backward = [&](void* workspace, auto edit) {
    return [&, workspace, edit] {
      kern::ops::embedding_backward_params<float> p;
      p.tokens = tokens.data();
      p.batch = batch;
      p.seq = seq;
      p.dout = {out.data(), batch * seq, dim};
      p.token_grad = {grads.data(), vocab, dim};
      p.position_grad = {grads.data() + vocab * dim, positions, dim};
      edit(p);
      kern::gpu::embedding_backward(p, workspace, nullptr, nullptr);
    };
  };
  using B = kern::ops::embedding_backward_params<float>;
  void* const apart = scratch.data();
  expect_error(backward(apart,
                        [&](B& p) {
                          p.position_grad = {grads.data() + dim, positions, dim};
                        }),
               "position_grad overlaps token_grad");
  expect_error(backward(apart, [](B& p) { p.dout.rows = 5; }), "dout is 5 x 8");
  expect_error(backward(apart, [&](B& p) { p.dout = {grads.data(), batch * seq, dim}; }), "token_grad overlaps dout");
  expect_error(backward(nullptr, [](B&) {}), "workspace is null");
  expect_error(backward(out.data(), [](B&) {}), "workspace overlaps dout");
  expect_error(backward(reinterpret_cast<unsigned char*>(scratch.data()) + 4, [](B&) {}), "is not 16-byte aligned");
  EXPECT_NO_THROW(backward(nullptr, [](B& p) {
    p.batch = 0;
    p.tokens = nullptr;
    p.dout = {nullptr, 0, 8};
  })());
}

} // namespace
