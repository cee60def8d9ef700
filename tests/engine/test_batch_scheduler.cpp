// The batch scheduler against Generator run alone, request by request: the same text, token counts and
// finish reasons, whatever the mix of prompts, the step size or the KV pool. The batched forward here is
// a naive reference (one single-sequence CPU backend per slot) that also checks every step's rows
// against the BatchBackend contract; the real batched backends are compared the same way.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <memory>
#include <random>
#include <vector>

#include "convert/conversion.h"
#include "convert/from_gguf.h"
#include "engine/batch_backend.h"
#include "engine/batch_scheduler.h"
#include "engine/error.h"
#include "engine/generator.h"
#include "engine/kiln_file.h"
#include "engine/weights.h"
#include "tests/engine/batch_test_util.h"
#include "tests/convert/kiln_file_fixture.h"
#include "tests/engine/tiny_model.h"
#include "tests/engine/top_logits_test_util.h"
#include "tests/model_paths.h"

namespace kiln::test {
namespace {

// One CPU backend per sequence slot; the pool is only counted. Throws, as the contract says, on rows
// that break it, so a scheduler bug fails the test at the step that has it.
class ReferenceBatchBackend : public BatchBackend {
 public:
  ReferenceBatchBackend(const ModelConfig& config, const Weights& weights, int64_t n_ctx, int64_t max_sequences,
                        int64_t n_blocks, int64_t max_step_tokens)
      : config_(config),
        weights_(weights),
        n_ctx_(n_ctx),
        max_step_tokens_(max_step_tokens),
        free_blocks_(n_blocks),
        seqs_(size_t(max_sequences)) {}

  std::string_view name() const override { return "reference"; }
  const ModelConfig& config() const override { return config_; }
  int64_t n_ctx() const override { return n_ctx_; }
  int64_t max_sequences() const override { return int64_t(seqs_.size()); }
  int64_t max_step_tokens() const override { return max_step_tokens_; }
  int64_t block_positions() const override { return kBlock; }
  int64_t free_blocks() const override { return free_blocks_; }

  bool reserve(int32_t seq, int64_t n_positions) override {
    Seq& s = at(seq);
    const int64_t blocks = (n_positions + kBlock - 1) / kBlock;
    if (blocks <= s.blocks) return true;
    if (blocks - s.blocks > free_blocks_) return false;
    free_blocks_ -= blocks - s.blocks;
    s.blocks = blocks;
    if (!s.backend) {
      BackendOptions options;
      options.n_ctx = n_ctx_;
      options.n_threads = 1;
      s.backend = make_cpu_backend(config_, weights_, options);
    }
    int64_t reserved = 0;
    for (const Seq& other : seqs_) reserved += other.blocks > 0;
    max_reserved_sequences = std::max(max_reserved_sequences, reserved);
    return true;
  }

  void forward(const BatchToken* tokens, int64_t n_tokens, const int32_t* logit_rows, int64_t n_logit_rows,
               float* logits) override {
    KILN_CHECK(n_tokens >= 1 && n_tokens <= max_step_tokens_, "step of {} rows", n_tokens);
    ++n_steps;
    std::vector<std::vector<float>> row_logits(static_cast<size_t>(n_tokens));
    std::vector<bool> seen(seqs_.size(), false);
    for (int64_t begin = 0, end = 0; begin < n_tokens; begin = end) {
      const int32_t seq = tokens[begin].seq;
      Seq& s = at(seq);
      KILN_CHECK(!seen[size_t(seq)], "rows of sequence {} are not consecutive", seq);
      seen[size_t(seq)] = true;
      std::vector<int32_t> ids;
      for (end = begin; end < n_tokens && tokens[end].seq == seq; ++end) {
        KILN_CHECK(tokens[end].position == s.n_past + (end - begin), "sequence {} row at position {} leaves a gap",
                   seq, tokens[end].position);
        ids.push_back(tokens[end].token);
        n_prompt_rows += tokens[end].prompt ? 1 : 0;
      }
      KILN_CHECK(s.n_past + int64_t(ids.size()) <= s.blocks * kBlock, "sequence {} runs past its reservation", seq);
      std::vector<float> all(ids.size() * size_t(config_.n_vocab));
      s.backend->forward(ids.data(), int64_t(ids.size()), s.n_past, all.data(), true);
      for (size_t i = 0; i < ids.size(); ++i)
        row_logits[size_t(begin) + i].assign(all.begin() + ptrdiff_t(i * size_t(config_.n_vocab)),
                                             all.begin() + ptrdiff_t((i + 1) * size_t(config_.n_vocab)));
      s.n_past += int64_t(ids.size());
    }
    bool poisoned = false;
    for (int64_t i = 0; i < n_logit_rows; ++i) {
      KILN_CHECK(logit_rows[i] >= 0 && logit_rows[i] < n_tokens, "logit row {} is outside the step", logit_rows[i]);
      std::copy(row_logits[size_t(logit_rows[i])].begin(), row_logits[size_t(logit_rows[i])].end(),
                logits + i * config_.n_vocab);
      if (tokens[logit_rows[i]].seq == poison_slot_once) {
        std::fill_n(logits + i * config_.n_vocab, config_.n_vocab, NAN);
        poisoned = true;
      }
    }
    if (poisoned) poison_slot_once = -1;
  }

