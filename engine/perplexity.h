// Perplexity as llama.cpp computes it: the text is cut into chunks of n_ctx tokens, each evaluated from
// an empty cache (its first token replaced by BOS where the model adds one), and only the second half of
// each chunk is scored, so every scored token has at least n_ctx/2 tokens of context.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "engine/backend.h"

namespace kiln {

struct PerplexityResult {
  double perplexity = 0;
  double error = 0;      // standard error of the estimate
  int64_t n_chunks = 0;
  int64_t n_scored = 0;  // tokens whose probability was scored
};

// tokens: the whole text; bos_id < 0: keep each chunk's first token. on_chunk(chunk, running ppl).
[[nodiscard]] PerplexityResult perplexity(Backend& backend, const std::vector<int32_t>& tokens, int64_t n_ctx,
                                          int32_t bos_id, int64_t max_chunks,
                                          const std::function<void(int64_t, double)>& on_chunk = {});

}  // namespace kiln
