// cuda::gated_activation and cuda::bias_activation against the CPU's double-precision references for
// every activation. Tolerance: f32 erff, tanhf and expf are within a few ulp, so |out - ref| <=
// 4e-6 |ref| + 1e-6 (the absolute term covers GELU's cancellation for large negative inputs).
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "kernels/cpu/activation.h"
#include "kernels/cuda/activation.h"
#include "tests/kernels/cuda/cuda_test_util.h"
#include "tests/kernels/kernel_test_util.h"

namespace kiln {
namespace {

struct Pair {
  Activation cpu;
  cuda::Activation gpu;
  const char* name;
};
constexpr Pair kActs[] = {{Activation::Gelu, cuda::Activation::Gelu, "gelu"},
                          {Activation::GeluTanh, cuda::Activation::GeluTanh, "gelu_tanh"},
                          {Activation::Relu, cuda::Activation::Relu, "relu"},
                          {Activation::Silu, cuda::Activation::Silu, "silu"}};

void expect_close(const std::vector<float>& out, const std::vector<float>& ref) {
  ASSERT_EQ(out.size(), ref.size());
  for (size_t i = 0; i < out.size(); ++i) ASSERT_NEAR(out[i], ref[i], 4e-6 * std::fabs(ref[i]) + 1e-6) << "at " << i;
}

TEST(CudaActivation, GatedMatchesReference) {
  KILN_REQUIRE_GPU();
  uint32_t seed = 1;
  for (const Pair& act : kActs)
    for (int64_t ffn : {1, 33, 1536})
      for (int64_t n_tokens : {int64_t(1), int64_t(7), ffn == 1 ? int64_t(65537) : int64_t(300)}) {  // past grid.y
        SCOPED_TRACE(testing::Message() << act.name << " [" << n_tokens << ", " << ffn << "]");
        const auto gate_up = test::random_floats(size_t(n_tokens * 2 * ffn), seed++, -6.0f, 6.0f);
        std::vector<float> ref(size_t(n_tokens * ffn));
        gated_activation_reference(gate_up.data(), ref.data(), n_tokens, ffn, act.cpu);
        const auto d_in = test::to_device(gate_up);
        const auto d_out = test::to_device(std::vector<float>(ref.size(), NAN));
        cuda::DeviceBuffer d_out16(ref.size() * sizeof(uint16_t));
        cuda::GatedActivationArgs a;
        a.gate_up = d_in.as<float>();
        a.out = d_out.as<float>();
        a.out16 = n_tokens > 1 ? d_out16.as<__half>() : nullptr;
        a.n_tokens = n_tokens;
        a.ffn = ffn;
        a.act = act.gpu;
        cuda::gated_activation(a);
        const std::vector<float> out = test::to_host<float>(d_out, ref.size());
        expect_close(out, ref);
        if (a.out16 == nullptr) continue;
        test::expect_f16_copy(d_out16, out);
        // the f16 copy alone: the same bits
        KILN_CUDA_CHECK(cudaMemset(d_out16.data(), 0xff, d_out16.bytes()));
        a.out = nullptr;
        cuda::gated_activation(a);
        test::expect_f16_copy(d_out16, out);
      }
}

TEST(CudaActivation, BiasMatchesReference) {
  KILN_REQUIRE_GPU();
  uint32_t seed = 100;
  for (const Pair& act : kActs)
    for (bool bias : {false, true})
      for (int64_t dim : {1, 33, 3072}) {
        SCOPED_TRACE(testing::Message() << act.name << " bias " << bias << " dim " << dim);
        const int64_t n_tokens = dim == 1 ? 65537 : 3;  // past grid.y
        auto x = test::random_floats(size_t(n_tokens * dim), seed++, -6.0f, 6.0f);
        const auto b = test::random_floats(size_t(dim), seed++);
        const auto d_x = test::to_device(x), d_b = test::to_device(b);
        bias_activation_reference(x.data(), bias ? b.data() : nullptr, n_tokens, dim, act.cpu);
        cuda::DeviceBuffer d_x16(x.size() * sizeof(uint16_t));
        cuda::BiasActivationArgs a;
        a.x = d_x.as<float>();
        a.x16 = bias ? d_x16.as<__half>() : nullptr;
        a.bias = bias ? d_b.as<float>() : nullptr;
        a.n_tokens = n_tokens;
        a.dim = dim;
        a.act = act.gpu;
        cuda::bias_activation(a);
        const std::vector<float> out = test::to_host<float>(d_x, x.size());
        expect_close(out, x);
        if (a.x16 != nullptr) test::expect_f16_copy(d_x16, out);
      }
}

}  // namespace
}  // namespace kiln
