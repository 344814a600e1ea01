// safetensors, Hugging Face's checkpoint format: read (mapped, fully validated) and written (atomically).
//
// Layout: an 8-byte little-endian header length N, N bytes of JSON, then the data buffer:
//   {"__metadata__":{"format":"pt"},
//    "wte.weight":{"dtype":"F32","shape":[50257,768],"data_offsets":[0,154389504]}, ...}
// Offsets are relative to the start of the buffer; tensors are row-major and little-endian and
// together cover the buffer exactly. Metadata values are strings. This reader knows F32, BF16, F16.
//
// Reading checks everything when the file is opened, so a corrupt or truncated checkpoint fails
// there, with a message naming the file and the tensor or field, instead of loading garbage.
// Writing lays a file out as Hugging Face's writer does (the same bytes, up to the order of metadata
// keys, which is a hash map's there and sorted here): __metadata__ first, tensors sorted by name, data
// ordered by element size (largest first) then name so that every tensor is aligned to its element
// size, and the header padded with spaces to a multiple of 8. Repeated writes give identical bytes.
#pragma once

#include <algorithm>
#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <functional>
#include <initializer_list>
#include <map>
#include <optional>
#include <span>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "file_io.hpp"
#include "json.hpp"
#include "kern/core/dtype.hpp"
#include "kern/core/error.hpp"
#include "kern/core/view.hpp"

namespace kern::examples {

static_assert(std::endian::native == std::endian::little, "checkpoints are little-endian: byte swapping is missing");

// The safetensors names of the dtypes kern reads and writes.
constexpr std::string_view safetensors_dtype_name(dtype type) {
  switch (type) {
  case dtype::f32:
    return "F32";
  case dtype::bf16:
    return "BF16";
  case dtype::f16:
    return "F16";
  }
  return "?";
}

inline std::optional<dtype> safetensors_dtype(std::string_view name) {
  for (const dtype type : {dtype::f32, dtype::bf16, dtype::f16}) {
    if (safetensors_dtype_name(type) == name) {
      return type;
    }
  }
  return std::nullopt;
}

// "[2, 3]", for messages.
inline std::string format_shape(std::span<const index_t> shape) {
  std::ostringstream out;
  out << '[';
  for (std::size_t i = 0; i < shape.size(); ++i) {
    out << (i == 0 ? "" : ", ") << shape[i];
  }
  out << ']';
  return out.str();
}

struct tensor_info {
  dtype type = dtype::f32;
  std::vector<index_t> shape;
  std::uint64_t begin = 0; // byte offsets in the data buffer
  std::uint64_t end = 0;

  index_t elements() const { return static_cast<index_t>((end - begin) / size_of(type)); }
};

// A safetensors file, mapped read-only and validated when read. Move-only.
class safetensors_file {
public:
  static safetensors_file read(const std::filesystem::path& path) { return safetensors_file(path); }

  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  bool contains(std::string_view name) const { return tensors_.find(name) != tensors_.end(); }
  std::vector<std::string> names() const { // sorted
    std::vector<std::string> out;
    for (const auto& entry : tensors_) {
      out.push_back(entry.first);
    }
    return out;
  }

  const tensor_info& info(std::string_view name) const {
    const auto found = tensors_.find(name);
    if (found == tensors_.end()) {
      fail("no tensor named ", json::quote(name));
    }
    return found->second;
  }

  // The tensor's bytes as stored (row-major, little-endian).
  std::span<const std::byte> bytes(std::string_view name) const {
    const tensor_info& t = info(name);
    return data_.subspan(t.begin, t.end - t.begin);
  }

