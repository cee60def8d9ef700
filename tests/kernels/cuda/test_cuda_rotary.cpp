// cuda::rotary_kv_append against rotary_reference (double precision) followed by a plain KV append:
// queries to q_out, rotated keys to the cache (and k_out), values to the cache, nothing else written;
// f32, f16 and fp8 caches. Both compute the angle, cosine and sine in double; the rotation is f32 here and
// double in the reference, so |out - ref| <= 3 u (|a| + |b|) for the pair (a, b); copied values are
// exact. An f16 or fp8 cache holds the rounded result: one rounding more for keys, a value exactly the
// rounding of its input (fp8 from its definition: kv_test_util.h).
// cuda::paged_rotary_kv_store likewise, rows of several sequences at their own positions, into a paged
// pool (f32, f16 and fp8), the queries rotated in place or to an output.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "engine/error.h"
#include "kernels/cpu/rotary.h"
#include "kernels/cuda/paged_attention.h"
#include "kernels/cuda/rotary.h"
#include "tests/kernels/cuda/cuda_test_util.h"
#include "tests/kernels/cuda/kv_test_util.h"
#include "tests/kernels/kernel_test_util.h"

namespace kiln {
namespace {

struct Case {
  int head_dim, rotary_dim, n_heads, n_kv_heads;
  cuda::RotaryMode mode;
  float theta, scale;
  int64_t n_tokens, first_position;
  cuda::KvDType dtype = cuda::KvDType::F32;
};

// The reference rotation of x [n_tokens, n_heads, head_dim] at positions (none for RotaryMode::None).
void rotate_reference(std::vector<float>& x, const std::vector<int32_t>& positions, int n_heads, const Case& c) {
  if (c.mode == cuda::RotaryMode::None) return;
  RotaryParams p;
  p.mode = c.mode == cuda::RotaryMode::RotateHalf ? RotaryMode::RotateHalf : RotaryMode::RotateEveryTwo;
  p.rotary_dim = c.rotary_dim;
  p.theta = c.theta;
  p.position_scale = c.scale;
  rotary_reference(x.data(), positions.data(), int64_t(positions.size()), n_heads, c.head_dim, p);
}

// The pair partner of each value bounds its rounding: 3 u (|a| + |b|) <= 3 u * 4 for inputs in [-2, 2].
constexpr double kTol = 12 * test::kU * 1.5;

void expect_near(const std::vector<float>& got, const std::vector<float>& want, double rel, const char* what,
                 double abs = 0.0) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i)
    ASSERT_NEAR(got[i], want[i], kTol + abs + rel * std::fabs(want[i])) << what << " at " << i;
}

// A cache of `dtype` holds want rounded once: keys within one step of its rounding of the f32 result (f16:
// 2^-10 relative; fp8: 2^-3 relative, 2^-9 among its subnormals).
void expect_cache(const std::vector<float>& got, std::vector<float> want, cuda::KvDType dtype, const char* what) {
  test::round_to_kv(want, dtype);
  if (dtype == cuda::KvDType::F8) expect_near(got, want, 1.0 / 8, what, std::ldexp(1.0, -9));
  else expect_near(got, want, dtype == cuda::KvDType::F16 ? 1.0 / 1024 : 0.0, what);
}

