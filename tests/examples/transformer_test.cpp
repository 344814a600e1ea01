// The example transformer against a float64 reference (tests/examples/reference_transformer.hpp):
// forward logits and loss, the analytic gradient of every parameter tensor against float64 finite
// differences, and training that overfits one batch and repeats itself bit for bit.
#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "reference_transformer.hpp"
#include "support/kernel_test.hpp"
#include "transformer/model.hpp"
#include "transformer/trainer.hpp"

namespace {

using kern::index_t;
using kern::examples::model_config;
using kern::examples::transformer;

struct named_config {
  std::string name;
  model_config config;
};

// Tiny members of both families, and mixes of the switches.
std::vector<named_config> tiny_configs() {
  std::vector<named_config> out;
  out.push_back({"gpt2", kern::examples::gpt2_config(2, 4, 32, 37, 16)});
  out.push_back({"llama_gqa", kern::examples::llama_config(2, 4, 2, 32, 48, 37, 16)});
  model_config untied = kern::examples::llama_config(1, 4, 1, 32, 40, 29, 16, false);
  untied.rope_pairing = kern::ops::rope_pairing::half;
  out.push_back({"llama_mqa_untied_half_rope", untied});
  model_config mixed = kern::examples::gpt2_config(1, 2, 16, 23, 16);
  mixed.position = kern::examples::positions::rope;
  mixed.mlp = kern::examples::mlp_kind::swiglu;
  mixed.biases = false;
  out.push_back({"layernorm_rope_swiglu_nobias", mixed});
  return out;
}

// Random weights, larger than the training initialization, so that every path carries signal.
void randomize(transformer<>& model, std::uint32_t seed) {
  model.init_random(seed);
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> noise(-0.3f, 0.3f);
  const model_config& c = model.config();
  for (const kern::examples::tensor_slot& t : model.layout().tensors()) {
    for (index_t i = 0; i < t.size(); ++i) {
      const bool padding_row = t.name == "tok_embeddings.weight" && i / c.d_model >= c.vocab;
      if (!padding_row) {
        model.parameters()[static_cast<std::size_t>(t.offset + i)] += noise(rng);
      }
    }
  }
}

std::vector<double> as_double(std::span<const float> x) { return {x.begin(), x.end()}; }

struct token_data {
  std::vector<std::int32_t> tokens, targets;
};
token_data random_tokens(std::mt19937& rng, index_t n, index_t vocab) {
  std::uniform_int_distribution<std::int32_t> id(0, static_cast<std::int32_t>(vocab - 1));
  token_data d;
  for (index_t i = 0; i < n; ++i) {
    d.tokens.push_back(id(rng));
    d.targets.push_back(id(rng));
  }
  return d;
}

TEST(Transformer, ForwardMatchesFloat64Reference) {
  for (const named_config& nc : tiny_configs()) {
    const std::uint32_t seed = kern::test::fresh_seed();
    SCOPED_TRACE(nc.name + " seed " + std::to_string(seed));
    std::mt19937 rng(seed);
    transformer<> model(nc.config);
    randomize(model, seed);
    const index_t batch = 2, seq = 9;
    const token_data data = random_tokens(rng, batch * seq, nc.config.vocab);
    model.plan(batch, seq);
    const kern::cpu::context ctx(2);
    model.forward(ctx, data.tokens.data());
    const kern::test::reference_transformer ref(nc.config, as_double(model.parameters()));
    const std::vector<double> expected = ref.logits(data.tokens, batch, seq);
    std::vector<float> got(model.logits().begin(), model.logits().end());
    // Only the real vocabulary: the padding columns are the zero rows' logits.
    EXPECT_LT(kern::test::relative_error(got, expected), 2e-6);
    const float loss = model.forward(ctx, data.tokens.data(), data.targets.data());
    EXPECT_NEAR(loss, ref.loss(data.tokens, data.targets, batch, seq), 2e-5 * std::abs(loss));
  }
}

TEST(Transformer, GradientOfEveryTensorMatchesFloat64FiniteDifferences) {
  for (const named_config& nc : tiny_configs()) {
    const std::uint32_t seed = kern::test::fresh_seed();
    SCOPED_TRACE(nc.name + " seed " + std::to_string(seed));
    std::mt19937 rng(seed);
    transformer<> model(nc.config);
    randomize(model, seed);
    const index_t batch = 2, seq = 7;
    const token_data data = random_tokens(rng, batch * seq, nc.config.vocab);
    model.plan(batch, seq);
    const kern::cpu::context ctx(1);
    model.zero_grad();
    model.forward(ctx, data.tokens.data(), data.targets.data());
    model.backward(ctx);
    kern::test::reference_transformer ref(nc.config, as_double(model.parameters()));
    double largest = 0.0;
    for (float g : model.gradients()) {
      largest = std::max(largest, static_cast<double>(std::abs(g)));
    }
    for (const kern::examples::tensor_slot& t : model.layout().tensors()) {
      SCOPED_TRACE(t.name);
      std::uniform_int_distribution<index_t> pick(0, t.size() - 1);
      for (int sample = 0; sample < 4; ++sample) {
        index_t i = pick(rng);
        if (t.name == "tok_embeddings.weight") {
          i = std::min(i, nc.config.vocab * nc.config.d_model - 1); // a row that exists
        }
        double& p = ref.parameters()[static_cast<std::size_t>(t.offset + i)];
        const double original = p, h = 1e-6 * std::max(1.0, std::abs(original));
        p = original + h;
        const double up = ref.loss(data.tokens, data.targets, batch, seq);
        p = original - h;
        const double down = ref.loss(data.tokens, data.targets, batch, seq);
        p = original;
        const double numeric = (up - down) / (2.0 * h);
        const double analytic = model.gradients()[static_cast<std::size_t>(t.offset + i)];
        EXPECT_NEAR(analytic, numeric, 1e-4 * largest + 1e-3 * std::abs(numeric)) << "element " << i;
      }
    }
  }
}

TEST(Transformer, OverfitsOneBatch) {
  for (const named_config& nc : tiny_configs()) {
    SCOPED_TRACE(nc.name);
    transformer<> model(nc.config);
    model.init_random(7);
    kern::examples::train_options o;
    o.batch = 2;
    o.seq = 12;
    o.steps = 200;
    o.lr = 1e-2f;
    o.warmup_steps = 5;
    o.weight_decay = 0.0f;
    // One batch, over and over: the data is that batch repeated.
    std::mt19937 rng(3);
    const token_data one = random_tokens(rng, o.seq + 1, nc.config.vocab);
    std::vector<std::int32_t> stream;
    for (int r = 0; r < 40; ++r) {
      stream.insert(stream.end(), one.tokens.begin(), one.tokens.end());
    }
    const kern::examples::token_stream data(stream, 0.0, o.seq, "repeated batch");
    kern::examples::trainer<> train(model, o);
    const kern::cpu::context ctx(1);
    float first = 0.0f, last = 0.0f;
    for (index_t s = 0; s < o.steps; ++s) {
      last = train.train_step(ctx, data).loss;
      first = s == 0 ? last : first;
    }
    EXPECT_GT(first, 2.5f);
    EXPECT_LT(last, 0.05f);
  }
}

TEST(Transformer, TrainingIsDeterministic) {
  const model_config c = kern::examples::llama_config(2, 4, 2, 32, 48, 37, 16);
  std::mt19937 rng(11);
  const token_data d = random_tokens(rng, 400, c.vocab);
  const kern::examples::token_stream data(d.tokens, 0.1, 12, "random tokens");
  std::vector<std::vector<float>> runs;
  for (int run = 0; run < 2; ++run) {
    transformer<> model(c);
    model.init_random(5);
    kern::examples::train_options o;
    o.batch = 3;
    o.seq = 12;
    o.steps = 6;
    o.grad_accumulation = 2;
    kern::examples::trainer<> train(model, o);
    const kern::cpu::context ctx(2);
    for (index_t s = 0; s < o.steps; ++s) {
      train.train_step(ctx, data);
    }
    runs.emplace_back(model.parameters().begin(), model.parameters().end());
  }
  EXPECT_EQ(runs[0], runs[1]);
}

} // namespace
