// Greedy decoding on a single-sequence backend, the yardstick the backend tests compare against.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "engine/backend.h"

namespace kiln::test {

inline int32_t argmax(const float* logits, int64_t n) { return int32_t(std::max_element(logits, logits + n) - logits); }

// The prompt in one pass, then n_new tokens one at a time; the logits each token was chosen from are
// appended to *all_logits when given.
inline std::vector<int32_t> greedy_single(Backend& backend, const std::vector<int32_t>& prompt, int64_t n_new,
                                          std::vector<float>* all_logits = nullptr) {
  const int64_t n_vocab = backend.config().n_vocab;
  std::vector<float> logits(static_cast<size_t>(n_vocab));
  backend.reset();
  backend.forward(prompt.data(), int64_t(prompt.size()), 0, logits.data(), false);
  std::vector<int32_t> out;
  for (int64_t i = 0; i < n_new; ++i) {
    if (all_logits) all_logits->insert(all_logits->end(), logits.begin(), logits.end());
    out.push_back(argmax(logits.data(), n_vocab));
    backend.forward(&out.back(), 1, int64_t(prompt.size()) + i, logits.data(), false);
  }
  return out;
}

}  // namespace kiln::test
