#include <gtest/gtest.h>

#include "engine/error.h"
#include "kernels/cpu/cpu_level.h"

namespace kiln {
namespace {

TEST(CpuLevel, NamesRoundTrip) {
  for (CpuLevel level : {CpuLevel::Scalar, CpuLevel::Avx2, CpuLevel::Avx512, CpuLevel::Amx})
    EXPECT_EQ(cpu_level_from_name(cpu_level_name(level)), level);
  EXPECT_EQ(cpu_level_name(CpuLevel::Avx512), "avx512");
  EXPECT_EQ(cpu_level_name(CpuLevel::Amx), "amx");
}

TEST(CpuLevel, UnknownNameIsAnError) {
  EXPECT_THROW(cpu_level_from_name("sse9"), Error);
  EXPECT_THROW(cpu_level_capped("AVX2"), Error);
}

TEST(CpuLevel, SupportedLevelsStartAtScalarAndEndAtTheBest) {
  const auto levels = cpu_levels_supported();
  ASSERT_FALSE(levels.empty());
  EXPECT_EQ(levels.front(), CpuLevel::Scalar);
  EXPECT_EQ(levels.back(), cpu_level_supported());
  EXPECT_EQ(levels.size(), size_t(cpu_level_supported()) + 1);
}

TEST(CpuLevel, CapLowersButNeverRaises) {
  EXPECT_EQ(cpu_level_capped(""), cpu_level_supported());
  EXPECT_EQ(cpu_level_capped("scalar"), CpuLevel::Scalar);
  EXPECT_EQ(cpu_level_capped("amx"), cpu_level_supported());
  EXPECT_EQ(cpu_level_capped("avx512"), std::min(CpuLevel::Avx512, cpu_level_supported()));
  EXPECT_EQ(cpu_level_capped("avx2"), std::min(CpuLevel::Avx2, cpu_level_supported()));
  EXPECT_LE(cpu_level_default(), cpu_level_supported());
}

}  // namespace
}  // namespace kiln