void check(const Case& c, uint32_t seed) {
  SCOPED_TRACE(testing::Message() << "head_dim " << c.head_dim << " rotary_dim " << c.rotary_dim << " heads "
                                  << c.n_heads << "/" << c.n_kv_heads << " mode " << int(c.mode) << " theta "
                                  << c.theta << " scale " << c.scale << " tokens " << c.n_tokens << " at "
                                  << c.first_position);
  const int64_t hd = c.head_dim, q_dim = c.n_heads * hd, kv_dim = c.n_kv_heads * hd;
  const int64_t stride = q_dim + 2 * kv_dim + 3;  // rows padded: the kernel must honour qkv_stride
  const int64_t kv_stride = c.first_position + c.n_tokens + 2;
  const auto qkv = test::random_floats(size_t(c.n_tokens * stride), seed, -2.0f, 2.0f);
  const float sentinel = 12345.0f;

  // Reference: split, rotate, append.
  std::vector<float> q(size_t(c.n_tokens * q_dim)), k(size_t(c.n_tokens * kv_dim));
  std::vector<float> k_cache(size_t(c.n_kv_heads * kv_stride * hd), sentinel), v_cache = k_cache;
  for (int64_t t = 0; t < c.n_tokens; ++t) {
    std::copy_n(qkv.begin() + t * stride, q_dim, q.begin() + t * q_dim);
    std::copy_n(qkv.begin() + t * stride + q_dim, kv_dim, k.begin() + t * kv_dim);
  }
  std::vector<int32_t> positions(size_t(c.n_tokens));
  for (int64_t t = 0; t < c.n_tokens; ++t) positions[size_t(t)] = int32_t(c.first_position + t);
  rotate_reference(q, positions, c.n_heads, c);
  rotate_reference(k, positions, c.n_kv_heads, c);
  for (int64_t t = 0; t < c.n_tokens; ++t)
    for (int64_t h = 0; h < c.n_kv_heads; ++h)
      for (int64_t d = 0; d < hd; ++d) {
        const size_t dst = size_t((h * kv_stride + c.first_position + t) * hd + d);
        k_cache[dst] = k[size_t(t * kv_dim + h * hd + d)];
        v_cache[dst] = qkv[size_t(t * stride + q_dim + kv_dim + h * hd + d)];
      }

  const auto d_qkv = test::to_device(qkv);
  const auto d_q = test::to_device(std::vector<float>(q.size(), NAN));
  const auto d_k = test::to_device(std::vector<float>(k.size(), NAN));
  const auto d_kc = test::kv_to_device(std::vector<float>(k_cache.size(), sentinel), c.dtype);
  const auto d_vc = test::kv_to_device(std::vector<float>(v_cache.size(), sentinel), c.dtype);
  const auto d_first = test::device_scalar(int32_t(c.first_position));
  cuda::RotaryAppendArgs a;
  a.qkv = d_qkv.as<float>();
  a.qkv_stride = stride;
  a.q_out = d_q.as<float>();
  a.k_out = d_k.as<float>();
  a.k_cache = d_kc.data();
  a.v_cache = d_vc.data();
  a.kv_dtype = c.dtype;
  a.kv_stride = kv_stride;
  a.first_position = d_first.as<int32_t>();
  a.n_tokens = c.n_tokens;
  a.n_heads = c.n_heads;
  a.n_kv_heads = c.n_kv_heads;
  a.head_dim = c.head_dim;
  a.mode = c.mode;
  a.rotary_dim = c.rotary_dim;
  a.theta = c.theta;
  a.position_scale = c.scale;
  cuda::rotary_kv_append(a);

  expect_near(test::to_host<float>(d_q, q.size()), q, 0, "q");
  expect_near(test::to_host<float>(d_k, k.size()), k, 0, "k_out");
  expect_cache(test::kv_to_host(d_kc, k_cache.size(), c.dtype), k_cache, c.dtype, "k_cache");
  expect_cache(test::kv_to_host(d_vc, v_cache.size(), c.dtype), v_cache, c.dtype, "v_cache");
}

TEST(CudaRotary, MatchesReferenceOverShapesModesAndScaling) {
  KILN_REQUIRE_GPU();
  uint32_t seed = 1;
  const cuda::RotaryMode modes[] = {cuda::RotaryMode::RotateHalf, cuda::RotaryMode::RotateEveryTwo};
  for (int hd : {16, 64, 80, 96, 128, 256})
    for (int rotary_dim : {hd, hd / 2, 8})
      for (cuda::RotaryMode mode : modes)
        for (auto [n_heads, n_kv] : {std::pair{4, 4}, std::pair{9, 3}, std::pair{8, 1}}) {
          if (rotary_dim % 2 != 0) continue;
          check({hd, rotary_dim, n_heads, n_kv, mode, 10000.0f, 1.0f, 5, 3}, seed++);
        }
}

