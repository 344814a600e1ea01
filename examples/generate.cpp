// Generates text with a checkpoint: prints the prompt and its continuation to stdout as the tokens
// come (nothing else there); progress and timing go to stderr.
//
//   generate --checkpoint stories260K.bin --tokenizer tok512.bin --prompt "Once upon a time"
//   generate --checkpoint runs/x/step_000300/model.safetensors --prompt "ROMEO:" --temperature 0.8
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "transformer/checkpoint.hpp"
#include "transformer/cli.hpp"
#include "transformer/generation.hpp"
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
  cli.option("prompt", "", "text to continue");
  cli.option("prompts-file", "", "several prompts, one per line, generated together as a batch");
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
  kern::require(cli.given("prompt") != cli.given("prompts-file"), "generate",
                "give either --prompt TEXT or --prompts-file FILE (see --help)");
  std::vector<std::string> prompts;
  if (cli.given("prompt")) {
    prompts.push_back(cli.text("prompt"));
  } else { // one prompt per line, generated together as one batch
    const std::string all = read_text_file(cli.text("prompts-file"));
    for (std::size_t begin = 0; begin < all.size();) {
      const std::size_t end = std::min(all.find('\n', begin), all.size());
      if (end > begin) {
        prompts.push_back(all.substr(begin, end - begin));
      }
      begin = end + 1;
    }
  }
  for (const std::string& prompt : prompts) {
    kern::require(!prompt.empty(), "generate", "a prompt is empty: give some text to continue");
  }
  sampling_options s;
  s.temperature = static_cast<float>(cli.real("temperature"));
  s.top_k = cli.integer("top-k");
  s.top_p = static_cast<float>(cli.real("top-p"));
  s.min_p = static_cast<float>(cli.real("min-p"));
  s.repetition_penalty = static_cast<float>(cli.real("repetition-penalty"));
  s.seed = static_cast<std::uint64_t>(cli.integer("seed"));
  sampler pick(s);
  generation_limits limits;
  limits.max_new_tokens = cli.integer("max-new-tokens");
  kern::require(limits.max_new_tokens >= 0, "generate", "--max-new-tokens = ", limits.max_new_tokens,
                " must not be negative");
  const kern::cpu::context ctx =
      cli.integer("threads") > 0 ? kern::cpu::context(static_cast<int>(cli.integer("threads"))) : kern::cpu::context();

  const std::filesystem::path checkpoint = cli.text("checkpoint");
  transformer<> model = load_model(checkpoint);
  const model_config& c = model.config();
  const text_codec codec = codec_for(checkpoint, cli.text("tokenizer"), c.vocab);
  limits.stop_token = codec.end;
  std::vector<std::vector<std::int32_t>> sequences;
  index_t prompt_tokens = 0;
  for (const std::string& prompt : prompts) {
    sequences.push_back(codec.encode_prompt(prompt));
    for (std::int32_t id : sequences.back()) {
      kern::require(id >= 0 && id < c.vocab, "generate", "the tokenizer made id ", id, ", outside the model's ",
                    c.vocab, "-token vocabulary: tokenizer and checkpoint do not match");
    }
    prompt_tokens += static_cast<index_t>(sequences.back().size());
    kern::require(static_cast<index_t>(sequences.back().size()) <= c.context, "generate", "a prompt is ",
                  sequences.back().size(), " tokens, longer than the model's context of ", c.context);
  }

  // One prompt streams its continuation as it comes; several are printed when all are done.
  const bool stream = prompts.size() == 1;
  const std::string stop = cli.text("stop");
  std::vector<std::string> texts = prompts;
  std::vector<std::int32_t> previous;
  previous.reserve(sequences.size());
  for (const auto& ids : sequences) {
    previous.push_back(ids.back());
  }
  if (stream) {
    std::fputs(prompts[0].c_str(), stdout);
    std::fflush(stdout);
  }
  index_t generated = 0;
  const auto start = std::chrono::steady_clock::now();
  generate(ctx, model, sequences, pick, limits, [&](index_t b, std::int32_t token) {
    const auto at = static_cast<std::size_t>(b);
    const std::string piece = codec.piece(previous[at], token);
    previous[at] = token;
    texts[at] += piece;
    ++generated;
    if (stream) {
      std::fputs(piece.c_str(), stdout);
      std::fflush(stdout);
    }
    return stop.empty() || texts[at].size() < stop.size() ||
           texts[at].compare(texts[at].size() - stop.size(), stop.size(), stop) != 0;
  });
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  for (std::size_t i = 0; i < texts.size(); ++i) {
    if (stream) {
      std::fputs("\n", stdout);
    } else {
      std::printf("%s%s\n", i > 0 ? "\n" : "", texts[i].c_str());
    }
  }
  std::fprintf(stderr, "%zu prompt(s), %lld prompt tokens | generated %lld tokens in %.2f s, %.1f tokens/s\n",
               prompts.size(), static_cast<long long>(prompt_tokens), static_cast<long long>(generated), seconds,
               static_cast<double>(generated) / seconds);
  return 0;
}

} // namespace

int main(int argc, char** argv) { return kern::examples::run_program(argc, argv, run); }
