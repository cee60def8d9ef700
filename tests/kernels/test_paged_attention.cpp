// paged_attention at every CPU level against paged_attention_reference, and the reference against the
// contiguous attention_reference row by row (cases in test_paged_attention_cases.h). Tolerance as in
// test_attention.cpp.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "engine/error.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/paged_attention.h"
#include "tests/kernels/kernel_test_util.h"
#include "tests/kernels/test_paged_attention_cases.h"

namespace kiln {
namespace {

TEST(PagedAttentionReference, MatchesContiguousAttentionRowByRow) {
  uint32_t seed = 1;
  for (const test::PagedCase& c : test::paged_cases()) {
    const test::PagedData d = test::make_paged(c, seed += 7);
    std::vector<float> paged(d.q.size());
    paged_attention_reference(d.q.data(), d.k_pool.data(), d.v_pool.data(), paged.data(), d.p);
    const int64_t width = int64_t(c.n_heads) * c.head_dim;
    for (int64_t r = 0; r < d.p.n_rows; ++r) {
      const size_t s = size_t(d.row_seq[size_t(r)]);
      AttentionParams ap;
      ap.n_tokens = 1;
      ap.first_position = d.row_position[size_t(r)];
      ap.n_heads = c.n_heads;
      ap.n_kv_heads = c.n_kv_heads;
      ap.head_dim = c.head_dim;
      ap.kv_stride = c.seq_lengths[s];
      ap.scale = d.p.scale;
      ap.window = c.window;
      ap.alibi_slopes = d.p.alibi_slopes;
      std::vector<float> want(static_cast<size_t>(width));
      attention_reference(d.q.data() + r * width, d.k_seq[s].data(), d.v_seq[s].data(), want.data(), ap);
      for (int64_t i = 0; i < width; ++i) ASSERT_NEAR(paged[size_t(r * width + i)], want[size_t(i)], 1e-6) << r;
    }
  }
}

class PagedAttentionLevel : public testing::TestWithParam<CpuLevel> {};

TEST_P(PagedAttentionLevel, MatchesReference) {
  uint32_t seed = 3;
  for (int threads : {1, 2, 3}) {
    ThreadPool pool(threads);
    for (const test::PagedCase& c : test::paged_cases()) {
      const test::PagedData d = test::make_paged(c, seed += 5);
      std::vector<float> want(d.q.size()), got(d.q.size(), NAN);
      paged_attention_reference(d.q.data(), d.k_pool.data(), d.v_pool.data(), want.data(), d.p);
      paged_attention(d.q.data(), d.k_pool.data(), d.v_pool.data(), got.data(), d.p, pool, GetParam());
      const double tol = test::paged_tolerance(c.head_dim);
      for (size_t i = 0; i < want.size(); ++i)
        ASSERT_NEAR(got[i], want[i], tol) << "threads " << threads << " heads " << c.n_heads << "/" << c.n_kv_heads
                                          << " dim " << c.head_dim << " block " << c.block_positions << " at " << i;
    }
  }
}

// Each row alone on one thread gives the bits it gets among all rows on three.
TEST_P(PagedAttentionLevel, RowsDoNotDependOnTheRestOfTheCall) {
  ThreadPool one(1), three(3);
  uint32_t seed = 50;
  for (const test::PagedCase& c : test::paged_cases()) {
    const test::PagedData d = test::make_paged(c, seed += 5);
    std::vector<float> all(d.q.size()), alone(d.q.size());
    paged_attention(d.q.data(), d.k_pool.data(), d.v_pool.data(), all.data(), d.p, three, GetParam());
    const int64_t width = int64_t(c.n_heads) * c.head_dim;
    for (int64_t r = 0; r < d.p.n_rows; ++r) {
      PagedAttentionParams p = d.p;
      p.n_rows = 1;
      p.row_seq += r;
      p.row_position += r;
      paged_attention(d.q.data() + r * width, d.k_pool.data(), d.v_pool.data(), alone.data() + r * width, p, one,
                      GetParam());
    }
    ASSERT_EQ(all, alone) << "heads " << c.n_heads << "/" << c.n_kv_heads << " block " << c.block_positions;
  }
}

INSTANTIATE_TEST_SUITE_P(Levels, PagedAttentionLevel, testing::ValuesIn(test::levels()), test::level_name);

TEST(PagedAttention, RejectsBadParams) {
  ThreadPool pool(1);
  test::PagedData d = test::make_paged({4, 2, 8, 4, {9, 3}, {2, 1}, 0, false}, 4);
  std::vector<float> out(d.q.size());
  auto expect_error = [&](const PagedAttentionParams& p) {
    EXPECT_THROW(paged_attention(d.q.data(), d.k_pool.data(), d.v_pool.data(), out.data(), p, pool), Error);
  };
  PagedAttentionParams p = d.p;
  p.n_kv_heads = 3;
  expect_error(p);
  p = d.p;
  p.block_positions = 0;
  expect_error(p);
  p = d.p;
  p.window = -1;
  expect_error(p);
  p = d.p;
  p.n_seqs = 1;  // row 2 is of sequence 1
  expect_error(p);
  std::vector<int32_t> positions = d.row_position;
  positions[0] = 12;  // past the sequence's 3 blocks of 4
  p = d.p;
  p.row_position = positions.data();
  expect_error(p);
  positions[0] = d.row_position[0];
  positions[2] = 4;  // sequence 1 has no block 1 (-1 in the table)
  expect_error(p);
  std::vector<int32_t> table = d.table;
  table[0] = int32_t(d.p.n_blocks);
  p = d.p;
  p.block_table = table.data();
  expect_error(p);
}

}  // namespace
}  // namespace kiln
