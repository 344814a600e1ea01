// GPT-2's byte-level BPE tokenizer: OpenAI's encoder.json + vocab.bpe, or Hugging Face's vocab.json +
// merges.txt (the same formats under other names).
//
// encoder.json is a JSON object of token string -> id; vocab.bpe an optional "#version" first line, then
// one merge "A B" per line, the first line the most urgent (rank 0). Token strings are written in GPT-2's
// byte-to-unicode alphabet: bytes 33-126, 161-172 and 174-255 stand for themselves as code points, the
// other 68 bytes for U+0100, U+0101, ... in byte order (space is U+0120 'Ġ').
//
// Encoding, as GPT-2's encoder.py: the text is split into pre-tokens as the regex
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// splits it (matched by hand, with the classes of unicode_classes.hpp); each pre-token's bytes start as
// single-byte tokens, and the adjacent pair of lowest merge rank is merged, every occurrence left to
// right, until no adjacent pair is a merge. "<|endoftext|>" in a text is ordinary text; eot() is its id.
//
// Any bytes can be encoded and decode gives them back exactly. In text that is not valid UTF-8, each byte
// of an invalid sequence counts as a character of its own that is neither letter, number nor space.
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <initializer_list>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "file_io.hpp"
#include "json.hpp"
#include "kern/core/error.hpp"
#include "kern/core/view.hpp"
#include "unicode_classes.hpp"

