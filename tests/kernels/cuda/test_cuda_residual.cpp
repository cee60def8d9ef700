// cuda::residual_add_bias against residual_add_bias_reference (double) for every combination of the
// optional inputs: four f32 roundings of sums below 8 each move the result by at most 4 u, so |out - ref| <= 40 u with margin.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "kernels/cpu/residual.h"
#include "kernels/cuda/residual.h"
#include "tests/kernels/cuda/cuda_test_util.h"
#include "tests/kernels/kernel_test_util.h"

namespace kiln {
namespace {

TEST(CudaResidual, EveryCombinationMatchesReference) {
  KILN_REQUIRE_GPU();
  uint32_t seed = 1;
  for (int64_t dim : {1, 7, 64, 769})
    for (int64_t n_tokens : {1, 5, 16})
      for (int mask = 0; mask < 8; ++mask) {
        const bool a_bias = mask & 1, b = mask & 2, b_bias = mask & 4;
        SCOPED_TRACE(testing::Message() << "[" << n_tokens << ", " << dim << "] mask " << mask);
        const size_t n = size_t(n_tokens * dim);
        const auto r0 = test::random_floats(n, seed++), va = test::random_floats(n, seed++),
                   vb = test::random_floats(n, seed++), ba = test::random_floats(size_t(dim), seed++),
                   bb = test::random_floats(size_t(dim), seed++);
        std::vector<float> ref = r0;
        residual_add_bias_reference(ref.data(), va.data(), a_bias ? ba.data() : nullptr, b ? vb.data() : nullptr,
                                    b_bias ? bb.data() : nullptr, n_tokens, dim);
        const auto d_r = test::to_device(r0), d_a = test::to_device(va), d_b = test::to_device(vb),
                   d_ba = test::to_device(ba), d_bb = test::to_device(bb);
        cuda::ResidualArgs args;
        args.residual = d_r.as<float>();
        args.a = d_a.as<float>();
        args.a_bias = a_bias ? d_ba.as<float>() : nullptr;
        args.b = b ? d_b.as<float>() : nullptr;
        args.b_bias = b_bias ? d_bb.as<float>() : nullptr;
        args.n_tokens = n_tokens;
        args.dim = dim;
        cuda::residual_add_bias(args);
        const auto out = test::to_host<float>(d_r, n);
        for (size_t i = 0; i < n; ++i) ASSERT_NEAR(out[i], ref[i], 40 * test::kU) << "at " << i;
      }
}

}  // namespace
}  // namespace kiln