TEST(CudaRotary, LongPositionsThetaAndLinearScaling) {
  KILN_REQUIRE_GPU();
  uint32_t seed = 100;
  for (float theta : {10000.0f, 1000000.0f})
    for (float scale : {1.0f, 4.0f})
      for (auto [n, first] : {std::pair<int64_t, int64_t>{1, 0}, {1, 4095}, {16, 4080}, {7, 32760}}) {
        check({64, 64, 9, 3, cuda::RotaryMode::RotateHalf, theta, scale, n, first}, seed++);
        check({128, 32, 8, 1, cuda::RotaryMode::RotateEveryTwo, theta, scale, n, first}, seed++);
      }
}

TEST(CudaRotary, NoRotaryOnlyAppends) {
  KILN_REQUIRE_GPU();
  check({64, 0, 6, 2, cuda::RotaryMode::None, 10000.0f, 1.0f, 9, 20}, 5);
  check({64, 0, 6, 2, cuda::RotaryMode::None, 10000.0f, 1.0f, 9, 20, cuda::KvDType::F16}, 6);
  check({64, 0, 6, 2, cuda::RotaryMode::None, 10000.0f, 1.0f, 9, 20, cuda::KvDType::F8}, 7);
}

TEST(CudaRotary, HalfAndFp8Cache) {
  KILN_REQUIRE_GPU();
  uint32_t seed = 200;
  for (cuda::KvDType dtype : {cuda::KvDType::F16, cuda::KvDType::F8})
    for (cuda::RotaryMode mode : {cuda::RotaryMode::RotateHalf, cuda::RotaryMode::RotateEveryTwo})
      for (auto [hd, rotary_dim] : {std::pair{64, 64}, std::pair{128, 128}, std::pair{80, 32}})
        for (auto [n, first] : {std::pair<int64_t, int64_t>{1, 0}, {1, 32767}, {16, 4080}})
          check({hd, rotary_dim, 9, 3, mode, 10000.0f, 1.0f, n, first, dtype}, seed++);
}


