// cuda::matmul against matmul_reference (double, weights dequantized exactly) for every weight dtype,
// over odd shapes, on both paths: GEMV (<= 8 tokens, vector and element-wise loads, with and without
// the fused input norm, the residual and gated epilogues) and cuBLAS GEMM (more tokens, also split over
// the inputs into parts).
//
// Tolerances, per output y = sum_k w_k x_k with S = sum_k |w_k x_k| and u = 2^-24:
//   GEMV, f32/f16/bf16: the weights widen to f32 exactly, so only f32 summation remains: 2 (n_in + 8) u S.
//   GEMV, int8: x is quantized per weight group as kernels/cpu/quantize.h does, which moves y by at most
//     sum over groups of (x scale / 2) * sum |w| (that header's bound), plus the summation above. Against
//     the CPU's int8 matmul, which quantizes the same way, only the order of the f32 sums differs: with
//     T = sum over groups of |w scale * x scale| * sum |q_w q_x|, 2 (n_in / 32 + n_groups + 16) u T.
//   GEMM: f32 weights, an f32 GEMM (no TF32): the same bound as the GEMV. f16 weights: x rounds to f16,
//     2^-11 S more; bf16: x splits into two bf16 terms, off by 2^-16 (2^-15 S allowed); int8: the weight
//     and x round to f16, 2 * 2^-11 S more.
//   With the input norm, x itself carries the norm's error, a few 1e-6 relative: 1e-5 S more.
//   Bias and residual add one rounding each: 4 u (|bias| + |residual| + |y|).
//   Gated: y = act(g) * up from g and up within e_g and e_up as above: |act'| <= 1.2 (SiLU, GELU) gives
//     1.2 e_g |up| + |act(g)| e_up, plus the activation's own 4e-6 |y| + 1e-6 (test_cuda_activation).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <tuple>
#include <vector>

#include "engine/error.h"
#include "kernels/cpu/activation.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/norm.h"
#include "kernels/cpu/quantize.h"
#include "kernels/cpu/thread_pool.h"
#include "kernels/cuda/matmul.h"
#include "tests/kernels/cuda/weight_fixture.h"