namespace kern::examples {

namespace gpt2_detail {

// The code point that stands for each byte in token strings.
constexpr std::array<std::uint32_t, 256> byte_code_points() {
  std::array<std::uint32_t, 256> out{};
  std::uint32_t next = 256;
  for (std::uint32_t byte = 0; byte < 256; ++byte) {
    const bool itself = (byte >= 33 && byte <= 126) || (byte >= 161 && byte <= 172) || byte >= 174;
    out[byte] = itself ? byte : next++;
  }
  return out;
}

inline constexpr std::array<std::uint32_t, 256> code_point_of_byte = byte_code_points();

// The code point of the valid UTF-8 sequence of `length` bytes at the start of `text`.
inline std::uint32_t decode_utf8(std::string_view text, std::size_t length) {
  constexpr std::uint32_t lead_mask[] = {0, 0x7f, 0x1f, 0x0f, 0x07};
  std::uint32_t code = static_cast<unsigned char>(text[0]) & lead_mask[length];
  for (std::size_t i = 1; i < length; ++i) {
    code = (code << 6) | (static_cast<unsigned char>(text[i]) & 0x3fu);
  }
  return code;
}

// The bytes a token string (valid UTF-8, in the byte-to-unicode alphabet) stands for; nullopt when a
// character is outside the alphabet.
inline std::optional<std::string> token_bytes(std::string_view token) {
  static const std::array<std::int16_t, 324> byte_of_code_point = [] {
    std::array<std::int16_t, 324> out{};
    out.fill(-1);
    for (std::size_t byte = 0; byte < 256; ++byte) {
      out[code_point_of_byte[byte]] = static_cast<std::int16_t>(byte);
    }
    return out;
  }();
  std::string out;
  while (!token.empty()) {
    const std::size_t length = json::utf8_sequence_length(token);
    if (length == 0) {
      return std::nullopt;
    }
    const std::uint32_t code = decode_utf8(token, length);
    if (code >= byte_of_code_point.size() || byte_of_code_point[code] < 0) {
      return std::nullopt;
    }
    out += static_cast<char>(static_cast<unsigned char>(byte_of_code_point[code]));
    token.remove_prefix(length);
  }
  return out;
}

// A byte as the character that stands for it in token strings, for messages.
inline std::string byte_character(unsigned char byte) {
  std::string out;
  json::append_utf8(out, code_point_of_byte[byte]);
  return out;
}

enum class char_class : std::uint8_t { letter, number, space, other };

struct character {
  std::size_t size; // bytes
  char_class kind;
};

// The character at byte `at` of `text` (at < text.size()): one code point, or one byte of an invalid
// UTF-8 sequence (which is neither letter, number nor space).
inline character character_at(std::string_view text, std::size_t at) {
  const auto c = static_cast<unsigned char>(text[at]);
  if (c < 0x80) {
    const bool letter = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
    return {1, letter                            ? char_class::letter
               : c >= '0' && c <= '9'            ? char_class::number
               : c == ' ' || (c >= 9 && c <= 13) ? char_class::space
                                                 : char_class::other};
  }
  const std::string_view rest = text.substr(at);
  const std::size_t length = json::utf8_sequence_length(rest);
  if (length == 0) {
    return {1, char_class::other};
  }
  const std::uint32_t code = decode_utf8(rest, length);
  return {length, unicode::is_letter(code)   ? char_class::letter
                  : unicode::is_number(code) ? char_class::number
                  : unicode::is_space(code)  ? char_class::space
                                             : char_class::other};
}

// Where the pre-token that starts at byte `at` (< text.size()) ends: the regex's first alternative
// that matches at `at`, as the regex matches it.
inline std::size_t pre_token_end(std::string_view text, std::size_t at) {
  // 's|'t|'re|'ve|'m|'ll|'d (lowercase only)
  if (text[at] == '\'') {
    for (const std::string_view suffix : {"s", "t", "re", "ve", "m", "ll", "d"}) {
      if (text.substr(at + 1, suffix.size()) == suffix) {
        return at + 1 + suffix.size();
      }
    }
  }
  // ` ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+`: an optional space, then a run of one class.
  const character first = character_at(text, at);
  std::size_t start = at;
  character head = first;
  if (text[at] == ' ' && at + 1 < text.size()) {
    const character next = character_at(text, at + 1);
    if (next.kind != char_class::space) {
      start = at + 1;
      head = next;
    }
  }
  if (head.kind != char_class::space) {
    std::size_t end = start + head.size;
    while (end < text.size()) {
      const character c = character_at(text, end);
      if (c.kind != head.kind) {
        break;
      }
      end += c.size;
    }
    return end;
  }
  // `\s+(?!\S)|\s+`: a run of whitespace, less its last character when a non-space follows the run and
  // the run has more than one (that character then starts the next pre-token, as in " word").
  std::size_t end = at + first.size;
  std::size_t last = at; // where the run's last character starts
  while (end < text.size()) {
    const character c = character_at(text, end);
    if (c.kind != char_class::space) {
      break;
    }
    last = end;
    end += c.size;
  }
  return end == text.size() || last == at ? end : last;
}

} // namespace gpt2_detail

class gpt2_tokenizer {
public:
  // GPT-2's vocabulary: 256 bytes, 50,000 merges and <|endoftext|>.
  static constexpr index_t gpt2_vocab = 50257;

  // Reads encoder.json (or vocab.json) and vocab.bpe (or merges.txt).
  gpt2_tokenizer(const std::filesystem::path& encoder, const std::filesystem::path& merges) {
    read_encoder(encoder);
    read_merges(merges, encoder);
  }

  // The files of a tokenizer in `folder`: encoder.json + vocab.bpe, or else vocab.json + merges.txt;
  // nullopt when neither pair is there.
  static std::optional<std::pair<std::filesystem::path, std::filesystem::path>>
  files_in(const std::filesystem::path& folder) {
    for (const auto& [encoder, merges] : {std::pair{"encoder.json", "vocab.bpe"}, {"vocab.json", "merges.txt"}}) {
      if (std::filesystem::exists(folder / encoder) && std::filesystem::exists(folder / merges)) {
        return std::pair{folder / encoder, folder / merges};
      }
    }
    return std::nullopt;
  }

  index_t vocab_size() const { return static_cast<index_t>(tokens_.size()); }
  // The id of <|endoftext|> (50256 in GPT-2), or -1 when the vocabulary has none.
  std::int32_t eot() const { return eot_; }

