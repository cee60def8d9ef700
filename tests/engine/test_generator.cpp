// Generator on a backend that returns only a step's best logits (Backend::forward_top) against the same
// backend's whole rows: the same tokens and text, greedy and sampled; whole rows whenever the sampler needs
// more than the backend offers; a NaN logit stops both alike. The backend is a relay over the CPU backend
// that cuts each row by a full stable sort (the CUDA backend's own cut is tested against whole rows in
// test_cuda_backend), so this runs in CI.
#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "engine/backend.h"
#include "engine/error.h"
#include "engine/generator.h"
#include "engine/nonfinite_check.h"
#include "tests/engine/batch_backend_test_util.h"
#include "tests/engine/batch_test_util.h"
#include "tests/engine/top_logits_test_util.h"

namespace kiln::test {
namespace {

class TopRelay final : public Backend {
 public:
  TopRelay(std::unique_ptr<Backend> inner, int64_t offered) : inner_(std::move(inner)), offered_(offered) {}

  std::string_view name() const override { return "relay"; }
  const ModelConfig& config() const override { return inner_->config(); }
  int64_t n_ctx() const override { return inner_->n_ctx(); }
  int64_t n_past() const override { return inner_->n_past(); }
  void reset() override { inner_->reset(); }

  void forward(const int32_t* tokens, int64_t n_tokens, int64_t first_position, float* logits,
               bool all_logits) override {
    ++n_whole;
    inner_->forward(tokens, n_tokens, first_position, logits, all_logits);
    if (logits != nullptr && !all_logits) poison(logits);
  }

  int64_t max_top_k() const override { return offered_; }

  // The k best by a full stable sort (ties to the lower id), handed over worst first (reference_best).
  TopLogits forward_top(const int32_t* tokens, int64_t n_tokens, int64_t first_position, int64_t k) override {
    KILN_CHECK(k >= 1 && k <= offered_, "k {} is outside [1, {}]", k, offered_);
    ++n_top;
    const auto n_vocab = size_t(config().n_vocab);
    std::vector<float> row(n_vocab);
    inner_->forward(tokens, n_tokens, first_position, row.data(), false);
    poison(row.data());
    top_ids_.assign(size_t(k), 0);
    top_logits_.assign(size_t(k), 0.0f);
    first_invalid_ = reference_best(row.data(), int64_t(n_vocab), k, top_ids_.data(), top_logits_.data());
    return {k, top_logits_.data(), top_ids_.data(), &first_invalid_};
  }

  int64_t n_whole = 0, n_top = 0;  // steps of each kind
  int64_t poison_step = -1;        // the step (counted from 0 over both kinds) whose logits get a NaN

 private:
  void poison(float* logits) {
    if (n_whole + n_top - 1 == poison_step) logits[7] = NAN;
  }

  std::unique_ptr<Backend> inner_;
  int64_t offered_;
  std::vector<float> top_logits_;
  std::vector<int32_t> top_ids_;
  int32_t first_invalid_ = -1;
};

class GeneratorTop : public ::testing::Test {
 protected:
  std::unique_ptr<TopRelay> relay(int64_t offered) const {
    BackendOptions options;
    options.n_ctx = 96;
    options.n_threads = 1;
    return std::make_unique<TopRelay>(make_cpu_backend(tiny_.model.config, tiny_.weights, options), offered);
  }

  struct Run {
    std::string text;
    std::vector<int32_t> context;
    int64_t n_generated = 0;
  };
  static Run run(TopRelay& backend, const Tokenizer& tokenizer, const BatchRequest& request) {
    Run out;
    Generator generator(backend, tokenizer, request.sampling);
    GenerationStats stats;
    generator.generate({request.prompt, request.max_tokens, {}}, [&](std::string_view t) { out.text += t; }, &stats);
    out.context = generator.context();
    out.n_generated = stats.n_generated;
    return out;
  }

  const Tiny tiny_{"llama_gqa_tied"};
  const std::unique_ptr<Tokenizer> tokenizer_ = byte_tokenizer(-1);
};

// Greedy and sampled requests (top-k 40), and some with a repeat penalty, which needs whole rows.
TEST_F(GeneratorTop, TheBestLogitsGiveTheTokensOfWholeRows) {
  for (const BatchRequest& request : mixed_requests(9, tiny_.model.config.n_vocab, 11)) {
    SCOPED_TRACE(request.index);
    const auto whole = relay(0), top = relay(kMaxTopLogits);
    const Run want = run(*whole, *tokenizer_, request), got = run(*top, *tokenizer_, request);
    EXPECT_EQ(got.context, want.context);
    EXPECT_EQ(got.text, want.text);
    EXPECT_EQ(got.n_generated, want.n_generated);
    EXPECT_EQ(whole->n_top, 0);
    const bool penalized = request.sampling.repeat_penalty != 1.0f;
    EXPECT_EQ(top->n_top > 0, !penalized) << "steps with the best logits only: " << top->n_top;
    EXPECT_EQ(top->n_whole > 0, penalized) << "steps with whole rows: " << top->n_whole;
  }
}

// A sampler that needs more logits than the backend offers takes whole rows.
TEST_F(GeneratorTop, MoreThanTheBackendOffersTakesWholeRows) {
  BatchRequest request = mixed_requests(2, tiny_.model.config.n_vocab, 12)[1];
  request.sampling.top_k = 40;
  const auto few = relay(39), whole = relay(0);
  EXPECT_EQ(run(*few, *tokenizer_, request).context, run(*whole, *tokenizer_, request).context);
  EXPECT_EQ(few->n_top, 0);
  EXPECT_GT(few->n_whole, 0);
}

// A NaN logit at the third step stops generation with the same error and tokens either way.
TEST_F(GeneratorTop, ANanLogitStopsBothAlike) {
  BatchRequest request = mixed_requests(1, tiny_.model.config.n_vocab, 13)[0];
  request.max_tokens = 10;
  std::string messages[2];
  std::vector<int32_t> tokens[2];
  for (int offered : {0, 1}) {
    const auto backend = relay(offered * kMaxTopLogits);
    backend->poison_step = 2;
    try {
      run(*backend, *tokenizer_, request);
      ADD_FAILURE() << "a NaN logit went unnoticed, offering " << offered * kMaxTopLogits;
    } catch (const NonFiniteLogits& e) {
      messages[offered] = e.what();
      tokens[offered] = e.tokens();
    }
    EXPECT_EQ(backend->n_top > 0, offered == 1);
  }
  EXPECT_EQ(tokens[1], tokens[0]);
  EXPECT_EQ(tokens[0].size(), request.prompt.size() + 2);
  EXPECT_NE(messages[0].find("not finite (token 7 has nan)"), std::string::npos) << messages[0];
  EXPECT_NE(messages[1].find("not finite (token 7 has nan or +inf)"), std::string::npos) << messages[1];
}

// The CPU backend returns whole rows only: it offers no best logits, and forward_top is refused, naming it.
TEST_F(GeneratorTop, TheCpuBackendRefusesForwardTopNamingItself) {
  BackendOptions options;
  options.n_ctx = 16;
  options.n_threads = 1;
  const auto cpu = make_cpu_backend(tiny_.model.config, tiny_.weights, options);
  EXPECT_EQ(cpu->max_top_k(), 0);
  const int32_t token = 5;
  try {
    (void)cpu->forward_top(&token, 1, 0, 1);
    ADD_FAILURE() << "the CPU backend ran forward_top";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("the CPU backend returns whole rows"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace kiln::test
