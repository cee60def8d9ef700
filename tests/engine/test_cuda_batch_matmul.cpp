// matmul_invariant, the batched CUDA forward's matmul: a row's output is bit for bit the same for every
// row count from 1 to 512 and wherever the row lies in the call, for every weight dtype, with and without
// the input norm, at SmolLM2's and Llama-2-7B's shapes. That is what lets a sequence decode alike alone or
// in any batch. Rows of the result are also checked against the CPU reference (within the GEMM's rounding
// of x to 16 bits), so the invariance is not that of a wrong answer. Skips itself without a GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "engine/cuda_forward.h"
#include "kernels/cpu/matmul.h"
#include "tests/kernels/cuda/weight_fixture.h"

namespace kiln::test {
namespace {

constexpr int64_t kRows = 512;

struct Shape {
  const char* name;
  int64_t n_out, n_in;
  int64_t count_step;  // row counts 1, 1 + step, ... (1 tests every count)
};

struct Param {
  DType dtype;
  Shape shape;
};

class MatmulInvariant : public ::testing::TestWithParam<Param> {};

// Every bit of a row: equal floats with different bits (0 and -0) would still be a difference.
bool same_bits(const float* a, const float* b, int64_t n) { return std::memcmp(a, b, size_t(n) * sizeof(float)) == 0; }

TEST_P(MatmulInvariant, EveryRowCountAndPlaceGivesTheSameRow) {
  KILN_REQUIRE_GPU();
  const auto [dtype, shape] = GetParam();
  const int64_t n_in = shape.n_in, n_out = shape.n_out;
  const WeightFixture w = make_weight(dtype, n_out, n_in, 64, 5);
  // The 512 rows twice over: rows [s, s + n) are rows s.. of the pool, wrapping, with more rows after them
  // for the padding of the last call.
  std::vector<float> x = random_floats(size_t(kRows * n_in), 9);
  x.insert(x.end(), x.begin(), x.end());
  const cuda::DeviceBuffer d_x = to_device(x);
  const std::vector<float> norm_weight = random_floats(size_t(n_in), 10, 0.5f, 1.5f);
  const cuda::DeviceBuffer d_norm_weight = to_device(norm_weight);
  cuda::DeviceBuffer d_y(size_t(kRows * n_out) * sizeof(float)), d_xn(size_t(kRows * n_in) * sizeof(float));
  const int64_t int8_elems = dtype == DType::I8 ? n_out * n_in : 0;
  cuda::DeviceBuffer workspace(cuda::gemm_workspace_bytes(kInvariantRows, n_in, int8_elems));
  cuda::GemmContext gemm(workspace.data(), workspace.bytes(), kInvariantRows, n_in, int8_elems);

  auto run = [&](int64_t first_row, int64_t n, bool with_norm) {
    cuda::MatmulArgs a;
    a.weight = w.device;
    a.x = d_x.as<float>() + first_row * n_in;
    a.y = d_y.as<float>();
    a.n_tokens = n;
    a.gemm = &gemm;
    if (with_norm) {
      a.norm.enabled = true;
      a.norm.weight = d_norm_weight.as<float>();
      a.norm.eps = 1e-5f;
      a.norm.out = d_xn.as<float>();
    }
    matmul_invariant(a);
    return to_host<float>(d_y, size_t(n * n_out));
  };
  const std::vector<float> plain = run(0, kRows, false), normed = run(0, kRows, true);

  // The plain product of the first and the last rows (the first and the last call) against the reference:
  // the GEMM rounds x to f16 (bf16 pairs for bf16 weights).
  constexpr int64_t kChecked = 24;
  const double rel = dtype == DType::F32 ? 1e-5 : dtype == DType::BF16 ? 1e-4 : 4e-3;
  for (int64_t first : {int64_t(0), kRows - kChecked}) {
    std::vector<float> want(size_t(kChecked * n_out));
    matmul_reference(w.view, x.data() + first * n_in, want.data(), kChecked);
    double worst = 0, scale = 0;
    for (size_t i = 0; i < want.size(); ++i) {
      worst = std::max(worst, std::fabs(double(plain[size_t(first * n_out) + i]) - want[i]));
      scale = std::max(scale, std::fabs(double(want[i])));
    }
    EXPECT_LE(worst, rel * scale) << "rows from " << first << ": the product is off the reference";
  }

  int64_t checked = 0;
  for (int64_t n = 1; n <= kRows; n += shape.count_step) {
    const int64_t first = n * 37 % kRows;  // the rows start at another place of the pool each time
    const bool with_norm = n % 2 == 0;
    const std::vector<float> got = run(first, n, with_norm);
    const std::vector<float>& ref = with_norm ? normed : plain;
    for (int64_t r = 0; r < n; ++r) {
      const int64_t pool_row = (first + r) % kRows;
      ASSERT_TRUE(same_bits(got.data() + r * n_out, ref.data() + pool_row * n_out, n_out))
          << n << " rows" << (with_norm ? " with the norm" : "") << ": row " << r << " (pool row " << pool_row
          << ") differs from the same row in the 512-row call";
    }
    ++checked;
  }
  EXPECT_GT(checked, 0);
}

const Shape kSmolLM2 = {"smollm2_ffn_up", 3072, 576, 1};
const Shape kLlama7B = {"llama2_7b_attn_out", 4096, 4096, 13};

std::string param_name(const ::testing::TestParamInfo<Param>& info) {
  return std::string(dtype_name(info.param.dtype)) + "_" + info.param.shape.name;
}

INSTANTIATE_TEST_SUITE_P(Shapes, MatmulInvariant,
                         ::testing::Values(Param{DType::F16, kSmolLM2}, Param{DType::BF16, kSmolLM2},
                                           Param{DType::F32, kSmolLM2}, Param{DType::I8, kSmolLM2},
                                           Param{DType::F16, kLlama7B}, Param{DType::I8, kLlama7B}),
                         param_name);

}  // namespace
}  // namespace kiln::test
