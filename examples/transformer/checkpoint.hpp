// Model checkpoints: the model's weights under Hugging Face's tensor names (GPT-2 or Llama), with
// kern's configuration in the safetensors metadata, so that a kern checkpoint opens in the Hugging
// Face stack and a Hugging Face one (with its config, in the metadata or a config.json beside it)
// opens here; and llama2.c's .bin checkpoints.
//
//   GPT-2 names   wte, wpe, h.N.{ln_1, attn.c_attn, attn.c_proj, ln_2, mlp.c_fc, mlp.c_proj}, ln_f:
//                 Conv1D weights stored [in, out], transposed from kern's [out, in].
//   Llama names   model.embed_tokens, model.layers.N.{input_layernorm, self_attn.{q,k,v,o}_proj,
//                 post_attention_layernorm, mlp.{gate,up,down}_proj}, model.norm, lm_head:
//                 kern's fused q|k|v and gate|up weights split. Hugging Face's Llama rotates halves
//                 (pairs (i, i + d/2)); a model that rotates adjacent pairs (llama2.c's) has its q and
//                 k rows permuted into that order on save, and back on load, so that both stacks
//                 compute the same function and a kern round trip gives the same bits.
//   Other switch combinations are saved under kern's own names (parameters.hpp).
#pragma once

#include <cstdio>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "config.hpp"
#include "json.hpp"
#include "llama2c.hpp"
#include "model.hpp"
#include "safetensors.hpp"

