// A strict JSON reader (RFC 8259) and the string quoting that writers need: what safetensors headers
// and the config.json of Hugging Face models hold.
//
// Values are objects (members in file order), arrays, strings (UTF-8), integers (a number without a
// fraction or exponent, within the 64-bit range), other numbers (as double), true/false and null.
// Anything else is an error that names the byte: duplicate keys, invalid UTF-8, a number out of range
// or not written as JSON writes it (leading zeros, "1.", ".5", "+1", NaN), nesting deeper than 32.
#pragma once

#include <charconv>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <set>
#include <sstream>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include "kern/core/error.hpp"

namespace kern::examples::json {

struct member;

struct value {
  enum class kind : std::uint8_t { object, array, string, integer, number, boolean, null };
  kind type = kind::integer;
  std::int64_t integer = 0; // of an integer
  double number = 0.0;      // of a number with a fraction or exponent
  bool boolean = false;
  std::string string;
  std::vector<value> items;    // of an array
  std::vector<member> members; // of an object, in file order
};

struct member {
  std::string key;
  value item;
};

// The length of the UTF-8 sequence at the start of `text`, or 0 when it is not a valid one (overlong
// forms, surrogates and code points above U+10FFFF included).
inline std::size_t utf8_sequence_length(std::string_view text) {
  const auto lead = static_cast<unsigned char>(text[0]);
  if (lead < 0x80) {
    return 1;
  }
  std::size_t length = 0;
  std::uint32_t code = 0, smallest = 0;
  if ((lead & 0xe0u) == 0xc0u) {
    length = 2, code = lead & 0x1fu, smallest = 0x80;
  } else if ((lead & 0xf0u) == 0xe0u) {
    length = 3, code = lead & 0x0fu, smallest = 0x800;
  } else if ((lead & 0xf8u) == 0xf0u) {
    length = 4, code = lead & 0x07u, smallest = 0x10000;
  } else {
    return 0;
  }
  if (text.size() < length) {
    return 0;
  }
  for (std::size_t i = 1; i < length; ++i) {
    const auto next = static_cast<unsigned char>(text[i]);
    if ((next & 0xc0u) != 0x80u) {
      return 0;
    }
    code = (code << 6) | (next & 0x3fu);
  }
  const bool surrogate = code >= 0xd800 && code <= 0xdfff;
  return code >= smallest && code <= 0x10ffff && !surrogate ? length : 0;
}

inline bool is_valid_utf8(std::string_view text) {
  while (!text.empty()) {
    const std::size_t length = utf8_sequence_length(text);
    if (length == 0) {
      return false;
    }
    text.remove_prefix(length);
  }
  return true;
}

// `text` as a JSON string literal; `text` must be valid UTF-8 (written as is, not \u-escaped).
inline std::string quote(std::string_view text) {
  std::string out = "\"";
  for (const char c : text) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      constexpr std::string_view hex = "0123456789abcdef";
      out += "\\u00";
      out += hex[static_cast<unsigned char>(c) >> 4];
      out += hex[static_cast<unsigned char>(c) & 0xfu];
    } else {
      out += c;
    }
  }
  return out + "\"";
}

// Appends code point `code` to `out` as UTF-8 (also used by the GPT-2 tokenizer's byte alphabet).
inline void append_utf8(std::string& out, std::uint32_t code) {
  const auto byte = [&out](std::uint32_t b) { out += static_cast<char>(static_cast<unsigned char>(b)); };
  if (code < 0x80) {
    byte(code);
  } else if (code < 0x800) {
    byte(0xc0 | (code >> 6));
    byte(0x80 | (code & 0x3f));
  } else if (code < 0x10000) {
    byte(0xe0 | (code >> 12));
    byte(0x80 | ((code >> 6) & 0x3f));
    byte(0x80 | (code & 0x3f));
  } else {
    byte(0xf0 | (code >> 18));
    byte(0x80 | ((code >> 12) & 0x3f));
    byte(0x80 | ((code >> 6) & 0x3f));
    byte(0x80 | (code & 0x3f));
  }
}

class parser {
public:
  // `where` starts every error message (the file being read).
  parser(std::string_view text, std::string_view where) : text_(text), where_(where) {}

  value parse_document() {
    value root = parse_value(0);
    skip_space();
    if (pos_ != text_.size()) {
      fail("unexpected ", character(), " after the end of the top-level value");
    }
    return root;
  }

private:
  static constexpr int max_depth = 32;

