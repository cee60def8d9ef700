#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "engine/error.h"
#include "kernels/cpu/quantize.h"
#include "tests/kernels/kernel_test_util.h"

namespace kiln {
namespace {

struct Quantized {
  std::vector<float> x;
  std::vector<unsigned char> storage;
  QuantizedActivations qa;
};

Quantized quantize(std::vector<float> x, int64_t n_tokens, int64_t n_in, int64_t group_size,
                   CpuLevel level = CpuLevel::Scalar) {
  Quantized r;
  r.x = std::move(x);
  r.storage.assign(quantized_activations_bytes(n_tokens, n_in, group_size) + 64, 0xcd);
  void* aligned = r.storage.data() + (64 - reinterpret_cast<uintptr_t>(r.storage.data()) % 64) % 64;
  r.qa = quantize_activations(r.x.data(), n_tokens, n_in, group_size, aligned, level);
  return r;
}

// A hand-checked group: max |x| = 31.75 gives scale 0.25 and q = round(4 x), all exact in f32.
TEST(QuantizeActivations, HandValues) {
  const auto r = quantize({31.75f, -12.5f, 0.125f, 0.375f}, 1, 4, 4);
  EXPECT_EQ(r.qa.scale[0], 0.25f);
  EXPECT_EQ(r.qa.q[0], 127);
  EXPECT_EQ(r.qa.q[1], -50);
  EXPECT_EQ(r.qa.q[2], 0);  // 0.5 rounds to even
  EXPECT_EQ(r.qa.q[3], 2);  // 1.5 rounds to even
  EXPECT_EQ(r.qa.corr[0], -128 * (127 - 50 + 0 + 2));
  EXPECT_EQ(r.qa.corr4[0], r.qa.corr[0]);
  EXPECT_FLOAT_EQ(r.qa.scale4[0], r.qa.scale[0]);
  for (int64_t k = 4; k < r.qa.k_pad; ++k) EXPECT_EQ(r.qa.q[k], 0) << "padding at " << k;
}

// Every value is within scale / 2 of q * scale, |q| <= 127, and the per-group and per-lane arrays agree.
TEST(QuantizeActivations, ErrorBoundAndLayout) {
  for (int64_t gs : {4, 6, 16, 32, 48, 64, 128}) {
    const int64_t n_in = gs * 5;
    const int64_t n_tokens = 3;
    auto x = test::random_floats(size_t(n_tokens * n_in), uint32_t(gs), -3.0f, 3.0f);
    x[7] = 40.0f;  // one outlier widens only its group
    const auto r = quantize(x, n_tokens, n_in, gs);
    const auto& qa = r.qa;
    ASSERT_EQ(qa.n_groups, 5);
    ASSERT_EQ(qa.k_pad % 64, 0);
    ASSERT_GE(qa.k_pad, n_in);
    EXPECT_EQ(qa.scale4 != nullptr, gs % 4 == 0);
    for (int64_t t = 0; t < n_tokens; ++t) {
      for (int64_t g = 0; g < qa.n_groups; ++g) {
        float amax = 0;
        int32_t sum = 0;
        for (int64_t i = g * gs; i < (g + 1) * gs; ++i) amax = std::max(amax, std::fabs(r.x[size_t(t * n_in + i)]));
        const float scale = qa.scale[t * qa.n_groups + g];
        EXPECT_FLOAT_EQ(scale, amax / 127);
        for (int64_t i = g * gs; i < (g + 1) * gs; ++i) {
          const int q = qa.q[t * qa.k_pad + i];
          ASSERT_LE(std::abs(q), 127);
          EXPECT_LE(std::fabs(r.x[size_t(t * n_in + i)] - float(q) * scale), scale * 0.5f * (1 + 1e-4f));
          sum += q;
        }
        EXPECT_EQ(qa.corr[t * qa.n_groups + g], -128 * sum);
      }
      for (int64_t k = n_in; k < qa.k_pad; ++k) EXPECT_EQ(qa.q[t * qa.k_pad + k], 0);
      if (qa.scale4 == nullptr) continue;
      for (int64_t l = 0; l < qa.k_pad / 4; ++l) {
        const int8_t* q = qa.q + t * qa.k_pad + 4 * l;
        EXPECT_EQ(qa.corr4[t * (qa.k_pad / 4) + l], -128 * (q[0] + q[1] + q[2] + q[3]));
        const float want = 4 * l < n_in ? qa.scale[t * qa.n_groups + 4 * l / gs] : 0.0f;
        EXPECT_EQ(qa.scale4[t * (qa.k_pad / 4) + l], want);
      }
    }
  }
}

TEST(QuantizeActivations, ZeroGroupHasZeroScale) {
  const auto r = quantize(std::vector<float>(8, 0.0f), 1, 8, 8);
  EXPECT_EQ(r.qa.scale[0], 0.0f);
  for (int i = 0; i < 8; ++i) EXPECT_EQ(r.qa.q[i], 0);
}

// A nan or inf poisons its group's scale (so the matmul output is nan, as in f32), not other groups.
TEST(QuantizeActivations, NonFiniteValuesPoisonTheirGroup) {
  std::vector<float> x(16, 1.0f);
  x[2] = NAN;
  x[9] = INFINITY;
  const auto r = quantize(x, 1, 16, 4);
  EXPECT_TRUE(std::isnan(r.qa.scale[0]));
  EXPECT_TRUE(std::isnan(r.qa.scale[2]));
  EXPECT_FLOAT_EQ(r.qa.scale[1], 1.0f / 127);
  EXPECT_FLOAT_EQ(r.qa.scale[3], 1.0f / 127);
  for (int i : {0, 1, 2, 3, 8, 9, 10, 11}) EXPECT_EQ(r.qa.q[i], 0) << i;
  EXPECT_EQ(r.qa.q[4], 127);
  EXPECT_EQ(r.qa.corr[0], 0);
}

// Every level writes exactly the scalar level's bytes (the int8 matmul's levels rely on it), for group
// sizes on and off the 16-group blocks, with poisoned and all-zero groups among them.
TEST(QuantizeActivations, LevelsAgreeBitForBit) {
  for (CpuLevel level : test::levels()) {
    for (int64_t gs : {4, 6, 16, 32, 48, 64, 128, 256}) {
      for (int64_t n_groups : {1, 5, 17, 33}) {
        const int64_t n_in = gs * n_groups, n_tokens = 2;
        auto x = test::random_floats(size_t(n_tokens * n_in), uint32_t(gs + n_groups), -5.0f, 5.0f);
        if (n_groups > 2) {
          x[size_t(gs + 1)] = NAN;                 // group 1 of token 0
          x[size_t(n_in + 2 * gs)] = -INFINITY;    // group 2 of token 1
          for (int64_t i = 0; i < gs; ++i) x[size_t(n_in + i)] = 0.0f;  // group 0 of token 1
        }
        const auto want = quantize(x, n_tokens, n_in, gs, CpuLevel::Scalar);
        const auto got = quantize(x, n_tokens, n_in, gs, level);
        EXPECT_EQ(want.storage.size(), got.storage.size());
        // Compare through the layout (the buffers may sit at different offsets from 64).
        const auto& a = want.qa;
        const auto& b = got.qa;
        const std::string where = std::string(cpu_level_name(level)) + " group " + std::to_string(gs) + " x " +
                                  std::to_string(n_groups);
        EXPECT_EQ(std::memcmp(a.q, b.q, size_t(n_tokens * a.k_pad)), 0) << where;
        EXPECT_EQ(std::memcmp(a.scale, b.scale, size_t(n_tokens * a.n_groups) * 4), 0) << where;
        EXPECT_EQ(std::memcmp(a.corr, b.corr, size_t(n_tokens * a.n_groups) * 4), 0) << where;
        if (a.scale4 != nullptr) {
          EXPECT_EQ(std::memcmp(a.scale4, b.scale4, size_t(n_tokens * a.k_pad / 4) * 4), 0) << where;
          EXPECT_EQ(std::memcmp(a.corr4, b.corr4, size_t(n_tokens * a.k_pad / 4) * 4), 0) << where;
        }
      }
    }
  }
}

TEST(QuantizeActivations, RejectsGroupsThatDoNotDivide) {
  EXPECT_THROW(quantized_activations_bytes(1, 10, 4), Error);
  EXPECT_THROW(quantized_activations_bytes(1, 8, 0), Error);
}

}  // namespace
}  // namespace kiln
