// The batched CPU backend: a step mixing a prompt chunk of one sequence with decode rows of others gives
// each row the logits of the single-sequence CpuBackend (tiny f32 models of several families, 1e-4) and
// bit for bit those of the sequence alone in the batch backend (every weight dtype); greedy SmolLM2
// tokens are identical alone and batched; the block pool's accounting never leaks; bad steps throw
// kiln::Error without changing anything.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "convert/conversion.h"
#include "convert/from_gguf.h"
#include "engine/backend.h"
#include "engine/batch_backend.h"
#include "engine/error.h"
#include "engine/kiln_file.h"
#include "engine/paged_kv_cache.h"
#include "engine/weights.h"
#include "tests/convert/kiln_file_fixture.h"
#include "tests/engine/batch_backend_test_util.h"
#include "tests/engine/tiny_model.h"
#include "tests/model_paths.h"

namespace kiln::test {
namespace {

// Every position's logits of the sequence run alone: [n, n_vocab].
std::vector<float> alone(const ModelConfig& c, const Weights& weights, const std::vector<int32_t>& tokens) {
  BackendOptions options;
  options.n_ctx = 256;
  options.n_threads = 2;
  auto backend = make_cpu_backend(c, weights, options);
  std::vector<float> logits(tokens.size() * size_t(c.n_vocab));
  backend->forward(tokens.data(), int64_t(tokens.size()), 0, logits.data(), true);
  return logits;
}

// Runs the steps over the sequences' tokens (logits for every row) and checks each row against the
// sequence alone.
void run_and_compare(BatchBackend& batch, const std::vector<std::vector<int32_t>>& seqs,
                     const std::vector<std::vector<float>>& want, const std::vector<std::vector<Part>>& steps,
                     float tolerance) {
  const int64_t n_vocab = batch.config().n_vocab;
  const Logits got = run_steps(batch, seqs, steps);
  for (size_t s = 0; s < seqs.size(); ++s)
    for (size_t position = 0; position < seqs[s].size(); ++position) {
      float diff = 0;
      for (size_t v = position * size_t(n_vocab); v < (position + 1) * size_t(n_vocab); ++v)
        diff = std::max(diff, std::fabs(got[s][v] - want[s][v]));
      ASSERT_LE(diff, tolerance) << "sequence " << s << " at position " << position;
    }
}

class BatchParity : public ::testing::TestWithParam<const char*> {};

// f32 weights: a row's logits differ from the sequence alone only by f32 rounding in a different order.
TEST_P(BatchParity, MixedStepsMatchEachSequenceAlone) {
  const Tiny tiny(GetParam());
  const ModelConfig& c = tiny.model.config;
  const Weights& weights = tiny.weights;
  // Lengths past 24 (the Mistral model's window) and past several 16-position blocks.
  const std::vector<int64_t> lengths = {45, 38, 20, 9};
  std::vector<std::vector<int32_t>> seqs;
  std::vector<std::vector<float>> want;
  for (size_t s = 0; s < lengths.size(); ++s) {
    seqs.push_back(random_tokens(lengths[s], c.n_vocab, uint32_t(11 + s)));
    want.push_back(alone(c, weights, seqs.back()));
  }
  // Slots 5, 2, 7, 0 (not in order) hold the four sequences.
  const std::vector<int32_t> slot = {5, 2, 7, 0};
  const std::vector<std::vector<Part>> steps = {
      {{0, 20}},                          // a prompt chunk alone
      {{0, 1}, {1, 30}},                  // a decode row, then another prompt's chunk
      {{1, 7}, {0, 1}, {2, 12}},          // a chunk between decode rows
      {{2, 1}, {0, 1}, {1, 1}, {3, 8}},
      {{0, 22}, {3, 1}, {2, 7}},          // a chunk far past the window
  };
  std::vector<std::vector<int32_t>> seqs_by_slot(8);
  std::vector<std::vector<float>> want_by_slot(8);
  std::vector<std::vector<Part>> steps_by_slot = steps;
  for (size_t s = 0; s < slot.size(); ++s) {
    seqs_by_slot[size_t(slot[s])] = seqs[s];
    want_by_slot[size_t(slot[s])] = want[s];
  }
  for (auto& step : steps_by_slot)
    for (Part& part : step) part.seq = slot[size_t(part.seq)];
  auto batch = make_cpu_batch_backend(c, weights, small_batch(8));
  run_and_compare(*batch, seqs_by_slot, want_by_slot, steps_by_slot, 1e-4f);
}

// Every weight dtype: a row's logits are bit for bit those of its sequence alone in the batch backend
// (all its rows in one step), whatever the step mixes in.
class BatchInvariance : public ::testing::TestWithParam<DType> {};

TEST_P(BatchInvariance, RowsMatchTheSequenceAloneBitForBit) {
  const Tiny tiny("llama_gqa_tied", GetParam());
  const ModelConfig& c = tiny.model.config;
  const Weights& weights = tiny.weights;
  const std::vector<int64_t> lengths = {45, 38, 20, 9};
  std::vector<std::vector<int32_t>> seqs;
  std::vector<std::vector<float>> want;
  for (size_t s = 0; s < lengths.size(); ++s) {
    seqs.push_back(random_tokens(lengths[s], c.n_vocab, uint32_t(21 + s)));
    auto alone = make_cpu_batch_backend(c, weights, small_batch(1));
    ASSERT_TRUE(alone->reserve(0, lengths[s]));
    std::vector<BatchToken> rows;
    std::vector<int32_t> logit_rows;
    for (int32_t p = 0; p < lengths[s]; ++p) {
      rows.push_back({seqs.back()[size_t(p)], 0, p});
      logit_rows.push_back(p);
    }
    want.emplace_back(rows.size() * size_t(c.n_vocab));
    alone->forward(rows.data(), int64_t(rows.size()), logit_rows.data(), int64_t(rows.size()), want.back().data());
  }
  const std::vector<std::vector<Part>> steps = {
      {{0, 20}}, {{0, 1}, {1, 30}}, {{1, 7}, {0, 1}, {2, 12}}, {{2, 1}, {0, 1}, {1, 1}, {3, 8}},
      {{0, 1}}, {{0, 1}, {2, 1}}, {{0, 20}, {3, 1}, {2, 6}},
  };
  auto batch = make_cpu_batch_backend(c, weights, small_batch(4));
  run_and_compare(*batch, seqs, want, steps, 0.0f);
}

std::string dtype_test_name(const ::testing::TestParamInfo<DType>& info) { return std::string(dtype_name(info.param)); }

INSTANTIATE_TEST_SUITE_P(Dtypes, BatchInvariance, ::testing::Values(DType::F32, DType::F16, DType::BF16, DType::I8),
                         dtype_test_name);

INSTANTIATE_TEST_SUITE_P(Families, BatchParity,
                         ::testing::Values("llama_gqa_tied", "llama_mha", "mistral_swa", "qwen2", "gpt2", "gptneox",
                                         "gptj", "bloom", "opt", "opt_post_ln"));

TEST(CpuBatchBackend, LogitsOnlyForTheAskedRows) {
  const Tiny tiny("llama_gqa_tied");
  const ModelConfig& c = tiny.model.config;
  const Weights& weights = tiny.weights;
  const std::vector<int32_t> a = random_tokens(12, c.n_vocab, 1), b = random_tokens(5, c.n_vocab, 2);
  const std::vector<float> want_a = alone(c, weights, a), want_b = alone(c, weights, b);
  auto batch = make_cpu_batch_backend(c, weights, small_batch(2));
  ASSERT_TRUE(batch->reserve(0, 12) && batch->reserve(1, 5));
  std::vector<BatchToken> rows;
  for (int32_t p = 0; p < 12; ++p) rows.push_back({a[size_t(p)], 0, p});
  for (int32_t p = 0; p < 5; ++p) rows.push_back({b[size_t(p)], 1, p});
  const int32_t logit_rows[] = {16, 11};  // the last row of each sequence
  std::vector<float> logits(2 * size_t(c.n_vocab));
  batch->forward(rows.data(), int64_t(rows.size()), logit_rows, 2, logits.data());
  for (int64_t v = 0; v < c.n_vocab; ++v) {
    ASSERT_NEAR(logits[size_t(v)], want_b[size_t(4 * c.n_vocab + v)], 1e-4f);
    ASSERT_NEAR(logits[size_t(c.n_vocab + v)], want_a[size_t(11 * c.n_vocab + v)], 1e-4f);
  }
}

TEST(CpuBatchBackend, ReserveRefusesWhenThePoolIsShort) {
  const Tiny tiny("llama_gqa_tied");
  const ModelConfig& c = tiny.model.config;
  const Weights& weights = tiny.weights;
  auto batch = make_cpu_batch_backend(c, weights, small_batch(4, pool_bytes(c, 5) + 100));
  ASSERT_EQ(batch->block_positions(), 16);
  EXPECT_EQ(batch->free_blocks(), 5);
  EXPECT_TRUE(batch->reserve(0, 33));  // 3 blocks
  EXPECT_EQ(batch->free_blocks(), 2);
  EXPECT_TRUE(batch->reserve(0, 20));  // already covered: nothing changes
  EXPECT_EQ(batch->free_blocks(), 2);
  EXPECT_FALSE(batch->reserve(1, 33));  // 3 more do not fit
  EXPECT_EQ(batch->free_blocks(), 2);
  EXPECT_FALSE(batch->reserve(0, 81));  // growing from 3 to 6 blocks does not fit
  EXPECT_TRUE(batch->reserve(0, 64));   // to 4 does
  EXPECT_EQ(batch->free_blocks(), 1);
  EXPECT_TRUE(batch->reserve(1, 16));
  EXPECT_EQ(batch->free_blocks(), 0);
  EXPECT_FALSE(batch->reserve(2, 1));
  batch->release(0);
  EXPECT_EQ(batch->free_blocks(), 4);
  EXPECT_TRUE(batch->reserve(2, 64));
  EXPECT_THROW((void)batch->reserve(4, 1), Error);    // no such slot
  EXPECT_THROW((void)batch->reserve(3, 257), Error);  // longer than the context
  EXPECT_THROW((void)make_cpu_batch_backend(c, weights, small_batch(4, pool_bytes(c, 1) - 1)), Error);
}

TEST(KvBlockTable, GrowsWithinTheReservationAndReusesReleasedBlocks) {
  KvBlockTable t(6, 40, 3, 8);  // 6 blocks of 8 positions; 5 blocks a sequence
  EXPECT_EQ(t.max_blocks_per_seq(), 5);
  ASSERT_TRUE(t.reserve(1, 20));  // 3 blocks
  EXPECT_EQ(t.free_blocks(), 3);
  t.grow(1, 9);  // 2 blocks in use
  EXPECT_EQ(t.length(1), 9);
  const int32_t* row = t.block_table() + 1 * 5;
  EXPECT_EQ(row[0], 0);
  EXPECT_EQ(row[1], 1);
  EXPECT_EQ(row[2], -1);
  EXPECT_EQ(t.block_of(1, 8), 1);
  EXPECT_THROW((void)t.block_of(1, 9), Error);  // not held yet
  EXPECT_THROW(t.grow(1, 21), Error);            // past the reservation
  EXPECT_THROW(t.grow(1, 5), Error);             // shrinking
  ASSERT_TRUE(t.reserve(0, 24));
  t.grow(0, 24);
  EXPECT_EQ(t.free_blocks(), 0);
  t.release(1);
  EXPECT_EQ(row[0], -1);
  EXPECT_EQ(t.length(1), 0);
  EXPECT_EQ(t.free_blocks(), 3);
  ASSERT_TRUE(t.reserve(2, 16));
  t.grow(2, 16);  // the two blocks released last come back first
  EXPECT_EQ(t.block_table()[2 * 5], 0);
  EXPECT_EQ(t.block_table()[2 * 5 + 1], 1);
  EXPECT_THROW(KvBlockTable(0, 40, 3, 8), Error);
  EXPECT_THROW(KvBlockTable(6, 40, 3, 0), Error);
}

// 1,000 short sequences through 6 slots and a pool of 9 blocks: a finished sequence's slot and blocks
// are taken at once by the next. Every 25th sequence's last logits are checked against the sequence
// alone, so reused blocks hold no stale keys; at the end every block is free again.
TEST(CpuBatchBackend, ThousandSequencesLeakNoBlock) {
  const Tiny tiny("llama_gqa_tied");
  const ModelConfig& c = tiny.model.config;
  auto batch = make_cpu_batch_backend(c, tiny.weights, small_batch(6, pool_bytes(c, 9)));
  ASSERT_EQ(batch->free_blocks(), 9);
  BackendOptions options;
  options.n_ctx = 64;
  options.n_threads = 2;
  auto alone = make_cpu_backend(c, tiny.weights, options);
  run_thousand_short_sequences(*batch, *alone);
}

constexpr int32_t kRow0 = 0;

TEST(CpuBatchBackend, RejectsBadStepsChangingNothing) {
  const Tiny tiny("llama_gqa_tied");
  const ModelConfig& c = tiny.model.config;
  const Weights& weights = tiny.weights;
  auto batch = make_cpu_batch_backend(c, weights, small_batch(3));
  ASSERT_TRUE(batch->reserve(0, 20) && batch->reserve(1, 20));
  const BatchToken prompt[] = {{5, 0, 0}, {6, 0, 1}, {7, 1, 0}};
  batch->forward(prompt, 3, nullptr, 0, nullptr);
  std::vector<float> logits(size_t(c.n_vocab));
  auto expect_error = [&](std::vector<BatchToken> rows, const int32_t* logit_rows = &kRow0, int64_t n_logit_rows = 1) {
    EXPECT_THROW(batch->forward(rows.data(), int64_t(rows.size()), logit_rows, n_logit_rows, logits.data()), Error);
  };
  expect_error({{8, 0, 3}});                          // a gap: sequence 0 holds 2 positions
  expect_error({{8, 0, 1}});                          // a rewind
  expect_error({{8, 0, 2}, {9, 0, 4}});               // a gap inside the step
  expect_error({{8, 0, 2}, {9, 1, 1}, {9, 0, 3}});    // sequence 0's rows apart
  expect_error({{int32_t(c.n_vocab), 0, 2}});         // outside the vocabulary
  expect_error({{-1, 0, 2}});
  expect_error({{8, 3, 0}});                          // no such slot
  expect_error({{8, -1, 0}});
  expect_error({{8, 2, 0}});                          // nothing reserved for slot 2
  const int32_t bad_row = 1;
  expect_error({{8, 0, 2}}, &bad_row, 1);             // logits of a row the step lacks
  expect_error({{8, 0, 2}}, nullptr, 1);
  std::vector<BatchToken> long_step;
  for (int32_t p = 2; p < 21; ++p) long_step.push_back({8, 0, p});
  expect_error(long_step);                            // position 20 is past the 20 reserved
  EXPECT_THROW(batch->forward(prompt, 0, nullptr, 0, nullptr), Error);
  EXPECT_THROW(batch->forward(nullptr, 1, nullptr, 0, nullptr), Error);
  // It returns whole rows only: forward_top is refused, naming the backend.
  EXPECT_EQ(batch->max_top_k(), 0);
  try {
    const BatchToken row[] = {{8, 0, 2}};
    (void)batch->forward_top(row, 1, &kRow0, 1, 1);
    ADD_FAILURE() << "the CPU batch backend ran forward_top";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("the CPU batch backend returns whole rows"), std::string::npos) << e.what();
  }

