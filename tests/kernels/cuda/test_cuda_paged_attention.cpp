// cuda::paged_attention against paged_attention_reference (double precision) over the CPU test's cases
// (tests/kernels/test_paged_attention_cases.h): GQA 1/3/8, head_dim 7..128, block sizes 1..32, windows,
// ALiBi, prompt chunks beside decode rows, sequences of 1500 keys; each row bit for bit the same alone;
// and cuda::paged_kv_store against the positions it must write. Tolerance: the CPU kernels' bound, doubled
// for exp2f.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "engine/error.h"
#include "kernels/cpu/paged_attention.h"
#include "kernels/cuda/paged_attention.h"
#include "tests/kernels/cuda/cuda_test_util.h"
#include "tests/kernels/test_paged_attention_cases.h"

namespace kiln {
namespace {

struct DeviceCase {
  cuda::DeviceBuffer q, k_pool, v_pool, table, row_seq, row_position, slopes, out;
  cuda::PagedAttentionArgs args;
};

DeviceCase upload(const test::PagedData& d) {
  DeviceCase c;
  c.q = test::to_device(d.q);
  c.k_pool = test::to_device(d.k_pool);
  c.v_pool = test::to_device(d.v_pool);
  c.table = test::to_device(d.table);
  c.row_seq = test::to_device(d.row_seq);
  c.row_position = test::to_device(d.row_position);
  c.slopes = test::to_device(d.slopes);
  c.out = cuda::DeviceBuffer(d.q.size() * sizeof(float));
  cuda::PagedAttentionArgs& a = c.args;
  a.kv.k_pool = c.k_pool.as<float>();
  a.kv.v_pool = c.v_pool.as<float>();
  a.kv.block_table = c.table.as<int32_t>();
  a.kv.max_blocks_per_seq = d.p.max_blocks_per_seq;
  a.kv.block_positions = d.p.block_positions;
  a.kv.n_kv_heads = d.p.n_kv_heads;
  a.kv.head_dim = d.p.head_dim;
  a.q = c.q.as<float>();
  a.out = c.out.as<float>();
  a.row_seq = c.row_seq.as<int32_t>();
  a.row_position = c.row_position.as<int32_t>();
  a.n_rows = d.p.n_rows;
  a.n_heads = d.p.n_heads;
  a.scale = d.p.scale;
  a.window = d.p.window;
  a.alibi_slopes = d.slopes.empty() ? nullptr : c.slopes.as<float>();
  return c;
}

TEST(CudaPagedAttention, MatchesReference) {
  KILN_REQUIRE_GPU();
  uint32_t seed = 3;
  for (const test::PagedCase& c : test::paged_cases()) {
    const test::PagedData d = test::make_paged(c, seed += 5);
    std::vector<float> want(d.q.size());
    paged_attention_reference(d.q.data(), d.k_pool.data(), d.v_pool.data(), want.data(), d.p);
    DeviceCase dev = upload(d);
    cuda::paged_attention(dev.args);
    const std::vector<float> got = test::to_host<float>(dev.out, d.q.size());
    const double tol = 2 * test::paged_tolerance(c.head_dim);
    for (size_t i = 0; i < want.size(); ++i)
      ASSERT_NEAR(got[i], want[i], tol) << "heads " << c.n_heads << "/" << c.n_kv_heads << " dim " << c.head_dim
                                        << " block " << c.block_positions << " at " << i;

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
      cuda::paged_attention(one);
      const std::vector<float> alone = test::to_host<float>(out, size_t(width));
      ASSERT_EQ(alone, std::vector<float>(got.begin() + r * width, got.begin() + (r + 1) * width)) << "row " << r;
    }
  }
}

TEST(CudaPagedAttention, StoreWritesEachRowToItsBlock) {
  KILN_REQUIRE_GPU();
  // Two sequences in blocks of 4; rows: sequence 1 at positions 5..6, sequence 0 at position 2, with
  // strided rows as the fused QKV projection gives them.
  const int kv_heads = 2, hd = 3, bs = 4, stride = 10;
  const std::vector<int32_t> table = {3, -1, 0, 2}, row_seq = {1, 1, 0}, row_position = {5, 6, 2};
  const auto k = test::random_floats(3 * stride, 1), v = test::random_floats(3 * stride, 2);
  std::vector<float> pool(size_t(4 * kv_heads * bs * hd), NAN);
  auto k_pool = test::to_device(pool), v_pool = test::to_device(pool);
  auto d_table = test::to_device(table), d_seq = test::to_device(row_seq), d_pos = test::to_device(row_position);
  auto d_k = test::to_device(k), d_v = test::to_device(v);
  cuda::PagedKvStoreArgs a;
  a.kv.k_pool = k_pool.as<float>();
  a.kv.v_pool = v_pool.as<float>();
  a.kv.block_table = d_table.as<int32_t>();
  a.kv.max_blocks_per_seq = 2;
  a.kv.block_positions = bs;
  a.kv.n_kv_heads = kv_heads;
  a.kv.head_dim = hd;
  a.k = d_k.as<float>();
  a.k_stride = stride;
  a.v = d_v.as<float>();
  a.v_stride = stride;
  a.row_seq = d_seq.as<int32_t>();
  a.row_position = d_pos.as<int32_t>();
  a.n_rows = 3;
  cuda::paged_kv_store(a);
  const auto got_k = test::to_host<float>(k_pool, pool.size()), got_v = test::to_host<float>(v_pool, pool.size());
  std::vector<float> want_k = pool, want_v = pool;
  for (int r = 0; r < 3; ++r) {
    const int block = table[size_t(row_seq[size_t(r)] * 2 + row_position[size_t(r)] / bs)];
    for (int g = 0; g < kv_heads; ++g)
      for (int i = 0; i < hd; ++i) {
        const auto at = size_t(((block * kv_heads + g) * bs + row_position[size_t(r)] % bs) * hd + i);
        want_k[at] = k[size_t(r * stride + g * hd + i)];
        want_v[at] = v[size_t(r * stride + g * hd + i)];
      }
  }
  for (size_t i = 0; i < pool.size(); ++i) {
    EXPECT_TRUE(std::isnan(want_k[i]) ? std::isnan(got_k[i]) : got_k[i] == want_k[i]) << i;
    EXPECT_TRUE(std::isnan(want_v[i]) ? std::isnan(got_v[i]) : got_v[i] == want_v[i]) << i;
  }
}

TEST(CudaPagedAttention, RejectsBadArgs) {
  cuda::PagedAttentionArgs a;
  a.n_rows = 1;
  EXPECT_THROW(cuda::paged_attention(a), Error);  // null pool and table
  a.n_rows = -1;
  EXPECT_THROW(cuda::paged_attention(a), Error);
  cuda::PagedKvStoreArgs s;
  s.n_rows = 2;
  s.kv.head_dim = 300;
  EXPECT_THROW(cuda::paged_kv_store(s), Error);
}

}  // namespace
}  // namespace kiln