  // The pre-tokens of `text` (views into it), in order; together they are the whole text.
  static std::vector<std::string_view> pre_tokenize(std::string_view text) {
    std::vector<std::string_view> out;
    for (std::size_t at = 0; at < text.size();) {
      const std::size_t end = gpt2_detail::pre_token_end(text, at);
      out.push_back(text.substr(at, end - at));
      at = end;
    }
    return out;
  }

  std::vector<std::int32_t> encode(std::string_view text) const {
    std::vector<std::int32_t> ids;
    std::unordered_map<std::string_view, std::vector<std::int32_t>> done; // pre-tokens repeat
    std::vector<std::int32_t> word;
    for (std::size_t at = 0; at < text.size();) {
      const std::size_t end = gpt2_detail::pre_token_end(text, at);
      const std::string_view piece = text.substr(at, end - at);
      at = end;
      const auto it = done.find(piece);
      if (it != done.end()) {
        ids.insert(ids.end(), it->second.begin(), it->second.end());
        continue;
      }
      merge(piece, word);
      ids.insert(ids.end(), word.begin(), word.end());
      done.emplace(piece, word);
    }
    return ids;
  }

  // The bytes of `ids`, concatenated (not necessarily valid UTF-8).
  std::string decode(std::span<const std::int32_t> ids) const {
    std::string out;
    for (const std::int32_t id : ids) {
      require(id >= 0 && id < vocab_size(), "kern::examples::gpt2_tokenizer::decode", "id ", id,
              " is outside the vocabulary of ", vocab_size(), " tokens");
      out += tokens_[static_cast<std::size_t>(id)];
    }
    return out;
  }
  std::string decode(std::initializer_list<std::int32_t> ids) const {
    return decode(std::span(ids.begin(), ids.size()));
  }

private:
  static constexpr std::string_view op = "kern::examples::gpt2_tokenizer";

  struct merge_rule {
    std::int32_t rank;
    std::int32_t id; // of the merged token
  };

  static std::uint64_t pair_key(std::int32_t a, std::int32_t b) {
    return (static_cast<std::uint64_t>(static_cast<std::uint32_t>(a)) << 32) | static_cast<std::uint32_t>(b);
  }

  static std::string_view text_of(const mapped_file& file) {
    return {reinterpret_cast<const char*>(file.bytes().data()), file.bytes().size()};
  }

  void read_encoder(const std::filesystem::path& path) {
    const mapped_file file(op, path);
    const std::string& where = file.where();
    const json::value root = json::parse(text_of(file), where);
    require(root.type == json::value::kind::object, where, "is not a JSON object of token -> id");
    const std::size_t size = root.members.size();
    tokens_.resize(size);
    std::vector<bool> seen(size);
    for (const json::member& entry : root.members) {
      const std::string name = "entry " + json::quote(entry.key);
      const std::int64_t id = entry.item.integer;
      require(entry.item.type == json::value::kind::integer && id >= 0 && static_cast<std::uint64_t>(id) < size, where,
              name, ": the id must be an integer in [0, ", size, ") (one per entry)");
      require(!seen[static_cast<std::size_t>(id)], where, name, ": id ", id, " is given twice");
      seen[static_cast<std::size_t>(id)] = true;
      std::optional<std::string> bytes = gpt2_detail::token_bytes(entry.key);
      require(bytes.has_value() && !bytes->empty(), where, name,
              ": not a token in GPT-2's byte-to-unicode alphabet (or empty)");
      ids_.emplace(*bytes, static_cast<std::int32_t>(id));
      tokens_[static_cast<std::size_t>(id)] = std::move(*bytes);
    }
    for (std::size_t byte = 0; byte < 256; ++byte) {
      const auto it = ids_.find(std::string(1, static_cast<char>(byte)));
      require(it != ids_.end(), where, "has no token for the byte ", byte, " (\"",
              gpt2_detail::byte_character(static_cast<unsigned char>(byte)), "\")");
      byte_ids_[byte] = it->second;
    }
    const auto eot = ids_.find("<|endoftext|>");
    eot_ = eot == ids_.end() ? -1 : eot->second;
  }

