// llama2.c's tokenizer.bin: a SentencePiece BPE vocabulary with merge scores and byte fallback.
//
// File: int32 max_token_length, then per id: float32 score, int32 length, the piece's bytes.
// Ids 0 <unk>, 1 BOS, 2 EOS, 3..258 the byte pieces <0x00>..<0xFF>. Encoding (as llama2.c's run.c):
// BOS, a dummy-prefix space piece (for non-empty text), each UTF-8 code point as its piece or, when
// the vocabulary lacks it, its bytes (id = byte + 3); then, repeatedly, the adjacent pair whose
// concatenation is a piece with the highest score is merged. Decoding drops the space that follows
// BOS and turns byte pieces back into bytes.
#pragma once

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "file_io.hpp"
#include "kern/core/error.hpp"
#include "kern/core/view.hpp"

namespace kern::examples {

class llama2c_tokenizer {
public:
  static constexpr std::int32_t bos = 1;
  static constexpr std::int32_t eos = 2;

  // Reads tokenizer.bin with `vocab_size` pieces (the checkpoint's vocabulary).
  llama2c_tokenizer(const std::filesystem::path& path, index_t vocab_size) {
    const mapped_file file("kern::examples::llama2c_tokenizer", path);
    const std::string& where = file.where();
    const std::span<const std::byte> bytes = file.bytes();
    std::size_t at = 0;
    const auto read = [&](void* out, std::size_t n, const char* what, index_t id) {
      require(at + n <= bytes.size(), where, "ends inside ", what, id >= 0 ? " of piece " : "",
              id >= 0 ? std::to_string(id) : "", " (", bytes.size(), " bytes): truncated, or not a tokenizer of ",
              vocab_size, " pieces");
      std::memcpy(out, bytes.data() + at, n);
      at += n;
    };
    std::int32_t max_length = 0;
    read(&max_length, sizeof max_length, "the header", -1);
    require(max_length > 0 && max_length < 1024, where, "max_token_length = ", max_length, " is not plausible");
    require(vocab_size >= 259, where, "a vocabulary of ", vocab_size, " pieces has no room for the byte pieces");
    pieces_.resize(static_cast<std::size_t>(vocab_size));
    scores_.resize(pieces_.size());
    for (index_t id = 0; id < vocab_size; ++id) {
      std::int32_t length = 0;
      read(&scores_[static_cast<std::size_t>(id)], sizeof(float), "the score", id);
      read(&length, sizeof length, "the length", id);
      require(length >= 0 && length <= max_length, where, "piece ", id, " has length ", length, " (max ", max_length,
              ")");
      std::string& piece = pieces_[static_cast<std::size_t>(id)];
      piece.resize(static_cast<std::size_t>(length));
      read(piece.data(), piece.size(), "the bytes", id);
      lookup_.emplace(piece, static_cast<std::int32_t>(id));
    }
    require(at == bytes.size(), where, "has ", bytes.size() - at, " bytes after the last of ", vocab_size,
            " pieces: it does not match a vocabulary of that size");
  }

  index_t vocab_size() const { return static_cast<index_t>(pieces_.size()); }

  std::vector<std::int32_t> encode(std::string_view text, bool add_bos = true, bool add_eos = false) const {
    std::vector<std::int32_t> ids;
    if (add_bos) {
      ids.push_back(bos);
    }
    const std::size_t first = ids.size();
    if (!text.empty()) {
      ids.push_back(id_of(" "));
    }
    for (std::size_t i = 0; i < text.size();) {
      std::size_t length = 1; // one UTF-8 code point (a stray continuation byte stands alone)
      while (i + length < text.size() && length < 4 && (static_cast<unsigned char>(text[i + length]) & 0xc0) == 0x80) {
        ++length;
      }
      const auto it = lookup_.find(std::string(text.substr(i, length)));
      if (it != lookup_.end()) {
        ids.push_back(it->second);
      } else {
        for (std::size_t b = 0; b < length; ++b) {
          ids.push_back(static_cast<std::int32_t>(static_cast<unsigned char>(text[i + b])) + 3);
        }
      }
      i += length;
    }
    merge(ids, first);
    if (add_eos) {
      ids.push_back(eos);
    }
    return ids;
  }

  // The text of `id` when it follows `previous`.
  std::string decode(std::int32_t previous, std::int32_t id) const {
    require(id >= 0 && id < vocab_size(), "llama2c_tokenizer::decode", "id ", id, " is outside the vocabulary");
    std::string_view piece = pieces_[static_cast<std::size_t>(id)];
    if (previous == bos && !piece.empty() && piece[0] == ' ') {
      piece.remove_prefix(1);
    }
    unsigned byte = 0;
    if (piece.size() == 6 && piece.substr(0, 3) == "<0x" && piece[5] == '>' &&
        std::sscanf(std::string(piece).c_str(), "<0x%02X>", &byte) == 1) {
      return std::string(1, static_cast<char>(byte));
    }
    return std::string(piece);
  }

private:
  std::int32_t id_of(const std::string& piece) const {
    const auto it = lookup_.find(piece);
    require(it != lookup_.end(), "llama2c_tokenizer", "the vocabulary has no piece \"", piece, "\"");
    return it->second;
  }

  // Merges, from `first` on, the adjacent pair with the best-scoring merged piece, until none is.
  void merge(std::vector<std::int32_t>& ids, std::size_t first) const {
    for (;;) {
      float best_score = -1e10f;
      std::size_t best = ids.size();
      std::int32_t best_id = -1;
      for (std::size_t i = first; i + 1 < ids.size(); ++i) {
        const auto it =
            lookup_.find(pieces_[static_cast<std::size_t>(ids[i])] + pieces_[static_cast<std::size_t>(ids[i + 1])]);
        if (it != lookup_.end() && scores_[static_cast<std::size_t>(it->second)] > best_score) {
          best_score = scores_[static_cast<std::size_t>(it->second)];
          best = i;
          best_id = it->second;
        }
      }
      if (best == ids.size()) {
        return;
      }
      ids[best] = best_id;
      ids.erase(ids.begin() + static_cast<std::ptrdiff_t>(best) + 1);
    }
  }

  std::vector<std::string> pieces_;
  std::vector<float> scores_;
  std::unordered_map<std::string, std::int32_t> lookup_;
};

} // namespace kern::examples
