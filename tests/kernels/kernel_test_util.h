// Helpers shared by the kernel tests: seeded random data and the CPU levels to run.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/cpu_level.h"

namespace kiln::test {

inline std::vector<float> random_floats(size_t n, uint32_t seed, float lo = -1.0f, float hi = 1.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

// Every level this CPU runs, for INSTANTIATE_TEST_SUITE_P.
inline std::vector<CpuLevel> levels() { return cpu_levels_supported(); }

inline std::string level_name(const testing::TestParamInfo<CpuLevel>& info) {
  return std::string(cpu_level_name(info.param));
}

// f32 unit roundoff.
inline constexpr double kU = 1.0 / (1 << 24);

}  // namespace kiln::test
