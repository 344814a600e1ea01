// The minimal transformer: forward and backward written out by hand from kern's kernels.
//
// One code path covers GPT-2 (LayerNorm, learned positions, GELU, tied embeddings, biases) and
// Llama (RMSNorm, RoPE, SwiGLU, grouped-query attention); see config.hpp. Pre-norm blocks:
//
//   x = embed(tokens)
//   per layer:  h = x + attention(norm1(x)) W_o^T     (q|k|v one GEMM, RoPE in place, flash attention)
//               x = h + mlp(norm2(h)) W_out^T          (fc + GELU, or gate|up + SwiGLU)
//   logits = norm_f(x) W_emb^T  ->  fused cross-entropy (its gradient written over the logits)
//
// Residual adds and biases ride in the GEMM epilogues. Every activation the backward pass needs
// is kept, in buffers planned once for (batch, seq): a training step allocates nothing.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <map>
#include <random>
#include <span>
#include <utility>
#include <vector>

#include "backend.hpp"
#include "config.hpp"
#include "kern/core/memory.hpp"
#include "parameters.hpp"

namespace kern::examples {

enum class precision : std::uint8_t { fp32, bf16 };

template <class Backend = cpu_backend> class transformer {
public:
  using context = typename Backend::context;

  explicit transformer(const model_config& config)
      : config_(config), layout_(config), params_(static_cast<std::size_t>(layout_.total())),
        grads_(static_cast<std::size_t>(layout_.total())) {
    std::fill(params_.data(), params_.data() + params_.size(), 0.0f);
    zero_grad();
    if (config_.position == positions::rope) {
      const index_t half = config_.head_dim() / 2;
      rope_cos_.resize(static_cast<std::size_t>(config_.context * half));
      rope_sin_.resize(rope_cos_.size());
      ops::fill_rope_table(rope_cos_.data(), rope_sin_.data(), config_.context, config_.head_dim(), config_.rope_theta);
    }
  }

  const model_config& config() const { return config_; }

  // How the GEMMs multiply: fp32, or with their operands rounded to bf16 as they are packed (fp32
  // accumulation; weights, activations and optimizer state stay fp32).
  void set_precision(precision p) {
    gemm_compute_ = p == precision::bf16 ? ops::gemm_compute::bf16 : ops::gemm_compute::native;
  }
  const parameter_layout& layout() const { return layout_; }
  // Writable weights: generation's transposed copies are made again before the next use.
  std::span<float> parameters() {
    transposed_.clear();
    return {params_.data(), params_.size()};
  }
  std::span<const float> parameters() const { return {params_.data(), params_.size()}; }
  std::span<float> gradients() { return {grads_.data(), grads_.size()}; }
  void zero_grad() { std::fill(grads_.data(), grads_.data() + grads_.size(), 0.0f); }

  // GPT-2's initialization: N(0, 0.02) for matrices and embeddings, the projections into the
  // residual stream scaled by 1/sqrt(2 n_layers), norm weights 1, biases 0.
  void init_random(std::uint64_t seed) {
    std::mt19937_64 rng(seed);
    const float residual_std = 0.02f / std::sqrt(2.0f * static_cast<float>(config_.n_layers));
    for (const tensor_slot& t : layout_.tensors()) {
      float* p = params_.data() + t.offset;
      const bool is_norm = t.name.find("norm.weight") != std::string::npos;
      if (is_norm) {
        std::fill(p, p + t.size(), 1.0f);
      } else if (!t.decay) {
        std::fill(p, p + t.size(), 0.0f);
      } else {
        const bool residual =
            t.name.find("attn.out.weight") != std::string::npos || t.name.find("mlp.out.weight") != std::string::npos;
        std::normal_distribution<float> normal(0.0f, residual ? residual_std : 0.02f);
        for (index_t i = 0; i < t.size(); ++i) {
          p[i] = normal(rng);
        }
      }
    }
    // Padding rows of the vocabulary stay zero: their logits are excluded from the loss anyway.
    const index_t d = config_.d_model;
    std::fill(params_.data() + layout_.token_embedding + config_.vocab * d,
              params_.data() + layout_.token_embedding + config_.vocab_padded * d, 0.0f);
  }

  // Buffers for training batches of (batch, seq); once, before the steps that use them.
  void plan(index_t batch, index_t seq) {
    allocate(batch, seq, config_.n_layers, true);
    generating_ = false;
  }

  // Generation with a KV cache: buffers for calls of up to `chunk` new tokens per sequence (the
  // longest prompt), one layer's activations (no backward pass), and the cache itself, empty.
  void start_generation(index_t batch, index_t chunk) {
    allocate(batch, chunk, 1, false);
    if (transposed_.empty()) {
      transpose_weights();
    }
    const index_t per_layer = batch * config_.context * config_.kv_dim();
    if (k_cache_.size() != static_cast<std::size_t>(config_.n_layers * per_layer)) {
      k_cache_ = buffer(config_.n_layers * per_layer);
      v_cache_ = buffer(config_.n_layers * per_layer);
    }
    generating_ = true;
    cached_ = 0;
  }

  // Positions already in the cache.
  index_t cached() const { return cached_; }

  // Runs `count` new tokens of each sequence (tokens [batch, count], count <= the chunk) at the
  // positions after the cache, adds their keys and values to it, and returns the logits of each
  // sequence's last new position: [batch, vocab_padded], valid until the next call.
  const float* generate_step(const context& ctx, const std::int32_t* tokens, index_t count) {
    require(generating_, "transformer::generate_step", "start_generation(batch, chunk) first");
    require(count >= 1 && count <= capacity_, "transformer::generate_step", "count = ", count, " is not in [1, ",
            capacity_, "]");
    require(cached_ + count <= config_.context, "transformer::generate_step", "positions ", cached_, " + ", count,
            " exceed the context (", config_.context, ")");
    seq_ = count;
    const index_t d = config_.d_model;
    embed(ctx, tokens);
    for (index_t l = 0; l < config_.n_layers; ++l) {
      layer_forward(ctx, l);
    }
    // Only the last position of each sequence goes through the final norm and the output layer.
    const matrix_view<float> last{x_of(config_.n_layers).data + (count - 1) * d, batch_, d, count * d};
    const matrix_view<float> nf{acts_.nf.data(), batch_, d};
    ops::norm_forward_params<float> p;
    p.kind = config_.norm;
    p.x = last;
    p.weight = param(layout_.final_norm_weight);
    p.bias = param(layout_.final_norm_bias);
    p.y = nf;
    p.epsilon = config_.norm_epsilon;
    Backend::norm_forward(ctx, p);
    linear(ctx, nf, output_weight(), config_.vocab_padded, -1, {acts_.logits.data(), batch_, config_.vocab_padded});
    cached_ += count;
    return acts_.logits.data();
  }

  index_t planned_batch() const { return batch_; }
  index_t planned_seq() const { return seq_; }

  // The forward pass over tokens [batch, seq] (the planned shape). With targets, returns the mean
  // cross-entropy over the targets that are not -1 and leaves the gradient of loss * grad_scale
  // in place of the logits, for backward(); without, leaves the logits ([batch * seq, vocab_padded]).
  float forward(const context& ctx, const std::int32_t* tokens, const std::int32_t* targets = nullptr,
                float grad_scale = 1.0f) {
    require(batch_ > 0 && !generating_, "transformer::forward", "plan(batch, seq) first");
    const index_t d = config_.d_model;
    std::copy(tokens, tokens + tokens_count(), acts_.tokens.begin());
    embed(ctx, tokens);
    for (index_t l = 0; l < config_.n_layers; ++l) {
      layer_forward(ctx, l);
    }

    norm(ctx, x_of(config_.n_layers), layout_.final_norm_weight, layout_.final_norm_bias, rows(acts_.nf.data(), d),
         acts_.nf_stats.data());
    linear(ctx, rows(acts_.nf.data(), d), output_weight(), config_.vocab_padded, -1,
           rows(acts_.logits.data(), config_.vocab_padded));
    if (targets == nullptr) {
      return 0.0f;
    }
    ops::cross_entropy_params<float> ce;
    ce.logits = rows(acts_.logits.data(), config_.vocab_padded);
    ce.targets = targets;
    ce.vocab = config_.vocab;
    ce.ignore_index = -1;
    ce.grad_scale = grad_scale;
    return static_cast<float>(Backend::cross_entropy(ctx, ce).loss);
  }

  std::span<const float> logits() const { return {acts_.logits.data(), acts_.logits.size()}; }

  // Adds the gradient of the last forward()'s loss (times its grad_scale) to gradients().
  void backward(const context& ctx) {
    const index_t d = config_.d_model, V = config_.vocab_padded;
    const matrix_view<float> dlogits = rows(acts_.logits.data(), V);
    const matrix_view<float> d_res = rows(acts_.d_res.data(), d), d_tmp = rows(acts_.d_tmp.data(), d);
    linear_backward(ctx, dlogits, rows(acts_.nf.data(), d), output_weight(), -1, d_tmp);
    norm_backward(ctx, x_of(config_.n_layers), d_tmp, layout_.final_norm_weight, layout_.final_norm_bias,
                  acts_.nf_stats.data(), d_res, false);
    for (index_t l = config_.n_layers - 1; l >= 0; --l) {
      layer_backward(ctx, l);
    }
    ops::embedding_backward_params<float> embed;
    embed.tokens = acts_.tokens.data();
    embed.batch = batch_;
    embed.seq = seq_;
    embed.dout = d_res;
    embed.token_grad = {grad(layout_.token_embedding), config_.vocab, d};
    if (layout_.position_embedding >= 0) {
      embed.position_grad = {grad(layout_.position_embedding), config_.context, d};
    }
    Backend::embedding_backward(ctx, embed);
  }

private:
  struct activations {
    aligned_buffer<float> x, h, n1, n2, n1_stats, n2_stats, qkv, att, lse, pre, act, nf, nf_stats, logits;
    aligned_buffer<float> d_res, d_tmp, d_att, d_qkv, d_pre, d_act;
    std::vector<std::int32_t> tokens;
  };

  static aligned_buffer<float> buffer(index_t n) { return aligned_buffer<float>(static_cast<std::size_t>(n)); }

  // Activations for `layers` layers of batch x seq tokens (training keeps every layer's for the
  // backward pass; generation reuses one layer's, and two residual-stream slots).
  void allocate(index_t batch, index_t seq, index_t layers, bool with_gradients) {
    require(batch >= 1 && seq >= 1, "transformer::plan", "batch = ", batch, ", seq = ", seq, " must be positive");
    require(seq <= config_.context, "transformer::plan", "seq = ", seq, " is longer than the context (",
            config_.context, ")");
    batch_ = batch;
    seq_ = capacity_ = seq;
    layer_slots_ = layers;
    const index_t n = batch * seq, d = config_.d_model, L = layers;
    acts_ = activations{};
    acts_.x = buffer((with_gradients ? L + 1 : 2) * n * d);
    acts_.h = buffer(L * n * d);
    acts_.n1 = buffer(L * n * d);
    acts_.n2 = buffer(L * n * d);
    acts_.n1_stats = buffer(L * 2 * n);
    acts_.n2_stats = buffer(L * 2 * n);
    acts_.qkv = buffer(L * n * config_.qkv_dim());
    acts_.att = buffer(L * n * config_.q_dim());
    acts_.lse = buffer(L * batch * config_.n_heads * seq);
    acts_.pre = buffer(L * n * config_.mlp_in_dim());
    acts_.act = buffer(L * n * config_.d_ff);
    acts_.nf = buffer(n * d);
    acts_.nf_stats = buffer(2 * n);
    acts_.logits = buffer(n * config_.vocab_padded);
    if (with_gradients) {
      acts_.d_res = buffer(n * d);
      acts_.d_tmp = buffer(n * d);
      acts_.d_att = buffer(n * config_.q_dim());
      acts_.d_qkv = buffer(n * config_.qkv_dim());
      acts_.d_pre = buffer(n * config_.mlp_in_dim());
      acts_.d_act = buffer(n * config_.d_ff);
      acts_.tokens.assign(static_cast<std::size_t>(n), 0);
    }
  }

  // Token (and learned position) embeddings of tokens [batch, seq_] into the residual stream.
  void embed(const context& ctx, const std::int32_t* tokens) {
    ops::embedding_forward_params<float> e;
    e.tokens = tokens;
    e.batch = batch_;
    e.seq = seq_;
    e.token_table = {param(layout_.token_embedding), config_.vocab, config_.d_model};
    if (layout_.position_embedding >= 0) {
      e.position_table = {param(layout_.position_embedding), config_.context, config_.d_model};
    }
    e.position_offset = generating_ ? cached_ : 0;
    e.out = x_of(0);
    Backend::embedding_forward(ctx, e);
  }

  // Where layer l keeps its activations: its own slot when training, the one slot when generating.
  index_t slot(index_t l) const { return layer_slots_ == 1 ? 0 : l; }

  float* param(index_t offset) { return offset >= 0 ? params_.data() + offset : nullptr; }
  float* grad(index_t offset) { return offset >= 0 ? grads_.data() + offset : nullptr; }
  index_t output_weight() const { return layout_.output_weight >= 0 ? layout_.output_weight : layout_.token_embedding; }

  index_t tokens_count() const { return batch_ * seq_; }
  matrix_view<float> rows(float* data, index_t cols) const { return {data, tokens_count(), cols}; }
  // The residual stream into layer l (l = n_layers: out of the last): slots alternate when generating.
  matrix_view<float> x_of(index_t l) {
    const index_t at = layer_slots_ == 1 ? l % 2 : l;
    return rows(acts_.x.data() + at * tokens_count() * config_.d_model, config_.d_model);
  }
  template <class Buffer> matrix_view<float> layer_rows(Buffer& b, index_t l, index_t cols) {
    return rows(b.data() + slot(l) * tokens_count() * cols, cols);
  }

  // y = x W^T + b (+ residual): W is [out, in] at `weight`, b at `bias` (or none).
  void linear(const context& ctx, matrix_view<float> x, index_t weight, index_t out, index_t bias, matrix_view<float> y,
              matrix_view<float> residual = {}) {
    ops::gemm_params<float, float, float> g;
    g.a = x;
    g.b = {param(weight), out, x.cols};
    g.trans_b = ops::transpose::trans;
    if (const auto it = transposed_.find(weight); generating_ && it != transposed_.end()) {
      g.b = {it->second, x.cols, out}; // W^T, [in, out]: a few rows of x stream it once
      g.trans_b = ops::transpose::none;
    }
    g.c = y;
    g.bias = param(bias);
    g.residual = residual;
    g.compute = gemm_compute_;
    Backend::gemm(ctx, g);
  }

  // Generation multiplies one or a few rows by each weight: the GEMM streams B fastest when it is
  // [in, out] row-major, so the weights are transposed once for it (a copy: training keeps [out, in]).
  void transpose_weights() {
    transposed_.clear();
    std::vector<std::pair<index_t, std::array<index_t, 2>>> weights; // offset, {out, in}
    const index_t d = config_.d_model;
    for (const layer_offsets& w : layout_.layers) {
      weights.push_back({w.qkv_weight, {config_.qkv_dim(), d}});
      weights.push_back({w.attn_out_weight, {d, config_.q_dim()}});
      weights.push_back({w.mlp_in_weight, {config_.mlp_in_dim(), d}});
      weights.push_back({w.mlp_out_weight, {d, config_.d_ff}});
    }
    weights.push_back({output_weight(), {config_.vocab_padded, d}});
    index_t total = 0;
    for (const auto& [offset, shape] : weights) {
      total += shape[0] * shape[1];
    }
    transposed_storage_ = buffer(total);
    float* at = transposed_storage_.data();
    for (const auto& [offset, shape] : weights) {
      const float* w = params_.data() + offset;
      for (index_t o = 0; o < shape[0]; ++o) {
        for (index_t i = 0; i < shape[1]; ++i) {
          at[i * shape[0] + o] = w[o * shape[1] + i];
        }
      }
      transposed_.emplace(offset, at);
      at += shape[0] * shape[1];
    }
  }

  // For y = x W^T + b: dW += dy^T x, db += colsum(dy), dx = dy W (dx may be empty).
  void linear_backward(const context& ctx, matrix_view<float> dy, matrix_view<float> x, index_t weight, index_t bias,
                       matrix_view<float> dx) {
    ops::gemm_params<float, float, float> dw;
    dw.a = dy;
    dw.trans_a = ops::transpose::trans;
    dw.b = x;
    dw.c = {grad(weight), dy.cols, x.cols};
    dw.beta = 1.0f;
    dw.compute = gemm_compute_;
    Backend::gemm(ctx, dw);
    if (bias >= 0) {
      Backend::bias_grad(ctx, ops::bias_grad_params<float>{dy, grad(bias)});
    }
    if (dx.data != nullptr) {
      ops::gemm_params<float, float, float> g;
      g.a = dy;
      g.b = {param(weight), dy.cols, x.cols};
      g.c = dx;
      g.compute = gemm_compute_;
      Backend::gemm(ctx, g);
    }
  }

  // stats: [mean | rstd], tokens_count() each.
  void norm(const context& ctx, matrix_view<float> x, index_t weight, index_t bias, matrix_view<float> y,
            float* stats) {
    ops::norm_forward_params<float> p;
    p.kind = config_.norm;
    p.x = x;
    p.weight = param(weight);
    p.bias = param(bias);
    p.y = y;
    p.mean = config_.norm == ops::norm_kind::layernorm ? stats : nullptr;
    p.rstd = stats + tokens_count();
    p.epsilon = config_.norm_epsilon;
    Backend::norm_forward(ctx, p);
  }

  void norm_backward(const context& ctx, matrix_view<float> x, matrix_view<float> dy, index_t weight, index_t bias,
                     const float* stats, matrix_view<float> dx, bool accumulate) {
    ops::norm_backward_params<float> p;
    p.kind = config_.norm;
    p.x = x;
    p.dy = dy;
    p.weight = param(weight);
    p.mean = config_.norm == ops::norm_kind::layernorm ? stats : nullptr;
    p.rstd = stats + tokens_count();
    p.dx = dx;
    p.accumulate_dx = accumulate;
    p.dweight = grad(weight);
    p.dbias = grad(bias);
    Backend::norm_backward(ctx, p);
  }

  // Views of one layer's fused q|k|v rows as [batch, seq, heads, head_dim] tensors.
  struct qkv_views {
    ops::attention_tensor<float> q, k, v;
  };
  qkv_views split_qkv(float* qkv) const {
    const index_t hd = config_.head_dim(), row = config_.qkv_dim();
    const std::array<index_t, 4> strides{seq_ * row, row, hd, 1};
    return {{qkv, {batch_, seq_, config_.n_heads, hd}, strides},
            {qkv + config_.q_dim(), {batch_, seq_, config_.n_kv_heads, hd}, strides},
            {qkv + config_.q_dim() + config_.kv_dim(), {batch_, seq_, config_.n_kv_heads, hd}, strides}};
  }
  ops::attention_tensor<float> heads_of(float* rows_data) const {
    return {rows_data, {batch_, seq_, config_.n_heads, config_.head_dim()}};
  }

  ops::rope_params<float> rope_of(ops::attention_tensor<float> x) const {
    ops::rope_params<float> r;
    r.x = x;
    r.pairing = config_.rope_pairing;
    r.cos_table = rope_cos_.data();
    r.sin_table = rope_sin_.data();
    r.table_positions = config_.context;
    r.position_offset = generating_ ? cached_ : 0;
    return r;
  }

  // Copies the new positions' keys (or values) of layer l into the cache and returns the view of
  // every cached position: [batch, cached_ + seq_, n_kv_heads, head_dim].
  ops::attention_tensor<float> append_to_cache(aligned_buffer<float>& cache, index_t l,
                                               const ops::attention_tensor<float>& fresh) {
    const index_t kv = config_.kv_dim(), hd = config_.head_dim();
    float* base = cache.data() + l * batch_ * config_.context * kv;
    for (index_t b = 0; b < batch_; ++b) {
      for (index_t s = 0; s < seq_; ++s) {
        for (index_t h = 0; h < config_.n_kv_heads; ++h) {
          const float* from = &fresh(b, s, h, index_t{0});
          std::copy(from, from + hd, base + ((b * config_.context + cached_ + s) * kv + h * hd));
        }
      }
    }
    return {base, {batch_, cached_ + seq_, config_.n_kv_heads, hd}, {config_.context * kv, kv, hd, 1}};
  }

  void layer_forward(const context& ctx, index_t l) {
    const layer_offsets& w = layout_.layers[static_cast<std::size_t>(l)];
    const index_t d = config_.d_model;
    const matrix_view<float> x = x_of(l), h = layer_rows(acts_.h, l, d), n1 = layer_rows(acts_.n1, l, d),
                             n2 = layer_rows(acts_.n2, l, d);
    const matrix_view<float> qkv = layer_rows(acts_.qkv, l, config_.qkv_dim());
    const matrix_view<float> att = layer_rows(acts_.att, l, config_.q_dim());
    norm(ctx, x, w.attn_norm_weight, w.attn_norm_bias, n1, acts_.n1_stats.data() + slot(l) * 2 * tokens_count());
    linear(ctx, n1, w.qkv_weight, config_.qkv_dim(), w.qkv_bias, qkv);
    const qkv_views heads = split_qkv(qkv.data);
    if (config_.position == positions::rope) {
      Backend::rope_forward(ctx, rope_of(heads.q));
      Backend::rope_forward(ctx, rope_of(heads.k));
    }
    ops::attention_forward_params<float> a;
    a.q = heads.q;
    a.k = heads.k;
    a.v = heads.v;
    a.o = heads_of(att.data);
    a.causal = true;
    if (!generating_) {
      a.lse = acts_.lse.data() + slot(l) * batch_ * config_.n_heads * seq_;
      Backend::attention_forward(ctx, a);
    } else {
      // The new keys and values join the cache; the new queries attend to all of it.
      a.k = append_to_cache(k_cache_, l, heads.k);
      a.v = append_to_cache(v_cache_, l, heads.v);
      if (seq_ <= 4) {
        Backend::attention_decode(ctx, a);
      } else {
        Backend::attention_forward(ctx, a);
      }
    }
    linear(ctx, att, w.attn_out_weight, d, w.attn_out_bias, h, x);

    norm(ctx, h, w.mlp_norm_weight, w.mlp_norm_bias, n2, acts_.n2_stats.data() + slot(l) * 2 * tokens_count());
    const matrix_view<float> pre = layer_rows(acts_.pre, l, config_.mlp_in_dim());
    const matrix_view<float> act = layer_rows(acts_.act, l, config_.d_ff);
    linear(ctx, n2, w.mlp_in_weight, config_.mlp_in_dim(), w.mlp_in_bias, pre);
    if (config_.mlp == mlp_kind::gelu) {
      Backend::activation_forward(ctx, ops::activation_forward_params<float>{ops::activation::gelu_tanh, pre, act});
    } else {
      Backend::swiglu_forward(ctx, ops::swiglu_forward_params<float>{gate_of(pre), up_of(pre), act});
    }
    linear(ctx, act, w.mlp_out_weight, d, w.mlp_out_bias, x_of(l + 1), h);
  }

  matrix_view<float> gate_of(matrix_view<float> pre) const { return {pre.data, pre.rows, config_.d_ff, pre.ld}; }
  matrix_view<float> up_of(matrix_view<float> pre) const {
    return {pre.data + config_.d_ff, pre.rows, config_.d_ff, pre.ld};
  }

  void layer_backward(const context& ctx, index_t l) {
    const layer_offsets& w = layout_.layers[static_cast<std::size_t>(l)];
    const index_t d = config_.d_model;
    const matrix_view<float> d_res = rows(acts_.d_res.data(), d), d_tmp = rows(acts_.d_tmp.data(), d);
    const matrix_view<float> h = layer_rows(acts_.h, l, d);

    // MLP: d_res holds dL/dx_{l+1}, which is also dL/dh through the residual.
    const matrix_view<float> pre = layer_rows(acts_.pre, l, config_.mlp_in_dim());
    const matrix_view<float> act = layer_rows(acts_.act, l, config_.d_ff);
    const matrix_view<float> d_act = rows(acts_.d_act.data(), config_.d_ff);
    const matrix_view<float> d_pre = rows(acts_.d_pre.data(), config_.mlp_in_dim());
    linear_backward(ctx, d_res, act, w.mlp_out_weight, w.mlp_out_bias, d_act);
    if (config_.mlp == mlp_kind::gelu) {
      Backend::activation_backward(
          ctx, ops::activation_backward_params<float>{ops::activation::gelu_tanh, pre, d_act, d_pre});
    } else {
      Backend::swiglu_backward(
          ctx, ops::swiglu_backward_params<float>{gate_of(pre), up_of(pre), d_act, gate_of(d_pre), up_of(d_pre)});
    }
    linear_backward(ctx, d_pre, layer_rows(acts_.n2, l, d), w.mlp_in_weight, w.mlp_in_bias, d_tmp);
    norm_backward(ctx, h, d_tmp, w.mlp_norm_weight, w.mlp_norm_bias,
                  acts_.n2_stats.data() + slot(l) * 2 * tokens_count(), d_res, true);

    // Attention: d_res now holds dL/dh, which is also dL/dx_l through the residual.
    const matrix_view<float> att = layer_rows(acts_.att, l, config_.q_dim());
    const matrix_view<float> d_att = rows(acts_.d_att.data(), config_.q_dim());
    const matrix_view<float> d_qkv = rows(acts_.d_qkv.data(), config_.qkv_dim());
    linear_backward(ctx, d_res, att, w.attn_out_weight, w.attn_out_bias, d_att);
    const qkv_views heads = split_qkv(layer_rows(acts_.qkv, l, config_.qkv_dim()).data);
    const qkv_views grads = split_qkv(d_qkv.data);
    ops::attention_backward_params<float> a;
    a.q = heads.q;
    a.k = heads.k;
    a.v = heads.v;
    a.o = heads_of(att.data);
    a.d_o = heads_of(d_att.data);
    a.lse = acts_.lse.data() + slot(l) * batch_ * config_.n_heads * seq_;
    a.dq = grads.q;
    a.dk = grads.k;
    a.dv = grads.v;
    a.causal = true;
    Backend::attention_backward(ctx, a);
    if (config_.position == positions::rope) {
      Backend::rope_backward(ctx, rope_of(grads.q));
      Backend::rope_backward(ctx, rope_of(grads.k));
    }
    linear_backward(ctx, d_qkv, layer_rows(acts_.n1, l, d), w.qkv_weight, w.qkv_bias, d_tmp);
    norm_backward(ctx, x_of(l), d_tmp, w.attn_norm_weight, w.attn_norm_bias,
                  acts_.n1_stats.data() + slot(l) * 2 * tokens_count(), d_res, true);
  }

  model_config config_;
  parameter_layout layout_;
  aligned_buffer<float> params_, grads_;
  std::vector<float> rope_cos_, rope_sin_;
  index_t batch_ = 0, seq_ = 0, capacity_ = 0, layer_slots_ = 0;
  activations acts_;
  bool generating_ = false;
  aligned_buffer<float> k_cache_, v_cache_;    // [layer][batch, context, n_kv_heads, head_dim]
  aligned_buffer<float> transposed_storage_;   // generation's [in, out] copies of the weights
  std::map<index_t, const float*> transposed_; // weight offset -> its copy
  index_t cached_ = 0;
  ops::gemm_compute gemm_compute_ = ops::gemm_compute::native;
};

} // namespace kern::examples
