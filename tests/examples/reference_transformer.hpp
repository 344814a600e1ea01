// A plain float64 transformer with the same configuration and parameter layout as
// examples/transformer/model.hpp, written for clarity: the reference its tests compare against
// (loss, logits, finite-difference gradients).
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "transformer/config.hpp"
#include "transformer/parameters.hpp"

namespace kern::test {

using examples::model_config;
using examples::parameter_layout;

class reference_transformer {
public:
  reference_transformer(const model_config& c, std::vector<double> params) : c_(c), layout_(c), p_(std::move(params)) {}

  std::vector<double>& parameters() { return p_; }

  // Logits [batch * seq, vocab_padded] for tokens [batch, seq].
  std::vector<double> logits(const std::vector<std::int32_t>& tokens, index_t batch, index_t seq) const {
    const index_t n = batch * seq, d = c_.d_model;
    std::vector<double> x(static_cast<std::size_t>(n * d));
    for (index_t t = 0; t < n; ++t) {
      for (index_t j = 0; j < d; ++j) {
        double v = at(layout_.token_embedding, tokens[static_cast<std::size_t>(t)] * d + j);
        if (layout_.position_embedding >= 0) {
          v += at(layout_.position_embedding, (t % seq) * d + j);
        }
        x[static_cast<std::size_t>(t * d + j)] = v;
      }
    }
    for (const examples::layer_offsets& w : layout_.layers) {
      const std::vector<double> a = attention(norm(x, n, w.attn_norm_weight, w.attn_norm_bias), w, batch, seq);
      const std::vector<double> proj = linear(a, n, c_.q_dim(), w.attn_out_weight, d, w.attn_out_bias);
      for (std::size_t i = 0; i < x.size(); ++i) {
        x[i] += proj[i];
      }
      const std::vector<double> pre =
          linear(norm(x, n, w.mlp_norm_weight, w.mlp_norm_bias), n, d, w.mlp_in_weight, c_.mlp_in_dim(), w.mlp_in_bias);
      std::vector<double> act(static_cast<std::size_t>(n * c_.d_ff));
      for (index_t t = 0; t < n; ++t) {
        for (index_t j = 0; j < c_.d_ff; ++j) {
          const double* row = pre.data() + t * c_.mlp_in_dim();
          act[static_cast<std::size_t>(t * c_.d_ff + j)] =
              c_.mlp == examples::mlp_kind::gelu ? gelu(row[j]) : silu(row[j]) * row[c_.d_ff + j];
        }
      }
      const std::vector<double> down = linear(act, n, c_.d_ff, w.mlp_out_weight, d, w.mlp_out_bias);
      for (std::size_t i = 0; i < x.size(); ++i) {
        x[i] += down[i];
      }
    }
    const index_t out = layout_.output_weight >= 0 ? layout_.output_weight : layout_.token_embedding;
    return linear(norm(x, n, layout_.final_norm_weight, layout_.final_norm_bias), n, d, out, c_.vocab_padded, -1);
  }

  // Mean cross-entropy over the real vocabulary.
  double loss(const std::vector<std::int32_t>& tokens, const std::vector<std::int32_t>& targets, index_t batch,
              index_t seq) const {
    const std::vector<double> z = logits(tokens, batch, seq);
    double total = 0.0;
    for (index_t t = 0; t < batch * seq; ++t) {
      const double* row = z.data() + t * c_.vocab_padded;
      double m = row[0];
      for (index_t v = 1; v < c_.vocab; ++v) {
        m = std::max(m, row[v]);
      }
      double s = 0.0;
      for (index_t v = 0; v < c_.vocab; ++v) {
        s += std::exp(row[v] - m);
      }
      total += m + std::log(s) - row[targets[static_cast<std::size_t>(t)]];
    }
    return total / static_cast<double>(batch * seq);
  }

private:
  double at(index_t offset, index_t i) const { return p_[static_cast<std::size_t>(offset + i)]; }

  static double gelu(double x) { return 0.5 * x * (1.0 + std::tanh(0.7978845608028654 * (x + 0.044715 * x * x * x))); }
  static double silu(double x) { return x / (1.0 + std::exp(-x)); }