  // The tensor converted to float (exactly: F32, BF16 and F16 all widen without rounding). Its shape
  // must be expected_shape, and `out` must hold exactly its elements.
  void read_f32(std::string_view name, std::span<float> out, std::span<const index_t> expected_shape) const {
    const tensor_info& t = info(name);
    if (!std::ranges::equal(t.shape, expected_shape)) {
      fail("tensor ", json::quote(name), " has shape ", format_shape(t.shape), ", expected ",
           format_shape(expected_shape));
    }
    if (std::cmp_not_equal(out.size(), t.elements())) {
      fail("tensor ", json::quote(name), " has ", t.elements(), " elements but the output holds ", out.size());
    }
    const std::byte* source = data_.data() + t.begin;
    if (out.empty()) { // memcpy must not see the null data of an empty span
      return;
    }
    if (t.type == dtype::f32) {
      std::memcpy(out.data(), source, out.size() * sizeof(float));
      return;
    }
    for (std::size_t i = 0; i < out.size(); ++i) {
      std::uint16_t bits = 0;
      std::memcpy(&bits, source + 2 * i, 2);
      out[i] = t.type == dtype::bf16 ? kern::detail::bf16_bits_to_float(bits) : kern::detail::f16_bits_to_float(bits);
    }
  }
  void read_f32(std::string_view name, std::span<float> out, std::initializer_list<index_t> expected_shape) const {
    read_f32(name, out, std::span<const index_t>(expected_shape.begin(), expected_shape.size()));
  }

private:
  explicit safetensors_file(const std::filesystem::path& path) : file_("kern::examples::safetensors", path) {
    const std::span<const std::byte> whole = file_.bytes();
    if (whole.size() < 8) {
      fail("file is ", whole.size(), " bytes, too short for the 8-byte header length");
    }
    std::uint64_t header_length = 0;
    std::memcpy(&header_length, whole.data(), 8);
    const std::uint64_t after = whole.size() - 8;
    if (header_length > after) {
      fail("header length ", header_length, " exceeds the ", after, " bytes after the length field");
    }
    data_ = whole.subspan(8 + header_length);
    const std::string_view header(reinterpret_cast<const char*>(whole.data() + 8), header_length);
    const json::value root = json::parse(header, file_.where());
    if (root.type != json::value::kind::object) {
      fail("the header is not a JSON object");
    }
    for (const json::member& m : root.members) {
      if (m.key == "__metadata__") {
        read_metadata(m.item);
      } else {
        tensors_.emplace(m.key, read_entry(m.key, m.item));
      }
    }
    check_coverage();
  }

  template <class... Parts> [[noreturn]] void fail(const Parts&... parts) const {
    kern::detail::fail(file_.where(), parts...);
  }

  void read_metadata(const json::value& v) {
    if (v.type != json::value::kind::object) {
      fail("\"__metadata__\" is not an object");
    }
    for (const json::member& m : v.members) {
      if (m.item.type != json::value::kind::string) {
        fail("\"__metadata__\" value of ", json::quote(m.key), " is not a string");
      }
      metadata_.emplace(m.key, m.item.string);
    }
  }

  // A non-negative integer field of a tensor entry.
  std::uint64_t read_count(std::string_view tensor, std::string_view field, const json::value& v) const {
    if (v.type != json::value::kind::integer || v.integer < 0) {
      fail("tensor ", json::quote(tensor), ": ", field, " holds something other than a non-negative integer");
    }
    return static_cast<std::uint64_t>(v.integer);
  }

  tensor_info read_entry(const std::string& name, const json::value& v) const {
    const auto where = "tensor " + json::quote(name);
    if (v.type != json::value::kind::object) {
      fail(where, ": the entry is not an object");
    }
    const json::value *type = nullptr, *shape = nullptr, *offsets = nullptr;
    for (const json::member& m : v.members) {
      if (m.key == "dtype") {
        type = &m.item;
      } else if (m.key == "shape") {
        shape = &m.item;
      } else if (m.key == "data_offsets") {
        offsets = &m.item;
      } else {
        fail(where, ": unknown field ", json::quote(m.key));
      }
    }
    if (type == nullptr || type->type != json::value::kind::string) {
      fail(where, ": \"dtype\" is missing or not a string");
    }
    if (shape == nullptr || shape->type != json::value::kind::array) {
      fail(where, ": \"shape\" is missing or not an array");
    }
    if (offsets == nullptr || offsets->type != json::value::kind::array || offsets->items.size() != 2) {
      fail(where, ": \"data_offsets\" is missing or not an array [begin, end]");
    }
    tensor_info t;
    const std::optional<dtype> known = safetensors_dtype(type->string);
    if (!known) {
      fail(where, ": dtype ", json::quote(type->string), " is not supported (F32, BF16 and F16 are)");
    }
    t.type = *known;
    std::uint64_t bytes = size_of(t.type);
    bool overflow = false;
    for (const json::value& extent : shape->items) {
      const std::uint64_t n = read_count(name, "\"shape\"", extent);
      overflow |= __builtin_mul_overflow(bytes, n, &bytes);
      t.shape.push_back(static_cast<index_t>(n));
    }
    t.begin = read_count(name, "\"data_offsets\"", offsets->items[0]);
    t.end = read_count(name, "\"data_offsets\"", offsets->items[1]);
    const auto range = [&t] { return "data_offsets [" + std::to_string(t.begin) + ", " + std::to_string(t.end) + "]"; };
    if (t.begin > t.end || t.end > data_.size()) {
      fail(where, ": ", range(), " are not within the ", data_.size(), "-byte data buffer");
    }
    if (overflow || bytes != t.end - t.begin) {
      fail(where, ": shape ", format_shape(t.shape), " of ", type->string, " needs ",
           overflow ? std::string("more than 2^64") : std::to_string(bytes), " bytes but ", range(), " hold ",
           t.end - t.begin);
    }
    return t;
  }

