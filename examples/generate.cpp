// Generates text with a checkpoint: prints the prompt and its continuation to stdout as the tokens
// come (nothing else there); progress and timing go to stderr.
//
//   generate --checkpoint stories260K.bin --tokenizer tok512.bin --prompt "Once upon a time"
//   generate --checkpoint runs/x/step_000300/model.safetensors --prompt "ROMEO:" --temperature 0.8
#include <chrono>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "transformer/checkpoint.hpp"
#include "transformer/cli.hpp"
#include "transformer/sampler.hpp"
#include "transformer/tokenizer.hpp"

namespace {

using namespace kern::examples;
using kern::index_t;

int run(int argc, char** argv) {
  command_line cli("generate",
                   "Generates a continuation of a prompt with a checkpoint (safetensors or llama2.c .bin).");
  cli.option("checkpoint", "", "model checkpoint (required)");
  cli.option("tokenizer", "",
             "llama2.c tokenizer.bin (default: bytes for a 256-token vocabulary, else beside the checkpoint)");
  cli.option("prompt", "", "text to continue (required)");
  cli.option("max-new-tokens", "256", "tokens to generate at most");
  cli.option("temperature", "1.0", "0: greedy");
  cli.option("top-k", "0", "sample among the k most likely tokens (0: all)");
  cli.option("top-p", "1.0", "nucleus: the smallest set with this probability, in (0, 1]");
  cli.option("min-p", "0.0", "drop tokens below min-p times the best probability");
  cli.option("repetition-penalty", "1.0", "at least 1; 1: none");
  cli.option("seed", "42", "sampling seed");
  cli.option("stop", "", "stop when the text ends with this string");
  cli.option("threads", "0", "CPU threads (0: all)");
  if (!cli.parse(argc, argv)) {
    return 0;
  }
  kern::require(cli.given("checkpoint"), "generate", "--checkpoint PATH is required (see --help)");
  kern::require(cli.given("prompt"), "generate", "--prompt TEXT is required (see --help)");
  const std::string prompt = cli.text("prompt");
  kern::require(!prompt.empty(), "generate", "--prompt is empty: give some text to continue");
  sampling_options s;
  s.temperature = static_cast<float>(cli.real("temperature"));
  s.top_k = cli.integer("top-k");
  s.top_p = static_cast<float>(cli.real("top-p"));
  s.min_p = static_cast<float>(cli.real("min-p"));
  s.repetition_penalty = static_cast<float>(cli.real("repetition-penalty"));
  s.seed = static_cast<std::uint64_t>(cli.integer("seed"));
  sampler pick(s);
  const index_t max_new = cli.integer("max-new-tokens");
  kern::require(max_new >= 0, "generate", "--max-new-tokens = ", max_new, " must not be negative");
  const kern::cpu::context ctx =
      cli.integer("threads") > 0 ? kern::cpu::context(static_cast<int>(cli.integer("threads"))) : kern::cpu::context();

  const std::filesystem::path checkpoint = cli.text("checkpoint");
  transformer<> model = load_model(checkpoint);
  const model_config& c = model.config();
  const text_codec codec = codec_for(checkpoint, cli.text("tokenizer"), c.vocab);
  std::vector<std::int32_t> ids = codec.encode_prompt(prompt);
  for (std::int32_t id : ids) {
    kern::require(id >= 0 && id < c.vocab, "generate", "the tokenizer made id ", id, ", outside the model's ", c.vocab,
                  "-token vocabulary: tokenizer and checkpoint do not match");
  }
  const auto prompt_tokens = static_cast<index_t>(ids.size());
  kern::require(prompt_tokens <= c.context, "generate", "the prompt is ", prompt_tokens,
                " tokens, longer than the model's context of ", c.context);

  std::fputs(prompt.c_str(), stdout);
  std::fflush(stdout);
  model.start_generation(1, prompt_tokens);
  const auto start = std::chrono::steady_clock::now();
  const float* logits = model.generate_step(ctx, ids.data(), prompt_tokens);
  const auto prefilled = std::chrono::steady_clock::now();
  std::string text = prompt;
  const std::string stop = cli.text("stop");
  index_t generated = 0;
  while (generated < max_new) {
    const std::int32_t next = pick.next(logits, c.vocab, ids);
    if (next == codec.end) {
      break;
    }
    const std::string piece = codec.piece(ids.back(), next);
    ids.push_back(next);
    ++generated;
    std::fputs(piece.c_str(), stdout);
    std::fflush(stdout);
    text += piece;
    if (!stop.empty() && text.size() >= stop.size() &&
        text.compare(text.size() - stop.size(), stop.size(), stop) == 0) {
      break;
    }
    if (model.cached() >= c.context) {
      std::fprintf(stderr, "\n(stopped: the context of %lld positions is full)", static_cast<long long>(c.context));
      break;
    }
    logits = model.generate_step(ctx, &next, 1);
  }
  std::fputs("\n", stdout);
  const auto end = std::chrono::steady_clock::now();
  const double prompt_s = std::chrono::duration<double>(prefilled - start).count();
  const double decode_s = std::chrono::duration<double>(end - prefilled).count();
  std::fprintf(stderr, "prompt: %lld tokens, %.1f tokens/s | generated: %lld tokens, %.1f tokens/s\n",
               static_cast<long long>(prompt_tokens), static_cast<double>(prompt_tokens) / prompt_s,
               static_cast<long long>(generated), generated > 0 ? static_cast<double>(generated) / decode_s : 0.0);
  return 0;
}

} // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