namespace kiln {
namespace {

constexpr int64_t kMaxTokens = 40;
constexpr int64_t kMaxIn = 4096;
constexpr int64_t kMaxGatedOut = 2048;

// The GEMM context for every case: its workspace fits the largest shapes below.
struct Gemm {
  cuda::DeviceBuffer workspace{cuda::gemm_workspace_bytes(kMaxTokens, kMaxIn, 600 * 4096, kMaxGatedOut)};
  cuda::GemmContext context{workspace.data(), workspace.bytes(), kMaxTokens, kMaxIn, 600 * 4096, kMaxGatedOut};
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

enum class Residual { None, Separate, InPlace };

struct Case {
  DType dtype;
  int64_t n_out, n_in, n_tokens, group_size;
  bool generic = false;
  bool norm = false;
  NormKind norm_kind = NormKind::Rms;
  Residual residual = Residual::None;
  bool gated = false;
  Activation act = Activation::Silu;
  bool x_unaligned = false;  // x one float past a 16-byte boundary
  bool x16_only = false;     // x given in f16 (MatmulArgs::x16), its f32 form all nan
  bool no_context = false;   // no GEMM context: a one-token int8 GEMV quantizes x in every block
  bool stream_weights = true;
};

cuda::Activation to_cuda(Activation a) {
  switch (a) {
    case Activation::Gelu: return cuda::Activation::Gelu;
    case Activation::GeluTanh: return cuda::Activation::GeluTanh;
    case Activation::Relu: return cuda::Activation::Relu;
    default: return cuda::Activation::Silu;
  }
}

// x quantized on the CPU (the scalar level), as the int8 matmul does it.
struct HostQuantized {
  std::vector<unsigned char> buffer;
  QuantizedActivations qa;
  HostQuantized(const std::vector<float>& x, int64_t n_tokens, int64_t n_in, int64_t group_size)
      : buffer(quantized_activations_bytes(n_tokens, n_in, group_size) + 64) {
    void* aligned = buffer.data() + (64 - reinterpret_cast<uintptr_t>(buffer.data()) % 64) % 64;
    qa = quantize_activations(x.data(), n_tokens, n_in, group_size, aligned, CpuLevel::Scalar);
  }
};

// Per output [n_tokens, n_out]: the bound before bias and residual (see the top of the file).
std::vector<double> product_bounds(const Case& c, const test::WeightFixture& w, const std::vector<float>& xin,
                                   bool gemm_path) {
  const double rel = 2 * double(c.n_in + 8) * test::kU + extra_for(c.dtype, gemm_path) + (c.norm ? 1e-5 : 0.0);
  const bool quantized = c.dtype == DType::I8 && !gemm_path;
  std::unique_ptr<HostQuantized> hq;
  if (quantized) hq = std::make_unique<HostQuantized>(xin, c.n_tokens, c.n_in, c.group_size);
  std::vector<double> bound(size_t(c.n_tokens * c.n_out));
  std::vector<float> w_row(size_t(c.n_in));
  for (int64_t r = 0; r < c.n_out; ++r) {
    dequantize_row(w.view, r, w_row.data());
    for (int64_t t = 0; t < c.n_tokens; ++t) {
      double s = 0, q = 0, group_w = 0;
      for (int64_t k = 0; k < c.n_in; ++k) {
        s += std::fabs(double(w_row[size_t(k)]) * xin[size_t(t * c.n_in + k)]);
        if (!quantized) continue;
        group_w += std::fabs(double(w_row[size_t(k)]));
        if ((k + 1) % c.group_size == 0) {
          q += hq->qa.scale[t * hq->qa.n_groups + k / c.group_size] / 2 * group_w;
          group_w = 0;
        }
      }
      bound[size_t(t * c.n_out + r)] = rel * s + q * (1 + 1e-3);  // 1e-3: the rounding of q's own terms
    }
  }
  return bound;
}

// The int8 GEMV against the CPU's int8 matmul on the same x (the GPU's own normalised x when the norm is
// fused): both quantize x alike, so only the order of the f32 sums differs.
void check_against_cpu_int8(const Case& c, const test::WeightFixture& w, const std::vector<float>& x_used,
                            const std::vector<float>& y, const std::vector<float>& bias,
                            const std::vector<float>& residual) {
  ThreadPool pool(2);
  std::vector<float> cpu(size_t(c.n_tokens * c.n_out));
  matmul(w.view, x_used.data(), cpu.data(), c.n_tokens, pool);
  const HostQuantized hq(x_used, c.n_tokens, c.n_in, c.group_size);
  const auto* wq = reinterpret_cast<const int8_t*>(w.data.data());
  const int64_t n_groups = c.n_in / c.group_size;
  const double rel = 2 * double(c.n_in / 32 + n_groups + 16) * test::kU;
  for (int64_t t = 0; t < c.n_tokens; ++t)
    for (int64_t r = 0; r < c.n_out; ++r) {
      double total = 0;  // T
      for (int64_t g = 0; g < n_groups; ++g) {
        double dot = 0;
        for (int64_t k = g * c.group_size; k < (g + 1) * c.group_size; ++k)
          dot += std::fabs(double(wq[r * c.n_in + k]) * hq.qa.q[t * hq.qa.k_pad + k]);
        total += dot * std::fabs(double(fp16_to_fp32(w.scales[size_t(r * n_groups + g)])) *
                                 hq.qa.scale[t * n_groups + g]);
      }
      const size_t i = size_t(t * c.n_out + r);
      double want = double(cpu[i]) + bias[size_t(r)];
      if (c.residual != Residual::None) want += residual[i];
      if (std::isnan(want)) {
        ASSERT_TRUE(std::isnan(y[i])) << "token " << t << " row " << r << ": the CPU gives nan";
        continue;
      }
      const double res = c.residual != Residual::None ? std::fabs(residual[i]) : 0.0;
      const double tol = rel * total + 4 * test::kU * (std::fabs(bias[size_t(r)]) + res + std::fabs(want));
      ASSERT_NEAR(y[i], want, tol) << "against the CPU int8 matmul: token " << t << " row " << r;
    }
}

void check(Gemm& gemm, const Case& c, uint32_t seed, const std::vector<float>* x_given = nullptr) {
  SCOPED_TRACE(testing::Message() << dtype_name(c.dtype) << " [" << c.n_out << ", " << c.n_in << "] x " << c.n_tokens
                                  << " tokens, group " << c.group_size << (c.generic ? " generic" : "")
                                  << (c.norm ? (c.norm_kind == NormKind::Rms ? " +rms" : " +layernorm") : "")
                                  << (c.residual == Residual::Separate  ? " +residual"
                                      : c.residual == Residual::InPlace ? " +residual in place"
                                                                        : "")
                                  << (c.gated ? " gated" : "") << (c.x16_only ? " x in f16" : ""));
  const auto w = test::make_weight(c.dtype, c.n_out, c.n_in, c.group_size, seed);
  const auto x =
      x_given != nullptr ? *x_given : test::random_floats(size_t(c.n_tokens * c.n_in), seed + 1, -1.0f, 1.0f);
  const auto bias = test::random_floats(size_t(c.n_out), seed + 2);
  const auto nw = test::random_floats(size_t(c.n_in), seed + 3, 0.5f, 1.5f);
  const auto nb = test::random_floats(size_t(c.n_in), seed + 4, -0.5f, 0.5f);
  const int64_t n_y = c.gated ? c.n_out / 2 : c.n_out;
  const auto residual = test::random_floats(size_t(c.n_tokens * n_y), seed + 5, -4.0f, 4.0f);

  std::vector<float> xin = x;  // what the product sees: x, or its norm
  if (c.norm) {
    if (c.norm_kind == NormKind::Rms) rms_norm_reference(x.data(), nw.data(), xin.data(), c.n_tokens, c.n_in, 1e-5f);
    else layer_norm_reference(x.data(), nw.data(), nb.data(), xin.data(), c.n_tokens, c.n_in, 1e-5f);
  }
  std::vector<float> ref(size_t(c.n_tokens * c.n_out));
  matmul_reference(w.view, xin.data(), ref.data(), c.n_tokens);

  std::vector<float> x_dev = x;
  if (c.x_unaligned) x_dev.insert(x_dev.begin(), 0.0f);
  const auto d_x = test::to_device(x_dev), d_bias = test::to_device(bias), d_nw = test::to_device(nw),
             d_nb = test::to_device(nb);
  const auto d_y =
      test::to_device(c.residual == Residual::InPlace ? residual : std::vector<float>(residual.size(), NAN));
  const auto d_res = test::to_device(residual);
  const auto d_xn = test::to_device(std::vector<float>(x.size(), NAN));
  std::vector<uint16_t> x16(x.size());
  for (size_t i = 0; i < x.size(); ++i) x16[i] = fp32_to_fp16(x[i]);
  const auto d_x16 = test::to_device(x16), d_nan = test::to_device(std::vector<float>(x.size(), NAN));
  cuda::MatmulArgs a;
  a.weight = w.device;
  a.x = d_x.as<float>() + (c.x_unaligned ? 1 : 0);
  if (c.x16_only) {
    a.x = d_nan.as<float>();
    a.x16 = d_x16.as<__half>();
  }
  a.y = d_y.as<float>();
  a.bias = d_bias.as<float>();
  if (c.residual == Residual::Separate) a.residual = d_res.as<float>();
  if (c.residual == Residual::InPlace) a.residual = d_y.as<float>();
  a.gated = {c.gated, to_cuda(c.act)};
  a.n_tokens = c.n_tokens;
  a.gemm = c.no_context ? nullptr : &gemm.context;
  a.stream_weights = c.stream_weights;
  a.force_generic = c.generic;
  if (c.norm) {
    a.norm.enabled = true;
    a.norm.kind = c.norm_kind;
    a.norm.weight = d_nw.as<float>();
    a.norm.bias = c.norm_kind == NormKind::Layer ? d_nb.as<float>() : nullptr;
    a.norm.out = d_xn.as<float>();
  }
  cuda::matmul(a);
  const auto y = test::to_host<float>(d_y, residual.size());

  const bool gemm_path = c.n_tokens > cuda::kGemvMaxTokens;
  const auto bound = product_bounds(c, w, xin, gemm_path);
  std::vector<double> h(ref.size());  // the reference product with its bias
  for (int64_t t = 0; t < c.n_tokens; ++t)
    for (int64_t r = 0; r < c.n_out; ++r)
      h[size_t(t * c.n_out + r)] = double(ref[size_t(t * c.n_out + r)]) + bias[size_t(r)];
  for (int64_t t = 0; t < c.n_tokens; ++t)
    for (int64_t j = 0; j < n_y; ++j) {
      const size_t i = size_t(t * n_y + j), hi = size_t(t * c.n_out + j);
      const double e = bound[hi] + 4 * test::kU * std::fabs(bias[size_t(j)]);
      if (!c.gated) {
        double want = h[hi];
        if (c.residual != Residual::None) want += residual[i];
        ASSERT_NEAR(y[i], want, e + 4 * test::kU * (std::fabs(residual[i]) + std::fabs(want)))
            << "token " << t << " output " << j;
        continue;
      }
      const size_t ui = hi + size_t(n_y);
      const float gu[2] = {float(h[hi]), float(h[ui])};
      float want = 0;
      gated_activation_reference(gu, &want, 1, 1, c.act);
      float act_g = 0;
      const float g1[2] = {float(h[hi]), 1.0f};
      gated_activation_reference(g1, &act_g, 1, 1, c.act);
      const double e_up = bound[ui] + 4 * test::kU * std::fabs(bias[size_t(n_y + j)]);
      const double tol = 1.2 * e * (std::fabs(h[ui]) + e_up) + std::fabs(act_g) * e_up + 4e-6 * std::fabs(want) + 1e-6 +
                         2 * test::kU * std::fabs(want);
      ASSERT_NEAR(y[i], want, tol) << "token " << t << " output " << j;
    }
  std::vector<float> xn(x.size());
  if (c.norm) {
    xn = test::to_host<float>(d_xn, x.size());
    for (size_t i = 0; i < xn.size(); ++i)
      ASSERT_NEAR(xn[i], xin[i], 1e-5 * (std::fabs(xin[i]) + 1)) << "norm at " << i;
  }
  if (c.dtype == DType::I8 && !gemm_path && !c.gated) check_against_cpu_int8(c, w, c.norm ? xn : x, y, bias, residual);
}

const std::pair<int64_t, int64_t> kShapes[] = {{1, 16}, {7, 48}, {33, 200}, {128, 576}, {577, 1000}, {64, 4096},
                                               {130, 1536}, {9, 198}};

TEST(CudaMatmul, EveryDtypeAndShapeMatchesReference) {
  KILN_REQUIRE_GPU();
  Gemm gemm;
  uint32_t seed = 1;
  for (DType dtype : {DType::F32, DType::F16, DType::BF16, DType::I8})
    for (auto [n_out, n_in] : kShapes)
      for (int64_t n_tokens : {1, 2, 3, 5, 8, 9, 16, 33})
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
    for (DType dtype : {DType::F32, DType::F16, DType::BF16, DType::I8})
      for (auto [n_out, n_in] : {std::pair<int64_t, int64_t>{96, 576}, {40, 4096}, {33, 200}})
        for (int64_t n_tokens : {1, 3, 8, 9})
          check(gemm, {dtype, n_out, n_in, n_tokens, group_for(n_in, 64), false, true, kind}, seed++);
}

// 8 tokens of 8192 or 16384 inputs do not fit shared memory together: the GEMV runs in several passes.
TEST(CudaMatmul, TokensInSeveralPasses) {
  KILN_REQUIRE_GPU();
  Gemm gemm;
  uint32_t seed = 3500;
  for (DType dtype : {DType::F16, DType::I8})
    for (int64_t n_in : {8192, 16384})
      for (bool norm : {false, true}) check(gemm, {dtype, 24, n_in, 8, 64, false, norm}, seed++);
}

// One token of f16 or bf16 weights of 16 MiB or more streams through shared memory (gemv_streamed.cu):
// warps of several tiles and segments, a last segment of part of its 2 KB, warps without a tile; with the
// norm, the residual and the gated epilogue. 40,000 inputs leave no room for the stages: the register
// GEMV runs.
// The same shapes with stream_weights off run the register GEMV.
TEST(CudaMatmul, StreamedGemvOfLargeMatrices) {
  KILN_REQUIRE_GPU();
  Gemm gemm;
  uint32_t seed = 3600;
  for (bool stream : {true, false})
    for (DType dtype : {DType::F16, DType::BF16}) {
      Case plain{dtype, 8200, 1040, 1, 0};
      plain.stream_weights = stream;
      check(gemm, plain, seed++);
      Case gated{dtype, 2 * 2050, 2064, 1, 0};
      gated.gated = true;
      gated.norm = true;
      gated.stream_weights = stream;
      check(gemm, gated, seed++);
      Case residual{dtype, 2 * 4096, 4096, 1, 0};
      residual.residual = Residual::InPlace;
      residual.stream_weights = stream;
      check(gemm, residual, seed++);
      check(gemm, {dtype, 300, 40000, 1, 0, false, true}, seed++);
    }
}

// One token of int8 weights, rows of 2,048 inputs or more: x quantized once before the GEMV into the GEMM
// context's scratch, or (no context) by every block; both against the CPU's int8 matmul (check), with the
// norm, the residual and the gated epilogue, several group sizes and a row of 11,008 inputs.
TEST(CudaMatmul, Int8OneTokenQuantizedOnceOrPerBlock) {
  KILN_REQUIRE_GPU();
  Gemm gemm;
  uint32_t seed = 3700;
  for (bool no_context : {false, true})
    for (int64_t group : {16, 64, 128}) {
      Case plain{DType::I8, 300, 4096, 1, group};
      plain.no_context = no_context;
      check(gemm, plain, seed++);
      Case normed{DType::I8, 96, 4096, 1, group, false, true, NormKind::Layer};
      normed.residual = Residual::InPlace;
      normed.no_context = no_context;
      check(gemm, normed, seed++);
      Case gated{DType::I8, 2 * 200, 2048, 1, group, false, true};
      gated.gated = true;
      gated.no_context = no_context;
      check(gemm, gated, seed++);
      Case down{DType::I8, 64, 11008, 1, group};
      down.no_context = no_context;
      check(gemm, down, seed++);
    }
}

// One token of int8 weights of 16 MiB or more streams too, x quantized in every block, each segment's
// scales copied beside it: groups of 16 to 1,024, last segments of part of their 2 KB (2,080 and 4,224
// inputs), the norm, the gated and the residual epilogues; an odd number of groups a row (65 of 32) runs
// the register GEMV, as does every shape with stream_weights off.
TEST(CudaMatmul, StreamedInt8GemvOfLargeMatrices) {
  KILN_REQUIRE_GPU();
  Gemm gemm;
  uint32_t seed = 3800;
  for (bool stream : {true, false}) {
    for (int64_t group : {16, 32}) {
      Case plain{DType::I8, 8200, 2080, 1, group};
      plain.stream_weights = stream;
      check(gemm, plain, seed++);
    }
    Case normed{DType::I8, 4100, 4224, 1, 64, false, true};
    normed.stream_weights = stream;
    check(gemm, normed, seed++);
    Case gated{DType::I8, 2 * 2050, 4352, 1, 128, false, true};
    gated.gated = true;
    gated.stream_weights = stream;
    check(gemm, gated, seed++);
    Case residual{DType::I8, 2 * 4096, 4096, 1, 1024};
    residual.residual = Residual::InPlace;
    residual.stream_weights = stream;
    check(gemm, residual, seed++);
  }
}

// x off the 16-byte alignment: the GEMV stages it element by element instead of reading float4s.
TEST(CudaMatmul, UnalignedInput) {
  KILN_REQUIRE_GPU();
  Gemm gemm;
  uint32_t seed = 3700;
  for (DType dtype : {DType::F32, DType::F16, DType::BF16, DType::I8})
    for (auto [n_out, n_in] : {std::pair<int64_t, int64_t>{64, 576}, {7, 48}})
      for (int64_t n_tokens : {1, 3}) {
        Case c{dtype, n_out, n_in, n_tokens, group_for(n_in, 16)};
        c.x_unaligned = true;
        check(gemm, c, seed++);
      }
}

TEST(CudaMatmul, ResidualEpilogue) {
  KILN_REQUIRE_GPU();
  Gemm gemm;
  uint32_t seed = 4000;
  for (Residual res : {Residual::Separate, Residual::InPlace})
    for (DType dtype : {DType::F32, DType::F16, DType::BF16, DType::I8})
      for (auto [n_out, n_in] : {std::pair<int64_t, int64_t>{96, 576}, {577, 1000}, {9, 198}})
        for (int64_t n_tokens : {1, 4, 8, 9})
          for (bool generic : {false, true}) {
            Case c{dtype, n_out, n_in, n_tokens, group_for(n_in, 64), generic};
            c.residual = res;
            c.norm = n_tokens == 4;
            check(gemm, c, seed++);
          }
}

TEST(CudaMatmul, GatedEpilogue) {
  KILN_REQUIRE_GPU();
  Gemm gemm;
  uint32_t seed = 5000;
  for (Activation act : {Activation::Silu, Activation::Gelu, Activation::GeluTanh, Activation::Relu})
    for (DType dtype : {DType::F32, DType::F16, DType::BF16, DType::I8})
      for (auto [n_out, n_in] : {std::pair<int64_t, int64_t>{2 * 96, 576}, {2 * 577, 1000}, {2, 48}, {2 * 9, 198}})
        for (int64_t n_tokens : {1, 3, 8, 9})
          for (bool generic : {false, true}) {
            if (generic && act != Activation::Silu) continue;
            Case c{dtype, n_out, n_in, n_tokens, group_for(n_in, 64), generic};
            c.gated = true;
            c.act = act;
            c.norm = n_tokens == 3;
            check(gemm, c, seed++);
          }
}

// Values exactly halfway between two int8 steps (max|x| = 127, so x * 127 / max|x| is x): both backends
// round them to even. A one-step difference would move y by ~1/(30 n_in) of S, far above the bound.
TEST(CudaMatmul, Int8QuantizationTiesRoundToEven) {
  KILN_REQUIRE_GPU();
  Gemm gemm;
  for (int64_t n_tokens : {1, 4}) {
    const int64_t n_in = 64;
    std::vector<float> x(size_t(n_tokens * n_in));
    for (size_t i = 0; i < x.size(); ++i) x[i] = i % 16 == 0 ? 127.0f : float(int(i * 7 % 41) - 20) + 0.5f;
    for (bool generic : {false, true}) check(gemm, {DType::I8, 33, n_in, n_tokens, 16, generic}, 6000, &x);
  }
}

// An inf in one group poisons that token's outputs (a nan scale), as on the CPU; other tokens are finite.
TEST(CudaMatmul, Int8NonFiniteInputPoisonsItsToken) {
  KILN_REQUIRE_GPU();
  const int64_t n_in = 256, n_out = 17, n_tokens = 3;
  const auto w = test::make_weight(DType::I8, n_out, n_in, 64, 7);
  auto x = test::random_floats(size_t(n_tokens * n_in), 8);
  x[size_t(n_in + 70)] = std::numeric_limits<float>::infinity();
  const auto d_x = test::to_device(x);
  const auto d_y = test::to_device(std::vector<float>(size_t(n_tokens * n_out)));
  for (bool generic : {false, true}) {
    cuda::MatmulArgs a;
    a.weight = w.device;
    a.x = d_x.as<float>();
    a.y = d_y.as<float>();
    a.n_tokens = n_tokens;
    a.force_generic = generic;
    cuda::matmul(a);
    const auto y = test::to_host<float>(d_y, size_t(n_tokens * n_out));
    for (int64_t t = 0; t < n_tokens; ++t)
      for (int64_t r = 0; r < n_out; ++r)
        EXPECT_EQ(std::isnan(y[size_t(t * n_out + r)]), t == 1) << "token " << t << " row " << r;
  }
}

// The GEMM reads x16 when given (x itself is nan here): with the residual epilogue, as the down projection
// after the activation runs it.
TEST(CudaMatmul, GemmReadsGivenF16Input) {
  KILN_REQUIRE_GPU();
  Gemm gemm;
  uint32_t seed = 7000;
  for (DType dtype : {DType::F16, DType::I8})
    for (auto [n_out, n_in] : {std::pair<int64_t, int64_t>{96, 576}, {577, 1000}})
      for (int64_t n_tokens : {9, 33})
        for (Residual res : {Residual::None, Residual::InPlace}) {
          Case c{dtype, n_out, n_in, n_tokens, group_for(n_in, 64)};
          c.residual = res;
          c.x16_only = true;
          check(gemm, c, seed++);
        }
}

// A product split over its inputs (k_split): part p is the GEMM of W's and x's columns [p k, (p + 1) k),
// within the GEMM bound above taken over those k inputs, and nothing else is added to it.
TEST(CudaMatmul, ProductSplitOverInputs) {
  KILN_REQUIRE_GPU();
  Gemm gemm;
  uint32_t seed = 8000;
  for (DType dtype : {DType::F32, DType::F16, DType::BF16, DType::I8})
    for (auto [n_out, n_in, split] : {std::tuple<int64_t, int64_t, int>{64, 4096, 2}, {130, 1536, 4}, {96, 576, 3}})
      for (int64_t n_tokens : {9, 33}) {
        SCOPED_TRACE(testing::Message() << dtype_name(dtype) << " [" << n_out << ", " << n_in << "] x " << n_tokens
                                        << " tokens in " << split << " parts");
        const int64_t k = n_in / split, stride = (n_tokens + 3) * n_out;
        const auto w = test::make_weight(dtype, n_out, n_in, group_for(n_in, 64), seed++);
        const auto x = test::random_floats(size_t(n_tokens * n_in), seed++, -1.0f, 1.0f);
        const auto d_x = test::to_device(x);
        const auto d_y = test::to_device(std::vector<float>(size_t(split * stride), NAN));
        cuda::MatmulArgs a;
        a.weight = w.device;
        a.x = d_x.as<float>();
        a.y = d_y.as<float>();
        a.n_tokens = n_tokens;
        a.k_split = split;
        a.split_stride = stride;
        a.gemm = &gemm.context;
        cuda::matmul(a);
        const auto y = test::to_host<float>(d_y, size_t(split * stride));
        const double rel = 2 * double(k + 8) * test::kU + extra_for(dtype, true);
        std::vector<float> w_row(static_cast<size_t>(n_in));
        for (int64_t r = 0; r < n_out; ++r) {
          dequantize_row(w.view, r, w_row.data());
          for (int p = 0; p < split; ++p)
            for (int64_t t = 0; t < n_tokens; ++t) {
              double want = 0, s = 0;
              for (int64_t i = p * k; i < (p + 1) * k; ++i) {
                const double term = double(w_row[size_t(i)]) * x[size_t(t * n_in + i)];
                want += term;
                s += std::fabs(term);
              }
              ASSERT_NEAR(y[size_t(p * stride + t * n_out + r)], want, rel * s)
                  << "part " << p << " token " << t << " output " << r;
            }
        }
      }
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
  a.n_tokens = 1;
  a.gated.enabled = true;
  a.residual = d_y.as<float>();  // gated and residual together
  EXPECT_THROW(cuda::matmul(a), Error);
  const auto odd = test::make_weight(DType::F16, 3, 64, 0, 1);
  a.weight = odd.device;  // gated needs an even number of rows
  a.residual = nullptr;
  EXPECT_THROW(cuda::matmul(a), Error);
  Gemm gemm;
  const auto big = test::make_weight(DType::F16, 2 * kMaxGatedOut + 2, 64, 0, 1);
  a.weight = big.device;  // more gated rows than the GEMM context's buffer holds
  a.n_tokens = 20;
  a.gemm = &gemm.context;
  EXPECT_THROW(cuda::matmul(a), Error);  const auto narrow = test::make_weight(DType::F16, 4, 200, 0, 1);
  const auto d_x200 = test::to_device(std::vector<float>(20 * 200));
  const auto d_parts = test::to_device(std::vector<float>(2 * 20 * 4));
  a.weight = narrow.device;
  a.gated.enabled = false;
  a.x = d_x200.as<float>();
  a.y = d_parts.as<float>();
  a.k_split = 2;  // 100 inputs a part: not a multiple of 8
  a.split_stride = 20 * 4;
  EXPECT_THROW(cuda::matmul(a), Error);
  a.weight = w.device;  // 64 inputs: 32 a part
  EXPECT_NO_THROW(cuda::matmul(a));
  a.split_stride = 20 * 4 - 1;  // parts overlap
  EXPECT_THROW(cuda::matmul(a), Error);
  a.split_stride = 20 * 4;
  a.residual = d_parts.as<float>();  // a split product adds nothing
  EXPECT_THROW(cuda::matmul(a), Error);
  a.residual = nullptr;
  a.n_tokens = 8;  // the GEMV path does not split
  EXPECT_THROW(cuda::matmul(a), Error);
}

}  // namespace
}  // namespace kiln
