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

// A step's rows: `count` next positions of sequence `seq`.
struct Part {
  int32_t seq;
  int64_t count;
};

// Runs the steps over the sequences' tokens, asking logits for every row in reverse order: by sequence,
// [positions, n_vocab].
inline Logits run_steps(BatchBackend& batch, const std::vector<std::vector<int32_t>>& seqs,
                        const std::vector<std::vector<Part>>& steps) {
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
        rows.push_back({seqs[size_t(part.seq)][size_t(position)], part.seq, int32_t(position)});
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

inline int32_t argmax(const float* logits, int64_t n) { return int32_t(std::max_element(logits, logits + n) - logits); }

// Greedy continuations of several prompts decoded together in one batch backend, the prompts started in
// different steps so that prompt chunks run beside decode rows. step_tokens: the most rows a step takes.
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
          rows.push_back({prompts[s][size_t(fed[s])], int32_t(s), int32_t(fed[s])});
        if (fed[s] < n_prompt) continue;
      } else {
        if (int64_t(rows.size()) == step_tokens) continue;
        rows.push_back({got[s].back(), int32_t(s), int32_t(n_prompt + int64_t(got[s].size()) - 1)});
      }
      logit_rows.push_back(int32_t(rows.size() - 1));
      owner.push_back(int32_t(s));
    }
    if (rows.empty()) continue;
    std::vector<float> logits(logit_rows.size() * size_t(n_vocab));
    batch.forward(rows.data(), int64_t(rows.size()), logit_rows.data(), int64_t(logit_rows.size()), logits.data());
    for (size_t l = 0; l < owner.size(); ++l) {
      const float* row = logits.data() + l * size_t(n_vocab);
      got[size_t(owner[l])].push_back(argmax(row, n_vocab));
      if (all_logits) (*all_logits)[size_t(owner[l])].insert((*all_logits)[size_t(owner[l])].end(), row, row + n_vocab);
    }
  }
  return got;
}

// Greedy on a single-sequence backend: its prompt in one pass, then one token at a time.
inline std::vector<int32_t> greedy_single(Backend& backend, const std::vector<int32_t>& prompt, int64_t n_new) {
  const int64_t n_vocab = backend.config().n_vocab;
  std::vector<float> logits(static_cast<size_t>(n_vocab));
  backend.reset();
  backend.forward(prompt.data(), int64_t(prompt.size()), 0, logits.data(), false);
  std::vector<int32_t> out;
  for (int64_t i = 0; i < n_new; ++i) {
    out.push_back(argmax(logits.data(), n_vocab));
    backend.forward(&out.back(), 1, int64_t(prompt.size()) + i, logits.data(), false);
  }
  return out;
}

}  // namespace kiln::test
