#include "engine/perplexity.h"

#include <cmath>

#include "engine/error.h"

namespace kiln {

PerplexityResult perplexity(Backend& backend, const std::vector<int32_t>& tokens, int64_t n_ctx, int32_t bos_id,
                            int64_t max_chunks, const std::function<void(int64_t, double)>& on_chunk) {
  KILN_CHECK(n_ctx >= 16 && n_ctx <= backend.n_ctx(), "the perplexity context {} must be in [16, {}]", n_ctx,
             backend.n_ctx());
  int64_t n_chunks = int64_t(tokens.size()) / n_ctx;
  KILN_CHECK(n_chunks > 0, "the text has {} tokens, fewer than one chunk of {}: give a longer text or a smaller -c",
             tokens.size(), n_ctx);
  if (max_chunks > 0) n_chunks = std::min(n_chunks, max_chunks);
  const int64_t n_vocab = backend.config().n_vocab;
  std::vector<float> logits(size_t(n_ctx * n_vocab));
  std::vector<int32_t> chunk(static_cast<size_t>(n_ctx));
  const int64_t first_scored = n_ctx / 2;

  double nll_sum = 0, nll_squares = 0;
  PerplexityResult result;
  for (int64_t c = 0; c < n_chunks; ++c) {
    std::copy_n(tokens.begin() + c * n_ctx, n_ctx, chunk.begin());
    if (bos_id >= 0) chunk[0] = bos_id;
    backend.reset();
    backend.forward(chunk.data(), n_ctx, 0, logits.data(), true);
    for (int64_t i = first_scored; i < n_ctx - 1; ++i) {
      const float* row = logits.data() + i * n_vocab;
      float max_logit = row[0];
      for (int64_t v = 1; v < n_vocab; ++v) max_logit = std::max(max_logit, row[v]);
      double sum = 0;
      for (int64_t v = 0; v < n_vocab; ++v) sum += std::exp(double(row[v] - max_logit));
      const int32_t next = tokens[size_t(c * n_ctx + i + 1)];
      const double nll = -(double(row[next] - max_logit) - std::log(sum));
      nll_sum += nll;
      nll_squares += nll * nll;
      ++result.n_scored;
    }
    result.n_chunks = c + 1;
    if (on_chunk) on_chunk(c, std::exp(nll_sum / double(result.n_scored)));
  }
  const double n = double(result.n_scored);
  const double mean = nll_sum / n;
  const double variance = std::max(0.0, nll_squares / n - mean * mean);
  result.perplexity = std::exp(mean);
  result.error = n > 1 ? result.perplexity * std::sqrt(variance / (n - 1)) : 0;
  return result;
}

}  // namespace kiln
