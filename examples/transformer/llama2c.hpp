// llama2.c checkpoints (.bin, the legacy version-0 export that run.c reads), loaded under Hugging
// Face Llama tensor names and layouts.
//
// Layout, little-endian: 7 int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size,
// seq_len), then float32 arrays, the per-layer ones stacked over the layers ([L, ...]), in order:
//   token_embedding [vocab, dim]      rms_att [L, dim]          wq [L, dim, dim]
//   wk [L, kv_dim, dim]               wv [L, kv_dim, dim]       wo [L, dim, dim]
//   rms_ffn [L, dim]                  w1 [L, hidden, dim]       w2 [L, dim, hidden]
//   w3 [L, hidden, dim]               rms_final [dim]
//   freq_cis_real, freq_cis_imag [seq_len, head_size / 2]  (run.c ignores them; so does this reader)
//   wcls [vocab, dim], only when vocab_size is negative (a classifier not shared with the embedding)
// Matrices are [out, in], as Hugging Face stores nn.Linear weights, so they copy over unchanged.
//
// q_proj and k_proj keep llama2.c's row order. llama2.c rotates adjacent pairs (2i, 2i + 1) with
// RoPE; Hugging Face's Llama rotates halves (i, i + head_size / 2), and its conversion script permutes
// the q/k rows to match. No permutation here: rope_pairing records that this checkpoint's pairs are
// adjacent, and the model rotates them that way.
#pragma once

#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <limits>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "file_io.hpp"
#include "kern/core/error.hpp"
#include "kern/core/view.hpp"
#include "kern/ops/rope.hpp"

namespace kern::examples {

struct llama2c_config {
  index_t dim = 0;
  index_t hidden_dim = 0;
  index_t n_layers = 0;
  index_t n_heads = 0;
  index_t n_kv_heads = 0;
  index_t vocab_size = 0;
  index_t seq_len = 0;
  bool shared_classifier = true; // the output projection is the token embedding

  index_t head_size() const { return dim / n_heads; }
  index_t kv_dim() const { return n_kv_heads * head_size(); }
};

struct named_tensor {
  std::string name;
  std::vector<index_t> shape;
  std::vector<float> values;
};

struct llama2c_checkpoint {
  std::filesystem::path source;
  llama2c_config config;
  // What run.c hard-codes rather than stores.
  ops::rope_pairing rope_pairing = ops::rope_pairing::adjacent;
  double rope_theta = 10000.0;
  float norm_epsilon = 1e-5f;
  // Hugging Face names: model.embed_tokens.weight, model.layers.{i}.{input_layernorm, self_attn.{q,k,v,o}_proj,
  // post_attention_layernorm, mlp.{gate,up,down}_proj}.weight, model.norm.weight, and lm_head.weight
  // when the classifier is not shared. In that order.
  std::vector<named_tensor> tensors;

  const named_tensor& tensor(std::string_view name) const {
    for (const named_tensor& t : tensors) {
      if (t.name == name) {
        return t;
      }
    }
    kern::detail::fail(describe_file("kern::examples::llama2c", source), "no tensor named \"", name, "\"");
  }

