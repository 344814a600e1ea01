// Training: AdamW with warmup + cosine schedule, global-norm clipping, gradient accumulation,
// weight decay on matrices only, periodic validation. Deterministic for a seed and thread count;
// its whole state (weights, moments, step, data generator) is what a checkpoint saves.
#pragma once

#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>
#include <span>
#include <sstream>
#include <string>
#include <vector>

#include "data.hpp"
#include "model.hpp"

namespace kern::examples {

struct train_options {
  index_t batch = 4;
  index_t seq = 64;
  index_t steps = 100;
  index_t grad_accumulation = 1; // micro-batches per optimizer step
  float lr = 1e-3f;
  float min_lr_fraction = 0.1f; // the cosine ends at lr * this
  index_t warmup_steps = 10;
  float weight_decay = 0.1f;
  float beta1 = 0.9f, beta2 = 0.95f, epsilon = 1e-8f;
  float clip_norm = 1.0f; // 0: no clipping
  index_t eval_every = 50;
  index_t eval_batches = 8;
  std::uint64_t seed = 1337;

  void validate() const {
    constexpr const char* op = "train_options";
    require(batch >= 1 && seq >= 1, op, "batch = ", batch, ", seq = ", seq, " must be positive");
    require(steps >= 0 && grad_accumulation >= 1, op, "steps = ", steps, ", grad_accumulation = ", grad_accumulation);
    require(lr >= 0.0f && std::isfinite(lr), op, "lr = ", lr, " must be finite and not negative");
    require(warmup_steps >= 0 && eval_batches >= 1, op, "warmup_steps = ", warmup_steps,
            ", eval_batches = ", eval_batches);
    require(clip_norm >= 0.0f, op, "clip_norm = ", clip_norm, " must not be negative");
  }
};

// The learning rate of optimizer step `step` (1-based): linear warmup, then a cosine to the floor.
inline float learning_rate(const train_options& o, index_t step) {
  if (step <= o.warmup_steps) {
    return o.lr * static_cast<float>(step) / static_cast<float>(o.warmup_steps + 1);
  }
  const index_t decay_steps = std::max<index_t>(1, o.steps - o.warmup_steps);
  const double progress = std::min(1.0, static_cast<double>(step - o.warmup_steps) / static_cast<double>(decay_steps));
  const double floor = o.min_lr_fraction;
  return static_cast<float>(o.lr * (floor + (1.0 - floor) * 0.5 * (1.0 + std::cos(M_PI * progress))));
}

template <class Backend = cpu_backend> class trainer {
public:
  using context = typename Backend::context;

  trainer(transformer<Backend>& model, const train_options& options)
      : model_(model), options_(options), m_(model.parameters().size()), v_(model.parameters().size()),
        data_rng_(options.seed) {
    options_.validate();
    std::fill(m_.data(), m_.data() + m_.size(), 0.0f);
    std::fill(v_.data(), v_.data() + v_.size(), 0.0f);
    model_.plan(options_.batch, options_.seq);
  }

  index_t step() const { return step_; }

  // Fine-tuning: the embeddings and the lowest `layers` layers stop changing.
  void freeze_lowest(index_t layers) { frozen_layers_ = layers; }
  const train_options& options() const { return options_; }
  std::span<float> first_moment() { return {m_.data(), m_.size()}; }
  std::span<float> second_moment() { return {v_.data(), v_.size()}; }

  // The data generator's state, as text (for checkpoints), and back.
  std::string data_state() const {
    std::ostringstream out;
    out << data_rng_;
    return out.str();
  }
  void restore(index_t step, const std::string& data_state) {
    step_ = step;
    std::istringstream in(data_state);
    in >> data_rng_;
    require(!in.fail(), "trainer::restore", "the data generator state does not parse");
  }

  struct step_result {
    float loss;       // mean over the micro-batches
    double grad_norm; // before clipping
    float lr;
  };

  // One optimizer step over grad_accumulation micro-batches of the training data.
  step_result train_step(const context& ctx, const token_stream& data) {
    model_.zero_grad();
    const float micro = 1.0f / static_cast<float>(options_.grad_accumulation);
    float loss = 0.0f;
    for (index_t i = 0; i < options_.grad_accumulation; ++i) {
      data.random_batch(data_rng_, options_.batch, batch_);
      loss += micro * model_.forward(ctx, batch_.inputs.data(), batch_.targets.data(), micro);
      model_.backward(ctx);
    }
    ++step_;
    const ops::gradient_span all{model_.gradients().data(), static_cast<index_t>(model_.gradients().size())};
    const double norm = Backend::global_grad_norm(ctx, std::span<const ops::gradient_span>(&all, 1));
    const float clip = options_.clip_norm > 0.0f ? cpu::clip_factor(norm, options_.clip_norm) : 1.0f;
    const float lr = learning_rate(options_, step_);
    for (const tensor_slot& t : model_.layout().tensors()) {
      if (frozen(t)) {
        continue;
      }
      ops::adamw_params a;
      a.param = model_.parameters().data() + t.offset;
      a.grad = model_.gradients().data() + t.offset;
      a.m = m_.data() + t.offset;
      a.v = v_.data() + t.offset;
      a.count = t.size();
      a.lr = lr;
      a.beta1 = options_.beta1;
      a.beta2 = options_.beta2;
      a.epsilon = options_.epsilon;
      a.weight_decay = t.decay ? options_.weight_decay : 0.0f;
      a.step = step_;
      a.grad_scale = clip;
      Backend::adamw_step(ctx, a);
    }
    return {loss, norm, lr};
  }

  // The mean loss over the first eval_batches validation batches (always the same tokens).
  float evaluate(const context& ctx, const token_stream& data) {
    const index_t batches =
        std::min(options_.eval_batches, std::max<index_t>(1, data.validation_windows() / options_.batch));
    double sum = 0.0;
    for (index_t i = 0; i < batches; ++i) {
      data.validation_batch(i, options_.batch, batch_);
      sum += model_.forward(ctx, batch_.inputs.data(), batch_.targets.data());
    }
    return static_cast<float>(sum / static_cast<double>(batches));
  }

private:
  bool frozen(const tensor_slot& t) const {
    if (frozen_layers_ <= 0) {
      return false;
    }
    if (t.name.find("embeddings") != std::string::npos) {
      return true;
    }
    for (index_t l = 0; l < frozen_layers_; ++l) {
      if (t.name.rfind("layers." + std::to_string(l) + ".", 0) == 0) {
        return true;
      }
    }
    return false;
  }

  transformer<Backend>& model_;
  train_options options_;
  aligned_buffer<float> m_, v_;
  std::mt19937_64 data_rng_;
  token_batch batch_; // the current micro-batch's tokens, reused from step to step
  index_t step_ = 0;
  index_t frozen_layers_ = 0;
};

// A one-line progress bar on stderr: step, loss, tokens/s, ETA.
class progress_bar {
public:
  progress_bar(index_t total_steps, index_t tokens_per_step)
      : total_(total_steps), tokens_(tokens_per_step), start_(std::chrono::steady_clock::now()) {}

  void update(index_t step, float loss) {
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    const double done = static_cast<double>(step - first_step_);
    const double rate = done > 0 ? done * static_cast<double>(tokens_) / seconds : 0.0;
    const double eta = done > 0 ? seconds / done * static_cast<double>(total_ - step) : 0.0;
    constexpr int width = 24;
    const int filled = static_cast<int>(width * step / std::max<index_t>(1, total_));
    std::fprintf(stderr, "\r[%-*.*s] step %lld/%lld | loss %.4f | %.0f tok/s | ETA %d:%02d  ", width, filled,
                 "########################", static_cast<long long>(step), static_cast<long long>(total_), loss, rate,
                 static_cast<int>(eta) / 60, static_cast<int>(eta) % 60);
    std::fflush(stderr);
  }
  void start_at(index_t step) { first_step_ = step; }
  void finish() const { std::fprintf(stderr, "\n"); }

private:
  index_t total_, tokens_;
  index_t first_step_ = 0;
  std::chrono::steady_clock::time_point start_;
};

} // namespace kern::examples