  // The tensors tile the data buffer: no gap, no overlap, nothing past the last one.
  void check_coverage() const {
    std::vector<std::pair<const std::string*, const tensor_info*>> order;
    for (const auto& [name, t] : tensors_) {
      order.emplace_back(&name, &t);
    }
    std::ranges::sort(order, {}, [](const auto& e) { return std::pair(e.second->begin, e.second->end); });
    std::uint64_t covered = 0;
    const std::string* previous = nullptr;
    for (const auto& [name, t] : order) {
      if (t->begin < covered) {
        fail("tensor ", json::quote(*name), ": data_offsets [", t->begin, ", ", t->end, "] overlap tensor ",
             json::quote(*previous), ", which ends at ", covered);
      }
      if (t->begin > covered) {
        fail("tensor ", json::quote(*name), ": data_offsets [", t->begin, ", ", t->end, "] leave the bytes [", covered,
             ", ", t->begin, ") of the data buffer unused");
      }
      covered = t->end;
      previous = name;
    }
    if (covered != data_.size()) {
      fail("the tensors cover ", covered, " bytes of the ", data_.size(), "-byte data buffer");
    }
  }

  mapped_file file_;
  std::span<const std::byte> data_;
  std::map<std::string, tensor_info, std::less<>> tensors_;
  std::map<std::string, std::string> metadata_;
};

// Collects tensors and metadata, then writes them as one safetensors file, atomically.
//
// The writer does not copy tensor data: what add() is given must stay alive and unchanged until
// write() returns (a 124M-parameter model with its optimizer state is gigabytes).
class safetensors_writer {
public:
  // `data` stored as `stored`: F32 as is, BF16 or F16 rounded to nearest even.
  void add(std::string name, std::vector<index_t> shape, std::span<const float> data, dtype stored = dtype::f32) {
    add_entry(std::move(name), std::move(shape), data.data(), data.size(), dtype::f32, stored);
  }
  void add(std::string name, std::vector<index_t> shape, std::span<const bf16> data) {
    add_entry(std::move(name), std::move(shape), data.data(), data.size(), dtype::bf16, dtype::bf16);
  }
  void add(std::string name, std::vector<index_t> shape, std::span<const f16> data) {
    add_entry(std::move(name), std::move(shape), data.data(), data.size(), dtype::f16, dtype::f16);
  }

  void set_metadata(std::string key, std::string value) {
    require(json::is_valid_utf8(key) && json::is_valid_utf8(value), op, "metadata ", json::quote(key),
            " is not valid UTF-8");
    metadata_[std::move(key)] = std::move(value);
  }

