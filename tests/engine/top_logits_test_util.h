// Checks a backend's forward_top against the whole row its forward returns, and cuts rows as a test
// backend's forward_top does.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <vector>

#include "engine/top_logits.h"

namespace kiln::test {

// The ids of a row of finite logits, best first, ties to the lower id (a full stable sort).
inline std::vector<int32_t> best_first(const float* row, int64_t n_vocab) {
  std::vector<int32_t> order(static_cast<size_t>(n_vocab));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return row[a] > row[b]; });
  return order;
}

// What a test backend's forward_top returns for one row: its first NaN or +inf logit, or else -1 and its
// k best written to ids and logits [k], worst first (any order is allowed; this one is not the sort's).
inline int32_t reference_best(const float* row, int64_t n_vocab, int64_t k, int32_t* ids, float* logits) {
  for (int64_t i = 0; i < n_vocab; ++i)
    if (!(row[i] < INFINITY)) return int32_t(i);  // a NaN has no place in the order
  const std::vector<int32_t> order = best_first(row, n_vocab);
  for (int64_t i = 0; i < k; ++i) {
    ids[i] = order[size_t(k - 1 - i)];
    logits[i] = row[ids[i]];
  }
  return -1;
}

// A row's k best (ties to the lower id) from forward_top are those of the row forward returns, bit for bit.
inline void expect_best_of(const TopLogits& top, size_t row, const float* whole, int64_t n_vocab) {
  const auto k = size_t(top.k);
  ASSERT_EQ(top.first_invalid[row], -1);
  std::vector<int32_t> want = best_first(whole, n_vocab);
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
