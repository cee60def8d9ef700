// cuda::attention against attention_reference (double precision, one head at a time) over head_dim
// 16..256, GQA ratios 1, 3 and 8, 1..256 query tokens, caches of up to 4096 keys and one of 32768,
// causal and bidirectional masks, local windows, ALiBi, and every way of splitting the keys.
// Tolerance (the CPU kernels' bound, doubled for exp2f and the split merge): the output is a convex
// combination of value rows and the f32 scores are off by at most (head_dim + 4) u S, S = the largest
// scale * sum |q k| over visible keys, so |out - ref| <= (16 (head_dim + 4) u S + 4e-6) max|v|.
// Unused cache positions hold nan: reading one poisons the output.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "engine/error.h"
#include "kernels/cpu/attention.h"
#include "kernels/cuda/attention.h"
#include "tests/kernels/cuda/cuda_test_util.h"
#include "tests/kernels/kernel_test_util.h"

namespace kiln {
namespace {

struct Case {
  int64_t n_tokens, first_position;
  int n_heads, n_kv_heads, head_dim;
  bool causal = true;
  int64_t window = 0;
  bool alibi = false;
  int n_splits = 0;  // 0: attention_splits
};

void check(const Case& c, uint32_t seed) {
  SCOPED_TRACE(testing::Message() << c.n_tokens << " tokens at " << c.first_position << ", heads " << c.n_heads << "/"
                                  << c.n_kv_heads << ", head_dim " << c.head_dim << (c.causal ? " causal" : " bidir")
                                  << " window " << c.window << (c.alibi ? " alibi" : "") << " splits "
                                  << c.n_splits);
  AttentionParams p;
  p.n_tokens = c.n_tokens;
  p.first_position = c.first_position;
  p.n_heads = c.n_heads;
  p.n_kv_heads = c.n_kv_heads;
  p.head_dim = c.head_dim;
  p.kv_stride = c.first_position + c.n_tokens + 5;
  p.scale = 1.0f / std::sqrt(float(c.head_dim));
  p.causal = c.causal;
  p.window = c.window;
  const int64_t hd = c.head_dim, n_keys = c.first_position + c.n_tokens;
  const auto q = test::random_floats(size_t(c.n_tokens * c.n_heads * hd), seed, -1.5f, 1.5f);
  auto k = test::random_floats(size_t(c.n_kv_heads * p.kv_stride * hd), seed + 1, -1.5f, 1.5f);
  auto v = test::random_floats(k.size(), seed + 2, -2.0f, 2.0f);
  for (int g = 0; g < c.n_kv_heads; ++g)
    for (int64_t j = n_keys; j < p.kv_stride; ++j)
      for (int64_t i = 0; i < hd; ++i) k[size_t((g * p.kv_stride + j) * hd + i)] = v[size_t((g * p.kv_stride + j) * hd + i)] = NAN;
  std::vector<float> slopes;
  if (c.alibi) {
    for (int h = 0; h < c.n_heads; ++h) slopes.push_back(std::pow(2.0f, -8.0f * float(h + 1) / float(c.n_heads)));
    p.alibi_slopes = slopes.data();
  }
  std::vector<float> ref(q.size());
  attention_reference(q.data(), k.data(), v.data(), ref.data(), p);

  // S over the visible keys of every (token, head).
  double s_max = 0;
  for (int64_t t = 0; t < c.n_tokens; ++t)
    for (int h = 0; h < c.n_heads; ++h) {
      const int g = h / (c.n_heads / c.n_kv_heads);
      const int64_t pos = c.first_position + t;
      for (int64_t j = 0; j < n_keys; ++j) {
        if ((c.causal && j > pos) || (c.window > 0 && (j <= pos - c.window || (!c.causal && j >= pos + c.window))))
          continue;
        double s = 0;
        for (int64_t i = 0; i < hd; ++i)
          s += std::fabs(double(q[size_t((t * c.n_heads + h) * hd + i)]) * k[size_t((g * p.kv_stride + j) * hd + i)]);
        s_max = std::max(s_max, s * p.scale);
      }
    }

  const auto d_q = test::to_device(q), d_k = test::to_device(k), d_v = test::to_device(v),
             d_slopes = test::to_device(slopes);
  const auto d_out = test::to_device(std::vector<float>(q.size(), NAN));
  const auto d_first = test::device_scalar(int32_t(c.first_position));
  cuda::AttentionArgs a;
  a.q = d_q.as<float>();
  a.k_cache = d_k.as<float>();
  a.v_cache = d_v.as<float>();
  a.out = d_out.as<float>();
  a.first_position = d_first.as<int32_t>();
  a.n_tokens = c.n_tokens;
  a.n_heads = c.n_heads;
  a.n_kv_heads = c.n_kv_heads;
  a.head_dim = c.head_dim;
  a.kv_stride = p.kv_stride;
  a.scale = p.scale;
  a.causal = c.causal;
  a.window = c.window;
  a.alibi_slopes = c.alibi ? d_slopes.as<float>() : nullptr;
  a.n_splits = c.n_splits > 0 ? c.n_splits
                              : cuda::attention_splits(c.n_tokens, c.n_heads, c.n_kv_heads, c.head_dim, n_keys,
                                                       cuda::multiprocessor_count());
  const auto d_partial =
      test::to_device(std::vector<float>(cuda::attention_partial_floats(a.n_splits, c.n_tokens, c.n_heads, c.head_dim), NAN));
  a.partial = d_partial.as<float>();
  cuda::attention(a);
  const auto out = test::to_host<float>(d_out, q.size());
  const double tol = (16.0 * double(hd + 4) * test::kU * s_max + 4e-6) * 2.0;
  for (size_t i = 0; i < out.size(); ++i) ASSERT_NEAR(out[i], ref[i], tol) << "at " << i;
}

struct Gqa {
  int n_heads, n_kv_heads;
};
constexpr Gqa kGqa[] = {{4, 4}, {6, 2}, {16, 2}};

TEST(CudaAttention, DecodeAndShortPrefillEveryHeadDimAndGqa) {
  KILN_REQUIRE_GPU();
  uint32_t seed = 1;
  for (int hd : {16, 64, 80, 96, 128, 256})
    for (const Gqa& g : kGqa)
      for (auto [n, first] : {std::pair<int64_t, int64_t>{1, 0}, {1, 37}, {3, 100}, {16, 0}, {7, 9}, {16, 1000}})
        check({n, first, g.n_heads, g.n_kv_heads, hd}, seed++);
}

TEST(CudaAttention, MasksWindowsAndAlibi) {
  KILN_REQUIRE_GPU();
  uint32_t seed = 1000;
  for (int hd : {64, 96, 256})
    for (bool causal : {true, false})
      for (int64_t window : {0, 1, 5, 100})
        for (bool alibi : {false, true})
          for (auto [n, first] : {std::pair<int64_t, int64_t>{1, 300}, {13, 0}, {9, 50}}) {
            if (!causal && first > 0 && n == 1) continue;  // covered by the prefill rows
            check({n, first, 6, 2, hd, causal, window, alibi}, seed++);
          }
}

TEST(CudaAttention, EverySplitCountGivesTheSameResult) {
  KILN_REQUIRE_GPU();
  uint32_t seed = 2000;
  for (int splits : {1, 2, 5, 32})
    for (auto [n, first] : {std::pair<int64_t, int64_t>{1, 999}, {4, 100}, {16, 10}}) {
      check({n, first, 8, 1, 128, true, 0, false, splits}, seed++);
      check({n, first, 6, 2, 64, true, 37, true, splits}, seed++);
    }
}

TEST(CudaAttention, LongCachesAndPrefill) {
  KILN_REQUIRE_GPU();
  uint32_t seed = 3000;
  check({1, 4095, 9, 3, 64}, seed++);
  check({16, 4080, 8, 1, 128}, seed++);
  check({256, 0, 6, 2, 64}, seed++);
  check({200, 3896, 4, 4, 80, true, 0, true}, seed++);
  check({64, 0, 4, 4, 256, false}, seed++);
}

// One decode query over 32K keys: split-K on a long cache, with and without window and ALiBi.
TEST(CudaAttention, ThirtyTwoThousandKeys) {
  KILN_REQUIRE_GPU();
  check({1, 32767, 8, 1, 128}, 4000);
  check({1, 32767, 8, 1, 128, true, 4096, true}, 4001);
  check({4, 32764, 6, 2, 96}, 4002);
}

TEST(CudaAttention, RejectsBadArguments) {
  KILN_REQUIRE_GPU();
  cuda::AttentionArgs a;
  a.n_heads = 6;
  a.n_kv_heads = 4;  // does not divide
  EXPECT_THROW(cuda::attention(a), Error);
  a.n_kv_heads = 2;
  a.head_dim = 512;
  EXPECT_THROW(cuda::attention(a), Error);
}

}  // namespace
}  // namespace kiln
