// The activations at every CPU level against the libm double references. Tolerance per value, with
// x the activation input and `up` the gating factor (1 ungated):
//   |y - ref| <= (1e-6 |act(x)| + 2e-7 (1 + |x|)) |up|
// 1e-6 covers the few-ulp exp and division; 2e-7 |x| the erf approximation (|error| <= 1.5e-7).
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "engine/error.h"
#include "kernels/cpu/activation.h"
#include "tests/kernels/kernel_test_util.h"

namespace kiln {
namespace {

const Activation kAll[] = {Activation::Gelu, Activation::GeluTanh, Activation::Relu, Activation::Silu};

const char* name(Activation act) {
  switch (act) {
    case Activation::Gelu: return "gelu";
    case Activation::GeluTanh: return "gelu_tanh";
    case Activation::Relu: return "relu";
    case Activation::Silu: return "silu";
  }
  return "?";
}

TEST(ActivationReference, ClosedForms) {
  // act(1) for each, from the definitions: 0.5 (1 + erf(1 / sqrt 2)), 0.5 (1 + tanh(sqrt(2/pi) 1.044715)),
  // 1, 1 / (1 + 1/e).
  const float want[] = {0.841344746f, 0.841191990f, 1.0f, 0.731058579f};
  for (int i = 0; i < 4; ++i) {
    std::vector<float> x = {1.0f, 0.0f, -2.0f};
    bias_activation_reference(x.data(), nullptr, 1, 3, kAll[i]);
    EXPECT_NEAR(x[0], want[i], 1e-7) << name(kAll[i]);
    EXPECT_EQ(x[1], 0.0f) << name(kAll[i]);
  }
  std::vector<float> relu = {-2.0f};
  bias_activation_reference(relu.data(), nullptr, 1, 1, Activation::Relu);
  EXPECT_EQ(relu[0], 0.0f);
  // gated: act(gate) * up
  const std::vector<float> gate_up = {1.0f, -3.0f, 2.0f, 0.5f};
  std::vector<float> out(2);
  gated_activation_reference(gate_up.data(), out.data(), 1, 2, Activation::Relu);
  EXPECT_EQ(out, (std::vector<float>{2.0f, 0.0f}));
}

// Inputs: a wide uniform range plus values where the approximations switch or saturate.
std::vector<float> inputs(size_t n, uint32_t seed) {
  auto x = test::random_floats(n, seed, -12.0f, 12.0f);
  const float special[] = {0.0f, -0.0f, 1e-8f, -1e-8f, 0.5f, -0.5f, 30.0f, -30.0f, 90.0f, -90.0f, 1e4f, -1e4f};
  for (size_t i = 0; i < n && i < std::size(special); ++i) x[i * 7 % n] = special[i];
  return x;
}

class ActivationLevel : public testing::TestWithParam<CpuLevel> {};

TEST_P(ActivationLevel, GatedMatchesReference) {
  for (Activation act : kAll) {
    for (int64_t ffn : {1, 7, 16, 17, 100, 1536}) {
      const int64_t n_tokens = 3;
      auto gate_up = inputs(size_t(n_tokens * 2 * ffn), uint32_t(ffn));
      std::vector<float> want(size_t(n_tokens * ffn)), got(want.size());
      gated_activation_reference(gate_up.data(), want.data(), n_tokens, ffn, act);
      gated_activation(gate_up.data(), got.data(), n_tokens, ffn, act, GetParam());
      for (int64_t t = 0; t < n_tokens; ++t)
        for (int64_t i = 0; i < ffn; ++i) {
          const double x = gate_up[size_t(t * 2 * ffn + i)], up = gate_up[size_t(t * 2 * ffn + ffn + i)];
          const double w = want[size_t(t * ffn + i)];
          const double tol = 1e-6 * std::fabs(w) + 2e-7 * (1 + std::fabs(x)) * std::fabs(up);
          ASSERT_NEAR(got[size_t(t * ffn + i)], w, tol) << name(act) << " ffn " << ffn << " x " << x;
        }
    }
  }
}

TEST_P(ActivationLevel, BiasMatchesReference) {
  for (Activation act : kAll) {
    for (bool with_bias : {false, true}) {
      for (int64_t dim : {1, 9, 32, 577}) {
        const auto x0 = inputs(size_t(2 * dim), uint32_t(dim) + 5);
        const auto bias = test::random_floats(size_t(dim), 6);
        auto want = x0, got = x0;
        bias_activation_reference(want.data(), with_bias ? bias.data() : nullptr, 2, dim, act);
        bias_activation(got.data(), with_bias ? bias.data() : nullptr, 2, dim, act, GetParam());
        for (size_t i = 0; i < x0.size(); ++i) {
          const double x = double(x0[i]) + (with_bias ? bias[i % size_t(dim)] : 0.0f);
          const double tol = 1e-6 * std::fabs(want[i]) + 2e-7 * (1 + std::fabs(x));
          ASSERT_NEAR(got[i], want[i], tol) << name(act) << " x " << x;
        }
      }
    }
  }
}

TEST_P(ActivationLevel, NanStaysNan) {
  for (Activation act : {Activation::Gelu, Activation::GeluTanh, Activation::Silu}) {
    std::vector<float> x(20, 1.0f);
    x[3] = NAN;
    x[17] = NAN;
    bias_activation(x.data(), nullptr, 1, 20, act, GetParam());
    EXPECT_TRUE(std::isnan(x[3]) && std::isnan(x[17])) << name(act);
  }
}

INSTANTIATE_TEST_SUITE_P(Levels, ActivationLevel, testing::ValuesIn(test::levels()), test::level_name);

TEST(Activation, RejectsBadArguments) {
  std::vector<float> x(4);
  EXPECT_THROW(gated_activation(x.data(), nullptr, 1, 2, Activation::Silu), Error);
  EXPECT_THROW(bias_activation(x.data(), nullptr, -1, 2, Activation::Silu), Error);
}

}  // namespace
}  // namespace kiln