  int64_t max_top_k() const override { return top_k_offered; }

  // forward's rows, each cut to its k best by a full stable sort of the ids, given worst first.
  TopLogits forward_top(const BatchToken* tokens, int64_t n_tokens, const int32_t* logit_rows, int64_t n_logit_rows,
                        int64_t k) override {
    KILN_CHECK(k >= 1 && k <= top_k_offered, "k {} is outside [1, {}]", k, top_k_offered);
    ++n_top_steps;
    const auto n_vocab = size_t(config_.n_vocab);
    std::vector<float> logits(size_t(n_logit_rows) * n_vocab);
    forward(tokens, n_tokens, logit_rows, n_logit_rows, logits.data());
    top_logits_.assign(size_t(n_logit_rows * k), 0.0f);
    top_ids_.assign(size_t(n_logit_rows * k), 0);
    first_invalid_.assign(size_t(n_logit_rows), -1);
    for (size_t r = 0; r < size_t(n_logit_rows); ++r)
      first_invalid_[r] = reference_best(logits.data() + r * n_vocab, config_.n_vocab, k,
                                         top_ids_.data() + r * size_t(k), top_logits_.data() + r * size_t(k));
    return {k, top_logits_.data(), top_ids_.data(), first_invalid_.data()};
  }

  void release(int32_t seq) override {
    Seq& s = at(seq);
    free_blocks_ += s.blocks;
    s.blocks = 0;
    s.n_past = 0;
  }

  int64_t n_steps = 0;
  int64_t n_prompt_rows = 0;  // rows flagged as prompt tokens
  int64_t max_reserved_sequences = 0;
  int32_t poison_slot_once = -1;  // the next logits of this slot are nan (a model gone bad), once
  int64_t top_k_offered = 0;      // max_top_k()
  int64_t n_top_steps = 0;        // steps run by forward_top

 private:
  static constexpr int64_t kBlock = 16;
  struct Seq {
    std::unique_ptr<Backend> backend;
    int64_t blocks = 0;
    int64_t n_past = 0;
  };
  Seq& at(int32_t seq) {
    KILN_CHECK(seq >= 0 && size_t(seq) < seqs_.size(), "sequence {} is outside the slots", seq);
    return seqs_[size_t(seq)];
  }
  ModelConfig config_;
  const Weights& weights_;
  int64_t n_ctx_, max_step_tokens_, free_blocks_;
  std::vector<Seq> seqs_;
  std::vector<float> top_logits_;
  std::vector<int32_t> top_ids_, first_invalid_;
};

class BatchScheduler_ : public ::testing::Test {
 protected:
  void SetUp() override {
    model_ = std::make_unique<TinyModel>(load_tiny_model("llama_gqa_tied"));
    store_ = std::make_unique<TensorStore>(*model_, DType::F32);
    weights_ = std::make_unique<Weights>(bind_weights(model_->config, store_->lookup()));
    tokenizer_ = byte_tokenizer(-1);
  }

  std::unique_ptr<ReferenceBatchBackend> reference(int64_t n_ctx, int64_t n_blocks, int64_t max_step = 64,
                                                   int64_t max_sequences = 8) {
    return std::make_unique<ReferenceBatchBackend>(model_->config, *weights_, n_ctx, max_sequences, n_blocks,
                                                   max_step);
  }

  // Every request's batched result against its run alone.
  void expect_all_alone(const std::map<int64_t, BatchResult>& results, const std::vector<BatchRequest>& requests,
                        int64_t n_ctx, const Tokenizer& tokenizer) const {
    for (const BatchRequest& request : requests) {
      SCOPED_TRACE(request.index);
      expect_same(results.at(request.index), alone(request, n_ctx, tokenizer));
    }
  }