  index_t parameter_count() const {
    index_t n = 0;
    for (const named_tensor& t : tensors) {
      n += static_cast<index_t>(t.values.size());
    }
    return n;
  }
};

inline llama2c_checkpoint read_llama2c(const std::filesystem::path& path) {
  const mapped_file file("kern::examples::llama2c", path);
  const std::string& where = file.where();
  const std::span<const std::byte> bytes = file.bytes();
  constexpr std::size_t header_bytes = 7 * sizeof(std::int32_t);
  require(bytes.size() >= header_bytes, where, "file is ", bytes.size(), " bytes, shorter than the ", header_bytes,
          "-byte header");

  static_assert(std::endian::native == std::endian::little, "llama2.c checkpoints are little-endian");
  std::array<std::int32_t, 7> header{};
  std::memcpy(header.data(), bytes.data(), header_bytes);
  constexpr std::array<std::string_view, 7> fields = {"dim",        "hidden_dim", "n_layers", "n_heads",
                                                      "n_kv_heads", "vocab_size", "seq_len"};
  for (std::size_t i = 0; i < header.size(); ++i) {
    // vocab_size is negative for an unshared classifier; its magnitude must still be positive.
    const bool sane = fields[i] == "vocab_size"
                          ? header[i] != 0 && header[i] != std::numeric_limits<std::int32_t>::min()
                          : header[i] > 0;
    require(sane, where, "header field ", fields[i], " = ", header[i], " is not a positive size");
  }
  llama2c_checkpoint out;
  out.source = path;
  llama2c_config& c = out.config;
  c.dim = header[0];
  c.hidden_dim = header[1];
  c.n_layers = header[2];
  c.n_heads = header[3];
  c.n_kv_heads = header[4];
  c.vocab_size = header[5] < 0 ? -static_cast<index_t>(header[5]) : header[5];
  c.seq_len = header[6];
  c.shared_classifier = header[5] > 0;
  require(c.dim % c.n_heads == 0, where, "header field dim = ", c.dim, " is not a multiple of n_heads = ", c.n_heads);
  require(c.n_heads % c.n_kv_heads == 0, where, "header field n_kv_heads = ", c.n_kv_heads,
          " does not divide n_heads = ", c.n_heads);
  require(c.head_size() % 2 == 0, where, "head size dim / n_heads = ", c.head_size(), " is odd (RoPE rotates pairs)");

  // Every array: where it starts (in floats after the header) and how many floats one layer has.
  // Header fields reach 2^31, so a product of three can overflow 64 bits: the arithmetic is checked.
  std::uint64_t floats = 0;
  bool overflow = false;
  struct array_at {
    std::uint64_t start;
    std::uint64_t per_layer;
  };
  const auto next = [&](std::uint64_t layers, std::uint64_t rows, std::uint64_t cols) {
    std::uint64_t per_layer = 0, total = 0;
    overflow |= __builtin_mul_overflow(rows, cols, &per_layer);
    overflow |= __builtin_mul_overflow(per_layer, layers, &total);
    const array_at at{floats, per_layer};
    overflow |= __builtin_add_overflow(floats, total, &floats);
    return at;
  };
  const auto vocab = static_cast<std::uint64_t>(c.vocab_size), dim = static_cast<std::uint64_t>(c.dim),
             hidden = static_cast<std::uint64_t>(c.hidden_dim), kv_dim = static_cast<std::uint64_t>(c.kv_dim()),
             layers = static_cast<std::uint64_t>(c.n_layers);
  const array_at embedding = next(1, vocab, dim);
  const array_at rms_att = next(layers, 1, dim);
  const array_at wq = next(layers, dim, dim);
  const array_at wk = next(layers, kv_dim, dim);
  const array_at wv = next(layers, kv_dim, dim);
  const array_at wo = next(layers, dim, dim);
  const array_at rms_ffn = next(layers, 1, dim);
  const array_at w1 = next(layers, hidden, dim);
  const array_at w2 = next(layers, dim, hidden);
  const array_at w3 = next(layers, hidden, dim);
  const array_at rms_final = next(1, 1, dim);
  next(1, static_cast<std::uint64_t>(c.seq_len), static_cast<std::uint64_t>(c.head_size())); // freq_cis real + imag
  const array_at classifier = c.shared_classifier ? array_at{0, 0} : next(1, vocab, dim);
  std::uint64_t expected = 0;
  overflow |= __builtin_mul_overflow(floats, sizeof(float), &expected);
  overflow |= __builtin_add_overflow(expected, header_bytes, &expected);
  const auto describe_header = [&] {
    return std::string("dim ") + std::to_string(c.dim) + ", hidden_dim " + std::to_string(c.hidden_dim) +
           ", n_layers " + std::to_string(c.n_layers) + ", n_heads " + std::to_string(c.n_heads) + ", n_kv_heads " +
           std::to_string(c.n_kv_heads) + ", vocab_size " + std::to_string(header[5]) + ", seq_len " +
           std::to_string(c.seq_len);
  };
  require(!overflow, where, "the header (", describe_header(), ") describes more than 2^64 bytes");
  require(bytes.size() == expected, where, "the header (", describe_header(), ") needs exactly ", expected,
          " bytes, but the file has ", bytes.size(), bytes.size() < expected ? " (truncated)" : " (trailing bytes)");

  const auto add = [&](std::string name, std::vector<index_t> shape, array_at array, index_t layer) {
    std::vector<float> values(array.per_layer);
    const std::byte* from = bytes.data() + header_bytes +
                            sizeof(float) * (array.start + static_cast<std::uint64_t>(layer) * array.per_layer);
    std::memcpy(values.data(), from, values.size() * sizeof(float));
    out.tensors.push_back({std::move(name), std::move(shape), std::move(values)});
  };
  add("model.embed_tokens.weight", {c.vocab_size, c.dim}, embedding, 0);
  for (index_t l = 0; l < c.n_layers; ++l) {
    const std::string prefix = "model.layers." + std::to_string(l) + ".";
    add(prefix + "input_layernorm.weight", {c.dim}, rms_att, l);
    add(prefix + "self_attn.q_proj.weight", {c.dim, c.dim}, wq, l);
    add(prefix + "self_attn.k_proj.weight", {c.kv_dim(), c.dim}, wk, l);
    add(prefix + "self_attn.v_proj.weight", {c.kv_dim(), c.dim}, wv, l);
    add(prefix + "self_attn.o_proj.weight", {c.dim, c.dim}, wo, l);
    add(prefix + "post_attention_layernorm.weight", {c.dim}, rms_ffn, l);
    add(prefix + "mlp.gate_proj.weight", {c.hidden_dim, c.dim}, w1, l);
    add(prefix + "mlp.up_proj.weight", {c.hidden_dim, c.dim}, w3, l);
    add(prefix + "mlp.down_proj.weight", {c.dim, c.hidden_dim}, w2, l);
  }
  add("model.norm.weight", {c.dim}, rms_final, 0);
  if (!c.shared_classifier) {
    add("lm_head.weight", {c.vocab_size, c.dim}, classifier, 0);
  }
  return out;
}

} // namespace kern::examples
