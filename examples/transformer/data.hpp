// Training data: a text file turned into one stream of token ids, split into a training and a
// held-out validation part, cut into (batch, seq) windows with next-token targets.
#pragma once

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include "kern/core/error.hpp"
#include "kern/core/view.hpp"

namespace kern::examples {

// The whole file as bytes; a clear error when it is missing or empty.
inline std::string read_text_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  require(in.good(), "read_text_file", "cannot open '", path.string(), "'");
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  require(!text.empty(), "read_text_file", "'", path.string(), "' is empty");
  return text;
}

// The byte-level tokenizer: token = byte, vocabulary 256, any input round-trips.
struct byte_tokenizer {
  static constexpr index_t vocab = 256;
  std::vector<std::int32_t> encode(const std::string& text) const {
    std::vector<std::int32_t> ids(text.size());
    for (std::size_t i = 0; i < text.size(); ++i) {
      ids[i] = static_cast<std::int32_t>(static_cast<unsigned char>(text[i]));
    }
    return ids;
  }
  std::string decode(const std::vector<std::int32_t>& ids) const {
    std::string text(ids.size(), '\0');
    for (std::size_t i = 0; i < ids.size(); ++i) {
      text[i] = static_cast<char>(static_cast<unsigned char>(ids[i]));
    }
    return text;
  }
};

// A window of seq tokens and their next tokens, batch of them, row-major.
struct token_batch {
  std::vector<std::int32_t> inputs;
  std::vector<std::int32_t> targets;
};

class token_stream {
public:
  // The last `validation_fraction` of the tokens are held out. Each part needs seq + 1 tokens.
  token_stream(std::vector<std::int32_t> tokens, double validation_fraction, index_t seq, const std::string& source)
      : seq_(seq) {
    const auto n = static_cast<index_t>(tokens.size());
    const auto held_out = static_cast<index_t>(static_cast<double>(n) * validation_fraction);
    require(n - held_out >= seq + 1 && (validation_fraction == 0.0 || held_out >= seq + 1), "token_stream", "'", source,
            "' has ", n, " tokens: too short for windows of seq = ", seq, " with ", validation_fraction * 100.0,
            "% held out (each part needs at least ", seq + 1, ")");
    train_.assign(tokens.begin(), tokens.end() - held_out);
    validation_.assign(tokens.end() - held_out, tokens.end());
  }

  index_t train_tokens() const { return static_cast<index_t>(train_.size()); }
  index_t validation_tokens() const { return static_cast<index_t>(validation_.size()); }

  // A training batch of windows at random offsets into `b` (the generator's state is the data
  // position); b's buffers are reused, so that a training step allocates nothing.
  void random_batch(std::mt19937_64& rng, index_t batch, token_batch& b) const {
    std::uniform_int_distribution<index_t> offset(0, train_tokens() - seq_ - 1);
    b.inputs.clear();
    b.targets.clear();
    for (index_t i = 0; i < batch; ++i) {
      append_window(train_, offset(rng), b);
    }
  }

  // Validation batch `index` of consecutive, non-overlapping windows (wrapping around), so that an
  // evaluation over the same indices always sees the same tokens.
  void validation_batch(index_t index, index_t batch, token_batch& b) const {
    const index_t windows = (validation_tokens() - 1) / seq_;
    b.inputs.clear();
    b.targets.clear();
    for (index_t i = 0; i < batch; ++i) {
      append_window(validation_, ((index * batch + i) % windows) * seq_, b);
    }
  }

  index_t validation_windows() const { return (validation_tokens() - 1) / seq_; }

private:
  void append_window(const std::vector<std::int32_t>& from, index_t offset, token_batch& b) const {
    const auto begin = from.begin() + offset;
    b.inputs.insert(b.inputs.end(), begin, begin + seq_);
    b.targets.insert(b.targets.end(), begin + 1, begin + seq_ + 1);
  }

  index_t seq_;
  std::vector<std::int32_t> train_, validation_;
};

} // namespace kern::examples
