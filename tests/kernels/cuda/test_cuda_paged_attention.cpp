// cuda::paged_attention against paged_attention_reference (double precision) over the CPU test's cases
// (tests/kernels/test_paged_attention_cases.h: GQA 1/3/8, head_dim 7..128, block sizes 1..32, windows,
// ALiBi, prompt chunks beside decode rows, sequences of 1500 keys) and decode batches of a 7B, an 8B and
// SmolLM2 shape plus GQA groups past 8 heads; f32 and f16 pools (the reference reads the f16 values), one
// block a row or the keys split in chunks; each row bit for bit the same alone. Tolerance: the CPU kernels' bound, doubled for exp2f and the merge.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "engine/error.h"
#include "kernels/cpu/paged_attention.h"
#include "kernels/cuda/paged_attention.h"
#include "tests/kernels/cuda/cuda_test_util.h"
#include "tests/kernels/cuda/kv_test_util.h"
#include "tests/kernels/test_paged_attention_cases.h"

namespace kiln {
namespace {

using cuda::KvDType;

struct DeviceCase {
  cuda::DeviceBuffer q, k_pool, v_pool, table, row_seq, row_position, slopes, out, partial;
  cuda::PagedAttentionArgs args;
};

// d's pools are rounded to dtype first (the reference then reads what the device holds).
DeviceCase upload(test::PagedData& d, KvDType dtype, bool split) {
  test::round_to_kv(d.k_pool, dtype);
  test::round_to_kv(d.v_pool, dtype);
  DeviceCase c;
  c.q = test::to_device(d.q);
  c.k_pool = test::kv_to_device(d.k_pool, dtype);
  c.v_pool = test::kv_to_device(d.v_pool, dtype);
  c.table = test::to_device(d.table);
  c.row_seq = test::to_device(d.row_seq);
  c.row_position = test::to_device(d.row_position);
  c.slopes = test::to_device(d.slopes);
  c.out = cuda::DeviceBuffer(d.q.size() * sizeof(float));
  cuda::PagedAttentionArgs& a = c.args;
  a.kv.k_pool = c.k_pool.data();
  a.kv.v_pool = c.v_pool.data();
  a.kv.block_table = c.table.as<int32_t>();
  a.kv.max_blocks_per_seq = d.p.max_blocks_per_seq;
  a.kv.block_positions = d.p.block_positions;
  a.kv.n_kv_heads = d.p.n_kv_heads;
  a.kv.head_dim = d.p.head_dim;
  a.kv.dtype = dtype;
  a.q = c.q.as<float>();
  a.out = c.out.as<float>();
  a.row_seq = c.row_seq.as<int32_t>();
  a.row_position = c.row_position.as<int32_t>();
  a.n_rows = d.p.n_rows;
  a.n_heads = d.p.n_heads;
  a.scale = d.p.scale;
  a.window = d.p.window;
  a.alibi_slopes = d.slopes.empty() ? nullptr : c.slopes.as<float>();
  if (split) {
    const size_t n = cuda::paged_attention_partial_floats(a.n_rows, a.n_heads, a.kv.head_dim,
                                                          a.kv.max_blocks_per_seq * a.kv.block_positions);
    c.partial = test::to_device(std::vector<float>(n, NAN));  // a split the merge should skip poisons the output
    a.partial = n > 0 ? c.partial.as<float>() : nullptr;
  }
  return c;
}

// Decode batches of model shapes (one new row a sequence) and GQA groups of more than 8 query heads.
const std::vector<test::PagedCase>& model_cases() {
  static const std::vector<test::PagedCase> all = {
      {32, 32, 128, 16, {1000, 300, 257, 17, 1}, {1, 1, 1, 1, 1}, 0, false},
      {32, 8, 128, 16, {600, 1, 256, 513}, {1, 1, 1, 1}, 0, false},
      {9, 3, 64, 16, {1100, 5, 128, 129, 700, 64, 900, 2}, {1, 1, 1, 1, 1, 1, 1, 1}, 0, false},
      {9, 3, 64, 16, {1100, 520}, {1, 1}, 300, true},
      {16, 1, 64, 16, {300, 40}, {2, 1}, 0, true},
      {24, 2, 96, 8, {260, 9}, {1, 3}, 0, false},
  };
  return all;
}

void check_cases(const std::vector<test::PagedCase>& cases, KvDType dtype, bool split, uint32_t seed) {
  for (const test::PagedCase& c : cases) {
    SCOPED_TRACE(testing::Message() << "heads " << c.n_heads << "/" << c.n_kv_heads << " dim " << c.head_dim
                                    << " block " << c.block_positions << " " << test::kv_name(dtype)
                                    << (split ? " split" : " one block a row"));
    test::PagedData d = test::make_paged(c, seed += 5);
    DeviceCase dev = upload(d, dtype, split);
    std::vector<float> want(d.q.size());
    paged_attention_reference(d.q.data(), d.k_pool.data(), d.v_pool.data(), want.data(), d.p);
    cuda::paged_attention(dev.args);
    const std::vector<float> got = test::to_host<float>(dev.out, d.q.size());
    const double tol = 2 * test::paged_tolerance(c.head_dim);
    for (size_t i = 0; i < want.size(); ++i) ASSERT_NEAR(got[i], want[i], tol) << "at " << i;

    // Each row alone gives the same bits.
    const int64_t width = int64_t(c.n_heads) * c.head_dim;
    for (int64_t r = 0; r < d.p.n_rows; ++r) {
      cuda::PagedAttentionArgs one = dev.args;
      one.n_rows = 1;
      one.q += r * width;
      one.row_seq += r;
      one.row_position += r;
      cuda::DeviceBuffer out(size_t(width) * sizeof(float));
      one.out = out.as<float>();
      const int64_t max_keys = one.kv.max_blocks_per_seq * one.kv.block_positions;
      const size_t n_partial = cuda::paged_attention_partial_floats(1, c.n_heads, c.head_dim, max_keys);
      cuda::DeviceBuffer partial(std::max<size_t>(n_partial, 1) * sizeof(float));
      if (one.partial != nullptr) one.partial = partial.as<float>();
      cuda::paged_attention(one);
      const std::vector<float> alone = test::to_host<float>(out, size_t(width));
      ASSERT_EQ(alone, std::vector<float>(got.begin() + r * width, got.begin() + (r + 1) * width)) << "row " << r;
    }

    // A bound on the positions (fewer split blocks) changes no bit.
    if (split) {
      cuda::PagedAttentionArgs bounded = dev.args;
      bounded.max_keys = *std::max_element(d.row_position.begin(), d.row_position.end()) + 1;
      cuda::DeviceBuffer out(got.size() * sizeof(float));
      bounded.out = out.as<float>();
      cuda::paged_attention(bounded);
      ASSERT_EQ(test::to_host<float>(out, got.size()), got) << "with max_keys " << bounded.max_keys;
    }
  }
}

TEST(CudaPagedAttention, MatchesReference) {
  KILN_REQUIRE_GPU();
  for (KvDType dtype : {KvDType::F32, KvDType::F16})
    for (bool split : {false, true}) check_cases(test::paged_cases(), dtype, split, 3);
}

TEST(CudaPagedAttention, ModelDecodeBatches) {
  KILN_REQUIRE_GPU();
  for (KvDType dtype : {KvDType::F32, KvDType::F16})
    for (bool split : {false, true}) check_cases(model_cases(), dtype, split, 500);
}

TEST(CudaPagedAttention, RejectsBadArgs) {
  cuda::PagedAttentionArgs a;
  a.n_rows = 1;
  EXPECT_THROW(cuda::paged_attention(a), Error);  // null pool and table
  a.n_rows = -1;
  EXPECT_THROW(cuda::paged_attention(a), Error);
}

}  // namespace
}  // namespace kiln