  template <class... Parts> [[noreturn]] void fail(const Parts&... parts) const {
    kern::detail::fail(where_, "invalid JSON header at byte ", pos_, ": ", parts...);
  }

  // The character at the cursor, printable in a message.
  std::string character() const {
    if (pos_ >= text_.size()) {
      return "end of text";
    }
    const auto c = static_cast<unsigned char>(text_[pos_]);
    std::ostringstream out;
    if (c >= 0x20 && c < 0x7f) {
      out << '\'' << static_cast<char>(c) << '\'';
    } else {
      out << "byte " << static_cast<int>(c);
    }
    return out.str();
  }

  void skip_space() {
    while (pos_ < text_.size() &&
           (text_[pos_] == ' ' || text_[pos_] == '\t' || text_[pos_] == '\n' || text_[pos_] == '\r')) {
      ++pos_;
    }
  }

  bool consume(char c) {
    skip_space();
    if (pos_ < text_.size() && text_[pos_] == c) {
      ++pos_;
      return true;
    }
    return false;
  }

  void expect(char c) {
    if (!consume(c)) {
      fail("expected '", c, "', found ", character());
    }
  }

  static bool is_digit(char c) { return c >= '0' && c <= '9'; }

  value parse_value(int depth) {
    if (depth > max_depth) {
      fail("nested deeper than ", max_depth, " levels");
    }
    skip_space();
    const char c = pos_ < text_.size() ? text_[pos_] : '\0';
    value v;
    if (c == '{') {
      v.type = value::kind::object;
      parse_object(v, depth);
    } else if (c == '[') {
      v.type = value::kind::array;
      parse_array(v, depth);
    } else if (c == '"') {
      v.type = value::kind::string;
      v.string = parse_string();
    } else if (c == '-' || is_digit(c)) {
      parse_number(v);
    } else if (consume_word("true") || consume_word("false")) {
      v.type = value::kind::boolean;
      v.boolean = c == 't';
    } else if (consume_word("null")) {
      v.type = value::kind::null;
    } else {
      fail("unexpected ", character(), " (an object, array, string, number, true, false or null was expected)");
    }
    return v;
  }

  bool consume_word(std::string_view word) {
    if (text_.substr(pos_, word.size()) != word) {
      return false;
    }
    pos_ += word.size();
    return true;
  }

  void parse_object(value& object, int depth) {
    ++pos_; // '{'
    if (consume('}')) {
      return;
    }
    std::set<std::string, std::less<>> keys;
    do {
      skip_space();
      if (pos_ >= text_.size() || text_[pos_] != '"') {
        fail("expected a string key, found ", character());
      }
      std::string key = parse_string();
      if (!keys.insert(key).second) {
        fail("duplicate key ", quote(key));
      }
      expect(':');
      object.members.push_back({std::move(key), parse_value(depth + 1)});
    } while (consume(','));
    expect('}');
  }

  void parse_array(value& array, int depth) {
    ++pos_; // '['
    if (consume(']')) {
      return;
    }
    do {
      array.items.push_back(parse_value(depth + 1));
    } while (consume(','));
    expect(']');
  }

  // A number: an integer when it has neither a fraction nor an exponent, a double otherwise.
  void parse_number(value& v) {
    const std::size_t start = pos_;
    const bool negative = text_[pos_] == '-';
    pos_ += negative ? 1 : 0;
    if (pos_ >= text_.size() || !is_digit(text_[pos_])) {
      fail("expected a digit, found ", character());
    }
    if (text_[pos_] == '0' && pos_ + 1 < text_.size() && is_digit(text_[pos_ + 1])) {
      fail("a number has a leading zero");
    }
    const std::size_t digits = pos_;
    skip_digits();
    const bool fraction = pos_ < text_.size() && text_[pos_] == '.';
    if (fraction) {
      ++pos_;
      require_digits("after the decimal point");
    }
    const bool exponent = pos_ < text_.size() && (text_[pos_] == 'e' || text_[pos_] == 'E');
    if (exponent) {
      ++pos_;
      pos_ += pos_ < text_.size() && (text_[pos_] == '+' || text_[pos_] == '-') ? 1 : 0;
      require_digits("in the exponent");
    }
    if (!fraction && !exponent) {
      pos_ = digits;
      v.type = value::kind::integer;
      v.integer = parse_integer_digits(negative);
      return;
    }
    const std::string_view number = text_.substr(start, pos_ - start);
    const auto [end, error] = std::from_chars(number.data(), number.data() + number.size(), v.number);
    if (error != std::errc() || end != number.data() + number.size()) {
      pos_ = start;
      fail("number ", number, " is out of the range of double");
    }
    v.type = value::kind::number;
  }