// Rows of three sequences at their own positions, stored into a shuffled paged pool.
void check_paged(const Case& c, int64_t block_positions, bool in_place, uint32_t seed) {
  SCOPED_TRACE(testing::Message() << "paged: head_dim " << c.head_dim << " rotary_dim " << c.rotary_dim << " heads "
                                  << c.n_heads << "/" << c.n_kv_heads << " mode " << int(c.mode) << " block "
                                  << block_positions << (in_place ? " in place " : " to q_out ")
                                  << test::kv_name(c.dtype));
  const int64_t hd = c.head_dim, q_dim = c.n_heads * hd, kv_dim = c.n_kv_heads * hd, bs = block_positions;
  const int64_t stride = q_dim + 2 * kv_dim + 5;
  const int64_t max_blocks = 4, n_blocks = 12;
  const std::vector<int32_t> table = {7, 2, 9, -1, 0, 11, -1, -1, 3, 5, 1, 4};  // [3 sequences, 4 blocks]
  const std::vector<int32_t> row_seq = {1, 1, 0, 2, 2, 0};
  const std::vector<int32_t> row_position = {int32_t(bs + 1), int32_t(bs + 2), int32_t(2 * bs), 0,
                                             int32_t(4 * bs - 1), int32_t(3 * bs - 1)};
  const auto n_rows = int64_t(row_seq.size());
  const auto qkv = test::random_floats(size_t(n_rows * stride), seed, -2.0f, 2.0f);
  const float sentinel = 777.0f;

  std::vector<float> q(size_t(n_rows * q_dim)), k(size_t(n_rows * kv_dim));
  for (int64_t r = 0; r < n_rows; ++r) {
    std::copy_n(qkv.begin() + r * stride, q_dim, q.begin() + r * q_dim);
    std::copy_n(qkv.begin() + r * stride + q_dim, kv_dim, k.begin() + r * kv_dim);
  }
  rotate_reference(q, row_position, c.n_heads, c);
  rotate_reference(k, row_position, c.n_kv_heads, c);
  std::vector<float> k_pool(size_t(n_blocks * kv_dim * bs), sentinel), v_pool = k_pool;
  for (int64_t r = 0; r < n_rows; ++r) {
    const int64_t pos = row_position[size_t(r)], block = table[size_t(row_seq[size_t(r)] * max_blocks + pos / bs)];
    for (int64_t h = 0; h < c.n_kv_heads; ++h)
      for (int64_t d = 0; d < hd; ++d) {
        const auto dst = size_t(((block * c.n_kv_heads + h) * bs + pos % bs) * hd + d);
        k_pool[dst] = k[size_t(r * kv_dim + h * hd + d)];
        v_pool[dst] = qkv[size_t(r * stride + q_dim + kv_dim + h * hd + d)];
      }
  }

  auto d_qkv = test::to_device(qkv);
  const auto d_q = test::to_device(std::vector<float>(q.size(), NAN));
  const auto d_k = test::to_device(std::vector<float>(k.size(), NAN));
  const auto d_kp = test::kv_to_device(std::vector<float>(k_pool.size(), sentinel), c.dtype);
  const auto d_vp = test::kv_to_device(std::vector<float>(v_pool.size(), sentinel), c.dtype);
  const auto d_table = test::to_device(table), d_seq = test::to_device(row_seq), d_pos = test::to_device(row_position);
  cuda::PagedRotaryStoreArgs a;
  a.kv.k_pool = d_kp.data();
  a.kv.v_pool = d_vp.data();
  a.kv.block_table = d_table.as<int32_t>();
  a.kv.max_blocks_per_seq = max_blocks;
  a.kv.block_positions = bs;
  a.kv.n_kv_heads = c.n_kv_heads;
  a.kv.head_dim = c.head_dim;
  a.kv.dtype = c.dtype;
  a.qkv = d_qkv.as<float>();
  a.qkv_stride = stride;
  a.q_out = in_place ? nullptr : d_q.as<float>();
  a.k_out = d_k.as<float>();
  a.row_seq = d_seq.as<int32_t>();
  a.row_position = d_pos.as<int32_t>();
  a.n_rows = n_rows;
  a.n_heads = c.n_heads;
  a.mode = c.mode;
  a.rotary_dim = c.rotary_dim;
  a.theta = c.theta;
  a.position_scale = c.scale;
  cuda::paged_rotary_kv_store(a);

  // In place, the rows keep everything but their rotated queries; otherwise they are untouched.
  std::vector<float> want_qkv = qkv;
  if (in_place)
    for (int64_t r = 0; r < n_rows; ++r) std::copy_n(q.begin() + r * q_dim, q_dim, want_qkv.begin() + r * stride);
  expect_near(test::to_host<float>(d_qkv, qkv.size()), want_qkv, 0, "qkv");
  if (!in_place) expect_near(test::to_host<float>(d_q, q.size()), q, 0, "q_out");
  expect_near(test::to_host<float>(d_k, k.size()), k, 0, "k_out");
  expect_cache(test::kv_to_host(d_kp, k_pool.size(), c.dtype), k_pool, c.dtype, "k_pool");
  expect_cache(test::kv_to_host(d_vp, v_pool.size(), c.dtype), v_pool, c.dtype, "v_pool");
}

TEST(CudaRotary, PagedStoreAtEachRowsPosition) {
  KILN_REQUIRE_GPU();
  uint32_t seed = 300;
  const cuda::RotaryMode modes[] = {cuda::RotaryMode::RotateHalf, cuda::RotaryMode::RotateEveryTwo,
                                    cuda::RotaryMode::None};
  for (cuda::KvDType dtype : {cuda::KvDType::F32, cuda::KvDType::F16, cuda::KvDType::F8})
    for (cuda::RotaryMode mode : modes)
      for (bool in_place : {true, false}) {
        check_paged({64, 64, 9, 3, mode, 10000.0f, 1.0f, 0, 0, dtype}, 16, in_place, seed++);
        check_paged({128, 32, 8, 2, mode, 500000.0f, 4.0f, 0, 0, dtype}, 5, in_place, seed++);
        check_paged({128, 128, 32, 32, mode, 10000.0f, 1.0f, 0, 0, dtype}, 16, in_place, seed++);
      }
}

TEST(CudaRotary, PagedStoreRejectsBadArguments) {
  cuda::PagedRotaryStoreArgs a;
  a.n_rows = 1;
  EXPECT_THROW(cuda::paged_rotary_kv_store(a), Error);  // null pool and table
  a.n_rows = -1;
  EXPECT_THROW(cuda::paged_rotary_kv_store(a), Error);
}

}  // namespace
}  // namespace kiln
