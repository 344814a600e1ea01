// Batched generation: several prompts at once, one KV cache.
//
// All sequences advance one position per step. The shortest prompt's length goes in one call;
// after that, a sequence still inside its prompt is fed its next prompt token (its logits are not
// sampled), the others their sampled token, so prompts of any lengths share the same positions and
// the result of each sequence is what generating it alone gives.
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <vector>

#include "model.hpp"
#include "sampler.hpp"

namespace kern::examples {

struct generation_limits {
  index_t max_new_tokens = 256;
  std::int32_t stop_token = -1; // a sequence ends before emitting it (-1: none)
};

// Continues each prompt (token ids, at least one each); on_token(sequence, token) is called for
// every generated token as it comes and may return false to end that sequence. Returns the full
// sequences (prompt + continuation).
template <class Backend>
std::vector<std::vector<std::int32_t>> generate(const typename Backend::context& ctx, transformer<Backend>& model,
                                                std::vector<std::vector<std::int32_t>> sequences, sampler& pick,
                                                const generation_limits& limits,
                                                const std::function<bool(index_t, std::int32_t)>& on_token = {}) {
  const auto batch = static_cast<index_t>(sequences.size());
  require(batch >= 1, "generate", "no prompt");
  index_t shortest = model.config().context, longest = 0;
  for (const auto& s : sequences) {
    require(!s.empty(), "generate", "a prompt has no token");
    shortest = std::min<index_t>(shortest, static_cast<index_t>(s.size()));
    longest = std::max<index_t>(longest, static_cast<index_t>(s.size()));
  }
  require(longest <= model.config().context, "generate", "a prompt of ", longest,
          " tokens is longer than the model's context of ", model.config().context);
  const index_t vocab = model.config().vocab, padded = model.config().vocab_padded;
  std::vector<std::int32_t> step_tokens(static_cast<std::size_t>(batch * shortest));
  for (index_t b = 0; b < batch; ++b) {
    std::copy_n(sequences[static_cast<std::size_t>(b)].begin(), shortest, step_tokens.begin() + b * shortest);
  }
  model.start_generation(batch, shortest);
  const float* logits = model.generate_step(ctx, step_tokens.data(), shortest);
  std::vector<index_t> prompt_length(static_cast<std::size_t>(batch)), generated(prompt_length.size(), 0);
  std::vector<char> done(prompt_length.size(), 0);
  for (index_t b = 0; b < batch; ++b) {
    prompt_length[static_cast<std::size_t>(b)] = static_cast<index_t>(sequences[static_cast<std::size_t>(b)].size());
  }
  step_tokens.resize(static_cast<std::size_t>(batch));
  for (index_t position = shortest;; ++position) {
    bool active = false;
    for (index_t b = 0; b < batch; ++b) {
      auto& s = sequences[static_cast<std::size_t>(b)];
      const auto at = static_cast<std::size_t>(b);
      std::int32_t next = s.back(); // what a finished sequence feeds: ignored
      if (position < prompt_length[at]) {
        next = s[static_cast<std::size_t>(position)];
      } else if (!done[at]) {
        if (generated[at] >= limits.max_new_tokens) {
          done[at] = 1;
        } else {
          next = pick.next(logits + b * padded, vocab, s);
          if (next == limits.stop_token) {
            done[at] = 1;
            next = s.back();
          } else {
            s.push_back(next);
            ++generated[at];
            if (on_token && !on_token(b, next)) {
              done[at] = 1;
            }
          }
        }
      }
      step_tokens[at] = next;
      active = active || !done[at];
    }
    if (!active || model.cached() >= model.config().context) {
      return sequences;
    }
    logits = model.generate_step(ctx, step_tokens.data(), 1);
  }
}

} // namespace kern::examples
