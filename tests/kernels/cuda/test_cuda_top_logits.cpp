// cuda::top_logits against a full stable sort of each row's ids by logit: exactly the same k best (ties to
// the lower id, -0 tying +0), over vocabularies from 1 to 151,936, k from 1 to the vocabulary, rows of ties,
// of masked tokens, of extreme and subnormal values; and the first NaN or +inf of a row found.
#include <gtest/gtest.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "engine/error.h"
#include "kernels/cuda/top_logits.h"
#include "tests/kernels/cuda/cuda_test_util.h"

namespace kiln {
namespace {

// Row kinds: 0 normal, 1 eight levels (ties everywhere), 2 all -inf, 3 zeros of both signs and a few
// others, 4 extremes and subnormals, 5 all but a few masked, 6 a NaN and a +inf, 7 a +inf alone.
std::vector<float> make_row(int kind, int64_t n_vocab, std::mt19937& rng) {
  std::normal_distribution<float> normal(0.0f, 3.0f);
  std::vector<float> row(static_cast<size_t>(n_vocab));
  for (size_t i = 0; i < row.size(); ++i) {
    const uint32_t r = rng();
    switch (kind) {
      case 1: row[i] = float(r % 8) * 0.5f - 2.0f; break;
      case 2: row[i] = -INFINITY; break;
      case 3: row[i] = r % 3 == 0 ? 0.0f : r % 3 == 1 ? -0.0f : (r % 7 == 0 ? 1.0f : -1.0f); break;
      case 4: {
        const float extremes[] = {FLT_MAX, -FLT_MAX, FLT_MIN, -FLT_MIN, 1e-40f, -1e-40f, -INFINITY, 0.0f};
        row[i] = extremes[r % 8];
        break;
      }
      case 5: row[i] = r % 50 == 0 ? normal(rng) : -INFINITY; break;
      default: row[i] = normal(rng); break;
    }
  }
  if (kind == 6) {
    row[row.size() / 2] = NAN;
    row[row.size() - 1] = INFINITY;
  }
  if (kind == 7) row[row.size() * 2 / 3] = INFINITY;
  return row;
}

int32_t first_invalid(const std::vector<float>& row) {
  for (size_t i = 0; i < row.size(); ++i)
    if (!(row[i] < INFINITY)) return int32_t(i);
  return -1;
}

uint32_t bits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
}

TEST(CudaTopLogits, TheKBestOfEachRowAsAFullSortFindsThem) {
  KILN_REQUIRE_GPU();
  std::mt19937 rng(5);
  const int n_kinds = 8;
  for (const int64_t n_vocab : {int64_t(1), int64_t(100), int64_t(1023), int64_t(32000), int64_t(151936)})
    for (const int64_t k : {int64_t(1), int64_t(40), int64_t(256), n_vocab}) {
      if (k > n_vocab) continue;
      SCOPED_TRACE(testing::Message() << "vocabulary " << n_vocab << ", k " << k);
      const int64_t n_rows = 2 * n_kinds;
      std::vector<float> logits;
      std::vector<std::vector<float>> rows;
      for (int64_t r = 0; r < n_rows; ++r) {
        rows.push_back(make_row(int(r % n_kinds), n_vocab, rng));
        logits.insert(logits.end(), rows.back().begin(), rows.back().end());
      }
      const auto d_logits = test::to_device(logits);
      const auto d_top = test::to_device(std::vector<float>(size_t(n_rows * k), NAN));
      const auto d_ids = test::to_device(std::vector<int32_t>(size_t(n_rows * k), -7));
      const auto d_invalid = test::to_device(std::vector<int32_t>(size_t(n_rows), -7));
      cuda::TopLogitsArgs a;
      a.logits = d_logits.as<float>();
      a.n_rows = n_rows;
      a.n_vocab = n_vocab;
      a.k = k;
      a.top_logits = d_top.as<float>();
      a.top_ids = d_ids.as<int32_t>();
      a.first_invalid = d_invalid.as<int32_t>();
      cuda::top_logits(a);
      const auto top = test::to_host<float>(d_top, size_t(n_rows * k));
      const auto ids = test::to_host<int32_t>(d_ids, size_t(n_rows * k));
      const auto invalid = test::to_host<int32_t>(d_invalid, size_t(n_rows));
      for (int64_t r = 0; r < n_rows; ++r) {
        SCOPED_TRACE(testing::Message() << "row " << r << " (kind " << r % n_kinds << ")");
        const std::vector<float>& row = rows[size_t(r)];
        ASSERT_EQ(invalid[size_t(r)], first_invalid(row));
        if (first_invalid(row) >= 0) continue;  // what a row with a NaN holds is never read
        std::vector<int32_t> want(row.size());
        std::iota(want.begin(), want.end(), 0);
        std::stable_sort(want.begin(), want.end(), [&](int32_t x, int32_t y) { return row[x] > row[y]; });
        want.resize(size_t(k));
        std::sort(want.begin(), want.end());
        std::vector<int32_t> got(ids.begin() + r * k, ids.begin() + (r + 1) * k);
        for (int64_t i = 0; i < k; ++i) {
          const int32_t id = got[size_t(i)];
          ASSERT_TRUE(id >= 0 && id < n_vocab) << "place " << i << " holds " << id;
          ASSERT_EQ(bits(top[size_t(r * k + i)]), bits(row[size_t(id)])) << "the logit beside id " << id;
        }
        std::sort(got.begin(), got.end());
        ASSERT_EQ(got, want);
      }
    }
}

TEST(CudaTopLogits, RejectsBadShapes) {
  KILN_REQUIRE_GPU();
  cuda::TopLogitsArgs a;
  a.n_rows = 1;
  a.n_vocab = 10;
  a.k = 11;
  EXPECT_THROW(cuda::top_logits(a), Error);  // more than the vocabulary
  a.k = 0;
  EXPECT_THROW(cuda::top_logits(a), Error);
  a.k = 3;
  EXPECT_THROW(cuda::top_logits(a), Error);  // null arrays
  a.n_vocab = (int64_t(1) << 24) + 1;
  EXPECT_THROW(cuda::top_logits(a), Error);
}

}  // namespace
}  // namespace kiln
