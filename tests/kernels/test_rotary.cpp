// rotary against its double-precision reference, and the reference against closed forms. Tolerance:
// the kernel rounds cos / sin and the rotation to f32, so |y - ref| <= 8u (|a| + |b|) for a pair (a, b).
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "engine/error.h"
#include "kernels/cpu/rotary.h"
#include "tests/kernels/kernel_test_util.h"

namespace kiln {
namespace {

RotaryParams params(RotaryMode mode, int rotary_dim, float theta = 10000.0f, float scale = 1.0f) {
  RotaryParams p;
  p.mode = mode;
  p.rotary_dim = rotary_dim;
  p.theta = theta;
  p.position_scale = scale;
  return p;
}

TEST(RotaryReference, PositionZeroIsIdentity) {
  for (RotaryMode mode : {RotaryMode::RotateHalf, RotaryMode::RotateEveryTwo}) {
    auto x = test::random_floats(2 * 3 * 16, 1);
    auto y = x;
    const std::vector<int32_t> pos = {0, 0};
    rotary_reference(y.data(), pos.data(), 2, 3, 16, params(mode, 16));
    EXPECT_EQ(x, y);
  }
}

// Pair 0 turns by the position itself (theta^0 = 1): (1, 0) at position 1 goes to (cos 1, sin 1);
// pair 1 of a 4-wide rotation turns by position / theta^(1/2).
TEST(RotaryReference, HandAngles) {
  std::vector<float> x = {1, 0, 0, 2};  // rotate-half pairs: (x0, x2), (x1, x3)
  const std::vector<int32_t> pos = {1};
  rotary_reference(x.data(), pos.data(), 1, 1, 4, params(RotaryMode::RotateHalf, 4, 100.0f));
  EXPECT_FLOAT_EQ(x[0], float(std::cos(1.0)));
  EXPECT_FLOAT_EQ(x[2], float(std::sin(1.0)));
  EXPECT_FLOAT_EQ(x[1], float(-2 * std::sin(0.1)));
  EXPECT_FLOAT_EQ(x[3], float(2 * std::cos(0.1)));
}

// rotary_dim < head_dim leaves the tail alone; position / scale is what counts.
TEST(RotaryReference, PartialRotationAndScaling) {
  auto x = test::random_floats(64, 2);
  auto a = x, b = x;
  const std::vector<int32_t> p8 = {8}, p4 = {4};
  rotary_reference(a.data(), p8.data(), 1, 1, 64, params(RotaryMode::RotateEveryTwo, 24, 500.0f, 2.0f));
  rotary_reference(b.data(), p4.data(), 1, 1, 64, params(RotaryMode::RotateEveryTwo, 24, 500.0f, 1.0f));
  for (int i = 0; i < 64; ++i) EXPECT_FLOAT_EQ(a[size_t(i)], b[size_t(i)]);
  for (int i = 24; i < 64; ++i) EXPECT_EQ(a[size_t(i)], x[size_t(i)]);
}

// Rotate-half of x equals rotate-every-two of x with its first-half / second-half values interleaved
// (the permutation GGUF llama files apply to Q and K).
TEST(RotaryReference, ModesAgreeUnderInterleaving) {
  const int hd = 16, half = 8;
  auto x = test::random_floats(hd, 3);
  std::vector<float> interleaved(hd);
  for (int i = 0; i < half; ++i) {
    interleaved[size_t(2 * i)] = x[size_t(i)];
    interleaved[size_t(2 * i + 1)] = x[size_t(i + half)];
  }
  const std::vector<int32_t> pos = {37};
  rotary_reference(x.data(), pos.data(), 1, 1, hd, params(RotaryMode::RotateHalf, hd));
  rotary_reference(interleaved.data(), pos.data(), 1, 1, hd, params(RotaryMode::RotateEveryTwo, hd));
  for (int i = 0; i < half; ++i) {
    EXPECT_FLOAT_EQ(interleaved[size_t(2 * i)], x[size_t(i)]);
    EXPECT_FLOAT_EQ(interleaved[size_t(2 * i + 1)], x[size_t(i + half)]);
  }
}

void expect_close_to_reference(const RotaryParams& p, int head_dim, const std::vector<int32_t>& pos,
                               const RotaryTable* table) {
  const int n_heads = 3;
  const int64_t n_tokens = int64_t(pos.size());
  const auto x = test::random_floats(size_t(n_tokens * n_heads * head_dim), 4, -3, 3);
  auto want = x, got = x;
  rotary_reference(want.data(), pos.data(), n_tokens, n_heads, head_dim, p);
  rotary(got.data(), pos.data(), n_tokens, n_heads, head_dim, p, table);
  const int half = p.rotary_dim / 2;
  for (int64_t v = 0; v < n_tokens * n_heads; ++v) {
    const float* xv = x.data() + v * head_dim;
    for (int i = 0; i < head_dim; ++i) {
      // The magnitude of the pair element i belongs to.
      double mag = std::fabs(xv[i]);
      if (i < p.rotary_dim) {
        const int partner = p.mode == RotaryMode::RotateHalf ? (i < half ? i + half : i - half) : (i ^ 1);
        mag += std::fabs(xv[partner]);
      }
      ASSERT_NEAR(got[size_t(v * head_dim + i)], want[size_t(v * head_dim + i)], 8 * test::kU * mag)
          << "rotary_dim " << p.rotary_dim << " token " << v / n_heads << " element " << i;
    }
  }
}

TEST(Rotary, MatchesReference) {
  const std::vector<int32_t> pos = {0, 1, 17, 8191, 100000};
  for (RotaryMode mode : {RotaryMode::RotateHalf, RotaryMode::RotateEveryTwo}) {
    for (int rotary_dim : {2, 24, 64}) {
      const RotaryParams p = params(mode, rotary_dim, 100000.0f, 1.5f);
      expect_close_to_reference(p, 64, pos, nullptr);
      const RotaryTable table(p, 200);  // covers some positions; the rest are computed on the fly
      expect_close_to_reference(p, 64, pos, &table);
    }
  }
  expect_close_to_reference(params(RotaryMode::RotateHalf, 6, 10000.0f), 10, pos, nullptr);
}

TEST(Rotary, RejectsBadArguments) {
  std::vector<float> x(64);
  const std::vector<int32_t> pos = {0}, negative = {-1};
  EXPECT_THROW(rotary(x.data(), pos.data(), 1, 1, 64, params(RotaryMode::RotateHalf, 0)), Error);
  EXPECT_THROW(rotary(x.data(), pos.data(), 1, 1, 64, params(RotaryMode::RotateHalf, 7)), Error);
  EXPECT_THROW(rotary(x.data(), pos.data(), 1, 1, 32, params(RotaryMode::RotateHalf, 64)), Error);
  EXPECT_THROW(rotary(x.data(), pos.data(), 1, 1, 64, params(RotaryMode::RotateHalf, 64, -1.0f)), Error);
  EXPECT_THROW(rotary(x.data(), negative.data(), 1, 1, 64, params(RotaryMode::RotateHalf, 64)), Error);
  const RotaryTable table(params(RotaryMode::RotateHalf, 32), 16);
  EXPECT_THROW(rotary(x.data(), pos.data(), 1, 1, 64, params(RotaryMode::RotateHalf, 64), &table), Error);
}

}  // namespace
}  // namespace kiln
