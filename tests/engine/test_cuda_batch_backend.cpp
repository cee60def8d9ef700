// The batched CUDA backend on the tiny models: steps mixing prompt chunks of some sequences with decode
// rows of others give each row the logits of the CPU batch backend running the same steps (every family,
// f32 weights: 1e-4; f16: 1e-2; an f16 pool with prompt tiles: 2e-2; an fp8 pool, whose keys and values
// keep 3 mantissa bits: kFp8PoolTolerance) and bit for bit those of its sequence alone in the CUDA batch
// backend (every weight dtype, f32, f16 and fp8 pools, with and without prompt tiles); greedy tokens equal
// the single-sequence CUDA backend's; sixteen sequences decode alike alone and batched; forward_top returns
// each row's best logits of those forward returns, and the scheduler's text from them equals its text from
// whole rows; the block pool's accounting never leaks over 1,000 sequences; bad steps throw kiln::Error
// without changing anything; a pool larger than the GPU is refused naming the bytes needed and free, and
// matmul calls of too few or too many rows are refused. Skips itself without a GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "engine/backend.h"
#include "engine/batch_backend.h"
#include "engine/batch_scheduler.h"
#include "engine/cuda_backend.h"
#include "engine/cuda_batch_backend.h"
#include "engine/error.h"
#include "engine/weights.h"
#include "tests/engine/batch_backend_test_util.h"
#include "tests/engine/batch_test_util.h"
#include "tests/engine/tiny_model.h"
#include "tests/engine/top_logits_test_util.h"
#include "tests/kernels/cuda/cuda_test_util.h"

