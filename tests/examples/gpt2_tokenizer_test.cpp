// GPT-2's byte-level BPE tokenizer: pre-tokenization as GPT-2's regex splits text, fixed sentences
// against ids read off encoder.json and vocab.bpe, the GPT-2 ids of TinyShakespeare that llm.c
// ships, round trips of any bytes, the codec, and errors that name the bad file and line or entry.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include <unistd.h>

#include <gtest/gtest.h>

#include "support/kernel_test.hpp"
#include "transformer/json.hpp"
#include "transformer/tokenizer.hpp"
#include "transformer/tokenizer_gpt2.hpp"

#ifndef KERN_SHARED_DATA_DIR
#error "KERN_SHARED_DATA_DIR must name the shared data folder"
#endif

namespace {

namespace fs = std::filesystem;
using kern::examples::gpt2_tokenizer;
using ids = std::vector<std::int32_t>;

fs::path gpt2_dir() { return fs::path(KERN_SHARED_DATA_DIR) / "gpt2_tokenizer"; }
fs::path shakespeare_dir() { return fs::path(KERN_SHARED_DATA_DIR) / "tinyshakespeare"; }

// GPT-2's tokenizer from the shared data, read once; nullptr when the files are absent.
const gpt2_tokenizer* shared_tokenizer() {
  static const std::unique_ptr<const gpt2_tokenizer> tokenizer =
      fs::exists(gpt2_dir() / "encoder.json") && fs::exists(gpt2_dir() / "vocab.bpe")
          ? std::make_unique<const gpt2_tokenizer>(gpt2_dir() / "encoder.json", gpt2_dir() / "vocab.bpe")
          : nullptr;
  return tokenizer.get();
}

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_file(const fs::path& path, std::string_view text) {
  std::ofstream out(path, std::ios::binary);
  out.write(text.data(), static_cast<std::streamsize>(text.size()));
}

std::vector<std::string> pre_tokens(std::string_view text) {
  std::vector<std::string> out;
  for (const std::string_view piece : gpt2_tokenizer::pre_tokenize(text)) {
    out.emplace_back(piece);
  }
  return out;
}

// The tokens of an llm.c data file: 256 int32 (magic 20240520, version 1, count), then uint16 tokens.
ids read_llmc_tokens(const fs::path& path) {
  const std::string bytes = read_file(path);
  std::int32_t header[256] = {};
  EXPECT_GE(bytes.size(), sizeof header) << path;
  if (bytes.size() < sizeof header) {
    return {};
  }
  std::memcpy(header, bytes.data(), sizeof header);
  EXPECT_EQ(header[0], 20240520) << path;
  EXPECT_EQ(header[1], 1) << path;
  const auto count = static_cast<std::size_t>(header[2]);
  EXPECT_EQ(bytes.size(), sizeof header + 2 * count) << path;
  ids out(std::min(count, (bytes.size() - sizeof header) / 2));
  for (std::size_t i = 0; i < out.size(); ++i) {
    std::uint16_t token = 0;
    std::memcpy(&token, bytes.data() + sizeof header + 2 * i, 2);
    out[i] = token;
  }
  return out;
}

void append_utf8(std::string& out, std::uint32_t code) {
  if (code < 0x80) {
    out += static_cast<char>(code);
  } else if (code < 0x800) {
    out += static_cast<char>(0xc0 | (code >> 6));
    out += static_cast<char>(0x80 | (code & 0x3f));
  } else if (code < 0x10000) {
    out += static_cast<char>(0xe0 | (code >> 12));
    out += static_cast<char>(0x80 | ((code >> 6) & 0x3f));
    out += static_cast<char>(0x80 | (code & 0x3f));
  } else {
    out += static_cast<char>(0xf0 | (code >> 18));
    out += static_cast<char>(0x80 | ((code >> 12) & 0x3f));
    out += static_cast<char>(0x80 | ((code >> 6) & 0x3f));
    out += static_cast<char>(0x80 | (code & 0x3f));
  }
}

// A folder of its own under the temporary folder, removed with the object.
class temp_folder {
public:
  temp_folder() {
    static int count = 0;
    path_ = fs::temp_directory_path() /
            ("kern_gpt2_tokenizer_" + std::to_string(::getpid()) + "_" + std::to_string(count++));
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  temp_folder(const temp_folder&) = delete;
  temp_folder& operator=(const temp_folder&) = delete;
  ~temp_folder() {
    std::error_code ignored;
    fs::remove_all(path_, ignored);
  }
  const fs::path& path() const { return path_; }

private:
  fs::path path_;
};

// A small vocabulary in encoder.json's format: the 256 bytes (id = byte), then `extra` tokens.
std::string small_encoder(const std::vector<std::string>& extra) {
  std::string out = "{";
  for (std::size_t byte = 0; byte < 256; ++byte) {
    out += kern::examples::json::quote(kern::examples::gpt2_detail::byte_character(static_cast<unsigned char>(byte))) +
           ": " + std::to_string(byte) + ", ";
  }
  for (std::size_t i = 0; i < extra.size(); ++i) {
    out += kern::examples::json::quote(extra[i]) + ": " + std::to_string(256 + i) + ", ";
  }
  out.resize(out.size() - 2);
  return out + "}";
}

// The message of the kern::error that `f` throws ("" when it throws none).
template <class F> std::string error_of(F f) {
  try {
    f();
  } catch (const kern::error& e) {
    return e.what();
  }
  return "";
}

TEST(Gpt2Tokenizer, ByteAlphabetIsGpt2s) {
  const auto& code = kern::examples::gpt2_detail::code_point_of_byte;
  EXPECT_EQ(code['!'], U'!');
  EXPECT_EQ(code['~'], U'~');
  EXPECT_EQ(code[0xa1], 0xa1u);
  EXPECT_EQ(code[0xac], 0xacu);
  EXPECT_EQ(code[0xae], 0xaeu);
  EXPECT_EQ(code[0xff], 0xffu);
  // The other 68 bytes in order: 0..32 -> U+0100..U+0120, 127..160 -> U+0121..U+0142, 173 -> U+0143.
  EXPECT_EQ(code[0], 0x100u);
  EXPECT_EQ(code['\n'], 0x10au);
  EXPECT_EQ(code[' '], 0x120u);
  EXPECT_EQ(code[127], 0x121u);
  EXPECT_EQ(code[160], 0x142u);
  EXPECT_EQ(code[173], 0x143u);
}

// Expected splits are those of Python's `regex` module with GPT-2's pattern.
TEST(Gpt2Tokenizer, PreTokenizesAsGpt2sRegex) {
  using v = std::vector<std::string>;
  EXPECT_EQ(pre_tokens(""), v{});
  EXPECT_EQ(pre_tokens("Hello world"), (v{"Hello", " world"}));
  EXPECT_EQ(pre_tokens("a   b"), (v{"a", "  ", " b"}));
  EXPECT_EQ(pre_tokens("a  "), (v{"a", "  "}));
  EXPECT_EQ(pre_tokens("  a"), (v{" ", " a"}));
  EXPECT_EQ(pre_tokens("x\n\ny"), (v{"x", "\n", "\n", "y"}));
  EXPECT_EQ(pre_tokens("a \n b"), (v{"a", " \n", " b"}));
  EXPECT_EQ(pre_tokens(" \n"), (v{" \n"}));
  EXPECT_EQ(pre_tokens("\t\tif"), (v{"\t", "\t", "if"}));
  EXPECT_EQ(pre_tokens("don't"), (v{"don", "'t"}));
  EXPECT_EQ(pre_tokens("'S 'sa"), (v{"'", "S", " '", "sa"})); // contractions: lowercase, at a token's start
  EXPECT_EQ(pre_tokens("!'s"), (v{"!'", "s"}));
  EXPECT_EQ(pre_tokens(" 'll've'd'm're"), (v{" '", "ll", "'ve", "'d", "'m", "'re"}));
  EXPECT_EQ(pre_tokens("a1b2 3.5"), (v{"a", "1", "b", "2", " 3", ".", "5"}));
  EXPECT_EQ(pre_tokens("h\u00e9llo w\u00f6rld"), (v{"h\u00e9llo", " w\u00f6rld"}));
  EXPECT_EQ(pre_tokens("e\u0301t\u00e9"), (v{"e", "\u0301", "t\u00e9"})); // a combining mark is not a letter
  EXPECT_EQ(pre_tokens("\u0663\u0664 \u216b\u00bdx"), (v{"\u0663\u0664", " \u216b\u00bd", "x"})); // Nd, Nl, No
  EXPECT_EQ(pre_tokens("a\u00a0b"), (v{"a", "\u00a0", "b"}));
  EXPECT_EQ(pre_tokens("a\u3000\u3000b"), (v{"a", "\u3000", "\u3000", "b"}));
  EXPECT_EQ(pre_tokens("x\x1cy"), (v{"x", "\x1c", "y"})); // U+001C is not White_Space
  EXPECT_EQ(pre_tokens("\u65e5\u672c\u8a9e \u30c6\u30ad\u30b9\u30c8"),
            (v{"\u65e5\u672c\u8a9e", " \u30c6\u30ad\u30b9\u30c8"}));
  EXPECT_EQ(pre_tokens("\U0001F600\U0001F600 ok"), (v{"\U0001F600\U0001F600", " ok"}));
  // Invalid UTF-8: each byte of a bad sequence is a character that is neither letter, number nor space.
  EXPECT_EQ(pre_tokens("a\xff"
                       "b"),
            (v{"a", "\xff", "b"}));
  EXPECT_EQ(pre_tokens(" \xff\xfe!x"), (v{" \xff\xfe!", "x"}));
  EXPECT_EQ(pre_tokens("\xe2\x82"
                       "a"),
            (v{"\xe2\x82", "a"})); // a truncated sequence
  EXPECT_EQ(pre_tokens("\xc3\xa9\xc3"), (v{"\xc3\xa9", "\xc3"}));
}

TEST(Gpt2Tokenizer, ReadsGpt2sFiles) {
  const gpt2_tokenizer* t = shared_tokenizer();
  if (t == nullptr) {
    GTEST_SKIP() << gpt2_dir() << " is absent: GPT-2's encoder.json and vocab.bpe are not here";
  }
  EXPECT_EQ(t->vocab_size(), 50257);
  EXPECT_EQ(t->eot(), 50256);
  EXPECT_EQ(t->decode({50256}), "<|endoftext|>");
  EXPECT_EQ(t->decode({198, 220, 0}), "\n !");
  EXPECT_EQ(t->encode("<|endoftext|>"), (ids{27, 91, 437, 1659, 5239, 91, 29})); // ordinary text
  const auto files = gpt2_tokenizer::files_in(gpt2_dir());
  ASSERT_TRUE(files.has_value());
  EXPECT_EQ(files->first, gpt2_dir() / "encoder.json");
  EXPECT_EQ(files->second, gpt2_dir() / "vocab.bpe");
  EXPECT_NE(error_of([&] { (void)t->decode({50257}); }).find("outside the vocabulary"), std::string::npos);
  EXPECT_NE(error_of([&] { (void)t->decode({-1}); }).find("outside the vocabulary"), std::string::npos);
}

// The expected ids were read off the files by hand (Python's json and a text search, not this
// tokenizer): each pre-token's string in the byte alphabet (space -> "Ġ", newline -> "Ċ") looked up in
// encoder.json, and, where the string is no token, the merges of vocab.bpe applied lowest rank first
// (rank r = line r + 2 of vocab.bpe, the first line being "#version: 0.2").
TEST(Gpt2Tokenizer, EncodesFixedSentences) {
  const gpt2_tokenizer* t = shared_tokenizer();
  if (t == nullptr) {
    GTEST_SKIP() << gpt2_dir() << " is absent: GPT-2's encoder.json and vocab.bpe are not here";
  }
  const auto check = [t](std::string_view text, const ids& expected) {
    SCOPED_TRACE(std::string(text));
    EXPECT_EQ(t->encode(text), expected);
    EXPECT_EQ(t->decode(expected), text);
  };
  // "Hello" | " world": "Hello" = 15496, "Ġworld" = 995 (also the README's known encoding).
  check("Hello world", {15496, 995});
  // " don" | "'t": "Ġdon" = 836, "'t" = 470.
  check(" don't", {836, 470});
  // "It" | "'s" | " 2024" | "!": "It" = 1026, "'s" = 338, "Ġ2024" = 48609, "!" = 0.
  check("It's 2024!", {1026, 338, 48609, 0});
  // "a" | " " | " b" | "\n": two spaces before a letter leave the second for " b" (\s+(?!\S)).
  // "a" = 64, "Ġ" = 220, "Ġb" = 275, "Ċ" = 198.
  check("a  b\n", {64, 220, 275, 198});
  // "Hello" | " " | " world" | "\n\n": "ĊĊ" = 628.
  check("Hello  world\n\n", {15496, 220, 995, 628});
  // "I" | "'" | "M" (contractions are lowercase only) | " here" | " '" | "ll":
  // "I" = 40, "'" = 6, "M" = 44, "Ġhere" = 994, "Ġ'" = 705, "ll" = 297.
  check("I'M here 'll", {40, 6, 44, 994, 705, 297});
  // " tokenizer" is no token. Its merges, by rank: 0 "Ġ t", 7 "e r", 12 "e n", 28 "Ġt o", 272 "i z",
  // 3208 "k en", 7253 "iz er", 10985 "Ġto ken"; no rank joins "Ġtoken izer".
  // "Ġtoken" = 11241, "izer" = 7509.
  check(" tokenizer", {11241, 7509});
  // " Zyzzyva": 912 "Ġ Z", 2763 "z z", 6606 "v a", 31314 "zz y", 40649 "ĠZ y"; then none.
  // "ĠZy" = 40905, "zzy" = 31570, "va" = 6862.
  check(" Zyzzyva", {40905, 31570, 6862});
  // The README's second known encoding.
  check("First Citizen:\nBefore we proceed any further, hear me speak.",
        {5962, 22307, 25, 198, 8421, 356, 5120, 597, 2252, 11, 3285, 502, 2740, 13});
}

// llm.c's tinyshakespeare.py: split on "\n\n"; each section is EOT then the tokens of section + "\n\n"
// (the last section without "\n\n"); the first 32,768 tokens are val, the rest train.
TEST(Gpt2Tokenizer, ReproducesTinyShakespearesGpt2Tokens) {
  const gpt2_tokenizer* t = shared_tokenizer();
  if (t == nullptr) {
    GTEST_SKIP() << gpt2_dir() << " is absent: GPT-2's encoder.json and vocab.bpe are not here";
  }
  if (!fs::exists(shakespeare_dir() / "input.txt") || !fs::exists(shakespeare_dir() / "tiny_shakespeare_val.bin") ||
      !fs::exists(shakespeare_dir() / "tiny_shakespeare_train.bin")) {
    GTEST_SKIP() << shakespeare_dir() << " is absent: TinyShakespeare and its GPT-2 tokens are not here";
  }
  const std::string text = read_file(shakespeare_dir() / "input.txt");
  ids expected = read_llmc_tokens(shakespeare_dir() / "tiny_shakespeare_val.bin");
  ASSERT_EQ(expected.size(), 32768u);
  const ids train = read_llmc_tokens(shakespeare_dir() / "tiny_shakespeare_train.bin");
  ASSERT_EQ(train.size(), 305260u);
  expected.insert(expected.end(), train.begin(), train.end());

  ids got;
  std::size_t sections = 0;
  for (std::size_t at = 0;; ++sections) {
    const std::size_t end = text.find("\n\n", at);
    const bool last = end == std::string::npos;
    got.push_back(t->eot());
    const ids section = t->encode(last ? text.substr(at) : text.substr(at, end - at) + "\n\n");
    got.insert(got.end(), section.begin(), section.end());
    if (last) {
      break;
    }
    at = end + 2;
  }
  ASSERT_EQ(got.size(), expected.size()) << sections << " sections";
  for (std::size_t i = 0; i < got.size(); ++i) {
    ASSERT_EQ(got[i], expected[i]) << "token " << i << " of " << got.size();
  }

  // nanoGPT's shakespeare/prepare.py: the first 90 % of the characters, and the rest, without EOT.
  const std::size_t split = text.size() * 9 / 10;
  const ids first = t->encode(std::string_view(text).substr(0, split));
  const ids rest = t->encode(std::string_view(text).substr(split));
  EXPECT_EQ(first.size(), 301966u);
  EXPECT_EQ(rest.size(), 36059u);
  EXPECT_EQ(t->decode(first) + t->decode(rest), text);
}

TEST(Gpt2Tokenizer, RoundTripsAnyBytes) {
  const gpt2_tokenizer* t = shared_tokenizer();
  if (t == nullptr) {
    GTEST_SKIP() << gpt2_dir() << " is absent: GPT-2's encoder.json and vocab.bpe are not here";
  }
  const std::uint32_t seed = kern::test::fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  const auto check = [t](const std::string& text) {
    std::string joined;
    for (const std::string_view piece : gpt2_tokenizer::pre_tokenize(text)) {
      ASSERT_FALSE(piece.empty());
      joined += piece;
    }
    ASSERT_EQ(joined, text);
    const ids encoded = t->encode(text);
    ASSERT_LE(encoded.size(), text.size());
    ASSERT_EQ(t->decode(encoded), text);
  };
  // Random bytes, mostly invalid UTF-8.
  std::uniform_int_distribution<int> byte(0, 255), length(0, 300);
  for (int i = 0; i < 64; ++i) {
    std::string text(static_cast<std::size_t>(length(rng)), '\0');
    for (char& c : text) {
      c = static_cast<char>(byte(rng));
    }
    check(text);
  }
  // Random valid UTF-8: ASCII, whitespace, contractions, 2-, 3- and 4-byte sequences, combining
  // marks, CJK and emoji.
  const std::uint32_t ranges[][2] = {{0x20, 0x7e},       {0x09, 0x0d},     {0x80, 0x7ff},    {0x300, 0x36f},
                                     {0x800, 0xd7ff},    {0xe000, 0xffff}, {0x4e00, 0x9fff}, {0x10000, 0x10ffff},
                                     {0x1f300, 0x1faff}, {0x2000, 0x200a}, {0x3000, 0x3000}};
  const std::string_view snippets[] = {"'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "  ", " ", "\n\n", "'"};
  std::uniform_int_distribution<std::size_t> pick(0, std::size(ranges) + std::size(snippets) - 1);
  for (int i = 0; i < 64; ++i) {
    std::string text;
    for (int n = length(rng); n > 0; --n) {
      const std::size_t which = pick(rng);
      if (which >= std::size(ranges)) {
        text += snippets[which - std::size(ranges)];
        continue;
      }
      std::uniform_int_distribution<std::uint32_t> code(ranges[which][0], ranges[which][1]);
      append_utf8(text, code(rng));
    }
    ASSERT_TRUE(kern::examples::json::is_valid_utf8(text));
    check(text);
  }
  // Invalid sequences of each kind: stray continuation, truncated, overlong, surrogate, past U+10FFFF.
  for (const std::string_view text : {"\x80", "a\xe2\x82", "\xc0\xaf x", "\xed\xa0\x80's", "\xf4\x90\x80\x80 1"}) {
    check(std::string(text));
  }
}

TEST(Gpt2Tokenizer, CodecUsesAFolderOrFilesBesideTheCheckpoint) {
  if (shared_tokenizer() != nullptr) {
    // A checkpoint of 50,257 tokens finds encoder.json and vocab.bpe beside it (the file need not exist).
    const kern::examples::text_codec codec = kern::examples::codec_for(gpt2_dir() / "model.bin", "", 50257);
    EXPECT_EQ(codec.encode_prompt("Hello world"), (ids{15496, 995}));
    EXPECT_EQ(codec.encode_corpus("Hello world"), (ids{15496, 995}));
    EXPECT_EQ(codec.piece(15496, 995), " world");
    EXPECT_EQ(codec.end, 50256);
  }
  // A folder given as the tokenizer, with Hugging Face's names; the byte tokens are ids 0..255 here.
  const temp_folder folder;
  write_file(folder.path() / "vocab.json", small_encoder({"ab", "abab", "<|endoftext|>"}));
  write_file(folder.path() / "merges.txt", "#version: 0.2\na b\nab ab\n");
  const kern::examples::text_codec codec = kern::examples::codec_for("model.bin", folder.path(), 300);
  EXPECT_EQ(codec.encode_prompt("abab ab"), (ids{257, ' ', 256}));
  EXPECT_EQ(codec.piece(0, 257), "abab");
  EXPECT_EQ(codec.end, 258);
  EXPECT_NE(error_of([&] { (void)kern::examples::codec_for("model.bin", folder.path(), 100); }).find("more than"),
            std::string::npos);
  const temp_folder empty_parent;
  fs::create_directories(empty_parent.path() / "empty");
  EXPECT_NE(error_of([&] {
              (void)kern::examples::codec_for("model.bin", empty_parent.path() / "empty", 300);
            }).find("without encoder.json"),
            std::string::npos);
}

TEST(Gpt2Tokenizer, MergesEveryOccurrenceOfTheBestPairLeftToRight) {
  const temp_folder folder;
  // Ids: the bytes, then "aa" 256, "aaa" 257, "ab" 258. Ranks: "a a" 0, "aa a" 1, "a b" 2.
  write_file(folder.path() / "encoder.json", small_encoder({"aa", "aaa", "ab"}));
  write_file(folder.path() / "vocab.bpe", "a a\naa a\na b");
  const gpt2_tokenizer t(folder.path() / "encoder.json", folder.path() / "vocab.bpe");
  EXPECT_EQ(t.vocab_size(), 259);
  EXPECT_EQ(t.eot(), -1);
  EXPECT_EQ(t.encode("aaa"), (ids{257}));             // "a a" first: aa|a, then "aa a"
  EXPECT_EQ(t.encode("aaaa"), (ids{256, 256}));       // aa|aa: "aa aa" is no merge
  EXPECT_EQ(t.encode("aaab"), (ids{257, 'b'}));       // aa|a|b: "aa a" (rank 1) before "a b" (rank 2)
  EXPECT_EQ(t.encode("aab"), (ids{256, 'b'}));        // "a a" (rank 0) before "a b"
  EXPECT_EQ(t.encode("ab ab"), (ids{258, ' ', 258})); // " ab" is one pre-token; "Ġ ab" is no merge
}

TEST(Gpt2Tokenizer, RejectsBadFilesNamingTheFileAndTheLineOrEntry) {
  const temp_folder folder;
  const fs::path encoder = folder.path() / "encoder.json";
  const fs::path merges = folder.path() / "vocab.bpe";
  const auto error_with = [&](std::string_view encoder_text, std::string_view merges_text) {
    write_file(encoder, encoder_text);
    write_file(merges, merges_text);
    return error_of([&] { (void)gpt2_tokenizer(encoder, merges); });
  };
  const auto expect_error = [](const std::string& message, const fs::path& file, std::string_view what) {
    SCOPED_TRACE(message);
    EXPECT_NE(message.find(file.string()), std::string::npos);
    EXPECT_NE(message.find(what), std::string::npos);
  };
  const std::string good = small_encoder({"ab"});
  ASSERT_EQ(error_with(good, "#version: 0.2\na b\n"), "");

  expect_error(error_of([&] { (void)gpt2_tokenizer(folder.path() / "missing.json", merges); }),
               folder.path() / "missing.json", "cannot open");
  expect_error(error_of([&] { (void)gpt2_tokenizer(encoder, folder.path() / "missing.bpe"); }),
               folder.path() / "missing.bpe", "cannot open");
  expect_error(error_with("{\"a\": 0,}", ""), encoder, "invalid JSON");
  expect_error(error_with("[0, 1]", ""), encoder, "not a JSON object");
  expect_error(error_with(small_encoder({"ab"}).replace(good.size() - 4, 3, "300"), ""), encoder,
               "entry \"ab\": the id must be an integer");
  expect_error(error_with(small_encoder({"ab"}).replace(good.size() - 4, 3, "1.5"), ""), encoder,
               "entry \"ab\": the id must be an integer");
  expect_error(error_with(small_encoder({"ab"}).replace(good.size() - 4, 3, "255"), ""), encoder,
               "entry \"ab\": id 255 is given twice");
  expect_error(error_with(small_encoder({"a b"}), ""), encoder, "entry \"a b\": not a token"); // ' ' is "Ġ"
  expect_error(error_with(small_encoder({""}), ""), encoder, "entry \"\": not a token");
  expect_error(error_with("{\"a\": 0}", ""), encoder, "has no token for the byte 0 (\"\u0100\")");

  expect_error(error_with(good, "#version: 0.2\na b\nab\n"), merges, "line 3: \"ab\" is not two tokens");
  expect_error(error_with(good, "a b c\n"), merges, "line 1: \"a b c\" is not two tokens");
  expect_error(error_with(good, "a b\n\n"), merges, "line 2: \"\" is not two tokens");
  expect_error(error_with(good, "a  b\n"), merges, "line 1: \"a  b\" is not two tokens");
  expect_error(error_with(good, "a b\nab zz\n"), merges, "line 2: \"zz\" is not in the vocabulary of");
  expect_error(error_with(good, "a b\nab zz\n"), encoder, "line 2");
  expect_error(error_with(good, "a b\na c\n"), merges, "line 2: the merge of \"a c\" is not in the vocabulary");
  expect_error(error_with(good, "a b\na b\n"), merges, "line 2: \"a b\" repeats an earlier merge");
}

} // namespace
