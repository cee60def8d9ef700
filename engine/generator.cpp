#include "engine/generator.h"

#include <algorithm>
#include <chrono>

#include "engine/error.h"
#include "engine/nonfinite_check.h"
#include "engine/stop_filter.h"

namespace kiln {
namespace {

using Clock = std::chrono::steady_clock;
double ms_since(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

}  // namespace

std::string_view to_string(FinishReason reason) {
  switch (reason) {
    case FinishReason::Length: return "length";
    case FinishReason::EndOfTurn: return "stop";
    case FinishReason::StopString: return "stop";
    case FinishReason::ContextFull: return "context_full";
    case FinishReason::Interrupted: return "interrupted";
  }
  return "?";
}

Generator::Generator(Backend& backend, const Tokenizer& tokenizer, const SamplerParams& sampling)
    : backend_(backend),
      tokenizer_(tokenizer),
      sampler_(sampling, backend.config().n_vocab) {}

void Generator::reset() {
  context_.clear();
  backend_.reset();
  sampler_.reset();
}

int64_t Generator::evaluate_prompt(const std::vector<int32_t>& prompt) {
  // Reuse the cached prefix; always run at least the last prompt token to get its logits.
  size_t reused = 0;
  while (reused < context_.size() && reused < prompt.size() && context_[reused] == prompt[reused]) ++reused;
  reused = std::min(reused, prompt.size() - 1);
  context_.assign(prompt.begin(), prompt.end());
  step(prompt.data() + reused, int64_t(prompt.size() - reused), int64_t(reused));
  check_step();
  return int64_t(reused);
}

void Generator::step(const int32_t* tokens, int64_t n_tokens, int64_t first_position) {
  const int64_t k = sampler_.top_needed();
  top_ = {};
  if (k > 0 && k <= backend_.max_top_k()) top_ = backend_.forward_top(tokens, n_tokens, first_position, k);
  else logits_ = backend_.forward_last(tokens, n_tokens, first_position);
}

void Generator::check_step() const {
  if (top_.k > 0) check_top_logits_valid(top_.first_invalid[0], context_);
  else check_logits_finite({logits_, size_t(backend_.config().n_vocab)}, context_);
}

int32_t Generator::sample() {
  if (top_.k == 0) return sampler_.sample(logits_);
  return sampler_.sample_top(top_.logits, top_.ids, size_t(top_.k), top_.first_invalid[0]);
}

FinishReason Generator::generate(const GenerationRequest& request, const TextSink& sink, GenerationStats* stats) {
  KILN_CHECK(!request.prompt.empty(), "the prompt is empty: give some text");
  const int64_t n_ctx = backend_.n_ctx();
  KILN_CHECK(int64_t(request.prompt.size()) < n_ctx,
             "the prompt has {} tokens but the context holds {}: shorten it or raise -c", request.prompt.size(),
             n_ctx);
  interrupt_ = false;
  GenerationStats local;
  GenerationStats& s = stats ? *stats : local;
  s = {};

  const auto start = Clock::now();
  sampler_.reset();
  for (int32_t token : request.prompt) sampler_.accept(token);
  s.n_cached = evaluate_prompt(request.prompt);
  s.n_prompt = int64_t(request.prompt.size()) - s.n_cached;
  s.prompt_ms = ms_since(start);

  StreamDecoder decoder(tokenizer_);
  StopFilter stop_filter(request.stops, sink);
  FinishReason reason = FinishReason::Length;
  Clock::time_point first_token_time;
  for (;;) {
    if (request.max_tokens >= 0 && s.n_generated >= request.max_tokens) break;
    if (interrupt_) {
      reason = FinishReason::Interrupted;
      break;
    }
    const int32_t token = sample();
    if (s.n_generated == 0) {
      first_token_time = Clock::now();
      s.first_token_ms = ms_since(start);
    }
    ++s.n_generated;
    if (tokenizer_.is_eog(token)) {
      reason = FinishReason::EndOfTurn;
      break;
    }
    sampler_.accept(token);
    if (stop_filter.push(decoder.push(token))) {
      reason = FinishReason::StopString;
      break;
    }
    if (int64_t(context_.size()) >= n_ctx) {
      reason = FinishReason::ContextFull;
      break;
    }
    step(&token, 1, int64_t(context_.size()));
    context_.push_back(token);
    check_step();
  }
  if (reason != FinishReason::StopString) {
    stop_filter.push(decoder.flush());
    stop_filter.flush();
  }
  if (s.n_generated > 0) s.generate_ms = ms_since(first_token_time);
  return reason;
}

}  // namespace kiln
