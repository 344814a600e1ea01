// Where every parameter of the model lives: one contiguous fp32 buffer (and a gradient buffer with
// the same layout), a named slice per tensor.
//
// Linear weights are [out, in] (as PyTorch's nn.Linear and Llama store them): y = x W^T + b.
// Fused projections: attention's q|k|v in one [q_dim + 2 kv_dim, d] weight, SwiGLU's gate|up in
// one [2 d_ff, d] weight, so that each is one GEMM.
#pragma once

#include <cstddef>
#include <span>
#include <string>
#include <vector>

#include "config.hpp"
#include "kern/core/error.hpp"

namespace kern::examples {

struct tensor_slot {
  std::string name;
  index_t offset = 0;
  std::vector<index_t> shape;
  bool decay = false; // weight decay applies (matrices), not to norms, biases

  index_t size() const {
    index_t n = 1;
    for (index_t extent : shape) {
      n *= extent;
    }
    return n;
  }
};

// Offsets of one layer's tensors (absent tensors: -1).
struct layer_offsets {
  index_t attn_norm_weight = -1, attn_norm_bias = -1;
  index_t qkv_weight = -1, qkv_bias = -1;
  index_t attn_out_weight = -1, attn_out_bias = -1;
  index_t mlp_norm_weight = -1, mlp_norm_bias = -1;
  index_t mlp_in_weight = -1, mlp_in_bias = -1; // fc (GELU) or gate|up (SwiGLU)
  index_t mlp_out_weight = -1, mlp_out_bias = -1;
};

class parameter_layout {
public:
  explicit parameter_layout(const model_config& c) {
    c.validate();
    const index_t d = c.d_model;
    token_embedding = add("tok_embeddings.weight", {c.vocab_padded, d}, true);
    if (c.position == positions::learned) {
      position_embedding = add("pos_embeddings.weight", {c.context, d}, true);
    }
    const bool layernorm = c.norm == ops::norm_kind::layernorm;
    for (index_t l = 0; l < c.n_layers; ++l) {
      const std::string p = "layers." + std::to_string(l) + ".";
      layer_offsets o;
      o.attn_norm_weight = add(p + "attn_norm.weight", {d}, false);
      if (layernorm && c.biases) {
        o.attn_norm_bias = add(p + "attn_norm.bias", {d}, false);
      }
      o.qkv_weight = add(p + "attn.qkv.weight", {c.qkv_dim(), d}, true);
      if (c.biases) {
        o.qkv_bias = add(p + "attn.qkv.bias", {c.qkv_dim()}, false);
      }
      o.attn_out_weight = add(p + "attn.out.weight", {d, c.q_dim()}, true);
      if (c.biases) {
        o.attn_out_bias = add(p + "attn.out.bias", {d}, false);
      }
      o.mlp_norm_weight = add(p + "mlp_norm.weight", {d}, false);
      if (layernorm && c.biases) {
        o.mlp_norm_bias = add(p + "mlp_norm.bias", {d}, false);
      }
      o.mlp_in_weight = add(p + "mlp.in.weight", {c.mlp_in_dim(), d}, true);
      if (c.biases) {
        o.mlp_in_bias = add(p + "mlp.in.bias", {c.mlp_in_dim()}, false);
      }
      o.mlp_out_weight = add(p + "mlp.out.weight", {d, c.d_ff}, true);
      if (c.biases) {
        o.mlp_out_bias = add(p + "mlp.out.bias", {d}, false);
      }
      layers.push_back(o);
    }
    final_norm_weight = add("final_norm.weight", {d}, false);
    if (layernorm && c.biases) {
      final_norm_bias = add("final_norm.bias", {d}, false);
    }
    if (!c.tied_embeddings) {
      output_weight = add("output.weight", {c.vocab_padded, d}, true);
    }
  }

  index_t total() const { return total_; }
  const std::vector<tensor_slot>& tensors() const { return tensors_; }
  const tensor_slot& find(const std::string& name) const {
    for (const tensor_slot& t : tensors_) {
      if (t.name == name) {
        return t;
      }
    }
    detail::fail("parameter_layout", "no tensor named '", name, "'");
  }

  index_t token_embedding = -1, position_embedding = -1;
  std::vector<layer_offsets> layers;
  index_t final_norm_weight = -1, final_norm_bias = -1;
  index_t output_weight = -1; // -1: tied to the token embedding

private:
  index_t add(std::string name, std::vector<index_t> shape, bool decay) {
    tensor_slot t{std::move(name), total_, std::move(shape), decay};
    // Each tensor starts on a 64-byte boundary: vector loads of any tensor are aligned.
    total_ += round_up_to(t.size(), 16);
    tensors_.push_back(std::move(t));
    return tensors_.back().offset;
  }

  std::vector<tensor_slot> tensors_;
  index_t total_ = 0;
};

} // namespace kern::examples
