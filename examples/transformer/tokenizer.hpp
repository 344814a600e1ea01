// The tokenizer a checkpoint goes with, behind one interface: bytes (a 256-token vocabulary),
// llama2.c's tokenizer.bin (given, or found beside the checkpoint as tokenizer.bin / tok<vocab>.bin), or
// GPT-2's BPE (a folder given, or, for a vocabulary of 50,257 tokens, its files found beside the
// checkpoint: encoder.json + vocab.bpe, or vocab.json + merges.txt).
#pragma once

#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "data.hpp"
#include "kern/core/error.hpp"
#include "tokenizer_gpt2.hpp"
#include "tokenizer_llama2c.hpp"

namespace kern::examples {

struct text_codec {
  std::function<std::vector<std::int32_t>(const std::string&)> encode_prompt; // with BOS where the model uses one
  std::function<std::vector<std::int32_t>(const std::string&)> encode_corpus; // a training text
  std::function<std::string(std::int32_t previous, std::int32_t id)> piece;   // the text of id after previous
  std::int32_t end = -1; // generation stops at this token (llama2.c: BOS starts another text)
};

inline text_codec codec_for(const std::filesystem::path& checkpoint, std::filesystem::path tokenizer, index_t vocab) {
  std::optional<std::pair<std::filesystem::path, std::filesystem::path>> gpt2_files;
  if (std::filesystem::is_directory(tokenizer)) {
    gpt2_files = gpt2_tokenizer::files_in(tokenizer);
    require(gpt2_files.has_value(), "tokenizer", tokenizer.string(),
            " is a folder without encoder.json + vocab.bpe or vocab.json + merges.txt");
  } else if (tokenizer.empty() && vocab == gpt2_tokenizer::gpt2_vocab) {
    gpt2_files = gpt2_tokenizer::files_in(checkpoint.parent_path());
  }
  if (gpt2_files) {
    auto t = std::make_shared<const gpt2_tokenizer>(gpt2_files->first, gpt2_files->second);
    require(t->vocab_size() <= vocab, "tokenizer", gpt2_files->first.string(), " has ", t->vocab_size(),
            " tokens, more than the model's ", vocab);
    const auto encode = [t](const std::string& text) { return t->encode(text); };
    return {encode, encode, [t](std::int32_t, std::int32_t id) { return t->decode({id}); }, t->eot()};
  }
  if (tokenizer.empty() && vocab != byte_tokenizer::vocab) {
    for (const std::string& name : {std::string("tokenizer.bin"), "tok" + std::to_string(vocab) + ".bin"}) {
      if (std::filesystem::exists(checkpoint.parent_path() / name)) {
        tokenizer = checkpoint.parent_path() / name;
      }
    }
    require(!tokenizer.empty(), "tokenizer", "the model's vocabulary has ", vocab,
            " tokens and no tokenizer.bin is beside ", checkpoint.string(), ": give one with --tokenizer");
  }
  if (tokenizer.empty()) {
    const auto bytes = [](const std::string& text) { return byte_tokenizer{}.encode(text); };
    return {bytes, bytes, [](std::int32_t, std::int32_t id) { return std::string(1, static_cast<char>(id)); }, -1};
  }
  auto t = std::make_shared<llama2c_tokenizer>(tokenizer, vocab);
  // A corpus is encoded line by line (the merges cost the square of a text's length), each line
  // as a text of its own after BOS, as llama2.c's models were trained.
  const auto corpus = [t](const std::string& text) {
    std::vector<std::int32_t> ids;
    std::size_t begin = 0;
    while (begin < text.size()) {
      std::size_t end = text.find('\n', begin);
      end = end == std::string::npos ? text.size() : end;
      if (end > begin) {
        const std::vector<std::int32_t> line = t->encode(text.substr(begin, end - begin), true, false);
        ids.insert(ids.end(), line.begin(), line.end());
      }
      begin = end + 1;
    }
    return ids;
  };
  return {[t](const std::string& text) { return t->encode(text, true, false); }, corpus,
          [t](std::int32_t previous, std::int32_t id) { return t->decode(previous, id); }, llama2c_tokenizer::bos};
}

} // namespace kern::examples
