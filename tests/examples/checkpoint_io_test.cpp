// Checkpoint input and output of the example transformer: the strict JSON reader (safetensors
// headers, config files), safetensors read and write (bit-exact round trips, a file laid out by hand
// as Hugging Face writes it, every kind of corruption, atomic replacement, a writer killed
// mid-write) and llama2.c .bin checkpoints (the real stories260K model, a synthetic one with every
// array distinct, corrupt copies).
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <bit>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <iterator>
#include <limits>
#include <map>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "kern/core/dtype.hpp"
#include "kern/core/error.hpp"
#include "support/kernel_test.hpp"
#include "transformer/llama2c.hpp"
#include "transformer/safetensors.hpp"

namespace {

namespace fs = std::filesystem;
using kern::dtype;
using kern::index_t;
using kern::examples::safetensors_file;
using kern::examples::safetensors_writer;

// A new folder under the system's temporary folder, removed with its contents.
class temp_folder {
public:
  temp_folder() {
    static int counter = 0;
    path_ = fs::temp_directory_path() /
            ("kern_checkpoint_io_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  temp_folder(const temp_folder&) = delete;
  temp_folder& operator=(const temp_folder&) = delete;
  ~temp_folder() {
    std::error_code ignored;
    fs::permissions(path_, fs::perms::owner_all, fs::perm_options::add, ignored);
    fs::remove_all(path_, ignored);
  }

  const fs::path& path() const { return path_; }
  fs::path operator/(std::string_view name) const { return path_ / name; }

  // The names of the files in the folder, sorted.
  std::vector<std::string> names() const {
    std::vector<std::string> out;
    for (const fs::directory_entry& entry : fs::directory_iterator(path_)) {
      out.push_back(entry.path().filename().string());
    }
    std::ranges::sort(out);
    return out;
  }

private:
  fs::path path_;
};

std::string read_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_bytes(const fs::path& path, std::string_view bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << "cannot write " << path;
}

std::string message_of(auto&& call) {
  try {
    call();
  } catch (const kern::error& e) {
    return e.what();
  }
  return "(no kern::error thrown)";
}

void expect_message(const std::string& message, const std::vector<std::string_view>& parts) {
  for (const std::string_view part : parts) {
    EXPECT_NE(message.find(part), std::string::npos) << "\"" << part << "\" is missing from: " << message;
  }
}

// Little-endian bytes, written out one by one (independent of the code under test).
std::string le_bytes(std::uint64_t value, int count) {
  std::string out;
  for (int i = 0; i < count; ++i) {
    out += static_cast<char>((value >> (8 * i)) & 0xffu);
  }
  return out;
}

std::string f32_bytes(std::initializer_list<float> values) {
  std::string out;
  for (const float v : values) {
    out += le_bytes(std::bit_cast<std::uint32_t>(v), 4);
  }
  return out;
}

// A safetensors file: the 8-byte header length, the header as given (no padding), the data.
std::string safetensors_bytes(std::string_view header, std::string_view data) {
  return le_bytes(header.size(), 8) + std::string(header) + std::string(data);
}

template <class T> std::vector<std::uint32_t> float_bits(const std::vector<T>& values) {
  std::vector<std::uint32_t> out;
  out.reserve(values.size());
  for (const T v : values) {
    out.push_back(std::bit_cast<std::uint32_t>(static_cast<float>(v)));
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------
// JSON

TEST(Json, ParsesObjectsArraysStringsAndIntegers) {
  using kern::examples::json::value;
  const value root = kern::examples::json::parse(
      " {\"a\": [0, -2, 9223372036854775807, -9223372036854775808], \"b\": {\"c\": "
      "\"q\\\"b\\\\s\\/\\b\\f\\n\\r\\t\\u00e9\\u20AC\\ud83d\\ude00 \xc3\xa9\"}, \"d\": [], \"e\": {}}\n ",
      "test");
  ASSERT_EQ(root.type, value::kind::object);
  ASSERT_EQ(root.members.size(), 4u);
  EXPECT_EQ(root.members[0].key, "a");
  const value& a = root.members[0].item;
  ASSERT_EQ(a.type, value::kind::array);
  ASSERT_EQ(a.items.size(), 4u);
  EXPECT_EQ(a.items[0].integer, 0);
  EXPECT_EQ(a.items[1].integer, -2);
  EXPECT_EQ(a.items[2].integer, std::numeric_limits<std::int64_t>::max());
  EXPECT_EQ(a.items[3].integer, std::numeric_limits<std::int64_t>::min());
  const value& c = root.members[1].item.members.at(0).item;
  ASSERT_EQ(c.type, value::kind::string);
  EXPECT_EQ(c.string, "q\"b\\s/\b\f\n\r\t\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80 \xc3\xa9");
  EXPECT_EQ(root.members[2].item.type, value::kind::array);
  EXPECT_TRUE(root.members[2].item.items.empty());
  EXPECT_EQ(root.members[3].item.type, value::kind::object);
  EXPECT_TRUE(root.members[3].item.members.empty());
}

TEST(Json, ParsesNumbersWithAFractionOrAnExponentAsDouble) {
  using kern::examples::json::value;
  const value root = kern::examples::json::parse(
      "[1e-05, 0.02, -1.5E+3, 2e0, 0.1, 1.7976931348623157e308, 5e-324, -0.0, 7, 1E2]", "config.json");
  ASSERT_EQ(root.type, value::kind::array);
  ASSERT_EQ(root.items.size(), 10u);
  const double expected[] = {1e-05, 0.02, -1.5e3, 2.0, 0.1, std::numeric_limits<double>::max(), 5e-324, -0.0};
  for (std::size_t i = 0; i < std::size(expected); ++i) {
    SCOPED_TRACE(i);
    EXPECT_EQ(root.items[i].type, value::kind::number);
    EXPECT_EQ(std::bit_cast<std::uint64_t>(root.items[i].number), std::bit_cast<std::uint64_t>(expected[i]));
  }
  EXPECT_EQ(root.items[8].type, value::kind::integer) << "no fraction, no exponent: an integer";
  EXPECT_EQ(root.items[8].integer, 7);
  EXPECT_EQ(root.items[9].type, value::kind::number) << "an exponent makes a number";
  EXPECT_EQ(root.items[9].number, 100.0);
}

TEST(Json, ParsesTrueFalseAndNull) {
  using kern::examples::json::value;
  const value root = kern::examples::json::parse(
      "{\"tie_word_embeddings\": false, \"use_cache\":true,\"rope_scaling\" : null, \"list\": [null,true]}",
      "config.json");
  ASSERT_EQ(root.type, value::kind::object);
  ASSERT_EQ(root.members.size(), 4u);
  EXPECT_EQ(root.members[0].item.type, value::kind::boolean);
  EXPECT_FALSE(root.members[0].item.boolean);
  EXPECT_EQ(root.members[1].item.type, value::kind::boolean);
  EXPECT_TRUE(root.members[1].item.boolean);
  EXPECT_EQ(root.members[2].item.type, value::kind::null);
  const value& list = root.members[3].item;
  ASSERT_EQ(list.items.size(), 2u);
  EXPECT_EQ(list.items[0].type, value::kind::null);
  EXPECT_EQ(list.items[1].type, value::kind::boolean);
  EXPECT_TRUE(list.items[1].boolean);
}

TEST(Json, QuoteRoundTrips) {
  const std::string text = std::string("tab\t nl\n quote\" backslash\\ nul") + '\0' + " \x1f \xc3\xa9 \xf0\x9f\x98\x80";
  const std::string quoted = kern::examples::json::quote(text);
  EXPECT_EQ(quoted.find('\n'), std::string::npos);
  EXPECT_EQ(quoted.find('\0'), std::string::npos);
  EXPECT_EQ(kern::examples::json::parse(quoted, "test").string, text);
}

TEST(Json, RejectsWhatIsNotStrictJsonNamingThePlace) {
  const std::string deep = std::string(40, '[') + std::string(40, ']');
  for (const std::string_view bad : std::initializer_list<std::string_view>{"",
                                                                            "{",
                                                                            "{\"a\":1,}",
                                                                            "[1 2]",
                                                                            "{\"a\" 1}",
                                                                            "{a:1}",
                                                                            "01",
                                                                            "-",
                                                                            "01.5",
                                                                            "-.5",
                                                                            ".5",
                                                                            "+1",
                                                                            "1.",
                                                                            "1.e3",
                                                                            "1e",
                                                                            "1e+",
                                                                            "1e999",
                                                                            "-1e999",
                                                                            "NaN",
                                                                            "Infinity",
                                                                            "tru",
                                                                            "True",
                                                                            "nul",
                                                                            "[true false]",
                                                                            "99999999999999999999",
                                                                            "-9223372036854775809",
                                                                            "\"abc",
                                                                            "\"\\x\"",
                                                                            "\"\\u12\"",
                                                                            "\"\\ud800\"",
                                                                            "\"\\udc00\"",
                                                                            "\"\\ud800\\u0041\"",
                                                                            "\"a\x01\"",
                                                                            "\"\xff\"",
                                                                            "\"\xc0\xaf\"",
                                                                            "\"\xed\xa0\x80\"",
                                                                            "\"\xf4\x90\x80\x80\"",
                                                                            "\"\xe2\x82\"",
                                                                            "{\"a\":1,\"a\":2}",
                                                                            "{} x",
                                                                            deep}) {
    SCOPED_TRACE(std::string(bad));
    expect_message(message_of([&] { kern::examples::json::parse(bad, "header.json"); }),
                   {"header.json", "invalid JSON header at byte"});
  }
}

// ---------------------------------------------------------------------------------------------------
// safetensors: reading and writing

TEST(Safetensors, RoundTripIsBitExact) {
  const std::uint32_t seed = kern::test::fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  std::uniform_int_distribution<std::uint32_t> bits32;
  std::uniform_int_distribution<std::uint16_t> bits16;

  // Every bit pattern must survive: NaN payloads, signed zeros, infinities, subnormals.
  std::vector<float> f32(std::size_t{3} * 7);
  for (float& v : f32) {
    v = std::bit_cast<float>(bits32(rng));
  }
  f32[0] = -0.0f;
  f32[1] = std::numeric_limits<float>::infinity();
  f32[2] = std::numeric_limits<float>::denorm_min();
  f32[3] = std::bit_cast<float>(0x7fa12345u); // a signalling NaN with a payload
  std::vector<kern::bf16> bf16(5);
  for (kern::bf16& v : bf16) {
    v = kern::bf16::from_bits(bits16(rng));
  }
  std::vector<kern::f16> f16(std::size_t{2} * 3 * 2);
  for (kern::f16& v : f16) {
    v = kern::f16::from_bits(bits16(rng));
  }
  const std::vector<float> rounded = kern::test::random_values<float>(rng, 9, -100.0f, 100.0f);
  const std::vector<float> scalar = {3.5f};
  const std::vector<float> none;

  safetensors_writer writer;
  writer.add("b.weights.f32", {3, 7}, f32);
  writer.add("a.odd.bf16", {5}, bf16); // 10 bytes, first by name: F32 tensors must still be 4-byte aligned
  writer.add("f16", {2, 3, 2}, f16);
  writer.add("rounded", {3, 3}, rounded, dtype::bf16);
  writer.add("scalar", {}, scalar);
  writer.add("empty", {0, 4}, none);
  writer.set_metadata("format", "pt");
  writer.set_metadata("note \"quoted\"\n", "caf\xc3\xa9 \xf0\x9f\x98\x80");
  temp_folder folder;
  writer.write(folder / "a.safetensors");
  writer.write(folder / "a.safetensors"); // over an existing file
  writer.write(folder / "b.safetensors");
  EXPECT_EQ(folder.names(), (std::vector<std::string>{"a.safetensors", "b.safetensors"})); // no .tmp. left
  const std::string bytes = read_bytes(folder / "a.safetensors");
  EXPECT_EQ(bytes, read_bytes(folder / "b.safetensors")); // deterministic

  const safetensors_file file = safetensors_file::read(folder / "a.safetensors");
  EXPECT_EQ(file.metadata(), (std::map<std::string, std::string>{
                                 {"format", "pt"}, {"note \"quoted\"\n", "caf\xc3\xa9 \xf0\x9f\x98\x80"}}));
  EXPECT_EQ(file.names(),
            (std::vector<std::string>{"a.odd.bf16", "b.weights.f32", "empty", "f16", "rounded", "scalar"}));
  EXPECT_TRUE(file.contains("rounded"));
  EXPECT_FALSE(file.contains("round"));
  EXPECT_EQ(file.info("f16").type, dtype::f16);
  EXPECT_EQ(file.info("f16").shape, (std::vector<index_t>{2, 3, 2}));
  EXPECT_EQ(file.info("rounded").type, dtype::bf16);
  EXPECT_TRUE(file.info("scalar").shape.empty());
  EXPECT_EQ(file.info("empty").shape, (std::vector<index_t>{0, 4}));

  // The header pads the data to 8 bytes; every tensor is aligned to its element size.
  std::uint64_t header_length = 0;
  std::memcpy(&header_length, bytes.data(), 8);
  EXPECT_EQ((8 + header_length) % 8, 0u);
  for (const std::string& name : file.names()) {
    EXPECT_EQ(file.info(name).begin % kern::size_of(file.info(name).type), 0u) << name;
  }

  const auto stored = file.bytes("b.weights.f32");
  ASSERT_EQ(stored.size(), f32.size() * 4);
  EXPECT_EQ(std::memcmp(stored.data(), f32.data(), stored.size()), 0);
  ASSERT_EQ(file.bytes("a.odd.bf16").size(), bf16.size() * 2);
  EXPECT_EQ(std::memcmp(file.bytes("a.odd.bf16").data(), bf16.data(), bf16.size() * 2), 0);
  ASSERT_EQ(file.bytes("f16").size(), f16.size() * 2);
  EXPECT_EQ(std::memcmp(file.bytes("f16").data(), f16.data(), f16.size() * 2), 0);

  // read_f32 widens exactly.
  std::vector<float> out(f32.size());
  file.read_f32("b.weights.f32", out, {3, 7});
  EXPECT_EQ(float_bits(out), float_bits(f32));
  out.resize(bf16.size());
  file.read_f32("a.odd.bf16", out, {5});
  EXPECT_EQ(float_bits(out), float_bits(bf16));
  out.resize(f16.size());
  file.read_f32("f16", out, {2, 3, 2});
  EXPECT_EQ(float_bits(out), float_bits(f16));
  out.resize(rounded.size());
  file.read_f32("rounded", out, {3, 3});
  for (std::size_t i = 0; i < rounded.size(); ++i) {
    EXPECT_EQ(std::bit_cast<std::uint32_t>(out[i]), std::bit_cast<std::uint32_t>(float(kern::bf16(rounded[i]))));
  }
  out.resize(1);
  file.read_f32("scalar", out, {});
  EXPECT_EQ(out[0], 3.5f);
  std::vector<float> nothing;
  file.read_f32("empty", nothing, {0, 4});
}

// The layout Hugging Face writes for a small GPT-2-named checkpoint, spelled out byte by byte.
std::string hand_written_gpt2_file() {
  std::string header = "{\"__metadata__\":{\"format\":\"pt\"},"
                       "\"h.0.attn.c_attn.weight\":{\"dtype\":\"F32\",\"shape\":[2,6],\"data_offsets\":[0,48]},"
                       "\"wte.weight\":{\"dtype\":\"BF16\",\"shape\":[3,2],\"data_offsets\":[48,60]}}";
  header.resize((header.size() + 7) / 8 * 8, ' ');
  const std::string c_attn =
      f32_bytes({0.5f, -1.0f, 2.0f, 0.25f, 1e-3f, -3.75f, 7.0f, 8.0f, -0.0f, 1e10f, 6.5f, -2.5f});
  // bf16 bits 0x3f80 = 1, 0xc000 = -2, 0x3f00 = 0.5, 0x4040 = 3, 0xbe80 = -0.25, 0x3fc0 = 1.5
  const std::string wte = {'\x80', '\x3f', '\x00', '\xc0', '\x00', '\x3f',
                           '\x40', '\x40', '\x80', '\xbe', '\xc0', '\x3f'};
  return safetensors_bytes(header, c_attn + wte);
}

TEST(Safetensors, ReadsAFileLaidOutByHandAndWritesTheSameBytes) {
  temp_folder folder;
  const std::string expected = hand_written_gpt2_file();
  write_bytes(folder / "gpt2.safetensors", expected);
  const safetensors_file file = safetensors_file::read(folder / "gpt2.safetensors");
  EXPECT_EQ(file.metadata(), (std::map<std::string, std::string>{{"format", "pt"}}));
  EXPECT_EQ(file.names(), (std::vector<std::string>{"h.0.attn.c_attn.weight", "wte.weight"}));
  std::vector<float> c_attn(12);
  file.read_f32("h.0.attn.c_attn.weight", c_attn, {2, 6});
  const std::vector<float> c_attn_expected = {0.5f, -1.0f, 2.0f,  0.25f, 1e-3f, -3.75f,
                                              7.0f, 8.0f,  -0.0f, 1e10f, 6.5f,  -2.5f};
  EXPECT_EQ(float_bits(c_attn), float_bits(c_attn_expected));
  std::vector<float> wte(6);
  file.read_f32("wte.weight", wte, {3, 2});
  EXPECT_EQ(wte, (std::vector<float>{1.0f, -2.0f, 0.5f, 3.0f, -0.25f, 1.5f}));

  // The writer lays the same tensors out the same way, to the byte.
  std::vector<kern::bf16> wte_bf16;
  wte_bf16.reserve(wte.size());
  for (const float v : wte) {
    wte_bf16.emplace_back(v);
  }
  safetensors_writer writer;
  writer.add("wte.weight", {3, 2}, wte_bf16);
  writer.add("h.0.attn.c_attn.weight", {2, 6}, c_attn);
  writer.set_metadata("format", "pt");
  writer.write(folder / "written.safetensors");
  EXPECT_EQ(read_bytes(folder / "written.safetensors"), expected);
}

struct corruption {
  std::string_view label;
  std::string bytes;
  std::vector<std::string_view> message_parts;
};

TEST(Safetensors, EveryCorruptionNamesTheFileAndTheTensor) {
  const auto entry = [](std::string_view name, std::string_view type, std::string_view shape,
                        std::string_view offsets) {
    return "\"" + std::string(name) + "\":{\"dtype\":\"" + std::string(type) + "\",\"shape\":" + std::string(shape) +
           ",\"data_offsets\":" + std::string(offsets) + "}";
  };
  const std::string a = entry("a", "F32", "[2]", "[0,8]");
  const std::string data8(8, '\x01'), data12(12, '\x01');
  const std::vector<corruption> cases = {
      {"length field cut short", std::string(5, '\0'), {"5 bytes, too short for the 8-byte header length"}},
      {"length beyond the file", le_bytes(1000, 8) + "{}" + data8, {"header length 1000 exceeds the 10 bytes"}},
      {"invalid JSON", safetensors_bytes("{\"a\":{\"dtype\":\"F32\",", data8), {"invalid JSON header at byte 20"}},
      {"header not an object", safetensors_bytes("[1]", ""), {"not a JSON object"}},
      {"metadata not an object", safetensors_bytes("{\"__metadata__\":[]}", ""), {"\"__metadata__\" is not an object"}},
      {"metadata value not a string",
       safetensors_bytes("{\"__metadata__\":{\"format\":1}}", ""),
       {"\"__metadata__\" value of \"format\""}},
      {"metadata value a number",
       safetensors_bytes("{\"__metadata__\":{\"format\":1.5}}", ""),
       {"\"__metadata__\" value of \"format\" is not a string"}},
      {"metadata value false",
       safetensors_bytes("{\"__metadata__\":{\"format\":false}}", ""),
       {"\"__metadata__\" value of \"format\" is not a string"}},
      {"entry not an object", safetensors_bytes("{\"a\":[]}", ""), {"tensor \"a\": the entry is not an object"}},
      {"unknown dtype",
       safetensors_bytes("{" + entry("a", "I64", "[1]", "[0,8]") + "}", data8),
       {"tensor \"a\"", "dtype \"I64\" is not supported"}},
      {"dtype missing",
       safetensors_bytes("{\"a\":{\"shape\":[2],\"data_offsets\":[0,8]}}", data8),
       {"tensor \"a\"", "\"dtype\" is missing"}},
      {"shape missing",
       safetensors_bytes("{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,8]}}", data8),
       {"tensor \"a\"", "\"shape\" is missing"}},
      {"offsets not a pair",
       safetensors_bytes("{" + entry("a", "F32", "[2]", "[0,8,8]") + "}", data8),
       {"tensor \"a\"", "\"data_offsets\" is missing or not an array [begin, end]"}},
      {"unknown field",
       safetensors_bytes("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8],\"extra\":1}}", data8),
       {"tensor \"a\"", "unknown field \"extra\""}},
      {"negative extent",
       safetensors_bytes("{" + entry("a", "F32", "[-2]", "[0,8]") + "}", data8),
       {"tensor \"a\"", "\"shape\" holds something other than a non-negative integer"}},
      {"fractional extent",
       safetensors_bytes("{" + entry("a", "F32", "[2.0]", "[0,8]") + "}", data8),
       {"tensor \"a\"", "\"shape\" holds something other than a non-negative integer"}},
      {"extent true",
       safetensors_bytes("{" + entry("a", "F32", "[true]", "[0,8]") + "}", data8),
       {"tensor \"a\"", "\"shape\" holds something other than a non-negative integer"}},
      {"fractional offset",
       safetensors_bytes("{" + entry("a", "F32", "[2]", "[0,8.5]") + "}", data8),
       {"tensor \"a\"", "\"data_offsets\" holds something other than a non-negative integer"}},
      {"offset in exponent form",
       safetensors_bytes("{" + entry("a", "F32", "[2]", "[0,8e0]") + "}", data8),
       {"tensor \"a\"", "\"data_offsets\" holds something other than a non-negative integer"}},
      {"offset null",
       safetensors_bytes("{" + entry("a", "F32", "[2]", "[null,8]") + "}", data8),
       {"tensor \"a\"", "\"data_offsets\" holds something other than a non-negative integer"}},
      {"offsets past the buffer",
       safetensors_bytes("{" + entry("a", "F32", "[4]", "[0,16]") + "}", data8),
       {"tensor \"a\"", "data_offsets [0, 16] are not within the 8-byte data buffer"}},
      {"offsets reversed",
       safetensors_bytes("{" + entry("a", "F32", "[0]", "[8,0]") + "}", data8),
       {"tensor \"a\"", "data_offsets [8, 0] are not within"}},
      {"size not matching the shape",
       safetensors_bytes("{" + entry("a", "F32", "[3]", "[0,8]") + "}", data8),
       {"tensor \"a\"", "shape [3] of F32 needs 12 bytes but data_offsets [0, 8] hold 8"}},
      {"shape overflowing",
       safetensors_bytes("{" + entry("a", "F32", "[4294967296,4294967296]", "[0,8]") + "}", data8),
       {"tensor \"a\"", "needs more than 2^64 bytes"}},
      {"overlapping tensors",
       safetensors_bytes("{" + a + "," + entry("b", "BF16", "[2]", "[4,8]") + "}", data8),
       {"tensor \"b\": data_offsets [4, 8] overlap tensor \"a\", which ends at 8"}},
      {"a gap between tensors",
       safetensors_bytes("{" + a + "," + entry("b", "BF16", "[1]", "[10,12]") + "}", data12),
       {"tensor \"b\": data_offsets [10, 12] leave the bytes [8, 10) of the data buffer unused"}},
      {"a gap at the start",
       safetensors_bytes("{" + entry("b", "BF16", "[2]", "[4,8]") + "}", data8),
       {"tensor \"b\"", "leave the bytes [0, 4)"}},
      {"buffer not covered to its end",
       safetensors_bytes("{" + a + "}", data12),
       {"the tensors cover 8 bytes of the 12-byte data buffer"}},
  };
  temp_folder folder;
  const fs::path path = folder / "corrupt.safetensors";
  for (const corruption& c : cases) {
    SCOPED_TRACE(c.label);
    write_bytes(path, c.bytes);
    const std::string message = message_of([&] { safetensors_file::read(path); });
    expect_message(message, {"kern::examples::safetensors", "corrupt.safetensors"});
    expect_message(message, c.message_parts);
  }
  // The baseline of these cases is a valid file.
  write_bytes(path, safetensors_bytes("{" + a + "," + entry("b", "BF16", "[2]", "[8,12]") + "}", data12));
  EXPECT_EQ(safetensors_file::read(path).names(), (std::vector<std::string>{"a", "b"}));

  expect_message(message_of([&] { safetensors_file::read(folder / "absent.safetensors"); }),
                 {"absent.safetensors", "cannot open", "No such file"});
  expect_message(message_of([&] { safetensors_file::read(folder.path()); }), {"not a regular file"});
}

TEST(Safetensors, LookupErrorsNameTheFileTheTensorAndTheShapes) {
  temp_folder folder;
  write_bytes(folder / "gpt2.safetensors", hand_written_gpt2_file());
  const safetensors_file file = safetensors_file::read(folder / "gpt2.safetensors");
  expect_message(message_of([&] { (void)file.info("lm_head.weight"); }),
                 {"gpt2.safetensors", "no tensor named \"lm_head.weight\""});
  std::vector<float> out(12);
  expect_message(message_of([&] {
                   file.read_f32("h.0.attn.c_attn.weight", out, {6, 2});
                 }),
                 {"gpt2.safetensors", "tensor \"h.0.attn.c_attn.weight\" has shape [2, 6], expected [6, 2]"});
  expect_message(message_of([&] { file.read_f32("h.0.attn.c_attn.weight", out, {12}); }),
                 {"has shape [2, 6], expected [12]"});
  out.resize(11);
  expect_message(message_of([&] {
                   file.read_f32("h.0.attn.c_attn.weight", out, {2, 6});
                 }),
                 {"gpt2.safetensors", "tensor \"h.0.attn.c_attn.weight\" has 12 elements but the output holds 11"});
}

TEST(SafetensorsWriter, RejectsInconsistentTensors) {
  const std::vector<float> six(6);
  safetensors_writer writer;
  writer.add("w", {2, 3}, six);
  expect_message(message_of([&] {
                   writer.add("x", {2, 4}, six);
                 }),
                 {"tensor \"x\": shape [2, 4] has 8 elements but the data holds 6"});
  expect_message(message_of([&] { writer.add("w", {6}, six); }), {"tensor \"w\" was already added"});
  expect_message(message_of([&] { writer.add("n", {-2, -3}, six); }), {"tensor \"n\"", "negative extent"});
  expect_message(message_of([&] { writer.add("__metadata__", {6}, six); }), {"empty or reserved"});
  expect_message(message_of([&] { writer.add("", {6}, six); }), {"empty or reserved"});
  expect_message(message_of([&] { writer.add("bad\xff", {6}, six); }), {"not valid UTF-8"});
  expect_message(message_of([&] { writer.add("null", {6}, std::span<const float>()); }),
                 {"tensor \"null\"", "has 6 elements but the data holds 0"});
  expect_message(message_of([&] { writer.set_metadata("k", "\xc0\x80"); }), {"metadata \"k\" is not valid UTF-8"});
}

// A valid checkpoint to be overwritten: tensor "old" with known values.
std::vector<float> write_old_checkpoint(const fs::path& path) {
  std::vector<float> values(1000);
  for (std::size_t i = 0; i < values.size(); ++i) {
    values[i] = static_cast<float>(i) * 0.5f - 7.0f;
  }
  safetensors_writer writer;
  writer.add("old", {10, 100}, values);
  writer.set_metadata("step", "100");
  writer.write(path);
  return values;
}

void expect_old_checkpoint(const fs::path& path, const std::vector<float>& values) {
  const safetensors_file file = safetensors_file::read(path);
  EXPECT_EQ(file.metadata().at("step"), "100");
  std::vector<float> out(values.size());
  file.read_f32("old", out, {10, 100});
  EXPECT_EQ(float_bits(out), float_bits(values));
}

// Runs `body` in a child process and returns its wait status; `body` ends with _exit.
template <class Body> int in_child(Body body) {
  const ::pid_t child = ::fork();
  if (child == 0) {
    body();
    ::_exit(99);
  }
  int status = -1;
  EXPECT_GT(child, 0) << "fork failed";
  if (child > 0) {
    EXPECT_EQ(::waitpid(child, &status, 0), child);
  }
  return status;
}

TEST(SafetensorsWriter, FailedWriteLeavesThePreviousFileAndNoTemporary) {
  temp_folder folder;
  const fs::path path = folder / "model.safetensors";
  const std::vector<float> old_values = write_old_checkpoint(path);
  const std::string old_bytes = read_bytes(path);
  // A file-size limit makes the write fail part way, for root too. The child sets it, so that this
  // process keeps its own limits.
  const int status = in_child([&] {
    ::rlimit limit{};
    ::getrlimit(RLIMIT_FSIZE, &limit);
    limit.rlim_cur = ::rlim_t{64} << 10;
    ::setrlimit(RLIMIT_FSIZE, &limit);
    std::signal(SIGXFSZ, SIG_IGN); // a write past the limit then fails with EFBIG instead of killing
    const std::vector<float> big(1 << 20, 1.0f);
    safetensors_writer writer;
    writer.add("big", {1 << 20}, big);
    try {
      writer.write(path);
    } catch (const kern::error& e) {
      const std::string message = e.what();
      ::_exit(message.find("model.safetensors") != std::string::npos &&
                      message.find("cannot write") != std::string::npos
                  ? 0
                  : 1);
    }
    ::_exit(2);
  });
  ASSERT_TRUE(WIFEXITED(status)) << "status " << status;
  EXPECT_EQ(WEXITSTATUS(status), 0) << "1: the message does not name the file and the failure, 2: no error";
  EXPECT_EQ(read_bytes(path), old_bytes);
  EXPECT_EQ(folder.names(), std::vector<std::string>{"model.safetensors"});
  expect_old_checkpoint(path, old_values);
}

TEST(SafetensorsWriter, UnwritableFolderLeavesThePreviousFile) {
  if (::geteuid() == 0) {
    GTEST_SKIP() << "root ignores folder permissions; FailedWriteLeavesThePreviousFileAndNoTemporary covers this";
  }
  temp_folder folder;
  const fs::path path = folder / "model.safetensors";
  const std::vector<float> old_values = write_old_checkpoint(path);
  const std::string old_bytes = read_bytes(path);
  fs::permissions(folder.path(), fs::perms::owner_read | fs::perms::owner_exec);
  const std::vector<float> values(10, 2.0f);
  safetensors_writer writer;
  writer.add("new", {10}, values);
  expect_message(message_of([&] { writer.write(path); }),
                 {"model.safetensors", "cannot create the temporary file", "Permission denied"});
  fs::permissions(folder.path(), fs::perms::owner_all);
  EXPECT_EQ(read_bytes(path), old_bytes);
  EXPECT_EQ(folder.names(), std::vector<std::string>{"model.safetensors"});
  expect_old_checkpoint(path, old_values);
}

TEST(SafetensorsWriter, KilledWriterLeavesThePreviousFileIntact) {
#if defined(__SANITIZE_ADDRESS__)
  constexpr index_t big_floats = index_t{12} << 20; // 48 MB: sanitizers slow the filling down
#else
  constexpr index_t big_floats = index_t{50} << 20; // 200 MB
#endif
  temp_folder folder;
  const fs::path path = folder / "model.safetensors";
  const std::vector<float> old_values = write_old_checkpoint(path);
  const std::string old_bytes = read_bytes(path);

  const ::pid_t child = ::fork();
  ASSERT_GE(child, 0) << "fork failed";
  if (child == 0) {
    const std::vector<float> big(static_cast<std::size_t>(big_floats), 0.25f);
    safetensors_writer writer;
    writer.add("big", {big_floats}, big);
    writer.write(path);
    ::_exit(0);
  }
  // Kill the writer once its temporary holds a few megabytes: mid-write, not before, not after.
  const fs::path temp = path.string() + ".tmp." + std::to_string(child);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  bool writing = false;
  int status = 0;
  while (!writing && std::chrono::steady_clock::now() < deadline && ::waitpid(child, &status, WNOHANG) == 0) {
    std::error_code missing;
    writing = fs::file_size(temp, missing) >= (std::uintmax_t{4} << 20) && !missing;
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  ::kill(child, SIGKILL);
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(writing) << "the writer never got a few megabytes into its temporary file";
  ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << "the writer finished before it was killed";

  EXPECT_EQ(read_bytes(path), old_bytes);
  expect_old_checkpoint(path, old_values);
  for (const std::string& name : folder.names()) {
    EXPECT_TRUE(name == "model.safetensors" || name.starts_with("model.safetensors.tmp.")) << name;
  }
}

// ---------------------------------------------------------------------------------------------------
// llama2.c checkpoints

#ifndef KERN_SHARED_DATA_DIR
#error "KERN_SHARED_DATA_DIR must name the shared data folder"
#endif

fs::path stories260k() { return fs::path(KERN_SHARED_DATA_DIR) / "stories260K" / "stories260K.bin"; }

// n floats of a llama2.c file, `offset` floats after the 28-byte header, read directly.
std::vector<float> floats_at(const fs::path& path, std::uint64_t offset, std::size_t n) {
  std::ifstream in(path, std::ios::binary);
  in.seekg(static_cast<std::streamoff>(28 + 4 * offset));
  std::vector<float> out(n);
  in.read(reinterpret_cast<char*>(out.data()), static_cast<std::streamsize>(4 * n));
  EXPECT_TRUE(in.good()) << "cannot read " << n << " floats at " << offset << " of " << path;
  return out;
}

TEST(Llama2c, LoadsStories260K) {
  if (!fs::exists(stories260k())) {
    GTEST_SKIP() << "shared data absent: " << stories260k() << " not found";
  }
  const kern::examples::llama2c_checkpoint checkpoint = kern::examples::read_llama2c(stories260k());
  const kern::examples::llama2c_config& c = checkpoint.config;
  EXPECT_EQ(c.dim, 64);
  EXPECT_EQ(c.hidden_dim, 172);
  EXPECT_EQ(c.n_layers, 5);
  EXPECT_EQ(c.n_heads, 8);
  EXPECT_EQ(c.n_kv_heads, 4);
  EXPECT_EQ(c.vocab_size, 512);
  EXPECT_EQ(c.seq_len, 512);
  EXPECT_TRUE(c.shared_classifier);
  EXPECT_EQ(c.kv_dim(), 32);
  EXPECT_EQ(checkpoint.rope_pairing, kern::ops::rope_pairing::adjacent);
  EXPECT_EQ(checkpoint.parameter_count(), 260'032);
  EXPECT_EQ(checkpoint.tensors.size(), 1u + 5u * 9u + 1u);
  for (const kern::examples::named_tensor& t : checkpoint.tensors) {
    index_t elements = 1;
    for (const index_t extent : t.shape) {
      elements *= extent;
    }
    EXPECT_TRUE(std::cmp_equal(t.values.size(), elements)) << t.name;
    EXPECT_TRUE(std::ranges::all_of(t.values, [](float v) { return std::isfinite(v); })) << t.name;
  }
  EXPECT_EQ(checkpoint.tensor("model.layers.4.mlp.down_proj.weight").shape, (std::vector<index_t>{64, 172}));
  EXPECT_EQ(checkpoint.tensor("model.layers.0.self_attn.k_proj.weight").shape, (std::vector<index_t>{32, 64}));
  expect_message(message_of([&] { (void)checkpoint.tensor("lm_head.weight"); }),
                 {"stories260K.bin", "no tensor named \"lm_head.weight\""});

  // Spot checks against the file itself: the first embedding row, layer 1's k_proj (wk[1], after
  // token_embedding [512, 64], rms_att [5, 64], wq [5, 64, 64] and wk[0] [32, 64]), and the final
  // norm (just before the freq_cis arrays).
  constexpr std::uint64_t wk1 = std::uint64_t{64} * (512 + 5 + 5 * 64 + 32);
  const auto& embed = checkpoint.tensor("model.embed_tokens.weight").values;
  EXPECT_EQ(float_bits(std::vector<float>(embed.begin(), embed.begin() + 64)),
            float_bits(floats_at(stories260k(), 0, 64)));
  EXPECT_EQ(float_bits(checkpoint.tensor("model.layers.1.self_attn.k_proj.weight").values),
            float_bits(floats_at(stories260k(), wk1, std::size_t{32} * 64)));
  const std::uint64_t file_floats = (fs::file_size(stories260k()) - 28) / 4;
  EXPECT_EQ(float_bits(checkpoint.tensor("model.norm.weight").values),
            float_bits(floats_at(stories260k(), file_floats - std::uint64_t{2} * 512 * 4 - 64, 64)));
}

// A llama2.c file whose i-th float is i, with the header given.
std::string synthetic_llama2c(const std::array<std::int32_t, 7>& header, std::uint64_t floats) {
  std::string out;
  for (const std::int32_t field : header) {
    out += le_bytes(static_cast<std::uint32_t>(field), 4);
  }
  for (std::uint64_t i = 0; i < floats; ++i) {
    out += le_bytes(std::bit_cast<std::uint32_t>(static_cast<float>(i)), 4);
  }
  return out;
}

TEST(Llama2c, UnsharedClassifierAndEveryArrayInPlace) {
  // dim 4, hidden 6, 2 layers, 2 heads (head size 2), 1 K/V head (kv_dim 2), vocab 5 unshared, seq_len 3.
  struct array {
    std::string_view name; // the Hugging Face name after "model.layers.{l}." (or the whole name)
    std::uint64_t per_layer;
    bool layered;
    std::vector<index_t> shape;
  };
  const std::vector<array> arrays = {
      {"model.embed_tokens.weight", 20, false, {5, 4}},
      {"input_layernorm.weight", 4, true, {4}},
      {"self_attn.q_proj.weight", 16, true, {4, 4}},
      {"self_attn.k_proj.weight", 8, true, {2, 4}},
      {"self_attn.v_proj.weight", 8, true, {2, 4}},
      {"self_attn.o_proj.weight", 16, true, {4, 4}},
      {"post_attention_layernorm.weight", 4, true, {4}},
      {"mlp.gate_proj.weight", 24, true, {6, 4}}, // w1
      {"mlp.down_proj.weight", 24, true, {4, 6}}, // w2
      {"mlp.up_proj.weight", 24, true, {6, 4}},   // w3
      {"model.norm.weight", 4, false, {4}},
      {"(freq_cis)", 6, false, {}},
      {"lm_head.weight", 20, false, {5, 4}},
  };
  std::uint64_t floats = 0;
  std::map<std::string, std::pair<std::uint64_t, std::vector<index_t>>> expected; // name -> (first value, shape)
  for (const array& a : arrays) {
    for (int l = 0; l < (a.layered ? 2 : 1); ++l) {
      const std::string name =
          a.layered ? "model.layers." + std::to_string(l) + "." + std::string(a.name) : std::string(a.name);
      expected[name] = {floats + static_cast<std::uint64_t>(l) * a.per_layer, a.shape};
    }
    floats += a.per_layer * (a.layered ? 2 : 1);
  }
  expected.erase("(freq_cis)");

  temp_folder folder;
  write_bytes(folder / "tiny.bin", synthetic_llama2c({4, 6, 2, 2, 1, -5, 3}, floats));
  const kern::examples::llama2c_checkpoint checkpoint = kern::examples::read_llama2c(folder / "tiny.bin");
  EXPECT_FALSE(checkpoint.config.shared_classifier);
  EXPECT_EQ(checkpoint.config.vocab_size, 5);
  ASSERT_EQ(checkpoint.tensors.size(), expected.size());
  EXPECT_EQ(checkpoint.tensors.front().name, "model.embed_tokens.weight");
  EXPECT_EQ(checkpoint.tensors[1].name, "model.layers.0.input_layernorm.weight");
  EXPECT_EQ(checkpoint.tensors.back().name, "lm_head.weight");
  for (const kern::examples::named_tensor& t : checkpoint.tensors) {
    SCOPED_TRACE(t.name);
    ASSERT_TRUE(expected.contains(t.name));
    const auto& [first, shape] = expected.at(t.name);
    EXPECT_EQ(t.shape, shape);
    std::vector<float> values(t.values.size());
    for (std::size_t i = 0; i < values.size(); ++i) {
      values[i] = static_cast<float>(first + i);
    }
    EXPECT_EQ(t.values, values);
  }
}

TEST(Llama2c, CorruptCheckpointsNameTheFileAndTheField) {
  temp_folder folder;
  const fs::path path = folder / "broken.bin";
  // A valid tiny header (dim 4, hidden 6, 1 layer, 2 heads, 1 K/V head, vocab 3, seq_len 2) needs
  // 12 + 4 + 16 + 8 + 8 + 16 + 4 + 3 * 24 + 4 + 2 * 2 = 148 floats.
  const std::uint64_t tiny_floats = 148;
  struct corruption {
    std::string_view label;
    std::string bytes;
    std::vector<std::string_view> message_parts;
  };
  const std::vector<corruption> cases = {
      {"shorter than the header", std::string(10, '\0'), {"file is 10 bytes, shorter than the 28-byte header"}},
      {"zero dim", synthetic_llama2c({0, 6, 1, 2, 2, 3, 2}, 0), {"header field dim = 0 is not a positive size"}},
      {"negative layers", synthetic_llama2c({4, 6, -1, 2, 2, 3, 2}, 0), {"n_layers = -1"}},
      {"zero vocab", synthetic_llama2c({4, 6, 1, 2, 2, 0, 2}, 0), {"vocab_size = 0"}},
      {"smallest int vocab",
       synthetic_llama2c({4, 6, 1, 2, 2, std::numeric_limits<std::int32_t>::min(), 2}, 0),
       {"vocab_size = -2147483648"}},
      {"dim not a multiple of n_heads", synthetic_llama2c({6, 6, 1, 4, 2, 3, 2}, 0), {"not a multiple of n_heads = 4"}},
      {"n_kv_heads not dividing n_heads",
       synthetic_llama2c({4, 6, 1, 2, 3, 3, 2}, 0),
       {"n_kv_heads = 3 does not divide"}},
      {"odd head size", synthetic_llama2c({6, 6, 1, 2, 2, 3, 2}, 0), {"head size dim / n_heads = 3 is odd"}},
      {"truncated",
       synthetic_llama2c({4, 6, 1, 2, 1, 3, 2}, tiny_floats - 1),
       {"needs exactly 620 bytes, but the file has 616 (truncated)"}},
      {"trailing bytes",
       synthetic_llama2c({4, 6, 1, 2, 1, 3, 2}, tiny_floats + 1),
       {"needs exactly 620 bytes, but the file has 624 (trailing bytes)"}},
      {"sizes overflowing", synthetic_llama2c({1 << 30, 1 << 30, 1 << 30, 2, 2, 3, 2}, 0), {"more than 2^64 bytes"}},
  };
  for (const corruption& c : cases) {
    SCOPED_TRACE(c.label);
    write_bytes(path, c.bytes);
    const std::string message = message_of([&] { kern::examples::read_llama2c(path); });
    expect_message(message, {"kern::examples::llama2c", "broken.bin"});
    expect_message(message, c.message_parts);
  }
  // The baseline of these cases is valid.
  write_bytes(path, synthetic_llama2c({4, 6, 1, 2, 1, 3, 2}, tiny_floats));
  EXPECT_EQ(kern::examples::read_llama2c(path).parameter_count(), index_t{148 - 4});
  expect_message(message_of([&] { kern::examples::read_llama2c(folder / "absent.bin"); }),
                 {"absent.bin", "cannot open"});
}

TEST(Llama2c, DamagedCopiesOfStories260K) {
  if (!fs::exists(stories260k())) {
    GTEST_SKIP() << "shared data absent: " << stories260k() << " not found";
  }
  const std::string bytes = read_bytes(stories260k());
  temp_folder folder;
  write_bytes(folder / "truncated.bin", std::string_view(bytes).substr(0, bytes.size() - 1000));
  expect_message(message_of([&] { kern::examples::read_llama2c(folder / "truncated.bin"); }),
                 {"truncated.bin", "needs exactly 1056540 bytes, but the file has 1055540 (truncated)"});
  std::string wrong_header = bytes;
  wrong_header[4] = '\xad'; // hidden_dim 172 -> 173: the arrays no longer add up to the file
  write_bytes(folder / "wrong_header.bin", wrong_header);
  expect_message(message_of([&] { kern::examples::read_llama2c(folder / "wrong_header.bin"); }),
                 {"wrong_header.bin", "hidden_dim 173", "but the file has 1056540"});
}

} // namespace
