// attention at every CPU level against attention_reference (double precision, one head at a time), and
// the reference against closed forms. Tolerance: the output is a convex combination of value rows; the
// kernel's f32 scores are off by at most (head_dim + 4) u sum|q k| scale, which moves the softmax
// weights by about that relative amount, so |out - ref| <= (8 (head_dim + 4) u S + 1e-6) max|v|, with
// S = max over keys of scale * sum|q k| (about 1 here).
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "engine/error.h"
#include "kernels/cpu/attention.h"
#include "tests/kernels/kernel_test_util.h"

namespace kiln {
namespace {

struct Case {
  int64_t n_tokens, first_position;
  int n_heads, n_kv_heads, head_dim;
  bool causal;
  int64_t window;
  bool alibi;
};

struct Data {
  AttentionParams p;
  std::vector<float> q, k, v, slopes;
};

// The cache has 5 spare positions past the last one used, filled with nan: reading them poisons the output.
Data make(const Case& c, uint32_t seed) {
  Data d;
  d.p.n_tokens = c.n_tokens;
  d.p.first_position = c.first_position;
  d.p.n_heads = c.n_heads;
  d.p.n_kv_heads = c.n_kv_heads;
  d.p.head_dim = c.head_dim;
  d.p.kv_stride = c.first_position + c.n_tokens + 5;
  d.p.scale = 1.0f / std::sqrt(float(c.head_dim));
  d.p.causal = c.causal;
  d.p.window = c.window;
  d.q = test::random_floats(size_t(c.n_tokens * c.n_heads * c.head_dim), seed, -1.5f, 1.5f);
  const size_t cache = size_t(c.n_kv_heads * d.p.kv_stride * c.head_dim);
  d.k = test::random_floats(cache, seed + 1, -1.5f, 1.5f);
  d.v = test::random_floats(cache, seed + 2, -2.0f, 2.0f);
  for (int g = 0; g < c.n_kv_heads; ++g)
    for (int64_t j = c.first_position + c.n_tokens; j < d.p.kv_stride; ++j)
      for (int i = 0; i < c.head_dim; ++i) {
        d.k[size_t((g * d.p.kv_stride + j) * c.head_dim + i)] = NAN;
        d.v[size_t((g * d.p.kv_stride + j) * c.head_dim + i)] = NAN;
      }
  if (c.alibi) {
    for (int h = 0; h < c.n_heads; ++h) d.slopes.push_back(std::pow(2.0f, -8.0f * float(h + 1) / float(c.n_heads)));
    d.p.alibi_slopes = d.slopes.data();
  }
  return d;
}

TEST(AttentionReference, EqualScoresAverageTheVisibleValues) {
  // q = 0: every visible key scores the same, so the output is the mean of the visible value rows.
  Data d = make({3, 2, 2, 1, 4, true, 0, false}, 1);
  std::fill(d.q.begin(), d.q.end(), 0.0f);
  std::vector<float> out(d.q.size());
  attention_reference(d.q.data(), d.k.data(), d.v.data(), out.data(), d.p);
  for (int64_t t = 0; t < 3; ++t)
    for (int h = 0; h < 2; ++h)
      for (int i = 0; i < 4; ++i) {
        double mean = 0;
        for (int64_t j = 0; j <= 2 + t; ++j) mean += d.v[size_t(j * 4 + i)];
        mean /= double(3 + t);
        EXPECT_NEAR(out[size_t((t * 2 + h) * 4 + i)], mean, 1e-6);
      }
}

TEST(AttentionReference, WindowAndAlibiHandValues) {
  // One query at position 3 with q = 0; window 2 leaves keys 2 and 3; ALiBi slope ln 2 weighs key 2 by
  // e^{-ln 2} = 1/2 against key 3: out = (v2 / 2 + v3) / 1.5.
  Data d = make({1, 3, 1, 1, 2, true, 2, false}, 2);
  std::fill(d.q.begin(), d.q.end(), 0.0f);
  const float slope = std::log(2.0f);
  d.p.alibi_slopes = &slope;
  std::vector<float> out(2);
  attention_reference(d.q.data(), d.k.data(), d.v.data(), out.data(), d.p);
  for (int i = 0; i < 2; ++i) EXPECT_NEAR(out[size_t(i)], (d.v[size_t(4 + i)] / 2 + d.v[size_t(6 + i)]) / 1.5, 1e-6);
}

TEST(AttentionReference, OneKeyReturnsItsValue) {
  Data d = make({1, 0, 3, 3, 5, true, 0, false}, 3);
  std::vector<float> out(d.q.size());
  attention_reference(d.q.data(), d.k.data(), d.v.data(), out.data(), d.p);
  for (int h = 0; h < 3; ++h)
    for (int i = 0; i < 5; ++i) EXPECT_FLOAT_EQ(out[size_t(h * 5 + i)], d.v[size_t(h * d.p.kv_stride * 5 + i)]);
}

class AttentionLevel : public testing::TestWithParam<CpuLevel> {};

TEST_P(AttentionLevel, MatchesReference) {
  const std::vector<Case> cases = {
      {1, 0, 1, 1, 64, true, 0, false},      {3, 0, 4, 1, 64, true, 0, false},
      {17, 5, 9, 3, 64, true, 0, false},     {17, 5, 9, 3, 64, false, 0, false},
      {5, 20, 4, 2, 80, true, 4, false},     {5, 20, 4, 2, 80, false, 4, true},
      {3, 11, 6, 3, 7, true, 0, true},       {1, 700, 9, 3, 64, true, 0, false},  // decode: keys split
      {1, 1000, 9, 3, 64, true, 300, true},  {2, 600, 4, 4, 33, true, 0, false},
      {1, 1500, 2, 1, 128, false, 0, false},
  };
  ThreadPool pool(2);
  uint32_t seed = 10;
  for (const Case& c : cases) {
    const Data d = make(c, seed += 3);
    std::vector<float> want(d.q.size()), got(d.q.size(), NAN);
    attention_reference(d.q.data(), d.k.data(), d.v.data(), want.data(), d.p);
    attention(d.q.data(), d.k.data(), d.v.data(), got.data(), d.p, pool, GetParam());
    const double max_v = 2.0, s = 1.5 * 1.5 * std::sqrt(double(c.head_dim));
    const double tol = (8.0 * (c.head_dim + 4) * test::kU * s + 1e-6) * max_v;
    for (size_t i = 0; i < want.size(); ++i)
      ASSERT_NEAR(got[i], want[i], tol) << "case tokens " << c.n_tokens << " first " << c.first_position << " heads "
                                        << c.n_heads << "/" << c.n_kv_heads << " dim " << c.head_dim << " at " << i;
  }
}

INSTANTIATE_TEST_SUITE_P(Levels, AttentionLevel, testing::ValuesIn(test::levels()), test::level_name);

TEST(Attention, RejectsBadParams) {
  ThreadPool pool(1);
  Data d = make({2, 3, 4, 2, 8, true, 0, false}, 4);
  std::vector<float> out(d.q.size());
  auto expect_error = [&](AttentionParams p) {
    EXPECT_THROW(attention(d.q.data(), d.k.data(), d.v.data(), out.data(), p, pool), Error);
  };
  AttentionParams p = d.p;
  p.n_kv_heads = 3;
  expect_error(p);
  p = d.p;
  p.kv_stride = 4;
  expect_error(p);
  p = d.p;
  p.head_dim = 0;
  expect_error(p);
  p = d.p;
  p.window = -1;
  expect_error(p);
}

}  // namespace
}  // namespace kiln
