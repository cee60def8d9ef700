// Greedy decoding on a single-sequence backend, the yardstick the backend tests compare against.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
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

// Two backends that compute the same model another way give the same greedy tokens, and every step's
// logits within max_share of the logits' scale (their largest magnitude, at least 1).
inline void expect_same_greedy(Backend& a, Backend& b, const std::vector<int32_t>& prompt, int64_t n_new,
                               float max_share) {
  std::vector<float> la, lb;
  EXPECT_EQ(greedy_single(a, prompt, n_new, &la), greedy_single(b, prompt, n_new, &lb));
  ASSERT_EQ(la.size(), lb.size());
  float scale = 1.0f, worst = 0.0f;
  for (size_t i = 0; i < la.size(); ++i) {
    scale = std::max(scale, std::fabs(lb[i]));
    worst = std::max(worst, std::fabs(la[i] - lb[i]));
  }
  std::printf("greedy logits apart by %.2e of their scale %.1f\n", double(worst / scale), double(scale));
  EXPECT_LE(worst, max_share * scale);
}

// Both backends decode `tokens` one at a time, each step fed the same token whatever either would choose:
// every step's logits within max_share of their scale. For computations that round differently enough
// that near ties could part their greedy choices.
inline void expect_close_step_by_step(Backend& a, Backend& b, const std::vector<int32_t>& tokens, float max_share) {
  const auto n_vocab = static_cast<size_t>(a.config().n_vocab);
  std::vector<float> la(n_vocab), lb(n_vocab);
  a.reset();
  b.reset();
  float scale = 1.0f, worst = 0.0f;
  int agree = 0;
  for (size_t i = 0; i < tokens.size(); ++i) {
    a.forward(&tokens[i], 1, int64_t(i), la.data(), false);
    b.forward(&tokens[i], 1, int64_t(i), lb.data(), false);
    for (size_t j = 0; j < n_vocab; ++j) {
      scale = std::max(scale, std::fabs(lb[j]));
      worst = std::max(worst, std::fabs(la[j] - lb[j]));
    }
    agree += argmax(la.data(), int64_t(n_vocab)) == argmax(lb.data(), int64_t(n_vocab)) ? 1 : 0;
  }
  std::printf("step by step: logits apart by %.2e of their scale %.1f, top-1 the same %d/%zu\n", double(worst / scale),
              double(scale), agree, tokens.size());
  EXPECT_LE(worst, max_share * scale);
}

}  // namespace kiln::test