  void skip_digits() {
    while (pos_ < text_.size() && is_digit(text_[pos_])) {
      ++pos_;
    }
  }

  void require_digits(std::string_view where) {
    if (pos_ >= text_.size() || !is_digit(text_[pos_])) {
      fail("expected a digit ", where, ", found ", character());
    }
    skip_digits();
  }

  // The digits of an integer (its sign already read), which must fit in 64 bits.
  std::int64_t parse_integer_digits(bool negative) {
    const std::uint64_t limit = negative ? std::uint64_t{1} << 63 : (std::uint64_t{1} << 63) - 1;
    std::uint64_t magnitude = 0;
    while (pos_ < text_.size() && is_digit(text_[pos_])) {
      const auto digit = static_cast<std::uint64_t>(text_[pos_] - '0');
      if (magnitude > (limit - digit) / 10) {
        fail("integer out of the 64-bit range");
      }
      magnitude = magnitude * 10 + digit;
      ++pos_;
    }
    // Two's complement negation in unsigned arithmetic: -2^63 has no positive counterpart.
    return static_cast<std::int64_t>(negative ? ~magnitude + 1 : magnitude);
  }

  std::string parse_string() {
    ++pos_; // the opening quote
    std::string out;
    while (true) {
      if (pos_ >= text_.size()) {
        fail("unterminated string");
      }
      const auto c = static_cast<unsigned char>(text_[pos_]);
      if (c == '"') {
        ++pos_;
        return out;
      }
      if (c < 0x20) {
        fail("control character ", static_cast<int>(c), " in a string (it must be escaped)");
      }
      if (c == '\\') {
        ++pos_;
        parse_escape(out);
        continue;
      }
      const std::size_t length = utf8_sequence_length(text_.substr(pos_));
      if (length == 0) {
        fail("invalid UTF-8");
      }
      out.append(text_.substr(pos_, length));
      pos_ += length;
    }
  }

  void parse_escape(std::string& out) {
    const char c = pos_ < text_.size() ? text_[pos_++] : '\0';
    switch (c) {
    case '"':
    case '\\':
    case '/':
      out += c;
      return;
    case 'b':
      out += '\b';
      return;
    case 'f':
      out += '\f';
      return;
    case 'n':
      out += '\n';
      return;
    case 'r':
      out += '\r';
      return;
    case 't':
      out += '\t';
      return;
    case 'u':
      append_utf8(out, parse_code_point());
      return;
    default:
      --pos_;
      fail("unknown escape \\", character());
    }
  }

  // After "\u": four hex digits, or a surrogate pair "XXXX\uXXXX" (UTF-16 for code points past U+FFFF).
  std::uint32_t parse_code_point() {
    const std::uint32_t first = parse_hex4();
    if (first >= 0xdc00 && first <= 0xdfff) {
      fail("\\u escape is a low surrogate without its high half");
    }
    if (first < 0xd800 || first > 0xdbff) {
      return first;
    }
    if (text_.substr(pos_, 2) != "\\u") {
      fail("\\u escape is a high surrogate without its low half");
    }
    pos_ += 2;
    const std::uint32_t second = parse_hex4();
    if (second < 0xdc00 || second > 0xdfff) {
      fail("\\u escape is a high surrogate followed by a non-surrogate");
    }
    return 0x10000 + ((first - 0xd800) << 10) + (second - 0xdc00);
  }

  std::uint32_t parse_hex4() {
    std::uint32_t code = 0;
    for (int i = 0; i < 4; ++i, ++pos_) {
      const char c = pos_ < text_.size() ? text_[pos_] : '\0';
      const int digit = is_digit(c)              ? c - '0'
                        : (c >= 'a' && c <= 'f') ? c - 'a' + 10
                        : (c >= 'A' && c <= 'F') ? c - 'A' + 10
                                                 : -1;
      if (digit < 0) {
        fail("\\u escape needs four hex digits, found ", character());
      }
      code = code * 16 + static_cast<std::uint32_t>(digit);
    }
    return code;
  }

  std::string_view text_;
  std::string_view where_;
  std::size_t pos_ = 0;
};

inline value parse(std::string_view text, std::string_view where) { return parser(text, where).parse_document(); }

} // namespace kern::examples::json