  AloneResult alone(const BatchRequest& request, int64_t n_ctx, const Tokenizer& tokenizer) const {
    BackendOptions options;
    options.n_ctx = n_ctx;
    options.n_threads = 1;
    auto backend = make_cpu_backend(model_->config, *weights_, options);
    return run_alone(*backend, tokenizer, request);
  }

  std::unique_ptr<TinyModel> model_;
  std::unique_ptr<TensorStore> store_;
  std::unique_ptr<Weights> weights_;
  std::unique_ptr<Tokenizer> tokenizer_;
};

TEST_F(BatchScheduler_, GreedyAndSampledOutputEqualsGeneratorAlone) {
  const auto requests = mixed_requests(12, model_->config.n_vocab, 7);
  auto backend = reference(96, 40, 24, 5);
  BatchScheduler scheduler(*backend, *tokenizer_, {});
  const auto results = run_all(scheduler, requests);
  expect_all_alone(results, requests, 96, *tokenizer_);
  EXPECT_GT(backend->max_reserved_sequences, 1) << "the requests ran one at a time";
}

// nan logits fail their request alone, with the sampler's message; the requests sampled beside it in the
// same steps (on the sampling threads) give what they give alone. Whole rows, and the best of each.
TEST_F(BatchScheduler_, NanLogitsFailOnlyTheirRequest) {
  for (const int64_t top_k_offered : {0, 64}) {
    SCOPED_TRACE(::testing::Message() << "top-k offered: " << top_k_offered);
    auto requests = mixed_requests(6, model_->config.n_vocab, 11);
    for (BatchRequest& r : requests) r.sampling.repeat_penalty = 1;  // every step may return the best only
    auto backend = reference(96, 40, 24, 3);
    backend->poison_slot_once = 0;  // the first request admitted takes slot 0
    backend->top_k_offered = top_k_offered;
    BatchOptions options;
    options.sampling_threads = 3;
    BatchScheduler scheduler(*backend, *tokenizer_, options);
    const auto results = run_all(scheduler, requests);
    EXPECT_EQ(backend->n_top_steps > 0, top_k_offered > 0);
    const BatchResult& failed = results.at(requests[0].index);
    EXPECT_NE(failed.error.find("the model produced invalid output"), std::string::npos) << failed.error;
    EXPECT_TRUE(failed.text.empty());
    for (size_t i = 1; i < requests.size(); ++i) {
      SCOPED_TRACE(requests[i].index);
      EXPECT_TRUE(results.at(requests[i].index).error.empty());
      expect_same(results.at(requests[i].index), alone(requests[i], 96, *tokenizer_));
    }
  }
}

// A backend that returns each row's best logits gives the text of whole rows: steps whose samplers all
// draw from the best (greedy, top-k within what it offers) take them; a step with a repeat penalty or a
// larger top-k takes whole rows.
TEST_F(BatchScheduler_, TheBestLogitsOfEachRowGiveTheTextOfWholeRows) {
  auto requests = mixed_requests(12, model_->config.n_vocab, 5);
  requests[3].sampling.top_k = 100;  // more than offered
  auto backend = reference(96, 40, 24, 5);
  backend->top_k_offered = 64;
  BatchScheduler scheduler(*backend, *tokenizer_, {});
  const auto results = run_all(scheduler, requests);
  expect_all_alone(results, requests, 96, *tokenizer_);
  EXPECT_GT(backend->n_top_steps, 0) << "no step took the best logits";
  EXPECT_LT(backend->n_top_steps, backend->n_steps) << "every step took the best logits";
}

TEST_F(BatchScheduler_, PromptChunksOfOneTokenAndATightPoolGiveTheSameText) {
  const auto requests = mixed_requests(6, model_->config.n_vocab, 11);
  // Steps of 3 rows split every prompt; 9 blocks of 16 hold about two sequences at once.
  auto backend = reference(96, 9, 3, 4);
  BatchOptions options;
  options.max_step_tokens = 3;
  BatchScheduler scheduler(*backend, *tokenizer_, options);
  const auto results = run_all(scheduler, requests);
  expect_all_alone(results, requests, 96, *tokenizer_);
  EXPECT_LE(backend->max_reserved_sequences, 3);
}

TEST_F(BatchScheduler_, EndOfTurnStopStringsAndAFullContextEndAsAlone) {
  // Until the end of turn or a full context (48 positions).
  auto cases = mixed_requests(4, model_->config.n_vocab, 3);
  for (BatchRequest& r : cases) {
    r.max_tokens = -1;
    r.sampling.temperature = 0;
  }
  // The end-of-turn token is the sixth that request 0 generates alone; request 1 stops before a piece
  // of its own text, picked from a run without stops.
  const AloneResult probe = alone(cases[0], 48, *tokenizer_);
  ASSERT_GE(probe.tokens.size(), 6u);
  const auto eos_tokenizer = byte_tokenizer(probe.tokens[5]);
  const AloneResult free_run = alone(cases[1], 48, *eos_tokenizer);
  ASSERT_GE(free_run.text.size(), 8u);
  cases[1].stops = {"never in the text", free_run.text.substr(free_run.text.size() / 2, 3)};

  auto backend = reference(48, 64);
  BatchScheduler scheduler(*backend, *eos_tokenizer, {});
  const auto results = run_all(scheduler, cases);
  expect_all_alone(results, cases, 48, *eos_tokenizer);
  EXPECT_EQ(results.at(0).finish, FinishReason::EndOfTurn);
  EXPECT_EQ(results.at(1).finish, FinishReason::StopString);
  EXPECT_LT(results.at(1).text.size(), free_run.text.size());
  int full = 0;
  for (const auto& [index, r] : results) full += r.finish == FinishReason::ContextFull;
  EXPECT_GT(full, 0) << "no request filled its context";
}

TEST_F(BatchScheduler_, RequestsThatCanNeverRunFailAloneAndTheOthersGoOn) {
  auto requests = mixed_requests(3, model_->config.n_vocab, 5);
  BatchRequest empty = requests[0], too_long = requests[0], bad_token = requests[0], bad_sampling = requests[0];
  empty.index = 100, empty.prompt.clear();
  too_long.index = 101, too_long.prompt.assign(64, 5);
  bad_token.index = 102, bad_token.prompt.back() = int32_t(model_->config.n_vocab);
  bad_sampling.index = 103, bad_sampling.sampling.top_p = 2;
  BatchRequest none = requests[1];
  none.index = 104, none.max_tokens = 0;
  for (const BatchRequest& r : {empty, too_long, bad_token, bad_sampling, none}) requests.push_back(r);

  auto backend = reference(64, 64);
  BatchScheduler scheduler(*backend, *tokenizer_, {});
  const auto results = run_all(scheduler, requests);
  EXPECT_NE(results.at(100).error.find("empty"), std::string::npos);
  EXPECT_NE(results.at(101).error.find("context holds 64"), std::string::npos) << results.at(101).error;
  EXPECT_NE(results.at(102).error.find("outside the vocabulary"), std::string::npos);
  EXPECT_NE(results.at(103).error.find("top-p"), std::string::npos);
  EXPECT_TRUE(results.at(104).error.empty());
  EXPECT_EQ(results.at(104).n_generated, 0);
  EXPECT_EQ(results.at(104).text, "");
  for (int64_t i = 0; i < 3; ++i) expect_same(results.at(i), alone(requests[size_t(i)], 64, *tokenizer_));
}

TEST_F(BatchScheduler_, ARequestLargerThanThePoolFailsAndOneThatFitsOnlyAloneWaits) {
  // Four blocks of 16: a 70-token prompt never fits; two 40-position requests must take turns.
  auto requests = mixed_requests(2, model_->config.n_vocab, 9);
  for (BatchRequest& r : requests) {
    r.prompt.resize(30, 7);
    r.max_tokens = 10;
  }
  BatchRequest huge = requests[0];
  huge.index = 50;
  huge.prompt.assign(70, 9);
  requests.push_back(huge);
  auto backend = reference(128, 4);
  BatchScheduler scheduler(*backend, *tokenizer_, {});
  const auto results = run_all(scheduler, requests);
  EXPECT_NE(results.at(50).error.find("KV memory holds 64 positions"), std::string::npos) << results.at(50).error;
  EXPECT_EQ(backend->max_reserved_sequences, 1);
  for (int64_t i = 0; i < 2; ++i) expect_same(results.at(i), alone(requests[size_t(i)], 128, *tokenizer_));
  EXPECT_EQ(backend->free_blocks(), 4) << "every block came back";
}

TEST_F(BatchScheduler_, ReportsProgressAndCapsParallelism) {
  const auto requests = mixed_requests(5, model_->config.n_vocab, 13);
  auto backend = reference(96, 64, 64, 8);
  BatchOptions options;
  options.max_parallel = 2;
  BatchScheduler scheduler(*backend, *tokenizer_, options);
  EXPECT_EQ(scheduler.max_parallel(), 2);
  for (const BatchRequest& r : requests) scheduler.submit(r);
  EXPECT_EQ(scheduler.progress().n_queued, 5);
  int64_t prompt_tokens = 0, generated = 0;
  for (const BatchRequest& r : requests) prompt_tokens += int64_t(r.prompt.size());
  while (!scheduler.idle()) {
    for (const BatchResult& r : scheduler.step()) generated += r.n_generated;
    EXPECT_LE(scheduler.progress().n_active, 2);
  }
  EXPECT_EQ(backend->max_reserved_sequences, 2);
  EXPECT_EQ(scheduler.progress().n_prompt_tokens, prompt_tokens);
  EXPECT_EQ(scheduler.progress().n_generated_tokens, generated);
  EXPECT_EQ(backend->n_prompt_rows, prompt_tokens);  // prompt rows flagged, decode rows not
  EXPECT_EQ(scheduler.progress().n_steps, backend->n_steps);
  EXPECT_GT(scheduler.progress().forward_seconds, 0.0);
}

// The batched CPU backend: every matmul runs over the rows of all sequences, attention reads a paged
// cache, and still each request's text is what it is alone.
TEST_F(BatchScheduler_, TheCpuBatchBackendGivesTheTextOfGeneratorAlone) {
  for (int64_t step : {int64_t(64), int64_t(5)}) {
    SCOPED_TRACE(step);
    const auto requests = mixed_requests(16, model_->config.n_vocab, 21);
    BatchBackendOptions options;
    options.n_ctx = 96;
    options.max_sequences = 6;
    options.max_step_tokens = step;
    options.kv_bytes = uint64_t(1) << 24;
    options.n_threads = 2;
    auto backend = make_cpu_batch_backend(model_->config, *weights_, options);
    const int64_t pool = backend->free_blocks();
    BatchScheduler scheduler(*backend, *tokenizer_, {});
    const auto results = run_all(scheduler, requests);
    expect_all_alone(results, requests, 96, *tokenizer_);
    EXPECT_EQ(backend->free_blocks(), pool) << "every block came back";
  }
}

// SmolLM2: eight real prompts, greedy and sampled, batched on the CPU equal Generator alone. f16 weights:
// with int8 weights the matmul of one row (decode alone) and of many (a batch step) quantize and sum
// differently, so the logits differ by more than rounding and greedy text can part.
TEST(BatchSchedulerSmolLM2, TextEqualsGeneratorAlone) {
  KILN_REQUIRE_SMOLLM2(gguf);
  testing::TempDir dir;
  ConvertOptions convert;
  convert.weight_dtype = DType::F16;
  write_conversion(conversion_from_gguf(GgufFile::open(gguf)), dir.file("smol.kiln"), convert);
  const KilnFile file = KilnFile::open(dir.file("smol.kiln"));
  const auto tokenizer = make_tokenizer(file.tokenizer_data());
  const char* prompts[] = {"The capital of France is", "Once upon a time", "def fibonacci(n):",
                           "List three colors:", "The sun rises in the", "Water boils at",
                           "My favourite food is", "1, 2, 3, 4,"};
  std::vector<BatchRequest> requests;
  for (const char* p : prompts) {
    BatchRequest r;
    r.index = int64_t(requests.size());
    r.prompt = tokenizer->encode(p, true, false);
    r.max_tokens = 12 + 4 * (r.index % 3);
    r.sampling.temperature = r.index < 6 ? 0.0f : 0.8f;
    r.sampling.seed = uint64_t(r.index);
    if (r.index == 5) r.stops = {"."};
    requests.push_back(r);
  }
  BatchBackendOptions options;
  options.n_ctx = 128;
  options.max_sequences = 4;
  options.max_step_tokens = 32;
  options.kv_bytes = uint64_t(64) << 20;
  auto batch_backend = make_cpu_batch_backend(file, options);
  BatchScheduler scheduler(*batch_backend, *tokenizer, {});
  const auto results = run_all(scheduler, requests);
  BackendOptions alone_options;
  alone_options.n_ctx = 128;
  auto backend = make_cpu_backend(file, alone_options);
  for (const BatchRequest& request : requests) {
    SCOPED_TRACE(prompts[request.index]);
    backend->reset();
    expect_same(results.at(request.index), run_alone(*backend, *tokenizer, request));
  }
  EXPECT_EQ(results.at(0).text.rfind(" Paris", 0), 0u) << results.at(0).text;
}

}  // namespace
}  // namespace kiln::test
