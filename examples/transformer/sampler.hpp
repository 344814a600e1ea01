// Choosing the next token from logits: greedy (temperature 0), or sampling with temperature,
// top-k, top-p (nucleus) and min-p filters, after a repetition penalty; seeded.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <span>
#include <vector>

#include "kern/core/error.hpp"
#include "kern/core/view.hpp"

namespace kern::examples {

struct sampling_options {
  float temperature = 1.0f;        // 0: greedy
  index_t top_k = 0;               // 0: all
  float top_p = 1.0f;              // in (0, 1]
  float min_p = 0.0f;              // in [0, 1): drop tokens below min_p * the best probability
  float repetition_penalty = 1.0f; // >= 1: logits of tokens already seen are divided (positive) or multiplied
  std::uint64_t seed = 42;

  void validate() const {
    constexpr const char* op = "sampling";
    require(temperature >= 0.0f && std::isfinite(temperature), op, "temperature = ", temperature,
            " must be finite and not negative");
    require(top_k >= 0, op, "top_k = ", top_k, " must not be negative");
    require(top_p > 0.0f && top_p <= 1.0f, op, "top_p = ", top_p, " must be in (0, 1]");
    require(min_p >= 0.0f && min_p < 1.0f, op, "min_p = ", min_p, " must be in [0, 1)");
    require(repetition_penalty >= 1.0f && std::isfinite(repetition_penalty), op,
            "repetition_penalty = ", repetition_penalty, " must be at least 1");
  }
};

class sampler {
public:
  explicit sampler(const sampling_options& o) : options_(o), rng_(o.seed) { options_.validate(); }

  // The next token among the first `vocab` logits; `seen` are the tokens so far (for the penalty).
  std::int32_t next(const float* logits, index_t vocab, std::span<const std::int32_t> seen) {
    scratch_.assign(logits, logits + vocab);
    if (options_.repetition_penalty != 1.0f) {
      for (std::int32_t t : seen) {
        float& l = scratch_[static_cast<std::size_t>(t)];
        l = l > 0.0f ? l / options_.repetition_penalty : l * options_.repetition_penalty;
      }
    }
    if (options_.temperature == 0.0f) { // the first of the largest, as llama2.c does
      return static_cast<std::int32_t>(std::max_element(scratch_.begin(), scratch_.end()) - scratch_.begin());
    }
    // Probabilities at the temperature, in decreasing order.
    const float top = *std::max_element(scratch_.begin(), scratch_.end());
    order_.resize(scratch_.size());
    std::iota(order_.begin(), order_.end(), 0);
    double sum = 0.0;
    for (float& l : scratch_) {
      l = std::exp((l - top) / options_.temperature);
      sum += l;
    }
    std::stable_sort(order_.begin(), order_.end(), [&](std::int32_t a, std::int32_t b) {
      return scratch_[static_cast<std::size_t>(a)] > scratch_[static_cast<std::size_t>(b)];
    });
    std::size_t keep = order_.size();
    if (options_.top_k > 0) {
      keep = std::min(keep, static_cast<std::size_t>(options_.top_k));
    }
    const double best = scratch_[static_cast<std::size_t>(order_[0])];
    double mass = 0.0;
    for (std::size_t i = 0; i < keep; ++i) {
      const double p = scratch_[static_cast<std::size_t>(order_[i])];
      if (i > 0 && (p < options_.min_p * best || mass >= options_.top_p * sum)) {
        keep = i;
        break;
      }
      mass += p;
    }
    std::uniform_real_distribution<double> uniform(0.0, mass);
    double r = uniform(rng_);
    for (std::size_t i = 0; i < keep; ++i) {
      r -= scratch_[static_cast<std::size_t>(order_[i])];
      if (r <= 0.0) {
        return order_[i];
      }
    }
    return order_[keep - 1];
  }

private:
  sampling_options options_;
  std::mt19937_64 rng_;
  std::vector<float> scratch_;
  std::vector<std::int32_t> order_;
};

} // namespace kern::examples
