// residual_add_bias against its double-precision reference for every combination of optional inputs.
// Tolerance: at most four f32 additions, |r - ref| <= 4u (|r| + |a| + |a_bias| + |b| + |b_bias|).
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "engine/error.h"
#include "kernels/cpu/residual.h"
#include "tests/kernels/kernel_test_util.h"

namespace kiln {
namespace {

TEST(ResidualReference, HandValues) {
  std::vector<float> r = {1, 2, 3, 4};
  const std::vector<float> a = {10, 20, 30, 40}, a_bias = {0.5f, -0.5f}, b = {100, 200, 300, 400}, b_bias = {1, 2};
  residual_add_bias_reference(r.data(), a.data(), a_bias.data(), b.data(), b_bias.data(), 2, 2);
  EXPECT_EQ(r, (std::vector<float>{112.5f, 223.5f, 334.5f, 445.5f}));
}

TEST(Residual, EveryCombinationMatchesReference) {
  for (int64_t dim : {1, 7, 576}) {
    const int64_t n = 3 * dim;
    const auto r0 = test::random_floats(size_t(n), 1, -5, 5);
    const auto a = test::random_floats(size_t(n), 2), b = test::random_floats(size_t(n), 3);
    const auto a_bias = test::random_floats(size_t(dim), 4), b_bias = test::random_floats(size_t(dim), 5);
    for (int mask = 0; mask < 8; ++mask) {
      const float* ab = mask & 1 ? a_bias.data() : nullptr;
      const float* bb = mask & 2 ? b.data() : nullptr;
      const float* bbias = mask & 4 ? b_bias.data() : nullptr;
      auto want = r0, got = r0;
      residual_add_bias_reference(want.data(), a.data(), ab, bb, bbias, 3, dim);
      residual_add_bias(got.data(), a.data(), ab, bb, bbias, 3, dim);
      for (int64_t i = 0; i < n; ++i) {
        const int64_t d = i % dim;
        const double mag = std::fabs(r0[size_t(i)]) + std::fabs(a[size_t(i)]) + (ab ? std::fabs(ab[d]) : 0) +
                           (bb ? std::fabs(bb[i]) + (bbias ? std::fabs(bbias[d]) : 0) : 0);
        ASSERT_NEAR(got[size_t(i)], want[size_t(i)], 4 * test::kU * mag) << "dim " << dim << " mask " << mask;
      }
    }
  }
}

TEST(Residual, RejectsNullInputs) {
  std::vector<float> r(4);
  EXPECT_THROW(residual_add_bias(r.data(), nullptr, nullptr, nullptr, nullptr, 1, 4), Error);
  EXPECT_NO_THROW(residual_add_bias(nullptr, nullptr, nullptr, nullptr, nullptr, 0, 4));
}

}  // namespace
}  // namespace kiln