  void write(const std::filesystem::path& path) const {
    // Data order: larger elements first (each tensor then starts at a multiple of its element size),
    // then by name.
    std::vector<const std::pair<const std::string, entry>*> order;
    for (const auto& e : tensors_) {
      order.push_back(&e);
    }
    std::ranges::stable_sort(order, std::greater<>{}, [](const auto* e) { return size_of(e->second.stored); });
    std::map<std::string_view, std::pair<std::uint64_t, std::uint64_t>> offsets;
    std::uint64_t end = 0;
    for (const auto* e : order) {
      const std::uint64_t begin = end;
      end += e->second.elements * size_of(e->second.stored);
      offsets.emplace(e->first, std::pair(begin, end));
    }

    std::ostringstream json_header;
    json_header << '{';
    if (!metadata_.empty()) {
      json_header << "\"__metadata__\":{";
      const char* separator = "";
      for (const auto& [key, value] : metadata_) {
        json_header << std::exchange(separator, ",") << json::quote(key) << ':' << json::quote(value);
      }
      json_header << '}';
    }
    const char* separator = metadata_.empty() ? "" : ",";
    for (const auto& [name, e] : tensors_) {
      json_header << std::exchange(separator, ",") << json::quote(name) << ":{\"dtype\":\""
                  << safetensors_dtype_name(e.stored) << "\",\"shape\":[";
      for (std::size_t i = 0; i < e.shape.size(); ++i) {
        json_header << (i == 0 ? "" : ",") << e.shape[i];
      }
      const auto [begin, stop] = offsets.at(name);
      json_header << "],\"data_offsets\":[" << begin << ',' << stop << "]}";
    }
    json_header << '}';
    std::string header = std::move(json_header).str();
    header.resize((header.size() + 7) / 8 * 8, ' '); // 8 + header is a multiple of 8: the data is aligned

    write_file_atomically(op, path, [&](const output_file& out) {
      const std::uint64_t length = header.size();
      out.write(std::as_bytes(std::span(&length, 1)));
      out.write(std::as_bytes(std::span(header)));
      for (const auto* e : order) {
        write_data(out, e->second);
      }
    });
  }

private:
  static constexpr std::string_view op = "kern::examples::safetensors_writer";

  struct entry {
    std::vector<index_t> shape;
    const void* data = nullptr;
    std::uint64_t elements = 0;
    dtype source = dtype::f32;
    dtype stored = dtype::f32;
  };

  void add_entry(std::string name, std::vector<index_t> shape, const void* data, std::size_t size, dtype source,
                 dtype stored) {
    const std::string quoted = json::quote(name);
    require(!name.empty() && name != "__metadata__", op, "tensor name ", quoted, " is empty or reserved");
    require(json::is_valid_utf8(name), op, "tensor name ", quoted, " is not valid UTF-8");
    require(!tensors_.contains(name), op, "tensor ", quoted, " was already added");
    std::uint64_t elements = 1;
    for (const index_t extent : shape) {
      require(extent >= 0, op, "tensor ", quoted, ": shape ", format_shape(shape), " has a negative extent");
      require(!__builtin_mul_overflow(elements, static_cast<std::uint64_t>(extent), &elements), op, "tensor ", quoted,
              ": shape ", format_shape(shape), " overflows");
    }
    require(elements == size, op, "tensor ", quoted, ": shape ", format_shape(shape), " has ", elements,
            " elements but the data holds ", size);
    require(data != nullptr || size == 0, op, "tensor ", quoted, ": data is null");
    tensors_.emplace(std::move(name), entry{std::move(shape), data, elements, source, stored});
  }

  static void write_data(const output_file& out, const entry& e) {
    const auto* bytes = static_cast<const std::byte*>(e.data);
    if (e.source == e.stored) {
      out.write({bytes, e.elements * size_of(e.stored)});
      return;
    }
    // float -> bf16 / f16, through a small buffer.
    const auto* values = static_cast<const float*>(e.data);
    std::array<std::uint16_t, 16384> buffer{};
    for (std::uint64_t done = 0; done < e.elements; done += buffer.size()) {
      const std::size_t n = std::min<std::uint64_t>(buffer.size(), e.elements - done);
      for (std::size_t i = 0; i < n; ++i) {
        buffer[i] = e.stored == dtype::bf16 ? kern::detail::float_to_bf16_bits(values[done + i])
                                            : kern::detail::float_to_f16_bits(values[done + i]);
      }
      out.write(std::as_bytes(std::span(buffer.data(), n)));
    }
  }

  std::map<std::string, entry> tensors_;
  std::map<std::string, std::string> metadata_;
};

} // namespace kern::examples
