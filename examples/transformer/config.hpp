// The configuration of the minimal transformer: one code path, a few switches, GPT-2 and Llama.
#pragma once

#include <cstdint>
#include <string>

#include "kern/core/error.hpp"
#include "kern/core/view.hpp"
#include "kern/ops/norm.hpp"
#include "kern/ops/rope.hpp"

namespace kern::examples {

enum class positions : std::uint8_t { learned, rope };
enum class mlp_kind : std::uint8_t { gelu, swiglu };

struct model_config {
  index_t n_layers = 0;
  index_t n_heads = 0;
  index_t n_kv_heads = 0; // grouped-query attention when below n_heads
  index_t d_model = 0;
  index_t d_ff = 0;         // hidden width of the MLP
  index_t vocab = 0;        // tokens that exist
  index_t vocab_padded = 0; // rows of the embedding and output tables (a multiple of 64 speeds the GEMMs)
  index_t context = 0;      // longest sequence
  ops::norm_kind norm = ops::norm_kind::layernorm;
  positions position = positions::learned;
  mlp_kind mlp = mlp_kind::gelu;
  bool tied_embeddings = true; // the output projection is the token embedding
  bool biases = true;          // linear layers and LayerNorm have biases
  float norm_epsilon = 1e-5f;
  double rope_theta = 10000.0;
  ops::rope_pairing rope_pairing = ops::rope_pairing::adjacent;

  index_t head_dim() const { return d_model / n_heads; }
  index_t q_dim() const { return n_heads * head_dim(); }
  index_t kv_dim() const { return n_kv_heads * head_dim(); }
  index_t qkv_dim() const { return q_dim() + 2 * kv_dim(); }
  index_t mlp_in_dim() const { return mlp == mlp_kind::swiglu ? 2 * d_ff : d_ff; } // gate and up, fused

  void validate() const {
    constexpr const char* op = "model_config";
    require(n_layers >= 1, op, "n_layers = ", n_layers, " must be at least 1");
    require(n_heads >= 1 && d_model >= 1 && d_model % n_heads == 0, op, "d_model = ", d_model,
            " must be a positive multiple of n_heads = ", n_heads);
    require(n_kv_heads >= 1 && n_heads % n_kv_heads == 0, op, "n_kv_heads = ", n_kv_heads,
            " must divide n_heads = ", n_heads);
    require(d_ff >= 1, op, "d_ff = ", d_ff, " must be positive");
    require(vocab >= 1 && vocab_padded >= vocab, op, "vocab = ", vocab, ", vocab_padded = ", vocab_padded,
            ": need 1 <= vocab <= vocab_padded");
    require(context >= 1, op, "context = ", context, " must be positive");
    require(position != positions::rope || head_dim() % 2 == 0, op, "RoPE needs an even head_dim, not ", head_dim());
    require(head_dim() <= 256, op, "head_dim = ", head_dim(), " is above 256");
    require(norm_epsilon > 0.0f, op, "norm_epsilon = ", norm_epsilon, " must be positive");
  }
};

inline index_t round_up_to(index_t n, index_t multiple) { return (n + multiple - 1) / multiple * multiple; }

// GPT-2 (124M): LayerNorm, learned positions, GELU, tied embeddings, biases.
inline model_config gpt2_config(index_t n_layers = 12, index_t n_heads = 12, index_t d_model = 768,
                                index_t vocab = 50257, index_t context = 1024) {
  model_config c;
  c.n_layers = n_layers;
  c.n_heads = n_heads;
  c.n_kv_heads = n_heads;
  c.d_model = d_model;
  c.d_ff = 4 * d_model;
  c.vocab = vocab;
  c.vocab_padded = round_up_to(vocab, 64);
  c.context = context;
  return c;
}

// Llama (llama2.c's TinyStories models): RMSNorm, RoPE, SwiGLU, grouped-query attention, no biases.
inline model_config llama_config(index_t n_layers, index_t n_heads, index_t n_kv_heads, index_t d_model, index_t d_ff,
                                 index_t vocab, index_t context, bool tied = true) {
  model_config c;
  c.n_layers = n_layers;
  c.n_heads = n_heads;
  c.n_kv_heads = n_kv_heads;
  c.d_model = d_model;
  c.d_ff = d_ff;
  c.vocab = vocab;
  c.vocab_padded = vocab;
  c.context = context;
  c.norm = ops::norm_kind::rmsnorm;
  c.position = positions::rope;
  c.mlp = mlp_kind::swiglu;
  c.tied_embeddings = tied;
  c.biases = false;
  return c;
}

} // namespace kern::examples
