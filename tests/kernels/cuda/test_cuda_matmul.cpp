// cuda::matmul against matmul_reference (double, weights dequantized exactly) for every weight dtype,
// over odd shapes, on both paths: GEMV (<= 8 tokens, vector and element-wise loads, with and without
// the fused input norm) and cuBLAS GEMM (more tokens).
//
// Tolerances, per output y = sum_k w_k x_k with S = sum_k |w_k x_k| and u = 2^-24:
//   GEMV, every dtype: the weights widen to f32 exactly (int8: q * fp16 scale is exact in f32), so only
//     f32 summation remains: 2 (n_in + 8) u S.
//   GEMM: f32 weights, an f32 GEMM (no TF32): the same bound. f16 weights: x rounds to f16, 2^-11 S
//     more; bf16: x splits into two bf16 terms, off by 2^-16 (2^-15 S allowed); int8: the weight and x
//     round to f16, 2 * 2^-11 S more.
//   With the input norm, x itself carries the norm's error, a few 1e-6 relative: 1e-5 S more.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "engine/error.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/norm.h"
#include "kernels/cuda/matmul.h"
#include "tests/kernels/cuda/weight_fixture.h"

namespace kiln {
namespace {

constexpr int64_t kMaxTokens = 40;
constexpr int64_t kMaxIn = 4096;

// The GEMM context for every case: its workspace fits the largest shapes below.
struct Gemm {
  cuda::DeviceBuffer workspace{cuda::gemm_workspace_bytes(kMaxTokens, kMaxIn, 600 * 4096)};
  cuda::GemmContext context{workspace.data(), workspace.bytes(), kMaxTokens, kMaxIn, 600 * 4096};
};

// The largest of 128, 64, ..., 1 that divides n_in (int8 group sizes).
int64_t group_for(int64_t n_in, int64_t largest) {
  int64_t g = largest;
  while (n_in % g != 0) g /= 2;
  return g;
}

double extra_for(DType dtype, bool gemm) {
  if (!gemm) return 0;
  switch (dtype) {
    case DType::F16: return std::ldexp(1.0, -11);
    case DType::BF16: return std::ldexp(1.0, -15);
    case DType::I8: return 2 * std::ldexp(1.0, -11);
    default: return 0;
  }
}

struct Case {
  DType dtype;
  int64_t n_out, n_in, n_tokens, group_size;
  bool generic = false;
  bool norm = false;
  NormKind norm_kind = NormKind::Rms;
};

void check(Gemm& gemm, const Case& c, uint32_t seed) {
  SCOPED_TRACE(testing::Message() << dtype_name(c.dtype) << " [" << c.n_out << ", " << c.n_in << "] x " << c.n_tokens
                                  << " tokens, group " << c.group_size << (c.generic ? " generic" : "")
                                  << (c.norm ? (c.norm_kind == NormKind::Rms ? " +rms" : " +layernorm") : ""));
  const auto w = test::make_weight(c.dtype, c.n_out, c.n_in, c.group_size, seed);
  const auto x = test::random_floats(size_t(c.n_tokens * c.n_in), seed + 1, -1.0f, 1.0f);
  const auto bias = test::random_floats(size_t(c.n_out), seed + 2);
  const auto nw = test::random_floats(size_t(c.n_in), seed + 3, 0.5f, 1.5f);
  const auto nb = test::random_floats(size_t(c.n_in), seed + 4, -0.5f, 0.5f);

  std::vector<float> xin = x;  // what the product sees: x, or its norm
  if (c.norm) {
    if (c.norm_kind == NormKind::Rms) rms_norm_reference(x.data(), nw.data(), xin.data(), c.n_tokens, c.n_in, 1e-5f);
    else layer_norm_reference(x.data(), nw.data(), nb.data(), xin.data(), c.n_tokens, c.n_in, 1e-5f);
  }
  std::vector<float> ref(size_t(c.n_tokens * c.n_out));
  matmul_reference(w.view, xin.data(), ref.data(), c.n_tokens);

  const auto d_x = test::to_device(x), d_bias = test::to_device(bias), d_nw = test::to_device(nw),
             d_nb = test::to_device(nb);
  const auto d_y = test::to_device(std::vector<float>(ref.size(), NAN));
  const auto d_xn = test::to_device(std::vector<float>(x.size(), NAN));
  cuda::MatmulArgs a;
  a.weight = w.device;
  a.x = d_x.as<float>();
  a.y = d_y.as<float>();
  a.bias = d_bias.as<float>();
  a.n_tokens = c.n_tokens;
  a.gemm = &gemm.context;
  a.force_generic = c.generic;
  if (c.norm) {
    a.norm.enabled = true;
    a.norm.kind = c.norm_kind;
    a.norm.weight = d_nw.as<float>();
    a.norm.bias = c.norm_kind == NormKind::Layer ? d_nb.as<float>() : nullptr;
    a.norm.out = d_xn.as<float>();
  }
  cuda::matmul(a);
  const auto y = test::to_host<float>(d_y, ref.size());

  const bool gemm_path = c.n_tokens > cuda::kGemvMaxTokens;
  const double rel = 2 * double(c.n_in + 8) * test::kU + extra_for(c.dtype, gemm_path) + (c.norm ? 1e-5 : 0.0);
  std::vector<float> w_row(size_t(c.n_in));
  for (int64_t r = 0; r < c.n_out; ++r) {
    dequantize_row(w.view, r, w_row.data());
    for (int64_t t = 0; t < c.n_tokens; ++t) {
      double s = 0;
      for (int64_t k = 0; k < c.n_in; ++k) s += std::fabs(double(w_row[size_t(k)]) * xin[size_t(t * c.n_in + k)]);
      const size_t i = size_t(t * c.n_out + r);
      ASSERT_NEAR(y[i], double(ref[i]) + bias[size_t(r)], rel * s + 4 * test::kU * std::fabs(bias[size_t(r)]))
          << "token " << t << " row " << r;
    }
  }
  if (c.norm) {
    const auto xn = test::to_host<float>(d_xn, x.size());
    for (size_t i = 0; i < xn.size(); ++i) ASSERT_NEAR(xn[i], xin[i], 1e-5 * (std::fabs(xin[i]) + 1)) << "norm at " << i;
  }
}

const std::pair<int64_t, int64_t> kShapes[] = {{1, 16}, {7, 48}, {33, 200}, {128, 576}, {577, 1000}, {64, 4096},
                                               {130, 1536}, {9, 198}};

TEST(CudaMatmul, EveryDtypeAndShapeMatchesReference) {
  KILN_REQUIRE_GPU();
  Gemm gemm;
  uint32_t seed = 1;
  for (DType dtype : {DType::F32, DType::F16, DType::BF16, DType::I8})
    for (auto [n_out, n_in] : kShapes)
      for (int64_t n_tokens : {1, 2, 5, 8, 9, 16, 33})
        check(gemm, {dtype, n_out, n_in, n_tokens, group_for(n_in, 32)}, seed++);
}

TEST(CudaMatmul, GenericGemvMatchesReference) {
  KILN_REQUIRE_GPU();
  Gemm gemm;
  uint32_t seed = 1000;
  for (DType dtype : {DType::F32, DType::F16, DType::BF16, DType::I8})
    for (auto [n_out, n_in] : kShapes)
      for (int64_t n_tokens : {1, 5}) check(gemm, {dtype, n_out, n_in, n_tokens, group_for(n_in, 32), true}, seed++);
}

TEST(CudaMatmul, Int8GroupSizes) {
  KILN_REQUIRE_GPU();
  Gemm gemm;
  uint32_t seed = 2000;
  for (int64_t group : {8, 16, 32, 64, 128, 4096})
    for (int64_t n_tokens : {1, 3, 8, 12}) check(gemm, {DType::I8, 65, 4096, n_tokens, group}, seed++);
}

TEST(CudaMatmul, FusedInputNorm) {
  KILN_REQUIRE_GPU();
  Gemm gemm;
  uint32_t seed = 3000;
  for (NormKind kind : {NormKind::Rms, NormKind::Layer})
    for (DType dtype : {DType::F32, DType::F16, DType::I8})
      for (auto [n_out, n_in] : {std::pair<int64_t, int64_t>{96, 576}, {40, 4096}, {33, 200}})
        for (int64_t n_tokens : {1, 3, 8, 9})  // 8 x 4096 does not fit shared memory: the separate norm runs
          check(gemm, {dtype, n_out, n_in, n_tokens, group_for(n_in, 32), false, true, kind}, seed++);
}

TEST(CudaMatmul, RejectsBadArguments) {
  KILN_REQUIRE_GPU();
  const auto w = test::make_weight(DType::I8, 4, 64, 32, 1);
  cuda::MatmulArgs a;
  a.weight = w.device;
  a.weight.group_size = 48;  // does not divide 64
  a.n_tokens = 1;
  EXPECT_THROW(cuda::matmul(a), Error);
  a.weight = w.device;
  a.n_tokens = 20;  // needs a GEMM context
  const auto d_x = test::to_device(std::vector<float>(20 * 64));
  const auto d_y = test::to_device(std::vector<float>(20 * 4));
  a.x = d_x.as<float>();
  a.y = d_y.as<float>();
  EXPECT_THROW(cuda::matmul(a), Error);
}

}  // namespace
}  // namespace kiln