  // None of them changed the cache: the sequences go on from where they were.
  const std::vector<int32_t> a = {5, 6, 8}, b = {7, 9};
  const BatchToken next[] = {{8, 0, 2}, {9, 1, 1}};
  const int32_t both[] = {0, 1};
  std::vector<float> got(2 * size_t(c.n_vocab));
  batch->forward(next, 2, both, 2, got.data());
  const std::vector<float> want_a = alone(c, weights, a), want_b = alone(c, weights, b);
  for (int64_t v = 0; v < c.n_vocab; ++v) {
    ASSERT_NEAR(got[size_t(v)], want_a[size_t(2 * c.n_vocab + v)], 1e-4f);
    ASSERT_NEAR(got[size_t(c.n_vocab + v)], want_b[size_t(c.n_vocab + v)], 1e-4f);
  }
}

TEST(CpuBatchBackend, RefusesEncoders) {
  const Tiny tiny("bert");
  EXPECT_THROW((void)make_cpu_batch_backend(tiny.model.config, tiny.weights, small_batch(2)), Error);
}

int32_t argmax(const float* logits, int64_t n) { return int32_t(std::max_element(logits, logits + n) - logits); }

// Greedy continuations of SmolLM2 (int8, whose activation rounding turns any last-bit difference into
// other tokens within a few dozen): each prompt alone, then all four in one batch, started in different
// steps so prompt chunks run beside decode rows.
TEST(CpuBatchBackend, SmolLM2GreedyTokensAloneAndBatched) {
  KILN_REQUIRE_SMOLLM2(gguf_path);
  testing::TempDir dir;
  const std::string path = dir.file("int8.kiln");
  ConvertOptions convert;
  convert.weight_dtype = DType::I8;
  write_conversion(conversion_from_gguf(GgufFile::open(gguf_path)), path, convert);
  const KilnFile file = KilnFile::open(path);
  const int64_t n_vocab = file.config().n_vocab, n_new = 24;
  const std::vector<std::vector<int32_t>> prompts = {
      {1, 504, 3458, 282, 253, 1345, 28, 2030},
      {1, 9690, 198, 2683, 314, 260, 3575, 282, 4649, 47, 2, 198},
      {1, 504, 1088, 314, 2030, 30},
      {1, 11, 15, 11, 16, 11, 17, 11, 18, 11, 19, 11, 20, 11, 21, 11, 22, 11, 23, 11, 24, 11, 25, 11, 26, 11, 27, 11},
  };
  BatchBackendOptions options;
  options.n_ctx = 128;
  options.max_sequences = 4;
  options.max_step_tokens = 16;  // the long prompt runs in two chunks
  // Alone: one sequence in the batch backend, its prompt in one step.
  std::vector<std::vector<int32_t>> want;
  for (const auto& prompt : prompts) {
    auto alone = make_cpu_batch_backend(file, options);
    const auto n_prompt = int32_t(prompt.size());
    ASSERT_TRUE(alone->reserve(0, n_prompt + n_new));
    std::vector<float> logits(static_cast<size_t>(n_vocab));
    std::vector<int32_t> out;
    for (int32_t start = 0; start < n_prompt; start += 16) {
      std::vector<BatchToken> rows;
      for (int32_t p = start; p < std::min(n_prompt, start + 16); ++p) rows.push_back({prompt[size_t(p)], 0, p});
      const int32_t last = int32_t(rows.size() - 1);
      alone->forward(rows.data(), int64_t(rows.size()), &last, 1, logits.data());
    }
    for (int32_t i = 0; i < n_new; ++i) {
      out.push_back(argmax(logits.data(), n_vocab));
      const BatchToken row = {out.back(), 0, n_prompt + i};
      const int32_t first = 0;
      alone->forward(&row, 1, &first, 1, logits.data());
    }
    want.push_back(out);
  }
  auto batch = make_cpu_batch_backend(file, options);
  std::vector<std::vector<int32_t>> got(prompts.size());
  std::vector<int64_t> fed(prompts.size(), 0);  // prompt tokens run so far
  for (int64_t step = 0; std::any_of(got.begin(), got.end(), [&](const auto& g) { return int64_t(g.size()) < n_new; });
       ++step) {
    std::vector<BatchToken> rows;
    std::vector<int32_t> logit_rows, owner;
    for (size_t s = 0; s < prompts.size(); ++s) {
      if (int64_t(s) * 3 > step || int64_t(got[s].size()) == n_new) continue;  // sequence s starts at step 3 s
      const auto n_prompt = int64_t(prompts[s].size());
      if (fed[s] == 0) {
        ASSERT_TRUE(batch->reserve(int32_t(s), n_prompt + n_new));
      }
      if (fed[s] < n_prompt) {
        const int64_t n = std::min<int64_t>(n_prompt - fed[s], 16 - int64_t(rows.size()));
        for (int64_t i = 0; i < n; ++i, ++fed[s])
          rows.push_back({prompts[s][size_t(fed[s])], int32_t(s), int32_t(fed[s])});
        if (fed[s] < n_prompt) continue;
      } else {
        rows.push_back({got[s].back(), int32_t(s), int32_t(n_prompt + int64_t(got[s].size()) - 1)});
      }
      logit_rows.push_back(int32_t(rows.size() - 1));
      owner.push_back(int32_t(s));
    }
    if (rows.empty()) continue;
    std::vector<float> logits(logit_rows.size() * size_t(n_vocab));
    batch->forward(rows.data(), int64_t(rows.size()), logit_rows.data(), int64_t(logit_rows.size()), logits.data());
    for (size_t l = 0; l < owner.size(); ++l)
      got[size_t(owner[l])].push_back(argmax(logits.data() + l * size_t(n_vocab), n_vocab));
  }
  for (size_t s = 0; s < prompts.size(); ++s) EXPECT_EQ(got[s], want[s]) << "prompt " << s;
}

}  // namespace
}  // namespace kiln::test
