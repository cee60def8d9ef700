// Helpers of the batch backends' tests (CPU and CUDA): a tiny model with its weights, small backend options,
// random prompts, steps of chosen rows run with every row's logits, greedy decoding of many prompts
// together in a BatchBackend (started in different steps, so prompt chunks run beside decode rows), and
// greedy decoding on a single-sequence Backend as the reference.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <random>
#include <vector>

#include "engine/backend.h"
#include "engine/batch_backend.h"
#include "engine/error.h"
#include "engine/weights.h"
#include "tests/engine/greedy_test_util.h"
#include "tests/engine/tiny_model.h"

namespace kiln::test {

// Logits by sequence: [n_sequences][positions or generated tokens, n_vocab].
using Logits = std::vector<std::vector<float>>;

// A tiny model fixture with its weights bound.
struct Tiny {
  explicit Tiny(const char* name, DType dtype = DType::F32)
      : model(load_tiny_model(name)), store(model, dtype), weights(bind_weights(model.config, store.lookup())) {}
  TinyModel model;
  TensorStore store;
  Weights weights;
};

// Backend options for the tiny models: a 256-position context, steps of up to 128 rows.
inline BatchBackendOptions small_batch(int64_t max_sequences, uint64_t kv_bytes = uint64_t(64) << 20) {
  BatchBackendOptions options;
  options.n_ctx = 256;
  options.max_sequences = max_sequences;
  options.max_step_tokens = 128;
  options.kv_bytes = kv_bytes;
  options.n_threads = 2;
  return options;
}

// A pool of exactly `blocks` blocks of 16 positions for the model (f32 keys and values).
inline uint64_t pool_bytes(const ModelConfig& c, int64_t blocks) {
  return uint64_t(blocks) * 2 * uint64_t(c.n_layers * c.kv_dim()) * 16 * sizeof(float);
}

// A step's rows: `count` next positions of sequence `seq`.
struct Part {
  int32_t seq;
  int64_t count;
};

// Runs the steps over the sequences' tokens, asking logits for every row in reverse order: by sequence,
// [positions, n_vocab]. prompt: the rows of each sequence's first half are flagged prompt rows (a row's flag
// depends on its sequence and position alone, so runs that cut the steps otherwise flag it alike).
inline Logits run_steps(BatchBackend& batch, const std::vector<std::vector<int32_t>>& seqs,
                        const std::vector<std::vector<Part>>& steps, bool prompt = false) {
  const int64_t n_vocab = batch.config().n_vocab;
  Logits out(seqs.size());
  std::vector<int64_t> next(seqs.size(), 0);
  for (size_t s = 0; s < seqs.size(); ++s) {
    EXPECT_TRUE(batch.reserve(int32_t(s), int64_t(seqs[s].size())));
    out[s].resize(seqs[s].size() * size_t(n_vocab));
  }
  for (const auto& step : steps) {
    std::vector<BatchToken> rows;
    for (const Part& part : step)
      for (int64_t r = 0; r < part.count; ++r) {
        const int64_t position = next[size_t(part.seq)]++;
        const bool in_prompt = prompt && 2 * position < int64_t(seqs[size_t(part.seq)].size());
        rows.push_back({seqs[size_t(part.seq)][size_t(position)], part.seq, int32_t(position), in_prompt});
      }
    std::vector<int32_t> logit_rows(rows.size());
    for (size_t r = 0; r < rows.size(); ++r) logit_rows[r] = int32_t(rows.size() - 1 - r);
    std::vector<float> logits(rows.size() * size_t(n_vocab));
    batch.forward(rows.data(), int64_t(rows.size()), logit_rows.data(), int64_t(rows.size()), logits.data());
    for (size_t l = 0; l < rows.size(); ++l) {
      const BatchToken& row = rows[size_t(logit_rows[l])];
      std::copy_n(logits.data() + l * size_t(n_vocab), n_vocab,
                  out[size_t(row.seq)].data() + size_t(row.position) * size_t(n_vocab));
    }
  }
  return out;
}

inline std::vector<int32_t> random_tokens(int64_t n, int64_t n_vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> dist(0, int32_t(n_vocab - 1));
  std::vector<int32_t> tokens(static_cast<size_t>(n));
  for (auto& t : tokens) t = dist(rng);
  return tokens;
}

// 1,000 short sequences (1 to 40 tokens) through the batch backend's slots: a finished sequence's slot
// and blocks are taken at once by the next. Every 25th sequence's last logits are checked (1e-4) against
// `alone` (a single-sequence backend) running it from position 0, so reused blocks hold no stale keys;
// at the end every block is free again.
inline void run_thousand_short_sequences(BatchBackend& batch, Backend& alone) {
  const int64_t n_vocab = batch.config().n_vocab;
  const int64_t start_free = batch.free_blocks();
  std::mt19937 rng(7);
  struct Running {
    int64_t id = -1;
    std::vector<int32_t> tokens;
    int64_t done = 0;
  };
  std::vector<Running> slots(size_t(batch.max_sequences()));
  int64_t started = 0, finished = 0, checked = 0;
  std::vector<float> logits, want(static_cast<size_t>(n_vocab));
  while (finished < 1000) {
    for (size_t s = 0; s < slots.size(); ++s) {  // refill free slots while blocks last
      if (slots[s].id >= 0 || started == 1000) continue;
      const int64_t length = std::uniform_int_distribution<int64_t>(1, 40)(rng);
      if (!batch.reserve(int32_t(s), length)) break;
      slots[s] = {started, random_tokens(length, n_vocab, uint32_t(1000 + started)), 0};
      ++started;
    }
    std::vector<BatchToken> rows;
    std::vector<int32_t> logit_rows;
    for (size_t s = 0; s < slots.size(); ++s) {
      Running& run = slots[s];
      if (run.id < 0) continue;
      const int64_t n = std::min<int64_t>(run.done == 0 ? 7 : 1, int64_t(run.tokens.size()) - run.done);
      for (int64_t i = 0; i < n; ++i, ++run.done)
        rows.push_back({run.tokens[size_t(run.done)], int32_t(s), int32_t(run.done)});
      if (run.done == int64_t(run.tokens.size()) && run.id % 25 == 0) logit_rows.push_back(int32_t(rows.size() - 1));
    }
    ASSERT_FALSE(rows.empty());
    logits.resize(logit_rows.size() * size_t(n_vocab));
    batch.forward(rows.data(), int64_t(rows.size()), logit_rows.data(), int64_t(logit_rows.size()), logits.data());
    for (size_t l = 0; l < logit_rows.size(); ++l) {
      const Running& run = slots[size_t(rows[size_t(logit_rows[l])].seq)];
      alone.forward(run.tokens.data(), int64_t(run.tokens.size()), 0, want.data(), false);
      for (int64_t v = 0; v < n_vocab; ++v)
        ASSERT_NEAR(logits[l * size_t(n_vocab) + size_t(v)], want[size_t(v)], 1e-4f) << "sequence " << run.id;
      ++checked;
    }
    for (size_t s = 0; s < slots.size(); ++s)
      if (slots[s].id >= 0 && slots[s].done == int64_t(slots[s].tokens.size())) {
        batch.release(int32_t(s));
        slots[s].id = -1;
        ++finished;
      }
  }
  EXPECT_EQ(checked, 40);
  EXPECT_EQ(batch.free_blocks(), start_free);
}

// Greedy continuations of several prompts decoded together in one batch backend, the prompts started in
// different steps so that prompt chunks (rows flagged prompt) run beside decode rows; the logits go to the backend's
// logits_buffer(). step_tokens: the most rows a step takes.
// all_logits, when given, receives each prompt's logits of every generated token.
inline std::vector<std::vector<int32_t>> greedy_batched(BatchBackend& batch,
                                                        const std::vector<std::vector<int32_t>>& prompts, int64_t n_new,
                                                        int64_t step_tokens, Logits* all_logits = nullptr) {
  const int64_t n_vocab = batch.config().n_vocab;
  std::vector<std::vector<int32_t>> got(prompts.size());
  if (all_logits) all_logits->assign(prompts.size(), {});
  std::vector<int64_t> fed(prompts.size(), 0);  // prompt tokens run so far
  auto unfinished = [&] {
    return std::any_of(got.begin(), got.end(), [&](const auto& g) { return int64_t(g.size()) < n_new; });
  };
  for (int64_t step = 0; unfinished(); ++step) {
    std::vector<BatchToken> rows;
    std::vector<int32_t> logit_rows, owner;
    for (size_t s = 0; s < prompts.size(); ++s) {
      if (int64_t(s) * 2 > step || int64_t(got[s].size()) == n_new) continue;  // prompt s starts at step 2 s
      const auto n_prompt = int64_t(prompts[s].size());
      if (fed[s] == 0 && !batch.reserve(int32_t(s), n_prompt + n_new)) throw Error("the KV pool is too small");
      if (fed[s] < n_prompt) {
        const int64_t n = std::min<int64_t>(n_prompt - fed[s], step_tokens - int64_t(rows.size()));
        for (int64_t i = 0; i < n; ++i, ++fed[s])
          rows.push_back({prompts[s][size_t(fed[s])], int32_t(s), int32_t(fed[s]), true});
        if (fed[s] < n_prompt) continue;
      } else {
        if (int64_t(rows.size()) == step_tokens) continue;
        rows.push_back({got[s].back(), int32_t(s), int32_t(n_prompt + int64_t(got[s].size()) - 1)});
      }
      logit_rows.push_back(int32_t(rows.size() - 1));
      owner.push_back(int32_t(s));
    }
    if (rows.empty()) continue;
    float* logits = batch.logits_buffer(int64_t(logit_rows.size()));  // the backend's own (pinned on a GPU)
    batch.forward(rows.data(), int64_t(rows.size()), logit_rows.data(), int64_t(logit_rows.size()), logits);
    for (size_t l = 0; l < owner.size(); ++l) {
      const float* row = logits + l * size_t(n_vocab);
      got[size_t(owner[l])].push_back(argmax(row, n_vocab));
      if (all_logits) (*all_logits)[size_t(owner[l])].insert((*all_logits)[size_t(owner[l])].end(), row, row + n_vocab);
    }
  }
  return got;
}

}  // namespace kiln::test
