// Generation speed of the example transformer (fp32, batch 1): decode tokens/s (one token per step
// against the KV cache) and prompt-processing tokens/s (a prompt in one call), for llama2.c's
// stories260K shape and its 15M-parameter shape (random weights: speed does not depend on them).
#include <random>
#include <string>
#include <vector>

#include "bench_common.hpp"
#include "transformer/model.hpp"

namespace {

using kern::index_t;
using namespace kern::bench;
using kern::examples::model_config;

// Weights read per decoded token: every matrix once (the output layer is the tied embedding).
double weight_bytes(const model_config& c) {
  const double d = static_cast<double>(c.d_model);
  const double per_layer = d * static_cast<double>(c.qkv_dim()) + static_cast<double>(c.q_dim()) * d +
                           d * static_cast<double>(c.mlp_in_dim()) + static_cast<double>(c.d_ff) * d;
  return 4.0 * (static_cast<double>(c.n_layers) * per_layer + static_cast<double>(c.vocab_padded) * d);
}

// Decodes tokens at positions [start, start + steps) after a prompt that fills the cache to `start`.
void decode(benchmark::State& state, const model_config& c, index_t start, index_t steps) {
  kern::examples::transformer<> model(c);
  model.init_random(1);
  const kern::cpu::context ctx(threads_of(state));
  std::vector<std::int32_t> prompt(static_cast<std::size_t>(start), 5);
  for (auto _ : state) {
    state.PauseTiming();
    model.start_generation(1, start);
    model.generate_step(ctx, prompt.data(), start);
    state.ResumeTiming();
    std::int32_t token = 7;
    for (index_t i = 0; i < steps; ++i) {
      benchmark::DoNotOptimize(model.generate_step(ctx, &token, 1));
    }
  }
  state.counters["tokens_per_s"] =
      benchmark::Counter(static_cast<double>(steps), benchmark::Counter::kIsIterationInvariantRate);
  report_bytes(state, weight_bytes(c) * static_cast<double>(steps));
}

void prompt(benchmark::State& state, const model_config& c, index_t length) {
  kern::examples::transformer<> model(c);
  model.init_random(1);
  const kern::cpu::context ctx(threads_of(state));
  std::vector<std::int32_t> tokens(static_cast<std::size_t>(length), 5);
  model.start_generation(1, length);
  for (auto _ : state) {
    model.start_generation(1, length);
    benchmark::DoNotOptimize(model.generate_step(ctx, tokens.data(), length));
  }
  state.counters["tokens_per_s"] =
      benchmark::Counter(static_cast<double>(length), benchmark::Counter::kIsIterationInvariantRate);
}

const bool registered = [] {
  const model_config stories260k = kern::examples::llama_config(5, 8, 4, 64, 172, 512, 512);
  const model_config stories15m = kern::examples::llama_config(6, 6, 6, 288, 768, 32000, 256);
  for (const auto& [name, c] :
       {std::pair{std::string("stories260K"), stories260k}, std::pair{std::string("stories15M"), stories15m}}) {
    const model_config config = c;
    add("generate_decode", "kern", "f32", name + "_256_tokens",
        [config](benchmark::State& s) { decode(s, config, 1, 255); });
    add("generate_prompt", "kern", "f32", name + "_prompt_128",
        [config](benchmark::State& s) { prompt(s, config, 128); });
  }
  return true;
}();

} // namespace
