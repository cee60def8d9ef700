// The autoregressive loop: prompt tokens in, streamed text out, until EOS, a stop string, the token
// limit, a full context or an interruption. Keeps the tokens that are in the KV cache, so a longer
// prompt that starts with them (the next turn of a chat) only runs its new tokens.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "engine/backend.h"
#include "engine/sampler.h"
#include "tokenizer/tokenizer.h"

namespace kiln {

enum class FinishReason { Length, EndOfTurn, StopString, ContextFull, Interrupted };
std::string_view to_string(FinishReason reason);

struct GenerationStats {
  int64_t n_prompt = 0;       // prompt tokens evaluated (not counting those reused from the cache)
  int64_t n_cached = 0;       // prompt tokens reused from the cache
  int64_t n_generated = 0;
  double prompt_ms = 0;
  double generate_ms = 0;     // from the first generated token to the last
  double first_token_ms = 0;  // from the call to the first generated token
  double prompt_tokens_per_s() const { return prompt_ms > 0 ? 1000.0 * double(n_prompt) / prompt_ms : 0; }
  double generate_tokens_per_s() const {
    return n_generated > 1 && generate_ms > 0 ? 1000.0 * double(n_generated - 1) / generate_ms : 0;
  }
};

struct GenerationRequest {
  std::vector<int32_t> prompt;     // the whole context to condition on (may start with cached tokens)
  int64_t max_tokens = -1;         // < 0: until the end of turn or a full context
  std::vector<std::string> stops;  // generation ends before any of these strings
};

// Receives text as it becomes final (whole UTF-8 characters, never part of a stop string).
using TextSink = std::function<void(std::string_view text)>;

class Generator {
 public:
  Generator(Backend& backend, const Tokenizer& tokenizer, const SamplerParams& sampling);

  // Throws kiln::Error for an empty prompt or one that does not fit the context.
  FinishReason generate(const GenerationRequest& request, const TextSink& sink, GenerationStats* stats = nullptr);

  // Set from a signal handler to stop the current generation after the token in flight.
  std::atomic<bool>& interrupt() { return interrupt_; }
  // The tokens whose keys and values are in the cache: the last prompt and what was generated after it
  // (the last sampled token is not: it has not been run).
  const std::vector<int32_t>& context() const { return context_; }
  int64_t n_ctx() const { return backend_.n_ctx(); }
  void reset();

 private:
  int64_t evaluate_prompt(const std::vector<int32_t>& prompt);  // returns how many tokens were reused
  // Runs tokens for the logits of the last: the k best when the sampler draws from no more and the backend
  // offers them (a GPU then copies k values, not the vocabulary), else the whole row.
  void step(const int32_t* tokens, int64_t n_tokens, int64_t first_position);
  // Throws NonFiniteLogits for a NaN or infinite logit of the last step; context_ holds its tokens.
  void check_step() const;
  int32_t sample();  // from the last step's logits

  Backend& backend_;
  const Tokenizer& tokenizer_;
  Sampler sampler_;
  const float* logits_ = nullptr;  // [n_vocab]: the last step's, when whole (the backend's forward_last)
  TopLogits top_;                  // the last step's best (k 0: the step returned the whole row)
  std::vector<int32_t> context_;
  std::atomic<bool> interrupt_{false};
};

}  // namespace kiln
