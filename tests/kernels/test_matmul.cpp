// matmul at every CPU level against matmul_reference, for every weight dtype, over odd shapes.
//
// Tolerances, per output y = sum_k w_k x_k, with S = sum_k |w_k x_k| and u = 2^-24:
//   f32, f16, bf16 weights: |y - ref| <= (n_in + 4) u S, the bound for f32 summation in any order
//     (f16 and bf16 widen to f32 exactly, so the reference sees the same weights).
//   int8 weights: x is quantized per group (kernels/cpu/quantize.h), so additionally
//     |y - ref| <= Q = sum_g (scale_x_g / 2) sum_{k in g} |w_k|, plus rounding (n_in + 4) u (S + Q).
//   int8, SIMD level against the scalar level: both sum the same exact integer products, so they differ
//     only in f32 rounding: 2 (n_in + 8) u (S + Q).
//   AMX level, f16 and bf16 weights, 16 tokens or more: each product is within 2^-15 of w x
//     (kernels/cpu/matmul_amx.cpp), so additionally 2^-15 S.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <tuple>
#include <vector>

#include "engine/error.h"
#include "engine/half.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/quantize.h"
#include "tests/kernels/kernel_test_util.h"

namespace kiln {
namespace {

// A weight tensor owned by the test. The data starts 4 bytes into its buffer: the kernels must not
// assume more alignment than the element size.
struct Weights {
  std::vector<unsigned char> buffer;
  std::vector<uint16_t> scales;
  TensorView view;
};

Weights make_weights(DType dtype, int64_t n_out, int64_t n_in, int64_t group_size, uint32_t seed) {
  Weights w;
  const size_t elem = dtype_bytes(dtype);
  const size_t n = size_t(n_out * n_in);
  w.buffer.assign(n * elem + 8, 0);
  unsigned char* data = w.buffer.data() + 4;
  const auto values = test::random_floats(n, seed);
  for (size_t i = 0; i < n; ++i) {
    const float v = values[i];
    if (dtype == DType::F32) {
      std::memcpy(data + 4 * i, &v, 4);
    } else if (dtype == DType::F16 || dtype == DType::BF16) {
      const uint16_t h = dtype == DType::F16 ? fp32_to_fp16(v) : fp32_to_bf16(v);
      std::memcpy(data + 2 * i, &h, 2);
    } else {
      // The full int8 range, -128 included (a file may hold it even if our converter does not write it).
      const int q = i % 97 == 0 ? -128 : int(std::lround(v * 127));
      data[i] = static_cast<unsigned char>(int8_t(q));
    }
  }
  w.view.name = "test.weight";
  w.view.dtype = dtype;
  w.view.n_dims = 2;
  w.view.dims = {n_out, n_in, 1, 1};
  w.view.data = data;
  w.view.bytes = n * elem;
  if (dtype == DType::I8) {
    const auto s = test::random_floats(size_t(n_out * n_in / group_size), seed + 1, 0.001f, 0.03f);
    for (float v : s) w.scales.push_back(fp32_to_fp16(v));
    w.view.scales = w.scales.data();
    w.view.group_size = uint32_t(group_size);
  }
  return w;
}

// Per output: S = sum |w x| and Q, the activation quantization bound (0 for float weights).
struct Bounds {
  std::vector<double> abs_sum, quant;
};

Bounds bounds_for(const TensorView& w, const std::vector<float>& x, int64_t n_tokens) {
  const int64_t n_out = w.rows(), n_in = w.cols();
  Bounds b;
  b.abs_sum.assign(size_t(n_tokens * n_out), 0.0);
  b.quant.assign(size_t(n_tokens * n_out), 0.0);
  std::vector<float> row(static_cast<size_t>(n_in));
  std::vector<unsigned char> storage;
  QuantizedActivations qa;
  if (w.dtype == DType::I8) {
    storage.resize(quantized_activations_bytes(n_tokens, n_in, w.group_size) + 64);
    void* aligned = storage.data() + (64 - reinterpret_cast<uintptr_t>(storage.data()) % 64) % 64;
    qa = quantize_activations(x.data(), n_tokens, n_in, w.group_size, aligned);
  }
  for (int64_t r = 0; r < n_out; ++r) {
    dequantize_row(w, r, row.data());
    for (int64_t t = 0; t < n_tokens; ++t) {
      double s = 0, q = 0;
      for (int64_t k = 0; k < n_in; ++k) {
        s += std::fabs(double(row[size_t(k)]) * x[size_t(t * n_in + k)]);
        if (w.dtype == DType::I8) q += std::fabs(row[size_t(k)]) * 0.5 * qa.scale[t * qa.n_groups + k / w.group_size];
      }
      b.abs_sum[size_t(t * n_out + r)] = s;
      b.quant[size_t(t * n_out + r)] = q;
    }
  }
  return b;
}

using Shape = std::tuple<int64_t, int64_t, int64_t>;  // n_out, n_in, n_tokens

std::string shape_string(const Shape& s) {
  return "[" + std::to_string(std::get<0>(s)) + " x " + std::to_string(std::get<1>(s)) + "] x " +
         std::to_string(std::get<2>(s)) + " tokens";
}

// Runs matmul at `level` on every shape and checks each output against the reference within the bound.
void check_against_reference(CpuLevel level, DType dtype, int64_t group_size, const std::vector<Shape>& shapes) {
  ThreadPool pool(3);  // more threads than cores: uneven chunks
  uint32_t seed = 1;
  for (const Shape& shape : shapes) {
    const auto [n_out, n_in, n_tokens] = shape;
    const Weights w = make_weights(dtype, n_out, n_in, group_size, seed++);
    const auto x = test::random_floats(size_t(n_tokens * n_in), seed++, -2.0f, 2.0f);
    std::vector<float> want(size_t(n_tokens * n_out)), got(want.size(), NAN);
    matmul_reference(w.view, x.data(), want.data(), n_tokens);
    matmul(w.view, x.data(), got.data(), n_tokens, pool, level);
    const Bounds b = bounds_for(w.view, x, n_tokens);
    const bool split_products = level == CpuLevel::Amx && (dtype == DType::F16 || dtype == DType::BF16) && n_tokens >= 16;
    const double product_error = split_products ? std::ldexp(1.0, -15) : 0.0;
    int failures = 0;
    for (size_t i = 0; i < want.size() && failures < 5; ++i) {
      const double tol = b.quant[i] * (1 + 1e-4) + double(n_in + 4) * test::kU * (b.abs_sum[i] + b.quant[i]) +
                         product_error * b.abs_sum[i] + 1e-30;
      if (!(std::fabs(double(got[i]) - double(want[i])) <= tol)) {
        ++failures;
        ADD_FAILURE() << dtype_name(dtype) << " group " << group_size << " " << shape_string(shape) << " output "
                      << i << ": got " << got[i] << ", want " << want[i] << " (tolerance " << tol << ")";
      }
    }
  }
}

std::vector<Shape> shapes(const std::vector<int64_t>& n_outs, const std::vector<int64_t>& n_ins,
                          const std::vector<int64_t>& n_tokens, std::vector<Shape> result = {}) {
  for (int64_t o : n_outs)
    for (int64_t i : n_ins)
      for (int64_t t : n_tokens) result.emplace_back(o, i, t);
  return result;
}

// Token counts around every tile edge: 1 (decode), 4-token GEMV groups, the GEMM tiles of 6 and 12.
const std::vector<int64_t> kTokens = {1, 2, 3, 4, 5, 6, 7, 13, 17};
// Rows: one, a few (no full tile), 33 (a 32-row panel and one more); 577 with fewer widths (slow reference).
const std::vector<int64_t> kRows = {1, 7, 33};

class MatmulLevel : public testing::TestWithParam<CpuLevel> {};

TEST_P(MatmulLevel, FloatWeights) {
  for (DType dtype : {DType::F32, DType::F16, DType::BF16})
    check_against_reference(GetParam(), dtype, 0,
                            shapes(kRows, {1, 7, 16, 33, 100, 577}, kTokens, shapes({577}, {7, 100}, kTokens)));
}

// Prompts: whole and partial 16-token AMX tiles, columns around its 32-column steps.
TEST_P(MatmulLevel, FloatWeightsManyTokens) {
  for (DType dtype : {DType::F16, DType::BF16})
    check_against_reference(GetParam(), dtype, 0, shapes({1, 31, 64, 65}, {1, 31, 32, 33, 200}, {16, 31, 48}));
}

// The AMX split keeps f16 weights exact: extreme f16 magnitudes (tiny subnormals, the largest normals)
// still give f32-accurate products.
TEST_P(MatmulLevel, F16ExtremesManyTokens) {
  ThreadPool pool(2);
  const int64_t n_out = 33, n_in = 64, n_tokens = 20;
  std::vector<uint16_t> data(size_t(n_out * n_in));
  for (size_t i = 0; i < data.size(); ++i)
    data[i] = uint16_t((i % 3 == 0 ? 0x0001 + i % 0x3ff : i % 3 == 1 ? 0x7bff - i % 0x400 : 0x3c00 + i % 0x3ff) |
                       (i % 2 ? 0x8000 : 0));
  TensorView w;
  w.name = "extremes";
  w.dtype = DType::F16;
  w.n_dims = 2;
  w.dims = {n_out, n_in, 1, 1};
  w.data = data.data();
  w.bytes = data.size() * 2;
  const auto x = test::random_floats(size_t(n_tokens * n_in), 5, -2.0f, 2.0f);
  std::vector<float> want(size_t(n_tokens * n_out)), got(want.size());
  matmul_reference(w, x.data(), want.data(), n_tokens);
  matmul(w, x.data(), got.data(), n_tokens, pool, GetParam());
  const Bounds b = bounds_for(w, x, n_tokens);
  for (size_t i = 0; i < got.size(); ++i)
    EXPECT_NEAR(got[i], want[i], (double(n_in + 4) * test::kU + std::ldexp(1.0, -15)) * b.abs_sum[i]) << i;
}

TEST_P(MatmulLevel, Int8Weights) {
  // 4..128 and 48: the SIMD paths' group layouts; 6: not a multiple of 4, the scalar fallback.
  for (int64_t gs : {4, 8, 16, 32, 64, 128, 48, 6})
    check_against_reference(GetParam(), DType::I8, gs,
                            shapes(kRows, {gs, 3 * gs, 9 * gs}, kTokens, shapes({577}, {3 * gs}, {1, 5, 13})));
}

TEST_P(MatmulLevel, SmolLm2Shapes) {
  for (DType dtype : {DType::F16, DType::I8})
    check_against_reference(GetParam(), dtype, 32, shapes({1536}, {576}, {1, 19}));
  check_against_reference(GetParam(), DType::I8, 64, shapes({576}, {1536}, {1, 19}));
}

// The SIMD levels sum the same integer products as the scalar level: only f32 rounding may differ.
TEST_P(MatmulLevel, Int8MatchesScalarLevel) {
  ThreadPool pool(2);
  for (int64_t gs : {4, 16, 32, 48, 64, 128}) {
    for (const Shape& shape : shapes({7, 65}, {gs * 5}, {1, 3, 8, 13})) {
      const auto [n_out, n_in, n_tokens] = shape;
      const Weights w = make_weights(DType::I8, n_out, n_in, gs, 77);
      const auto x = test::random_floats(size_t(n_tokens * n_in), 78, -2.0f, 2.0f);
      std::vector<float> scalar(size_t(n_tokens * n_out)), got(scalar.size());
      matmul(w.view, x.data(), scalar.data(), n_tokens, pool, CpuLevel::Scalar);
      matmul(w.view, x.data(), got.data(), n_tokens, pool, GetParam());
      const Bounds b = bounds_for(w.view, x, n_tokens);
      for (size_t i = 0; i < got.size(); ++i)
        EXPECT_NEAR(got[i], scalar[i], 2.0 * double(n_in + 8) * test::kU * (b.abs_sum[i] + b.quant[i]))
            << shape_string(shape) << " group " << gs << " output " << i;
    }
  }
}

TEST_P(MatmulLevel, ZeroTokensWritesNothing) {
  ThreadPool pool(2);
  const Weights w = make_weights(DType::F16, 4, 8, 0, 3);
  float y = 42.0f;
  matmul(w.view, nullptr, &y, 0, pool, GetParam());
  EXPECT_EQ(y, 42.0f);
}

INSTANTIATE_TEST_SUITE_P(Levels, MatmulLevel, testing::ValuesIn(test::levels()), test::level_name);

// AMX's int8 kernel gives the AVX-512 GEMM's bits (the batch backend runs rows through either), at row and
// token counts around its 16 x 16 tiles, for groups of one and two tile steps; both also at 4 threads.
TEST(Matmul, AmxInt8EqualsAvx512Bits) {
  if (cpu_level_supported() < CpuLevel::Amx) GTEST_SKIP() << "this CPU has no AMX";
  ThreadPool pool(4);
  uint32_t seed = 500;
  for (int64_t gs : {64, 128})
    for (const Shape& shape : shapes({1, 15, 16, 17, 33, 577}, {128, 576, 1536}, {8, 15, 16, 17, 33, 64})) {
      const auto [n_out, n_in, n_tokens] = shape;
      if (n_in % gs != 0) continue;
      const Weights w = make_weights(DType::I8, n_out, n_in, gs, seed++);
      const auto x = test::random_floats(size_t(n_tokens * n_in), seed++, -2.0f, 2.0f);
      std::vector<float> avx512(size_t(n_tokens * n_out)), amx(avx512.size(), NAN);
      matmul(w.view, x.data(), avx512.data(), n_tokens, pool, CpuLevel::Avx512);
      matmul(w.view, x.data(), amx.data(), n_tokens, pool, CpuLevel::Amx);
      ASSERT_EQ(std::memcmp(avx512.data(), amx.data(), avx512.size() * sizeof(float)), 0)
          << shape_string(shape) << " group " << gs;
    }
}

// The reference itself, on values worked out by hand.
TEST(MatmulReference, HandValues) {
  // W = [[1, 2, 3], [-1, 0.5, 4]], x = [[1, 1, 1], [2, 0, -1]] -> y = [[6, 3.5], [-1, -6]]
  const std::vector<float> wf = {1, 2, 3, -1, 0.5f, 4};
  const std::vector<float> x = {1, 1, 1, 2, 0, -1};
  const std::vector<float> want = {6, 3.5f, -1, -6};
  for (DType dtype : {DType::F32, DType::F16, DType::BF16}) {
    std::vector<unsigned char> data(wf.size() * dtype_bytes(dtype));
    for (size_t i = 0; i < wf.size(); ++i) {
      if (dtype == DType::F32) std::memcpy(data.data() + 4 * i, &wf[i], 4);
      const uint16_t h = dtype == DType::F16 ? fp32_to_fp16(wf[i]) : fp32_to_bf16(wf[i]);
      if (dtype != DType::F32) std::memcpy(data.data() + 2 * i, &h, 2);
    }
    TensorView w;
    w.dtype = dtype;
    w.n_dims = 2;
    w.dims = {2, 3, 1, 1};
    w.data = data.data();
    w.bytes = data.size();
    std::vector<float> y(4);
    matmul_reference(w, x.data(), y.data(), 2);
    for (size_t i = 0; i < 4; ++i) EXPECT_EQ(y[i], want[i]) << dtype_name(dtype) << " output " << i;
  }
  // int8, group 2: row 0 = [2, -4 | 6, 8] with scales [0.5, 0.25] = [1, -2, 1.5, 2]; x = [1, 1, 2, 1] -> 4
  const std::vector<int8_t> q = {2, -4, 6, 8};
  const std::vector<uint16_t> scales = {fp32_to_fp16(0.5f), fp32_to_fp16(0.25f)};
  TensorView w;
  w.dtype = DType::I8;
  w.n_dims = 2;
  w.dims = {1, 4, 1, 1};
  w.data = q.data();
  w.bytes = 4;
  w.scales = scales.data();
  w.group_size = 2;
  const std::vector<float> x8 = {1, 1, 2, 1};
  float y = 0;
  matmul_reference(w, x8.data(), &y, 1);
  EXPECT_EQ(y, 4.0f);
  std::vector<float> row(4);
  dequantize_row(w, 0, row.data());
  EXPECT_EQ(row, (std::vector<float>{1, -2, 1.5f, 2}));
  EXPECT_THROW(dequantize_row(w, 1, row.data()), Error);
}

TEST(Matmul, RejectsBadWeights) {
  ThreadPool pool(1);
  Weights good = make_weights(DType::I8, 4, 8, 4, 9);
  std::vector<float> x(8), y(4);
  auto expect_error = [&](TensorView w) { EXPECT_THROW(matmul(w, x.data(), y.data(), 1, pool), Error); };
  TensorView w = good.view;
  w.n_dims = 1;
  expect_error(w);
  w = good.view;
  w.dtype = DType::U8;
  expect_error(w);
  w = good.view;
  w.bytes -= 1;
  expect_error(w);
  w = good.view;
  w.scales = nullptr;
  expect_error(w);
  w = good.view;
  w.group_size = 3;
  expect_error(w);
  w = good.view;
  w.group_size = 0;
  expect_error(w);
  EXPECT_THROW(matmul(good.view, x.data(), y.data(), -1, pool), Error);
  if (cpu_level_supported() < CpuLevel::Avx512) {
    EXPECT_THROW(matmul(good.view, x.data(), y.data(), 1, pool, CpuLevel::Avx512), Error);
  }
}

}  // namespace
}  // namespace kiln