namespace kiln::test {
namespace {

// Four sequences of 45, 38, 20 and 9 tokens (past the Mistral model's window of 24 and several blocks).
std::vector<std::vector<int32_t>> four_sequences(int64_t n_vocab, uint32_t seed) {
  std::vector<std::vector<int32_t>> seqs;
  for (int64_t length : {45, 38, 20, 9}) seqs.push_back(random_tokens(length, n_vocab, seed++));
  return seqs;
}

// An fp8 pool keeps 3 mantissa bits of each key and value (2^-4 relative rounding): the logits' distance
// from the f32 computation it allows.
constexpr float kFp8PoolTolerance = 0.5f;

const std::vector<std::vector<Part>> kMixedSteps = {
    {{0, 20}},                          // a prompt chunk alone
    {{0, 1}, {1, 30}},                  // a decode row, then another prompt's chunk
    {{1, 7}, {0, 1}, {2, 12}},          // a chunk between decode rows
    {{2, 1}, {0, 1}, {1, 1}, {3, 8}},
    {{0, 1}}, {{0, 1}, {2, 1}},
    {{0, 20}, {3, 1}, {2, 6}},          // a chunk far past the window
};

class CudaBatchParity : public ::testing::TestWithParam<const char*> {};

// The same steps on the CPU batch backend: f32 weights part only by f32 rounding in another order; f16
// weights also by the GEMM's rounding of activations to f16.
// With an f16 or fp8 pool and the rows flagged prompt rows, the prompt tiles of the tensor cores (queries
// and probabilities in f16 as well as the keys and values): 2e-2 for f16, kFp8PoolTolerance for fp8.
// Flagged prompt rows also take matmul calls of their own shape; with 32-row calls the output and down
// projections are split over their inputs.
TEST_P(CudaBatchParity, MixedStepsMatchTheCpuBatchBackend) {
  KILN_REQUIRE_GPU();
  struct Variant {
    DType dtype;
    cuda::KvDType pool;
    float tolerance;
    bool prompt;
    int64_t matmul_rows = 64;
  };
  for (const Variant& v : {Variant{DType::F32, cuda::KvDType::F32, 1e-4f, false},
                           Variant{DType::F16, cuda::KvDType::F32, 1e-2f, false},
                           Variant{DType::F32, cuda::KvDType::F16, 2e-2f, true},
                           Variant{DType::F32, cuda::KvDType::F8, kFp8PoolTolerance, true},
                           Variant{DType::F32, cuda::KvDType::F32, 1e-4f, true, 32},
                           Variant{DType::F16, cuda::KvDType::F16, 2e-2f, true, 32}}) {
    const bool prompt = v.prompt;
    const std::string name = std::string(dtype_name(v.dtype)) + " weights, " + cuda::kv_dtype_name(v.pool) +
                             (prompt ? " pool, prompt rows" : " pool") + ", " + std::to_string(v.matmul_rows) +
                             "-row calls";
    SCOPED_TRACE(name);
    const Tiny tiny(GetParam(), v.dtype);
    const ModelConfig& c = tiny.model.config;
    const auto seqs = four_sequences(c.n_vocab, 11);
    auto cpu = make_cpu_batch_backend(c, tiny.weights, small_batch(4));
    CudaBatchOptions cuda;
    cuda.kv_dtype = v.pool;
    cuda.matmul_rows = v.matmul_rows;
    auto gpu = make_cuda_batch_backend(c, tiny.weights, small_batch(4), cuda);
    const Logits want = run_steps(*cpu, seqs, kMixedSteps), got = run_steps(*gpu, seqs, kMixedSteps, prompt);
    for (size_t s = 0; s < seqs.size(); ++s) {
      const float diff = max_abs_difference(got[s], want[s]);
      std::printf("%s %s sequence %zu: max abs %.2e vs CPU\n", GetParam(), name.c_str(), s, diff);
      EXPECT_LE(diff, v.tolerance) << "sequence " << s;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Families, CudaBatchParity,
                         ::testing::Values("llama_gqa_tied", "llama_mha", "llama_rope_linear", "mistral_swa", "qwen2",
                                           "gpt2", "gptneox", "gptj", "bloom", "opt", "opt_post_ln"));

// Each sequence alone in its own CUDA batch backend, all its positions in one step.
Logits alone_in_batch_backend(const ModelConfig& c, const Weights& weights,
                              const std::vector<std::vector<int32_t>>& seqs, const CudaBatchOptions& cuda,
                              bool prompt) {
  Logits want;
  for (const auto& seq : seqs) {
    auto alone = make_cuda_batch_backend(c, weights, small_batch(1), cuda);
    want.push_back(run_steps(*alone, {seq}, {{{0, int64_t(seq.size())}}}, prompt)[0]);
  }
  return want;
}

// Every weight dtype: a row's logits are bit for bit those of its sequence alone, whatever the step mixes in;
// with an f32 pool, and with f16 and fp8 pools, prompt rows (alone, a sequence's rows share tiles they do
// not share in the mixed steps) and small attention splits.
class CudaBatchInvariance : public ::testing::TestWithParam<DType> {};

TEST_P(CudaBatchInvariance, RowsMatchTheSequenceAloneBitForBit) {
  KILN_REQUIRE_GPU();
  for (const char* name : {"llama_gqa_tied", "gpt2", "bloom", "mistral_swa"}) {  // rotary, learned, ALiBi, window
    for (auto [pool, matmul_rows] : {std::pair{cuda::KvDType::F32, 64}, std::pair{cuda::KvDType::F16, 64},
                                     std::pair{cuda::KvDType::F8, 64}, std::pair{cuda::KvDType::F16, 32}}) {
      const bool prompt = pool != cuda::KvDType::F32;
      SCOPED_TRACE(testing::Message() << name << " " << cuda::kv_dtype_name(pool)
                                      << (prompt ? " pool, prompt rows, splits of 16 keys" : " pool") << ", "
                                      << matmul_rows << "-row calls");
      const Tiny tiny(name, GetParam());
      const ModelConfig& c = tiny.model.config;
      const auto seqs = four_sequences(c.n_vocab, 21);
      CudaBatchOptions cuda;
      cuda.kv_dtype = pool;
      cuda.attention_chunk_keys = prompt ? 16 : 0;  // the decode rows' keys in several splits
      cuda.matmul_rows = matmul_rows;
      const Logits want = alone_in_batch_backend(c, tiny.weights, seqs, cuda, prompt);
      auto batch = make_cuda_batch_backend(c, tiny.weights, small_batch(4), cuda);
      const Logits got = run_steps(*batch, seqs, kMixedSteps, prompt);
      for (size_t s = 0; s < seqs.size(); ++s)
        EXPECT_EQ(std::memcmp(got[s].data(), want[s].data(), got[s].size() * sizeof(float)), 0) << "sequence " << s;
    }
  }
}

std::string dtype_test_name(const ::testing::TestParamInfo<DType>& info) { return std::string(dtype_name(info.param)); }

INSTANTIATE_TEST_SUITE_P(Dtypes, CudaBatchInvariance,
                         ::testing::Values(DType::F32, DType::F16, DType::BF16, DType::I8), dtype_test_name);

// f32 weights: the batch's GEMM and the single backend's GEMV sum in other orders (about 1e-6 apart), far
// inside the models' top-1 margins.
TEST(CudaBatchBackend, GreedyTokensEqualTheSingleSequenceBackend) {
  KILN_REQUIRE_GPU();
  for (const char* name : {"llama_gqa_tied", "mistral_swa", "gptneox", "opt"}) {
    SCOPED_TRACE(name);
    const Tiny tiny(name);
    const ModelConfig& c = tiny.model.config;
    std::vector<std::vector<int32_t>> prompts;
    for (int64_t length : {8, 30, 3, 17}) prompts.push_back(random_tokens(length, c.n_vocab, uint32_t(40 + length)));
    BackendOptions single_options;
    single_options.n_ctx = 256;
    auto single = make_cuda_backend(c, tiny.weights, single_options);
    auto batch = make_cuda_batch_backend(c, tiny.weights, small_batch(4));
    const auto got = greedy_batched(*batch, prompts, 40, 16);
    for (size_t s = 0; s < prompts.size(); ++s)
      EXPECT_EQ(got[s], greedy_single(*single, prompts[s], 40)) << "prompt " << s;
  }
}

// Sixteen prompts (f16 weights) decoded together, in steps whose rows cross the matmul's 64-row calls,
// give each the tokens and, bit for bit, the logits it gets decoding alone; with an f32 pool and with f16
// and fp8 ones (prompt tiles).
TEST(CudaBatchBackend, SixteenSequencesDecodeAsAlone) {
  KILN_REQUIRE_GPU();
  const Tiny tiny("llama_gqa_tied", DType::F16);
  const ModelConfig& c = tiny.model.config;
  std::vector<std::vector<int32_t>> prompts;
  for (uint32_t i = 0; i < 16; ++i) prompts.push_back(random_tokens(5 + i * 7 % 40, c.n_vocab, 100 + i));
  for (cuda::KvDType pool : {cuda::KvDType::F32, cuda::KvDType::F16, cuda::KvDType::F8}) {
    SCOPED_TRACE(cuda::kv_dtype_name(pool));
    CudaBatchOptions cuda;
    cuda.kv_dtype = pool;
    auto batch = make_cuda_batch_backend(c, tiny.weights, small_batch(16), cuda);
    Logits batched_logits;
    const auto batched = greedy_batched(*batch, prompts, 48, 100, &batched_logits);
    for (size_t s = 0; s < prompts.size(); ++s) {
      auto alone = make_cuda_batch_backend(c, tiny.weights, small_batch(1), cuda);
      Logits alone_logits;
      EXPECT_EQ(greedy_batched(*alone, {prompts[s]}, 48, 100, &alone_logits)[0], batched[s]) << "prompt " << s;
      ASSERT_EQ(alone_logits[0].size(), batched_logits[s].size());
      EXPECT_EQ(std::memcmp(alone_logits[0].data(), batched_logits[s].data(), alone_logits[0].size() * sizeof(float)),
                0)
          << "prompt " << s;
    }
  }
}

// The pinned logits buffer receives, bit for bit, what plain memory does, and grows when asked for more.
TEST(CudaBatchBackend, PinnedLogitsBufferEqualsPlainMemory) {
  KILN_REQUIRE_GPU();
  const Tiny tiny("llama_gqa_tied", DType::F16);
  const ModelConfig& c = tiny.model.config;
  const std::vector<std::vector<int32_t>> seqs = {random_tokens(9, c.n_vocab, 5), random_tokens(4, c.n_vocab, 6)};
  auto batch = make_cuda_batch_backend(c, tiny.weights, small_batch(2));
  const Logits plain = run_steps(*batch, seqs, {{{0, 9}, {1, 4}}});
  auto again = make_cuda_batch_backend(c, tiny.weights, small_batch(2));
  ASSERT_TRUE(again->reserve(0, 9) && again->reserve(1, 4));
  std::vector<BatchToken> rows;
  for (int32_t s = 0; s < 2; ++s)
    for (size_t p = 0; p < seqs[size_t(s)].size(); ++p) rows.push_back({seqs[size_t(s)][p], s, int32_t(p)});
  const std::vector<int32_t> logit_rows = {8, 12};  // each sequence's last row
  ASSERT_NE(again->logits_buffer(1), nullptr);
  float* logits = again->logits_buffer(2);
  again->forward(rows.data(), int64_t(rows.size()), logit_rows.data(), 2, logits);
  EXPECT_EQ(std::memcmp(logits, plain[0].data() + 8 * size_t(c.n_vocab), size_t(c.n_vocab) * sizeof(float)), 0);
  EXPECT_EQ(std::memcmp(logits + c.n_vocab, plain[1].data() + 3 * size_t(c.n_vocab), size_t(c.n_vocab) * sizeof(float)),
            0);
}

// Steps replayed from captured graphs compute what their launches compute, bit for bit; f16 and fp8 pools
// (prompt tiles among the graphs' kernels).
TEST(CudaBatchBackend, GraphStepsEqualLaunches) {
  KILN_REQUIRE_GPU();
  const Tiny tiny("qwen2", DType::F16);
  const ModelConfig& c = tiny.model.config;
  std::vector<std::vector<int32_t>> prompts;
  for (uint32_t i = 0; i < 6; ++i) prompts.push_back(random_tokens(3 + i * 5, c.n_vocab, 200 + i));
  for (cuda::KvDType pool : {cuda::KvDType::F16, cuda::KvDType::F8}) {
    SCOPED_TRACE(cuda::kv_dtype_name(pool));
    CudaBatchOptions graphs, launches;
    graphs.kv_dtype = launches.kv_dtype = pool;
    launches.use_graph = false;
    auto with_graphs = make_cuda_batch_backend(c, tiny.weights, small_batch(6), graphs);
    auto without = make_cuda_batch_backend(c, tiny.weights, small_batch(6), launches);
    Logits a, b;
    EXPECT_EQ(greedy_batched(*with_graphs, prompts, 30, 12, &a), greedy_batched(*without, prompts, 30, 12, &b));
    for (size_t s = 0; s < prompts.size(); ++s)
      EXPECT_EQ(std::memcmp(a[s].data(), b[s].data(), a[s].size() * sizeof(float)), 0) << "prompt " << s;
  }
}

// forward_top's rows against forward's, over a prompt step and greedy decode steps (the same shape again
// and again, so captured as a graph; the asked rows in order and out of it), k from 1 to the vocabulary.
TEST(CudaBatchBackend, TheBestLogitsOfARowAreThoseOfTheWholeRow) {
  KILN_REQUIRE_GPU();
  const Tiny tiny("qwen2", DType::F16);
  const ModelConfig& c = tiny.model.config;
  const auto n_vocab = size_t(c.n_vocab);
  const int64_t max_k = std::min<int64_t>(256, c.n_vocab);
  for (const int64_t k : {int64_t(1), int64_t(40), max_k}) {
    SCOPED_TRACE(testing::Message() << "k " << k);
    auto whole = make_cuda_batch_backend(c, tiny.weights, small_batch(3));
    auto best = make_cuda_batch_backend(c, tiny.weights, small_batch(3));
    ASSERT_EQ(best->max_top_k(), max_k);
    std::vector<BatchToken> rows;
    for (int32_t s = 0; s < 3; ++s) {
      ASSERT_TRUE(whole->reserve(s, 64) && best->reserve(s, 64));
      const auto prompt = random_tokens(4 + 5 * s, c.n_vocab, uint32_t(300 + s));
      for (size_t p = 0; p < prompt.size(); ++p) rows.push_back({prompt[p], s, int32_t(p), true});
    }
    std::vector<int32_t> logit_rows = {3, 26, 12};  // each sequence's last row: 0, 2, 1
    std::vector<int32_t> seq_of_row = {0, 2, 1};
    std::vector<int32_t> position = {4, 9, 14};
    for (int step = 0; step < 8; ++step) {
      SCOPED_TRACE(testing::Message() << "step " << step);
      std::vector<float> logits(logit_rows.size() * n_vocab);
      whole->forward(rows.data(), int64_t(rows.size()), logit_rows.data(), int64_t(logit_rows.size()), logits.data());
      const TopLogits top = best->forward_top(rows.data(), int64_t(rows.size()), logit_rows.data(),
                                              int64_t(logit_rows.size()), k);
      ASSERT_EQ(top.k, k);
      std::vector<BatchToken> next(3);
      for (size_t i = 0; i < logit_rows.size(); ++i) {
        const float* row = logits.data() + i * n_vocab;
        expect_best_of(top, i, row, c.n_vocab);
        const int32_t s = seq_of_row[i];
        next[size_t(s)] = {int32_t(std::max_element(row, row + n_vocab) - row), s, position[size_t(s)]++};
      }
      rows = next;
      logit_rows = step % 4 < 2 ? std::vector<int32_t>{0, 1, 2} : std::vector<int32_t>{2, 0, 1};
      seq_of_row = logit_rows;
    }
  }
}

// Passes every call to its backend, and offers forward_top or hides it (the scheduler then takes whole rows).
class Relay final : public BatchBackend {
 public:
  Relay(BatchBackend& b, bool offer_top) : b_(b), offer_top_(offer_top) {}
  std::string_view name() const override { return b_.name(); }
  const ModelConfig& config() const override { return b_.config(); }
  int64_t n_ctx() const override { return b_.n_ctx(); }
  int64_t max_sequences() const override { return b_.max_sequences(); }
  int64_t max_step_tokens() const override { return b_.max_step_tokens(); }
  int64_t block_positions() const override { return b_.block_positions(); }
  int64_t free_blocks() const override { return b_.free_blocks(); }
  bool reserve(int32_t seq, int64_t n_positions) override { return b_.reserve(seq, n_positions); }
  void forward(const BatchToken* tokens, int64_t n_tokens, const int32_t* logit_rows, int64_t n_logit_rows,
               float* logits) override {
    b_.forward(tokens, n_tokens, logit_rows, n_logit_rows, logits);
  }
  int64_t max_top_k() const override { return offer_top_ ? b_.max_top_k() : 0; }
  TopLogits forward_top(const BatchToken* tokens, int64_t n_tokens, const int32_t* logit_rows, int64_t n_logit_rows,
                        int64_t k) override {
    ++n_top_steps;
    return b_.forward_top(tokens, n_tokens, logit_rows, n_logit_rows, k);
  }
  void release(int32_t seq) override { b_.release(seq); }
  float* logits_buffer(int64_t n_rows) override { return b_.logits_buffer(n_rows); }

  int64_t n_top_steps = 0;

 private:
  BatchBackend& b_;
  bool offer_top_;
};

// The scheduler over the CUDA backend draws from each row's best logits where every sampler of a step
// can (greedy, top-k 40), and gives the text it gives over whole rows; requests with a repeat penalty
// among them.
TEST(CudaBatchBackend, SchedulerTextFromTheBestLogitsEqualsWholeRows) {
  KILN_REQUIRE_GPU();
  const Tiny tiny("llama_gqa_tied", DType::F16);
  const ModelConfig& c = tiny.model.config;
  const auto tokenizer = byte_tokenizer(-1);
  const auto requests = mixed_requests(24, c.n_vocab, 9);
  std::map<int64_t, BatchResult> by[2];
  for (const bool top : {false, true}) {
    auto cuda = make_cuda_batch_backend(c, tiny.weights, small_batch(6));
    Relay relay(*cuda, top);
    BatchScheduler scheduler(relay, *tokenizer, {});
    by[top] = run_all(scheduler, requests);
    EXPECT_EQ(relay.n_top_steps > 0, top);
  }
  for (const BatchRequest& r : requests) {
    SCOPED_TRACE(r.index);
    const BatchResult &a = by[0].at(r.index), &b = by[1].at(r.index);
    EXPECT_TRUE(a.error.empty() && b.error.empty()) << a.error << b.error;
    EXPECT_EQ(a.text, b.text);
    EXPECT_EQ(a.n_generated, b.n_generated);
    EXPECT_EQ(int(a.finish), int(b.finish));
  }
}

// 1,000 short sequences through 6 slots and a pool of 9 blocks: a finished sequence's slot and blocks are
// taken at once by the next. Every 25th sequence's last logits are checked against the CPU backend running
// it alone, so reused blocks hold no stale keys; at the end every block is free again.
TEST(CudaBatchBackend, ThousandSequencesLeakNoBlock) {
  KILN_REQUIRE_GPU();
  const Tiny tiny("llama_gqa_tied");
  const ModelConfig& c = tiny.model.config;
  auto batch = make_cuda_batch_backend(c, tiny.weights, small_batch(6, pool_bytes(c, 9)));
  ASSERT_EQ(batch->free_blocks(), 9);
  BackendOptions cpu_options;
  cpu_options.n_ctx = 64;
  cpu_options.n_threads = 2;
  auto cpu = make_cpu_backend(c, tiny.weights, cpu_options);
  run_thousand_short_sequences(*batch, *cpu);
}

constexpr int32_t kRow0 = 0;

TEST(CudaBatchBackend, RejectsBadStepsChangingNothing) {
  KILN_REQUIRE_GPU();
  const Tiny tiny("llama_gqa_tied");
  const ModelConfig& c = tiny.model.config;
  auto batch = make_cuda_batch_backend(c, tiny.weights, small_batch(3));
  ASSERT_TRUE(batch->reserve(0, 20) && batch->reserve(1, 20));
  const BatchToken prompt[] = {{5, 0, 0}, {6, 0, 1}, {7, 1, 0}};
  batch->forward(prompt, 3, nullptr, 0, nullptr);
  std::vector<float> logits(size_t(c.n_vocab));
  auto expect_error = [&](std::vector<BatchToken> rows) {
    EXPECT_THROW(batch->forward(rows.data(), int64_t(rows.size()), &kRow0, 1, logits.data()), Error);
  };
  expect_error({{8, 0, 3}});                        // a gap: sequence 0 holds 2 positions
  expect_error({{8, 0, 1}});                        // a rewind
  expect_error({{8, 0, 2}, {9, 1, 1}, {9, 0, 3}});  // sequence 0's rows apart
  expect_error({{int32_t(c.n_vocab), 0, 2}});       // outside the vocabulary
  expect_error({{8, 3, 0}});                        // no such slot
  expect_error({{8, 2, 0}});                        // nothing reserved for slot 2

  // None of them changed the pool: the sequences go on from where they were, as on the CPU.
  const BatchToken next[] = {{8, 0, 2}, {9, 1, 1}};
  const int32_t both[] = {0, 1};
  std::vector<float> got(2 * size_t(c.n_vocab)), want(2 * size_t(c.n_vocab));
  batch->forward(next, 2, both, 2, got.data());
  auto cpu = make_cpu_batch_backend(c, tiny.weights, small_batch(3));
  ASSERT_TRUE(cpu->reserve(0, 20) && cpu->reserve(1, 20));
  cpu->forward(prompt, 3, nullptr, 0, nullptr);
  cpu->forward(next, 2, both, 2, want.data());
  EXPECT_LE(max_abs_difference(got, want), 1e-4f);
}

TEST(CudaBatchBackend, RefusesEncodersAndPoolsLargerThanTheGpu) {
  KILN_REQUIRE_GPU();
  const Tiny bert("bert");
  EXPECT_THROW((void)make_cuda_batch_backend(bert.model.config, bert.weights, small_batch(2)), Error);

  // 16384 slots of 65,536 positions would take 2^26 blocks of 8 KiB: 512 GiB.
  const Tiny tiny("llama_gqa_tied");
  BatchBackendOptions huge = small_batch(16384, ~uint64_t(0));
  huge.n_ctx = 65536;
  try {
    (void)make_cuda_batch_backend(tiny.model.config, tiny.weights, huge);
    FAIL() << "a 512 GiB KV pool was accepted";
  } catch (const Error& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("of GPU memory"), std::string::npos) << message;
    EXPECT_NE(message.find("KV pool of 67108864 blocks"), std::string::npos) << message;
    EXPECT_NE(message.find(" free of "), std::string::npos) << message;
  }
  // 0: what the GPU has free, capped by what the slots can use (4 x 256 positions: 64 blocks).
  auto fitted = make_cuda_batch_backend(tiny.model.config, tiny.weights, small_batch(4, 0));
  EXPECT_EQ(fitted->free_blocks(), 64);

  // Matmul calls of decode or prompt rows must hold more rows than the GEMV takes, and at most 4096.
  for (auto [rows, prompt_rows] : {std::pair<int64_t, int64_t>{8, 256}, {4097, 256}, {64, 8}, {64, 4097}}) {
    CudaBatchOptions cuda;
    cuda.matmul_rows = rows;
    cuda.prompt_matmul_rows = prompt_rows;
    EXPECT_THROW((void)make_cuda_batch_backend(tiny.model.config, tiny.weights, small_batch(4), cuda), Error)
        << rows << " and " << prompt_rows << " rows a call";
  }
}

}  // namespace
}  // namespace kiln::test
