// Test helpers for batched generation: a byte-level tokenizer for the tiny models, a varied set of
// requests, a scheduler run to the end, and Generator run alone on one request as the reference.
#pragma once

#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "engine/backend.h"
#include "engine/batch_scheduler.h"
#include "engine/error.h"
#include "engine/generator.h"
#include "tokenizer/bpe_tokenizer.h"
#include "tokenizer/utf8.h"

namespace kiln::test {

// The 256 byte tokens of byte-level BPE and no merges; eos_id < 0: no end-of-turn token.
inline std::unique_ptr<Tokenizer> byte_tokenizer(int32_t eos_id) {
  TokenizerData d;
  d.kind = TokenizerKind::BytePairGpt2;
  for (int b = 0; b < 256; ++b) {
    std::string piece;
    utf8_append(piece, byte_to_unicode(uint8_t(b)));
    d.tokens.push_back(piece);
  }
  d.eos_id = eos_id;
  if (eos_id >= 0) d.eos_ids = {eos_id};
  return make_tokenizer(d);
}

// n requests with prompts of 1..20 tokens, 1..24 new tokens, greedy (even index) or sampled with its
// own seed, some with a repeat penalty.
inline std::vector<BatchRequest> mixed_requests(int n, int64_t n_vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<BatchRequest> out;
  for (int i = 0; i < n; ++i) {
    BatchRequest r;
    r.index = i;
    r.prompt.resize(1 + rng() % 20);
    for (int32_t& t : r.prompt) t = int32_t(3 + rng() % uint32_t(n_vocab - 3));
    r.max_tokens = 1 + rng() % 24;
    r.sampling.temperature = i % 2 == 0 ? 0.0f : 0.9f;
    r.sampling.seed = rng();
    if (i % 3 == 1) r.sampling.repeat_penalty = 1.3f;
    out.push_back(r);
  }
  return out;
}

// Submits every request, steps until idle; each request must come back exactly once.
inline std::map<int64_t, BatchResult> run_all(BatchScheduler& scheduler, const std::vector<BatchRequest>& requests) {
  for (const BatchRequest& r : requests) scheduler.submit(r);
  std::map<int64_t, BatchResult> results;
  for (int guard = 0; !scheduler.idle() && guard < 100000; ++guard)
    for (BatchResult& r : scheduler.step()) {
      EXPECT_FALSE(results.count(r.index)) << "request " << r.index << " finished twice";
      results[r.index] = std::move(r);
    }
  EXPECT_TRUE(scheduler.idle());
  EXPECT_EQ(results.size(), requests.size());
  return results;
}

struct AloneResult {
  std::string text;
  std::vector<int32_t> tokens;  // the generated tokens that were run (all but an end-of-turn)
  int64_t n_generated = 0;
  FinishReason finish = FinishReason::Length;
  std::string error;
};

// The reference: Generator on a fresh single-sequence backend.
inline AloneResult run_alone(Backend& backend, const Tokenizer& tokenizer, const BatchRequest& request) {
  AloneResult out;
  try {
    Generator generator(backend, tokenizer, request.sampling);
    GenerationRequest g{request.prompt, request.max_tokens, request.stops};
    GenerationStats stats;
    out.finish = generator.generate(g, [&](std::string_view text) { out.text += text; }, &stats);
    out.n_generated = stats.n_generated;
    out.tokens.assign(generator.context().begin() + ptrdiff_t(request.prompt.size()), generator.context().end());
  } catch (const Error& e) {
    out.error = e.what();
  }
  return out;
}

inline void expect_same(const BatchResult& batch, const AloneResult& alone) {
  ASSERT_TRUE(alone.error.empty()) << alone.error;
  ASSERT_TRUE(batch.error.empty()) << batch.error;
  EXPECT_EQ(batch.text, alone.text);
  EXPECT_EQ(batch.n_generated, alone.n_generated);
  EXPECT_EQ(to_string(batch.finish), to_string(alone.finish));
  EXPECT_EQ(int(batch.finish), int(alone.finish));
}

}  // namespace kiln::test
