// Checks a backend's forward_top against the whole row its forward returns.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <numeric>
#include <vector>

#include "engine/top_logits.h"

namespace kiln::test {

// A row's k best (ties to the lower id) from forward_top are those of the row forward returns, bit for bit.
inline void expect_best_of(const TopLogits& top, size_t row, const float* whole, int64_t n_vocab) {
  const auto k = size_t(top.k);
  ASSERT_EQ(top.first_invalid[row], -1);
  std::vector<int32_t> want(static_cast<size_t>(n_vocab));
  std::iota(want.begin(), want.end(), 0);
  std::stable_sort(want.begin(), want.end(), [&](int32_t a, int32_t b) { return whole[a] > whole[b]; });
  want.resize(k);
  std::sort(want.begin(), want.end());
  std::vector<int32_t> got(top.ids + row * k, top.ids + (row + 1) * k);
  for (size_t i = 0; i < k; ++i) {
    ASSERT_TRUE(got[i] >= 0 && got[i] < n_vocab) << got[i];
    ASSERT_EQ(std::memcmp(&top.logits[row * k + i], &whole[got[i]], sizeof(float)), 0) << "token " << got[i];
  }
  std::sort(got.begin(), got.end());
  EXPECT_EQ(got, want);
}

}  // namespace kiln::test
