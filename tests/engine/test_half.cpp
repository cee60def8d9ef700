// fp16 and bf16 conversions against the CPU's own conversion instructions (F16C, AVX512-BF16) and
// against the definition of round-to-nearest-even.
#include <gtest/gtest.h>
#include <immintrin.h>

#include <bit>
#include <cmath>
#include <random>

#include "engine/half.h"

namespace kiln {
namespace {

__attribute__((target("f16c"))) float hardware_fp16_to_fp32(uint16_t h) {
  return _mm_cvtss_f32(_mm_cvtph_ps(_mm_set1_epi16(short(h))));
}
__attribute__((target("f16c"))) uint16_t hardware_fp32_to_fp16(float f) {
  return uint16_t(_mm_extract_epi16(_mm_cvtps_ph(_mm_set_ss(f), _MM_FROUND_TO_NEAREST_INT), 0));
}

TEST(Half, Fp16ToFp32MatchesF16cForEveryValue) {
  if (!__builtin_cpu_supports("f16c")) GTEST_SKIP() << "this CPU has no F16C instructions to compare with";
  for (uint32_t h = 0; h < 65536; ++h) {
    const float expected = hardware_fp16_to_fp32(uint16_t(h));
    const float got = fp16_to_fp32(uint16_t(h));
    if (std::isnan(expected)) {
      ASSERT_TRUE(std::isnan(got)) << h;
    } else {
      ASSERT_EQ(std::bit_cast<uint32_t>(got), std::bit_cast<uint32_t>(expected)) << "fp16 bits " << h;
    }
  }
}

TEST(Half, Fp32ToFp16MatchesF16cOnRandomAndEdgeValues) {
  if (!__builtin_cpu_supports("f16c")) GTEST_SKIP() << "this CPU has no F16C instructions to compare with";
  std::mt19937 rng(1);
  std::vector<float> values = {0.0f, -0.0f, 65504.0f, 65519.99f, 65520.0f, 1e-8f, 5.96e-8f, 2.98e-8f, 6.1e-5f,
                               INFINITY, -INFINITY, 1.0f + 0x1p-11f, 1.0f + 0x1p-10f + 0x1p-11f};
  for (int i = 0; i < 2000000; ++i) {
    const float f = std::bit_cast<float>(uint32_t(rng()));
    if (!std::isnan(f)) values.push_back(f);
  }
  for (float f : values)
    ASSERT_EQ(fp32_to_fp16(f), hardware_fp32_to_fp16(f)) << "value " << f << " bits " << std::bit_cast<uint32_t>(f);
  EXPECT_TRUE(std::isnan(fp16_to_fp32(fp32_to_fp16(NAN))));
}

TEST(Half, Bf16RoundsToNearestEven) {
  std::mt19937 rng(2);
  for (int i = 0; i < 1000000; ++i) {
    const float f = std::bit_cast<float>(uint32_t(rng()));
    if (std::isnan(f) || std::isinf(f)) continue;
    const uint16_t b = fp32_to_bf16(f);
    if (std::isinf(bf16_to_fp32(b))) {  // only values past the largest bf16's half-step overflow
      ASSERT_GE(std::fabs(f), 0x1.ffp127f) << f;
      continue;
    }
    const double error = std::fabs(double(bf16_to_fp32(b)) - double(f));
    // Neither neighbour of the result is closer (ties go to the even one).
    for (int step : {-1, 1}) {
      const uint16_t other = uint16_t(b + step);
      const float o = bf16_to_fp32(other);
      if (std::isnan(o) || std::isinf(o) || std::signbit(o) != std::signbit(bf16_to_fp32(b))) continue;
      const double other_error = std::fabs(double(o) - double(f));
      ASSERT_TRUE(error < other_error || (error == other_error && (b & 1) == 0)) << f;
    }
  }
  EXPECT_TRUE(std::isnan(bf16_to_fp32(fp32_to_bf16(NAN))));
  EXPECT_EQ(bf16_to_fp32(fp32_to_bf16(1.0f)), 1.0f);
}

}  // namespace
}  // namespace kiln