  // `encoder` names the vocabulary's file in messages.
  void read_merges(const std::filesystem::path& path, const std::filesystem::path& encoder) {
    const mapped_file file(op, path);
    const std::string& where = file.where();
    const std::string_view text = text_of(file);
    std::size_t line_number = 0;
    for (std::size_t at = 0; at < text.size();) {
      std::size_t end = text.find('\n', at);
      end = end == std::string_view::npos ? text.size() : end;
      std::string_view line = text.substr(at, end - at);
      at = end + 1;
      ++line_number;
      if (!line.empty() && line.back() == '\r') {
        line.remove_suffix(1);
      }
      if (line_number == 1 && line.starts_with("#version")) {
        continue;
      }
      const std::size_t space = line.find(' ');
      require(space != std::string_view::npos && space > 0 && space + 1 < line.size() &&
                  line.find(' ', space + 1) == std::string_view::npos,
              where, "line ", line_number, ": \"", line, "\" is not two tokens separated by a space");
      const std::int32_t a = merge_part(line.substr(0, space), where, line_number, encoder);
      const std::int32_t b = merge_part(line.substr(space + 1), where, line_number, encoder);
      const auto merged = ids_.find(tokens_[static_cast<std::size_t>(a)] + tokens_[static_cast<std::size_t>(b)]);
      require(merged != ids_.end(), where, "line ", line_number, ": the merge of \"", line,
              "\" is not in the vocabulary of ", encoder);
      const merge_rule rule{static_cast<std::int32_t>(merges_.size()), merged->second};
      require(merges_.emplace(pair_key(a, b), rule).second, where, "line ", line_number, ": \"", line,
              "\" repeats an earlier merge");
    }
  }

  std::int32_t merge_part(std::string_view token, const std::string& where, std::size_t line_number,
                          const std::filesystem::path& encoder) const {
    const std::optional<std::string> bytes =
        json::is_valid_utf8(token) ? gpt2_detail::token_bytes(token) : std::nullopt;
    const auto it = bytes ? ids_.find(*bytes) : ids_.end();
    require(it != ids_.end(), where, "line ", line_number, ": \"", token, "\" is not in the vocabulary of ", encoder);
    return it->second;
  }

  // The tokens of one pre-token, into `word`.
  void merge(std::string_view piece, std::vector<std::int32_t>& word) const {
    word.clear();
    for (const char c : piece) {
      word.push_back(byte_ids_[static_cast<unsigned char>(c)]);
    }
    while (word.size() > 1) {
      const merge_rule* best = nullptr;
      std::int32_t first = 0, second = 0;
      for (std::size_t i = 0; i + 1 < word.size(); ++i) {
        const auto it = merges_.find(pair_key(word[i], word[i + 1]));
        if (it != merges_.end() && (best == nullptr || it->second.rank < best->rank)) {
          best = &it->second;
          first = word[i];
          second = word[i + 1];
        }
      }
      if (best == nullptr) {
        return;
      }
      std::size_t out = 0;
      for (std::size_t i = 0; i < word.size(); ++out) {
        const bool match = i + 1 < word.size() && word[i] == first && word[i + 1] == second;
        word[out] = match ? best->id : word[i];
        i += match ? 2 : 1;
      }
      word.resize(out);
    }
  }

  std::vector<std::string> tokens_;                      // id -> bytes
  std::unordered_map<std::string, std::int32_t> ids_;    // bytes -> id
  std::array<std::int32_t, 256> byte_ids_{};             // byte -> id of its one-byte token
  std::unordered_map<std::uint64_t, merge_rule> merges_; // (id, id) -> rank and merged id
  std::int32_t eot_ = -1;
};

} // namespace kern::examples
