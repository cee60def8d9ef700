// The k best logits of rows of a forward step (ties to the lower id), in any order within a row: all that a
// sampler drawing from no others needs (Sampler::top_needed). A GPU backend returns them instead of whole
// rows, so that a step copies kilobytes rather than the vocabulary and the host sorts k values.
#pragma once

#include <cstddef>
#include <cstdint>

namespace kiln {

inline constexpr int64_t kMaxTopLogits = 256;  // the k a GPU backend's forward_top takes at most

struct TopLogits {
  int64_t k = 0;
  const float* logits = nullptr;           // [n_rows, k]
  const int32_t* ids = nullptr;            // [n_rows, k] the token each of logits is
  const int32_t* first_invalid = nullptr;  // [n_rows] the row's first NaN or +inf logit, -1 when none
};

// 32-bit words of n_rows rows' k best as a GPU backend lays them out: [logits n_rows x k][ids n_rows x k]
// [first_invalid n_rows].
inline size_t top_logits_words(int64_t n_rows, int64_t k) { return size_t(n_rows) * size_t(2 * k + 1); }

// The rows of words laid out so.
inline TopLogits top_logits_view(const float* words, int64_t n_rows, int64_t k) {
  const auto n = size_t(n_rows * k);
  const auto* ints = reinterpret_cast<const int32_t*>(words);
  return {k, words, ints + n, ints + 2 * n};
}

}  // namespace kiln
