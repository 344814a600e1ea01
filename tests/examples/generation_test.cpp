// Generation: the KV-cached steps give the logits of the full forward pass; llama2.c's tokenizer
// round-trips any bytes and encodes as run.c does; greedy generation with the real stories260K model
// reproduces llama2.c's token ids; the sampler's options behave and are validated.
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "support/kernel_test.hpp"
#include "transformer/checkpoint.hpp"
#include "transformer/generation.hpp"
#include "transformer/sampler.hpp"
#include "transformer/tokenizer_llama2c.hpp"

namespace {

using kern::index_t;
using kern::examples::model_config;
using kern::examples::transformer;
namespace fs = std::filesystem;

fs::path stories_dir() { return fs::path(KERN_SHARED_DATA_DIR) / "stories260K"; }

TEST(Generation, CachedStepsGiveTheLogitsOfTheFullForwardPass) {
  model_config half = kern::examples::llama_config(2, 4, 1, 32, 40, 29, 24, false);
  half.rope_pairing = kern::ops::rope_pairing::half;
  for (const model_config& c :
       {kern::examples::gpt2_config(2, 4, 32, 37, 24), kern::examples::llama_config(2, 4, 2, 32, 48, 37, 24), half}) {
    const std::uint32_t seed = kern::test::fresh_seed();
    SCOPED_TRACE("seed " + std::to_string(seed));
    transformer<> model(c);
    model.init_random(seed);
    std::mt19937 rng(seed);
    std::uniform_int_distribution<std::int32_t> id(0, static_cast<std::int32_t>(c.vocab - 1));
    const index_t batch = 2, total = 21, prompt = 9;
    std::vector<std::int32_t> tokens(static_cast<std::size_t>(batch * total));
    for (auto& t : tokens) {
      t = id(rng);
    }
    const kern::cpu::context ctx(2);
    model.plan(batch, total);
    model.forward(ctx, tokens.data());
    const std::vector<float> full(model.logits().begin(), model.logits().end());
    // The same sequences: a prompt of 9 in one call, then 3 and 1 at a time.
    model.start_generation(batch, prompt);
    index_t at = 0;
    for (const index_t step : {prompt, index_t{3}, index_t{1}, index_t{1}, index_t{4}, index_t{1}, index_t{2}}) {
      std::vector<std::int32_t> chunk;
      for (index_t b = 0; b < batch; ++b) {
        for (index_t s = at; s < at + step; ++s) {
          chunk.push_back(tokens[static_cast<std::size_t>(b * total + s)]);
        }
      }
      const float* logits = model.generate_step(ctx, chunk.data(), step);
      at += step;
      for (index_t b = 0; b < batch; ++b) {
        const float* expected = full.data() + (b * total + at - 1) * c.vocab_padded;
        const std::vector<float> got(logits + b * c.vocab_padded, logits + (b + 1) * c.vocab_padded);
        const std::vector<double> ref(expected, expected + c.vocab_padded);
        EXPECT_LT(kern::test::relative_error(got, ref), 1e-5) << "position " << at - 1 << " sequence " << b;
      }
    }
    EXPECT_EQ(model.cached(), total);
    EXPECT_THROW(model.generate_step(ctx, tokens.data(), 4), kern::error); // past the context
  }
}

TEST(Llama2cTokenizer, RoundTripsAnyBytes) {
  if (!fs::exists(stories_dir() / "tok512.bin")) {
    GTEST_SKIP() << stories_dir() << " is absent";
  }
  const kern::examples::llama2c_tokenizer tok(stories_dir() / "tok512.bin", 512);
  std::mt19937 rng(kern::test::fresh_seed());
  std::uniform_int_distribution<int> byte(0, 255), ascii(32, 126), length(1, 60);
  const std::vector<std::string> texts = {"Once upon a time", "Lily wanted to",
                                          "\xc3\xa9t\xc3\xa9 \xe2\x82\xac\xf0\x9f\x98\x80", "a\nb\tc",
                                          std::string("\xff\xfe\x80", 3)};
  for (const std::string& text : texts) {
    const std::vector<std::int32_t> ids = tok.encode(text);
    std::string back;
    for (std::size_t i = 1; i < ids.size(); ++i) {
      back += tok.decode(ids[i - 1], ids[i]);
    }
    EXPECT_EQ(back, text);
  }
  for (int trial = 0; trial < 200; ++trial) {
    std::string text;
    const int n = length(rng);
    for (int i = 0; i < n; ++i) {
      text += static_cast<char>(trial % 2 == 0 ? ascii(rng) : byte(rng));
    }
    const std::vector<std::int32_t> ids = tok.encode(text);
    std::string back;
    for (std::size_t i = 1; i < ids.size(); ++i) {
      back += tok.decode(ids[i - 1], ids[i]);
    }
    EXPECT_EQ(back, text) << "trial " << trial;
  }
  EXPECT_THROW(kern::examples::llama2c_tokenizer(stories_dir() / "tok512.bin", 600), kern::error); // wrong vocabulary
}

struct reference_run {
  std::string prompt;
  std::vector<std::int32_t> prompt_ids, sequence_ids;
};

// A reference of ../shared/data/stories260K/reference: the prompt from the .cmd line (-i, with
// backslash-escaped spaces), the ids from .tokens.txt.
reference_run read_reference(const fs::path& cmd) {
  reference_run r;
  std::ifstream in(cmd);
  std::string line;
  std::getline(in, line);
  const std::size_t flag = line.find(" -i ");
  if (flag != std::string::npos) {
    for (std::size_t i = flag + 4; i < line.size(); ++i) {
      if (line[i] == '\\' && i + 1 < line.size()) {
        r.prompt += line[++i];
      } else {
        r.prompt += line[i];
      }
    }
  }
  fs::path tokens = cmd;
  tokens.replace_extension(".tokens.txt");
  std::ifstream ids(tokens);
  while (std::getline(ids, line)) {
    const std::size_t colon = line.find(':');
    std::istringstream values(line.substr(colon + 1));
    std::vector<std::int32_t>& into = line.rfind("prompt_ids", 0) == 0 ? r.prompt_ids : r.sequence_ids;
    if (line.rfind("prompt_ids", 0) == 0 || line.rfind("sequence_ids", 0) == 0) {
      for (std::int32_t id = 0; values >> id;) {
        into.push_back(id);
      }
    }
  }
  return r;
}

TEST(Stories260K, GreedyGenerationMatchesLlama2c) {
  if (!fs::exists(stories_dir() / "stories260K.bin")) {
    GTEST_SKIP() << stories_dir() << " is absent: the pretrained model is not here";
  }
  transformer<> model = kern::examples::load_model(stories_dir() / "stories260K.bin");
  const kern::examples::llama2c_tokenizer tok(stories_dir() / "tok512.bin", model.config().vocab);
  std::vector<reference_run> refs;
  for (const auto& entry : fs::directory_iterator(stories_dir() / "reference")) {
    if (entry.path().extension() == ".cmd") {
      refs.push_back(read_reference(entry.path()));
      SCOPED_TRACE(entry.path().filename().string() + " prompt \"" + refs.back().prompt + "\"");
      ASSERT_FALSE(refs.back().sequence_ids.empty());
      EXPECT_EQ(tok.encode(refs.back().prompt), refs.back().prompt_ids);
    }
  }
  ASSERT_GE(refs.size(), 3u);
  // run.c: 200 forward passes (201 ids), the prompt's tokens forced, then the arg max; BOS ends a
  // text. Every prompt alone, then all of them as one batch (prompts of different lengths).
  const kern::examples::generation_limits limits{.max_new_tokens = 201,
                                                 .stop_token = kern::examples::llama2c_tokenizer::bos};
  std::vector<std::vector<std::int32_t>> prompts;
  prompts.reserve(refs.size());
  for (const reference_run& r : refs) {
    prompts.push_back(r.prompt_ids);
  }
  const auto until_201 = [&](const std::vector<std::vector<std::int32_t>>& batch) {
    std::vector<index_t> length;
    length.reserve(batch.size());
    for (const auto& p : batch) {
      length.push_back(static_cast<index_t>(p.size()));
    }
    return [length](index_t b, std::int32_t) mutable { return ++length[static_cast<std::size_t>(b)] < 201; };
  };
  for (std::size_t i = 0; i < refs.size(); ++i) {
    kern::examples::sampler greedy({.temperature = 0.0f});
    const std::vector<std::vector<std::int32_t>> one{prompts[i]};
    const auto out = kern::examples::generate(kern::cpu::context(1), model, one, greedy, limits, until_201(one));
    EXPECT_EQ(out[0], refs[i].sequence_ids) << "prompt \"" << refs[i].prompt << "\" alone";
  }
  kern::examples::sampler greedy({.temperature = 0.0f});
  const auto out = kern::examples::generate(kern::cpu::context(2), model, prompts, greedy, limits, until_201(prompts));
  for (std::size_t i = 0; i < refs.size(); ++i) {
    EXPECT_EQ(out[i], refs[i].sequence_ids) << "prompt \"" << refs[i].prompt << "\" in a batch of " << refs.size();
  }
}

TEST(Sampler, OptionsBehaveAndAreValidated) {
  const std::vector<float> logits = {1.0f, 3.0f, 2.0f, -1.0f, 2.9f};
  kern::examples::sampler greedy({.temperature = 0.0f});
  EXPECT_EQ(greedy.next(logits.data(), 5, {}), 1);
  // A repetition penalty turns greedy away from a token already seen.
  const std::vector<std::int32_t> seen = {1};
  kern::examples::sampler penalized({.temperature = 0.0f, .repetition_penalty = 1.5f});
  EXPECT_EQ(penalized.next(logits.data(), 5, seen), 4);
  // top-k = 1 is greedy; top-p small keeps the best; the same seed repeats itself.
  kern::examples::sampler top1({.temperature = 1.0f, .top_k = 1, .seed = 3});
  kern::examples::sampler nucleus({.temperature = 1.0f, .top_p = 0.01f, .seed = 4});
  for (int i = 0; i < 20; ++i) {
    EXPECT_EQ(top1.next(logits.data(), 5, {}), 1);
    EXPECT_EQ(nucleus.next(logits.data(), 5, {}), 1);
  }
  kern::examples::sampler a({.seed = 9}), b({.seed = 9});
  std::vector<int> counts(5, 0);
  for (int i = 0; i < 2000; ++i) {
    const std::int32_t x = a.next(logits.data(), 5, {});
    EXPECT_EQ(x, b.next(logits.data(), 5, {}));
    ++counts[static_cast<std::size_t>(x)];
  }
  EXPECT_GT(counts[1], counts[0]); // more likely tokens come more often
  EXPECT_GT(counts[0], 0);
  // min-p drops tokens below min_p times the best probability.
  kern::examples::sampler minp({.temperature = 1.0f, .min_p = 0.5f, .seed = 5});
  for (int i = 0; i < 200; ++i) {
    const std::int32_t x = minp.next(logits.data(), 5, {});
    EXPECT_TRUE(x == 1 || x == 4) << x; // p(4) / p(1) = e^-0.1 stays, p(2) / p(1) = e^-1 < 0.5 goes
  }
  EXPECT_THROW(kern::examples::sampler({.temperature = -1.0f}), kern::error);
  EXPECT_THROW(kern::examples::sampler({.top_p = 0.0f}), kern::error);
  EXPECT_THROW(kern::examples::sampler({.top_p = 1.5f}), kern::error);
  EXPECT_THROW(kern::examples::sampler({.repetition_penalty = 0.5f}), kern::error);
}

} // namespace
