// cuda::rotary_kv_append against rotary_reference (double precision) followed by a plain KV append:
// queries to q_out, rotated keys to the cache (and k_out), values to the cache, nothing else written.
// Both compute the angle, cosine and sine in double; the rotation is f32 here and double in the
// reference, so |out - ref| <= 3 u (|a| + |b|) for the pair (a, b); copied values are exact.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "kernels/cpu/rotary.h"
#include "kernels/cuda/rotary.h"
#include "tests/kernels/cuda/cuda_test_util.h"
#include "tests/kernels/kernel_test_util.h"

namespace kiln {
namespace {

struct Case {
  int head_dim, rotary_dim, n_heads, n_kv_heads;
  cuda::RotaryMode mode;
  float theta, scale;
  int64_t n_tokens, first_position;
};

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
  if (c.mode != cuda::RotaryMode::None) {
    RotaryParams p;
    p.mode = c.mode == cuda::RotaryMode::RotateHalf ? RotaryMode::RotateHalf : RotaryMode::RotateEveryTwo;
    p.rotary_dim = c.rotary_dim;
    p.theta = c.theta;
    p.position_scale = c.scale;
    std::vector<int32_t> positions(size_t(c.n_tokens));
    for (int64_t t = 0; t < c.n_tokens; ++t) positions[size_t(t)] = int32_t(c.first_position + t);
    rotary_reference(q.data(), positions.data(), c.n_tokens, c.n_heads, c.head_dim, p);
    rotary_reference(k.data(), positions.data(), c.n_tokens, c.n_kv_heads, c.head_dim, p);
  }
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
  const auto d_kc = test::to_device(std::vector<float>(k_cache.size(), sentinel));
  const auto d_vc = test::to_device(std::vector<float>(v_cache.size(), sentinel));
  const auto d_first = test::device_scalar(int32_t(c.first_position));
  cuda::RotaryAppendArgs a;
  a.qkv = d_qkv.as<float>();
  a.qkv_stride = stride;
  a.q_out = d_q.as<float>();
  a.k_out = d_k.as<float>();
  a.k_cache = d_kc.as<float>();
  a.v_cache = d_vc.as<float>();
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

  // The pair partner of each value bounds its rounding: 3 u (|a| + |b|) <= 3 u * 4 for inputs in [-2, 2].
  const double tol = 12 * test::kU * 1.5;
  auto expect = [&](const std::vector<float>& got, const std::vector<float>& want, const char* what) {
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got[i], want[i], tol) << what << " at " << i;
  };
  expect(test::to_host<float>(d_q, q.size()), q, "q");
  expect(test::to_host<float>(d_k, k.size()), k, "k_out");
  expect(test::to_host<float>(d_kc, k_cache.size()), k_cache, "k_cache");
  expect(test::to_host<float>(d_vc, v_cache.size()), v_cache, "v_cache");
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
}

}  // namespace
}  // namespace kiln
