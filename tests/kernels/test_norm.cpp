// rms_norm and layer_norm against their double-precision references. Tolerance: both sums are f32 over
// dim terms, so |y - ref| <= (dim + 16) 2u (|ref| + |weight| + |bias|), u = 2^-24.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "engine/error.h"
#include "kernels/cpu/norm.h"
#include "tests/kernels/kernel_test_util.h"

namespace kiln {
namespace {

TEST(NormReference, RmsOfAConstantVectorIsItsSign) {
  const std::vector<float> x = {-3, -3, -3, -3, 2, 2, 2, 2};
  const std::vector<float> w = {1, 1, 1, 0.5f};
  std::vector<float> y(8);
  rms_norm_reference(x.data(), w.data(), y.data(), 2, 4, 0.0f);
  EXPECT_EQ(y, (std::vector<float>{-1, -1, -1, -0.5f, 1, 1, 1, 0.5f}));
  // eps shrinks it: 3 / sqrt(9 + 7) = 0.75
  rms_norm_reference(x.data(), w.data(), y.data(), 1, 4, 7.0f);
  EXPECT_FLOAT_EQ(y[0], -0.75f);
}

TEST(NormReference, LayerNormHandValues) {
  const std::vector<float> x = {1, 3, 1, 3, 5, 5, 5, 5};  // mean 2, variance 1 -> -1, 1; constant -> 0
  const std::vector<float> w = {1, 2, 1, 1};
  const std::vector<float> b = {0, 0, 0.5f, 0};
  std::vector<float> y(8);
  layer_norm_reference(x.data(), w.data(), b.data(), y.data(), 1, 4, 0.0f);
  layer_norm_reference(x.data() + 4, w.data(), b.data(), y.data() + 4, 1, 4, 1e-5f);
  EXPECT_EQ(y, (std::vector<float>{-1, 2, -0.5f, 1, 0, 0, 0.5f, 0}));
}

class NormLevel : public testing::TestWithParam<int64_t> {};

TEST_P(NormLevel, MatchesReference) {
  const int64_t dim = GetParam();
  const int64_t n_tokens = 3;
  auto x = test::random_floats(size_t(n_tokens * dim), 1, -4.0f, 4.0f);
  for (auto& v : x) v += 10.0f;  // an offset far from 0: the layer norm's mean must not cancel badly
  const auto w = test::random_floats(size_t(dim), 2, 0.5f, 1.5f);
  const auto b = test::random_floats(size_t(dim), 3);
  for (bool layer : {false, true}) {
    for (bool with_bias : {false, true}) {
      if (!layer && with_bias) continue;
      std::vector<float> want(x.size()), got(x.size());
      if (layer) {
        layer_norm_reference(x.data(), w.data(), with_bias ? b.data() : nullptr, want.data(), n_tokens, dim, 1e-5f);
        layer_norm(x.data(), w.data(), with_bias ? b.data() : nullptr, got.data(), n_tokens, dim, 1e-5f);
      } else {
        rms_norm_reference(x.data(), w.data(), want.data(), n_tokens, dim, 1e-5f);
        rms_norm(x.data(), w.data(), got.data(), n_tokens, dim, 1e-5f);
      }
      for (size_t i = 0; i < x.size(); ++i) {
        const size_t d = i % size_t(dim);
        const double tol = double(dim + 16) * 2 * test::kU *
                           (std::fabs(want[i]) + std::fabs(w[d]) + (with_bias ? std::fabs(b[d]) : 0.0));
        ASSERT_NEAR(got[i], want[i], tol) << (layer ? "layer_norm" : "rms_norm") << " dim " << dim << " at " << i;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Dims, NormLevel, testing::Values(1, 7, 16, 17, 576, 1000));

TEST(Norm, InPlace) {
  auto x = test::random_floats(2 * 33, 5);
  const auto w = test::random_floats(33, 6);
  std::vector<float> want(x.size());
  rms_norm(x.data(), w.data(), want.data(), 2, 33, 1e-6f);
  rms_norm(x.data(), w.data(), x.data(), 2, 33, 1e-6f);
  EXPECT_EQ(x, want);
}

TEST(Norm, RejectsBadArguments) {
  std::vector<float> x(4), w(4), y(4);
  EXPECT_THROW(rms_norm(x.data(), w.data(), y.data(), 1, 0, 1e-5f), Error);
  EXPECT_THROW(rms_norm(x.data(), w.data(), y.data(), 1, 4, -1.0f), Error);
  EXPECT_THROW(layer_norm(x.data(), nullptr, nullptr, y.data(), 1, 4, 1e-5f), Error);
}

}  // namespace
}  // namespace kiln