namespace kern::examples {

enum class tensor_naming : std::uint8_t { gpt2, llama, kern };

inline tensor_naming naming_of(const model_config& c) {
  if (c.position == positions::learned && c.norm == ops::norm_kind::layernorm && c.mlp == mlp_kind::gelu && c.biases &&
      c.tied_embeddings && c.n_kv_heads == c.n_heads) {
    return tensor_naming::gpt2;
  }
  if (c.position == positions::rope && c.norm == ops::norm_kind::rmsnorm && c.mlp == mlp_kind::swiglu && !c.biases) {
    return tensor_naming::llama;
  }
  return tensor_naming::kern;
}

// Shortest text that reads back as the same double.
inline std::string format_float(double v) {
  char text[32];
  std::snprintf(text, sizeof text, "%.17g", v);
  return text;
}

// The configuration as safetensors metadata ("kern.*" string values) and back.
inline std::map<std::string, std::string> config_metadata(const model_config& c) {
  return {{"kern.n_layers", std::to_string(c.n_layers)},
          {"kern.n_heads", std::to_string(c.n_heads)},
          {"kern.n_kv_heads", std::to_string(c.n_kv_heads)},
          {"kern.d_model", std::to_string(c.d_model)},
          {"kern.d_ff", std::to_string(c.d_ff)},
          {"kern.vocab", std::to_string(c.vocab)},
          {"kern.vocab_padded", std::to_string(c.vocab_padded)},
          {"kern.context", std::to_string(c.context)},
          {"kern.norm", c.norm == ops::norm_kind::layernorm ? "layernorm" : "rmsnorm"},
          {"kern.positions", c.position == positions::learned ? "learned" : "rope"},
          {"kern.mlp", c.mlp == mlp_kind::gelu ? "gelu" : "swiglu"},
          {"kern.tied_embeddings", c.tied_embeddings ? "true" : "false"},
          {"kern.biases", c.biases ? "true" : "false"},
          {"kern.norm_epsilon", format_float(c.norm_epsilon)},
          {"kern.rope_theta", format_float(c.rope_theta)},
          {"kern.rope_pairing", c.rope_pairing == ops::rope_pairing::adjacent ? "adjacent" : "half"}};
}

inline model_config config_from_metadata(const std::map<std::string, std::string>& m, const std::string& where) {
  const auto get = [&](const std::string& key) -> const std::string& {
    const auto it = m.find(key);
    require(it != m.end(), where, "the metadata has no \"", key, "\" (not a kern checkpoint?)");
    return it->second;
  };
  const auto integer = [&](const std::string& key) {
    const std::string& text = get(key);
    std::size_t used = 0;
    long long value = 0;
    try {
      value = std::stoll(text, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    require(used == text.size() && !text.empty(), where, "metadata \"", key, "\" = \"", text, "\" is not an integer");
    return static_cast<index_t>(value);
  };
  const auto real = [&](const std::string& key) {
    const std::string& text = get(key);
    std::size_t used = 0;
    double value = 0;
    try {
      value = std::stod(text, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    require(used == text.size() && !text.empty(), where, "metadata \"", key, "\" = \"", text, "\" is not a number");
    return value;
  };
  const auto choice = [&](const std::string& key, const char* a, const char* b) {
    const std::string& text = get(key);
    require(text == a || text == b, where, "metadata \"", key, "\" = \"", text, "\" is neither ", a, " nor ", b);
    return text == a;
  };
  model_config c;
  c.n_layers = integer("kern.n_layers");
  c.n_heads = integer("kern.n_heads");
  c.n_kv_heads = integer("kern.n_kv_heads");
  c.d_model = integer("kern.d_model");
  c.d_ff = integer("kern.d_ff");
  c.vocab = integer("kern.vocab");
  c.vocab_padded = integer("kern.vocab_padded");
  c.context = integer("kern.context");
  c.norm = choice("kern.norm", "layernorm", "rmsnorm") ? ops::norm_kind::layernorm : ops::norm_kind::rmsnorm;
  c.position = choice("kern.positions", "learned", "rope") ? positions::learned : positions::rope;
  c.mlp = choice("kern.mlp", "gelu", "swiglu") ? mlp_kind::gelu : mlp_kind::swiglu;
  c.tied_embeddings = choice("kern.tied_embeddings", "true", "false");
  c.biases = choice("kern.biases", "true", "false");
  c.norm_epsilon = static_cast<float>(real("kern.norm_epsilon"));
  c.rope_theta = real("kern.rope_theta");
  c.rope_pairing =
      choice("kern.rope_pairing", "adjacent", "half") ? ops::rope_pairing::adjacent : ops::rope_pairing::half;
  try {
    c.validate();
  } catch (const error& e) {
    kern::detail::fail(where, "the configuration in the metadata is invalid: ", e.what());
  }
  return c;
}

// A Hugging Face config.json (model_type "gpt2" or "llama") as a kern configuration.
inline model_config config_from_hf_json(const std::filesystem::path& path) {
  const std::string where = describe_file("kern::examples::config_from_hf_json", path);
  const mapped_file file("kern::examples::config_from_hf_json", path);
  const std::string_view text(reinterpret_cast<const char*>(file.bytes().data()), file.bytes().size());
  const json::value root = json::parse(text, where);
  require(root.type == json::value::kind::object, where, "is not a JSON object");
  const auto find = [&](const std::string& key) -> const json::value* {
    for (const json::member& m : root.members) {
      if (m.key == key) {
        return &m.item;
      }
    }
    return nullptr;
  };
  const auto integer = [&](const std::string& key, std::optional<index_t> fallback = std::nullopt) {
    const json::value* v = find(key);
    if ((v == nullptr || v->type == json::value::kind::null) && fallback) {
      return *fallback;
    }
    require(v != nullptr && v->type == json::value::kind::integer, where, "\"", key, "\" is missing or not an integer");
    return static_cast<index_t>(v->integer);
  };
  const auto real = [&](const std::string& key, double fallback) {
    const json::value* v = find(key);
    if (v == nullptr) {
      return fallback;
    }
    require(v->type == json::value::kind::number || v->type == json::value::kind::integer, where, "\"", key,
            "\" is not a number");
    return v->type == json::value::kind::number ? v->number : static_cast<double>(v->integer);
  };
  const json::value* type = find("model_type");
  require(type != nullptr && type->type == json::value::kind::string, where, "has no \"model_type\" string");
  model_config c;
  if (type->string == "gpt2") {
    c = gpt2_config(integer("n_layer"), integer("n_head"), integer("n_embd"), integer("vocab_size"),
                    integer("n_positions"));
    c.d_ff = integer("n_inner", 4 * c.d_model);
    c.norm_epsilon = static_cast<float>(real("layer_norm_epsilon", 1e-5));
  } else if (type->string == "llama") {
    const index_t heads = integer("num_attention_heads");
    const json::value* tie = find("tie_word_embeddings");
    c = llama_config(integer("num_hidden_layers"), heads, integer("num_key_value_heads", heads), integer("hidden_size"),
                     integer("intermediate_size"), integer("vocab_size"), integer("max_position_embeddings"),
                     tie != nullptr && tie->type == json::value::kind::boolean && tie->boolean);
    c.norm_epsilon = static_cast<float>(real("rms_norm_eps", 1e-6));
    c.rope_theta = real("rope_theta", 10000.0);
    c.rope_pairing = ops::rope_pairing::half;
  } else {
    kern::detail::fail(where, "model_type \"", type->string, "\" is not supported (gpt2, llama)");
  }
  try {
    c.validate();
  } catch (const error& e) {
    kern::detail::fail(where, "describes an invalid model: ", e.what());
  }
  return c;
}

namespace checkpoint_detail {

// One tensor of a checkpoint and where its values go in (or come from) kern's parameter buffer:
// the checkpoint tensor is `rows` x `cols`; element (r, c) is parameter [offset + map(r, c)].
struct tensor_map {
  std::string name;
  index_t rows, cols;
  std::function<index_t(index_t, index_t)> at;
  bool vector = false; // stored 1-D
};

// half_order: q and k rows in the checkpoint rotate halves (Hugging Face's order; kern writes it),
// or the model's own pairing (llama2.c's files).
inline std::vector<tensor_map> tensor_maps(const model_config& c, const parameter_layout& layout,
                                           bool half_order = true) {
  const index_t d = c.d_model, hd = c.head_dim();
  const auto same = [](index_t offset, index_t cols) {
    return [offset, cols](index_t r, index_t col) { return offset + r * cols + col; };
  };
  // A checkpoint [in, out] tensor of kern's [out, in] weight (GPT-2's Conv1D).
  const auto transposed = [](index_t offset, index_t in) {
    return [offset, in](index_t r, index_t col) { return offset + col * in + r; };
  };
  const auto vector = [&](std::string name, index_t offset, index_t n) {
    return tensor_map{std::move(name), 1, n, same(offset, n), true};
  };
  std::vector<tensor_map> maps;
  const tensor_naming naming = naming_of(c);
  if (naming == tensor_naming::kern) {
    for (const tensor_slot& t : layout.tensors()) {
      const index_t cols = t.shape.back();
      maps.push_back({t.name, t.size() / cols, cols, same(t.offset, cols), t.shape.size() == 1});
    }
    return maps;
  }
  if (naming == tensor_naming::gpt2) {
    maps.push_back({"wte.weight", c.vocab, d, same(layout.token_embedding, d)});
    maps.push_back({"wpe.weight", c.context, d, same(layout.position_embedding, d)});
    for (index_t l = 0; l < c.n_layers; ++l) {
      const layer_offsets& w = layout.layers[static_cast<std::size_t>(l)];
      const std::string p = "h." + std::to_string(l) + ".";
      maps.push_back(vector(p + "ln_1.weight", w.attn_norm_weight, d));
      maps.push_back(vector(p + "ln_1.bias", w.attn_norm_bias, d));
      maps.push_back({p + "attn.c_attn.weight", d, c.qkv_dim(), transposed(w.qkv_weight, d)});
      maps.push_back(vector(p + "attn.c_attn.bias", w.qkv_bias, c.qkv_dim()));
      maps.push_back({p + "attn.c_proj.weight", c.q_dim(), d, transposed(w.attn_out_weight, c.q_dim())});
      maps.push_back(vector(p + "attn.c_proj.bias", w.attn_out_bias, d));
      maps.push_back(vector(p + "ln_2.weight", w.mlp_norm_weight, d));
      maps.push_back(vector(p + "ln_2.bias", w.mlp_norm_bias, d));
      maps.push_back({p + "mlp.c_fc.weight", d, c.d_ff, transposed(w.mlp_in_weight, d)});
      maps.push_back(vector(p + "mlp.c_fc.bias", w.mlp_in_bias, c.d_ff));
      maps.push_back({p + "mlp.c_proj.weight", c.d_ff, d, transposed(w.mlp_out_weight, c.d_ff)});
      maps.push_back(vector(p + "mlp.c_proj.bias", w.mlp_out_bias, d));
    }
    maps.push_back(vector("ln_f.weight", layout.final_norm_weight, d));
    maps.push_back(vector("ln_f.bias", layout.final_norm_bias, d));
    return maps;
  }
  // Llama: q and k rows of a model that rotates adjacent pairs, k = 2i + j within a head, sit at
  // row j * head_dim / 2 + i of the half-rotation order.
  const bool permute = half_order && c.rope_pairing == ops::rope_pairing::adjacent;
  const auto rotated = [permute, hd, d](index_t offset) {
    return [permute, hd, d, offset](index_t r, index_t col) {
      const index_t k = permute ? (r / hd) * hd + 2 * (r % hd % (hd / 2)) + (r % hd) / (hd / 2) : r;
      return offset + k * d + col;
    };
  };
  maps.push_back({"model.embed_tokens.weight", c.vocab, d, same(layout.token_embedding, d)});
  for (index_t l = 0; l < c.n_layers; ++l) {
    const layer_offsets& w = layout.layers[static_cast<std::size_t>(l)];
    const std::string p = "model.layers." + std::to_string(l) + ".";
    maps.push_back(vector(p + "input_layernorm.weight", w.attn_norm_weight, d));
    maps.push_back({p + "self_attn.q_proj.weight", c.q_dim(), d, rotated(w.qkv_weight)});
    maps.push_back({p + "self_attn.k_proj.weight", c.kv_dim(), d, rotated(w.qkv_weight + c.q_dim() * d)});
    maps.push_back(
        {p + "self_attn.v_proj.weight", c.kv_dim(), d, same(w.qkv_weight + (c.q_dim() + c.kv_dim()) * d, d)});
    maps.push_back({p + "self_attn.o_proj.weight", d, c.q_dim(), same(w.attn_out_weight, c.q_dim())});
    maps.push_back(vector(p + "post_attention_layernorm.weight", w.mlp_norm_weight, d));
    maps.push_back({p + "mlp.gate_proj.weight", c.d_ff, d, same(w.mlp_in_weight, d)});
    maps.push_back({p + "mlp.up_proj.weight", c.d_ff, d, same(w.mlp_in_weight + c.d_ff * d, d)});
    maps.push_back({p + "mlp.down_proj.weight", d, c.d_ff, same(w.mlp_out_weight, c.d_ff)});
  }
  maps.push_back(vector("model.norm.weight", layout.final_norm_weight, d));
  if (!c.tied_embeddings) {
    maps.push_back({"lm_head.weight", c.vocab, d, same(layout.output_weight, d)});
  }
  return maps;
}

inline std::vector<index_t> stored_shape(const tensor_map& m) {
  return m.vector ? std::vector<index_t>{m.cols} : std::vector<index_t>{m.rows, m.cols};
}

} // namespace checkpoint_detail

// Writes the model's weights and configuration (plus `extra` metadata) to `path`, atomically.
template <class Backend> void save_model(const std::filesystem::path& path, const transformer<Backend>& model,
                                         const std::map<std::string, std::string>& extra = {}) {
  const model_config& c = model.config();
  std::vector<std::vector<float>> storage;
  safetensors_writer writer;
  const std::span<const float> params = model.parameters();
  for (const checkpoint_detail::tensor_map& m : checkpoint_detail::tensor_maps(c, model.layout())) {
    std::vector<float>& values = storage.emplace_back(static_cast<std::size_t>(m.rows * m.cols));
    for (index_t r = 0; r < m.rows; ++r) {
      for (index_t col = 0; col < m.cols; ++col) {
        values[static_cast<std::size_t>(r * m.cols + col)] = params[static_cast<std::size_t>(m.at(r, col))];
      }
    }
    writer.add(m.name, checkpoint_detail::stored_shape(m), values);
  }
  writer.set_metadata("format", "pt");
  for (const auto& [key, value] : config_metadata(c)) {
    writer.set_metadata(key, value);
  }
  for (const auto& [key, value] : extra) {
    writer.set_metadata(key, value);
  }
  writer.write(path);
}

// Fills the model's parameters from an open checkpoint (names and shapes of the model's family).
template <class Backend> void load_weights(transformer<Backend>& model, const safetensors_file& file) {
  const std::span<float> params = model.parameters();
  std::fill(params.begin(), params.end(), 0.0f);
  std::vector<float> values;
  for (const checkpoint_detail::tensor_map& m : checkpoint_detail::tensor_maps(model.config(), model.layout())) {
    values.resize(static_cast<std::size_t>(m.rows * m.cols));
    // Some GPT-2 files name the trunk "transformer.wte.weight", ...
    const std::string name =
        !file.contains(m.name) && file.contains("transformer." + m.name) ? "transformer." + m.name : m.name;
    file.read_f32(name, values, checkpoint_detail::stored_shape(m));
    for (index_t r = 0; r < m.rows; ++r) {
      for (index_t col = 0; col < m.cols; ++col) {
        params[static_cast<std::size_t>(m.at(r, col))] = values[static_cast<std::size_t>(r * m.cols + col)];
      }
    }
  }
}

// A llama2.c .bin checkpoint as a kern configuration and weights.
inline model_config config_of(const llama2c_checkpoint& ckpt) {
  const llama2c_config& l = ckpt.config;
  model_config c = llama_config(l.n_layers, l.n_heads, l.n_kv_heads, l.dim, l.hidden_dim, l.vocab_size, l.seq_len,
                                l.shared_classifier);
  c.rope_pairing = ckpt.rope_pairing;
  c.rope_theta = ckpt.rope_theta;
  c.norm_epsilon = ckpt.norm_epsilon;
  return c;
}

// Any checkpoint kern reads: a llama2.c .bin (by its extension), or a safetensors file with kern's
// configuration in its metadata or a Hugging Face config.json beside it.
template <class Backend = cpu_backend> transformer<Backend> load_model(const std::filesystem::path& path) {
  if (path.extension() == ".bin") {
    const llama2c_checkpoint ckpt = read_llama2c(path);
    transformer<Backend> model(config_of(ckpt));
    const std::span<float> params = model.parameters();
    for (const checkpoint_detail::tensor_map& m :
         checkpoint_detail::tensor_maps(model.config(), model.layout(), false)) {
      const named_tensor& t = ckpt.tensor(m.name);
      for (index_t r = 0; r < m.rows; ++r) {
        for (index_t col = 0; col < m.cols; ++col) {
          params[static_cast<std::size_t>(m.at(r, col))] = t.values[static_cast<std::size_t>(r * m.cols + col)];
        }
      }
    }
    return model;
  }
  const safetensors_file file = safetensors_file::read(path);
  const std::filesystem::path hf_config = path.parent_path() / "config.json";
  const bool kern_config = file.metadata().count("kern.n_layers") > 0;
  require(kern_config || std::filesystem::exists(hf_config), describe_file("kern::examples::load_model", path),
          "has no kern configuration in its metadata and there is no config.json beside it");
  transformer<Backend> model(
      kern_config ? config_from_metadata(file.metadata(), describe_file("kern::examples::load_model", path))
                  : config_from_hf_json(hf_config));
  load_weights(model, file);
  return model;
}

} // namespace kern::examples
