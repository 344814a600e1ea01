// One full training step of the example transformer (forward, backward, AdamW), with fp32 GEMMs and
// with bf16 GEMM operands, for the GPT-2 124M shape and a smaller one: ms per step (real time), tokens/s, and the
// fraction of the FMA peak that the step's flops (6 x parameters x tokens, plus attention) would take at full speed.
#include <sys/resource.h>

#include <chrono>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "bench_common.hpp"
#include "transformer/model.hpp"
#include "transformer/trainer.hpp"

namespace {

using kern::index_t;
using namespace kern::bench;
using kern::examples::model_config;

// Matmul flops of one step: 6 per parameter (forward 2, backward 4) per token, for every weight a
// token multiplies (embedding lookups excluded, the tied output projection included), plus causal
// attention (forward 4 seq^2 d / 2 per layer and sequence, backward 2.5 times that).
double step_flops(const model_config& c, index_t batch, index_t seq) {
  const double d = static_cast<double>(c.d_model);
  const double per_layer = d * static_cast<double>(c.qkv_dim()) + static_cast<double>(c.q_dim()) * d +
                           d * static_cast<double>(c.mlp_in_dim()) + static_cast<double>(c.d_ff) * d;
  const double matmul_params = static_cast<double>(c.n_layers) * per_layer + static_cast<double>(c.vocab_padded) * d;
  const double tokens = static_cast<double>(batch * seq);
  const double attention =
      3.5 * 2.0 * static_cast<double>(c.n_layers) * static_cast<double>(batch) * static_cast<double>(seq * seq) * d;
  return 6.0 * matmul_params * tokens + attention;
}

void train_step(benchmark::State& state, model_config config, index_t batch, index_t seq,
                kern::examples::precision precision) {
  kern::examples::transformer<> model(config);
  model.init_random(1);
  model.set_precision(precision);
  kern::examples::train_options o;
  o.batch = batch;
  o.seq = seq;
  o.steps = 1000;
  kern::examples::trainer<> trainer(model, o);
  std::mt19937 rng(2);
  std::uniform_int_distribution<std::int32_t> id(0, static_cast<std::int32_t>(config.vocab - 1));
  std::vector<std::int32_t> tokens(static_cast<std::size_t>(batch * seq * 64));
  for (auto& t : tokens) {
    t = id(rng);
  }
  const kern::examples::token_stream data(tokens, 0.0, seq, "random tokens");
  const kern::cpu::context ctx(threads_of(state));
  trainer.train_step(ctx, data); // first touch of every buffer
  const auto start = std::chrono::steady_clock::now();
  for (auto _ : state) {
    trainer.train_step(ctx, data);
  }
  const double total_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  report_flops(state, step_flops(config, batch, seq));
  state.counters["tokens_per_s"] =
      benchmark::Counter(static_cast<double>(batch * seq), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["ms_per_step"] = benchmark::Counter(total_ms, benchmark::Counter::kAvgIterations);
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  state.counters["peak_rss_MiB"] = static_cast<double>(usage.ru_maxrss) / 1024.0;
}

const bool registered = [] {
  using kern::examples::precision;
  for (const auto& [name, p] : {std::pair{"f32", precision::fp32}, std::pair{"bf16", precision::bf16}}) {
    const precision chosen = p;
    add("train_step", "kern", name, "gpt2_124M_b4_t64", [chosen](benchmark::State& s) {
      train_step(s, kern::examples::gpt2_config(), 4, 64, chosen);
    })->Iterations(3);
    add("train_step", "kern", name, "gpt2_6L_d384_b4_t64", [chosen](benchmark::State& s) {
      train_step(s, kern::examples::gpt2_config(6, 6, 384), 4, 64, chosen);
    })->Iterations(5);
  }
  return true;
}();

} // namespace