  std::vector<double> norm(const std::vector<double>& x, index_t n, index_t weight, index_t bias) const {
    const index_t d = c_.d_model;
    std::vector<double> y(x.size());
    for (index_t t = 0; t < n; ++t) {
      const double* row = x.data() + t * d;
      double mean = 0.0, var = 0.0;
      if (c_.norm == ops::norm_kind::layernorm) {
        for (index_t j = 0; j < d; ++j) {
          mean += row[j] / static_cast<double>(d);
        }
      }
      for (index_t j = 0; j < d; ++j) {
        var += (row[j] - mean) * (row[j] - mean) / static_cast<double>(d);
      }
      const double rstd = 1.0 / std::sqrt(var + c_.norm_epsilon);
      for (index_t j = 0; j < d; ++j) {
        y[static_cast<std::size_t>(t * d + j)] =
            (row[j] - mean) * rstd * at(weight, j) + (bias >= 0 ? at(bias, j) : 0.0);
      }
    }
    return y;
  }

  // y = x W^T + b: x [n, in], W [out, in].
  std::vector<double> linear(const std::vector<double>& x, index_t n, index_t in, index_t weight, index_t out,
                             index_t bias) const {
    std::vector<double> y(static_cast<std::size_t>(n * out));
    for (index_t t = 0; t < n; ++t) {
      for (index_t o = 0; o < out; ++o) {
        double s = bias >= 0 ? at(bias, o) : 0.0;
        for (index_t i = 0; i < in; ++i) {
          s += x[static_cast<std::size_t>(t * in + i)] * at(weight, o * in + i);
        }
        y[static_cast<std::size_t>(t * out + o)] = s;
      }
    }
    return y;
  }

  // Rotates one head vector at position pos, as the configuration's pairing says.
  void rope(double* v, index_t pos) const {
    const index_t hd = c_.head_dim(), half = hd / 2;
    for (index_t i = 0; i < half; ++i) {
      const double angle =
          static_cast<double>(pos) * std::pow(c_.rope_theta, -2.0 * static_cast<double>(i) / static_cast<double>(hd));
      const index_t a = c_.rope_pairing == ops::rope_pairing::adjacent ? 2 * i : i;
      const index_t b = c_.rope_pairing == ops::rope_pairing::adjacent ? 2 * i + 1 : i + half;
      const double x0 = v[a], x1 = v[b];
      v[a] = x0 * std::cos(angle) - x1 * std::sin(angle);
      v[b] = x0 * std::sin(angle) + x1 * std::cos(angle);
    }
  }

  std::vector<double> attention(const std::vector<double>& x, const examples::layer_offsets& w, index_t batch,
                                index_t seq) const {
    const index_t n = batch * seq, hd = c_.head_dim(), qkv_dim = c_.qkv_dim();
    std::vector<double> qkv = linear(x, n, c_.d_model, w.qkv_weight, qkv_dim, w.qkv_bias);
    if (c_.position == examples::positions::rope) {
      for (index_t t = 0; t < n; ++t) {
        for (index_t h = 0; h < c_.n_heads + c_.n_kv_heads; ++h) {
          rope(qkv.data() + t * qkv_dim + h * hd, t % seq);
        }
      }
    }
    const index_t group = c_.n_heads / c_.n_kv_heads;
    std::vector<double> out(static_cast<std::size_t>(n * c_.q_dim()));
    for (index_t b = 0; b < batch; ++b) {
      for (index_t h = 0; h < c_.n_heads; ++h) {
        const index_t kv = h / group;
        for (index_t i = 0; i < seq; ++i) {
          const double* q = qkv.data() + (b * seq + i) * qkv_dim + h * hd;
          std::vector<double> s(static_cast<std::size_t>(i + 1));
          double m = -std::numeric_limits<double>::infinity();
          for (index_t j = 0; j <= i; ++j) {
            const double* k = qkv.data() + (b * seq + j) * qkv_dim + c_.q_dim() + kv * hd;
            double dot = 0.0;
            for (index_t e = 0; e < hd; ++e) {
              dot += q[e] * k[e];
            }
            s[static_cast<std::size_t>(j)] = dot / std::sqrt(static_cast<double>(hd));
            m = std::max(m, s[static_cast<std::size_t>(j)]);
          }
          double sum = 0.0;
          for (double& e : s) {
            e = std::exp(e - m);
            sum += e;
          }
          for (index_t e = 0; e < hd; ++e) {
            double acc = 0.0;
            for (index_t j = 0; j <= i; ++j) {
              acc += s[static_cast<std::size_t>(j)] *
                     qkv[static_cast<std::size_t>((b * seq + j) * qkv_dim + c_.q_dim() + c_.kv_dim() + kv * hd + e)];
            }
            out[static_cast<std::size_t>((b * seq + i) * c_.q_dim() + h * hd + e)] = acc / sum;
          }
        }
      }
    }
    return out;
  }

  model_config c_;
  parameter_layout layout_;
  std::vector<double> p_;
};

} // namespace kern::test
