// cuda::norm (RMSNorm, LayerNorm, with and without bias, in place) against the CPU's double-precision
// references over odd sizes. Tolerance: each thread sums dim / 256 values and the block adds 256
// partials in a tree, so an f32 sum is off by at most (dim / 256 + 8) u of the sum of magnitudes;
// through the square root and the products that bounds |y - ref| by rel |ref|, rel = (dim / 256 + 16)
// 4 u, plus a few u of the largest output; LayerNorm adds the mean's error, rel mean|x| / sigma |w|.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "engine/error.h"
#include "kernels/cpu/norm.h"
#include "kernels/cuda/norm.h"
#include "tests/kernels/cuda/cuda_test_util.h"
#include "tests/kernels/kernel_test_util.h"

namespace kiln {
namespace {

void check(NormKind kind, bool bias, bool in_place, int64_t n_tokens, int64_t dim, uint32_t seed) {
  SCOPED_TRACE(testing::Message() << (kind == NormKind::Rms ? "rms" : "layer") << " bias " << bias << " in place "
                                  << in_place << " [" << n_tokens << ", " << dim << "]");
  // LayerNorm inputs sit on an offset of 3, which a one-pass variance would cancel badly.
  const float offset = kind == NormKind::Layer ? 3.0f : 0.0f;
  const auto x = test::random_floats(size_t(n_tokens * dim), seed, offset - 1.0f, offset + 1.0f);
  const auto weight = test::random_floats(size_t(dim), seed + 1, 0.5f, 1.5f);
  const auto b = test::random_floats(size_t(dim), seed + 2, -0.5f, 0.5f);
  std::vector<float> ref(x.size());
  if (kind == NormKind::Rms) {
    rms_norm_reference(x.data(), weight.data(), ref.data(), n_tokens, dim, 1e-5f);
    if (bias)
      for (size_t i = 0; i < ref.size(); ++i) ref[i] = float(double(ref[i]) + double(b[i % size_t(dim)]));
  } else {
    layer_norm_reference(x.data(), weight.data(), bias ? b.data() : nullptr, ref.data(), n_tokens, dim, 1e-5f);
  }

  const auto d_x = test::to_device(x), d_w = test::to_device(weight), d_b = test::to_device(b);
  const auto d_y = test::to_device(std::vector<float>(x.size(), NAN));
  cuda::DeviceBuffer d_y16(x.size() * sizeof(uint16_t));
  cuda::NormArgs a;
  a.kind = kind;
  a.x = d_x.as<float>();
  a.weight = d_w.as<float>();
  a.bias = bias ? d_b.as<float>() : nullptr;
  a.y = in_place ? d_x.as<float>() : d_y.as<float>();
  a.n_tokens = n_tokens;
  a.dim = dim;
  a.eps = 1e-5f;
  a.y16 = seed % 2 == 0 ? d_y16.as<__half>() : nullptr;  // every other case also writes y in f16
  cuda::norm(a);
  const auto y = test::to_host<float>(in_place ? d_x : d_y, x.size());
  if (a.y16 != nullptr) test::expect_f16_copy(d_y16, y);
  double largest = 0, w_max = 0;
  for (float v : ref) largest = std::max(largest, double(std::fabs(v)));
  for (float v : weight) w_max = std::max(w_max, double(std::fabs(v)));
  const double rel = (double(dim) / 256 + 16) * 4 * test::kU;
  for (int64_t t = 0; t < n_tokens; ++t) {
    // LayerNorm: the f32 mean is off by rel * mean|x|, which x - mean carries into every output of the
    // row, times the row's 1/sigma and the weight.
    double mean = 0, mean_abs = 0, var = 0;
    for (int64_t i = 0; i < dim; ++i) mean += x[size_t(t * dim + i)], mean_abs += std::fabs(x[size_t(t * dim + i)]);
    mean /= double(dim);
    mean_abs /= double(dim);
    for (int64_t i = 0; i < dim; ++i) var += (x[size_t(t * dim + i)] - mean) * (x[size_t(t * dim + i)] - mean);
    const double shift = kind == NormKind::Layer ? rel * mean_abs / std::sqrt(var / double(dim) + 1e-5) * w_max : 0.0;
    for (int64_t i = 0; i < dim; ++i) {
      const size_t k = size_t(t * dim + i);
      ASSERT_NEAR(y[k], ref[k], rel * std::fabs(ref[k]) + shift + 4 * test::kU * largest) << "at " << k;
    }
  }
}

TEST(CudaNorm, MatchesReferenceOverOddShapes) {
  KILN_REQUIRE_GPU();
  uint32_t seed = 1;
  for (NormKind kind : {NormKind::Rms, NormKind::Layer})
    for (bool bias : {false, true})
      for (int64_t dim : {1, 7, 64, 576, 769, 4096, 5125, 8192, 9000})  // 9000: too wide to keep in registers
        for (int64_t n_tokens : {1, 3, 16}) check(kind, bias, false, n_tokens, dim, seed++);
}

TEST(CudaNorm, InPlace) {
  KILN_REQUIRE_GPU();
  check(NormKind::Rms, false, true, 5, 576, 7);
  check(NormKind::Layer, true, true, 5, 769, 8);
  check(NormKind::Rms, true, true, 3, 9000, 9);
}

// Products still pending (a GEMM's parts split over its inputs) join x before the norm: the sum written out
// is x + parts + bias added in that order, bit for bit the host's f32 sum, and the output is bit for bit the
// norm of that sum given as x (whose own accuracy the tests above check).
TEST(CudaNorm, AddsPendingProductsFirst) {
  KILN_REQUIRE_GPU();
  uint32_t seed = 100;
  for (NormKind kind : {NormKind::Rms, NormKind::Layer})
    for (int64_t dim : {7, 576, 4096, 8192})
      for (int count : {1, 2})
        for (bool bias : {false, true}) {
          SCOPED_TRACE(testing::Message() << "dim " << dim << ", " << count << " parts, bias " << bias);
          const int64_t n = 5, stride = (n + 1) * dim;  // a row's gap between the parts
          const auto x = test::random_floats(size_t(n * dim), seed++, -2.0f, 2.0f);
          const auto parts = test::random_floats(size_t(count * stride), seed++, -1.0f, 1.0f);
          const auto b = test::random_floats(size_t(dim), seed++, -0.5f, 0.5f);
          const auto weight = test::random_floats(size_t(dim), seed++, 0.5f, 1.5f);
          std::vector<float> sum(x.size());
          for (int64_t t = 0; t < n; ++t)
            for (int64_t i = 0; i < dim; ++i) {
              float v = x[size_t(t * dim + i)];
              for (int p = 0; p < count; ++p) v += parts[size_t(p * stride + t * dim + i)];
              if (bias) v += b[size_t(i)];
              sum[size_t(t * dim + i)] = v;
            }
          const auto d_x = test::to_device(x), d_parts = test::to_device(parts), d_b = test::to_device(b),
                     d_w = test::to_device(weight), d_sum = test::to_device(sum);
          const auto d_y = test::to_device(std::vector<float>(x.size(), NAN));
          const auto d_ref = test::to_device(std::vector<float>(x.size(), NAN));
          cuda::NormArgs a;
          a.kind = kind;
          a.weight = d_w.as<float>();
          a.n_tokens = n;
          a.dim = dim;
          a.x = d_sum.as<float>();
          a.y = d_ref.as<float>();
          cuda::norm(a);  // the norm of the host's sum
          a.x = d_x.as<float>();
          a.y = d_y.as<float>();
          a.pending = {d_parts.as<float>(), count, stride, bias ? d_b.as<float>() : nullptr, d_x.as<float>()};
          cuda::norm(a);  // the residual completed in place
          const auto got_sum = test::to_host<float>(d_x, x.size());
          const auto y = test::to_host<float>(d_y, x.size()), ref = test::to_host<float>(d_ref, x.size());
          for (size_t i = 0; i < x.size(); ++i) {
            ASSERT_EQ(got_sum[i], sum[i]) << "sum at " << i;
            ASSERT_EQ(y[i], ref[i]) << "output at " << i;
          }
        }
}

TEST(CudaNorm, RejectsBadArguments) {
  KILN_REQUIRE_GPU();
  cuda::NormArgs a;
  a.n_tokens = 1;
  a.dim = 0;
  EXPECT_THROW(cuda::norm(a), Error);
  a.dim = 4;
  EXPECT_THROW(cuda::norm(a), Error);  // null pointers
  const auto d = test::to_device(std::vector<float>(2 * 9000, 1.0f));
  a.x = a.weight = d.as<float>();
  a.y = d.as<float>() + 9000;
  a.pending = {d.as<float>(), 1, 4, nullptr, nullptr};
  EXPECT_THROW(cuda::norm(a), Error);  // pending products without a sum to write
  a.pending.sum = d.as<float>();
  a.pending.stride = 2;
  EXPECT_THROW(cuda::norm(a), Error);  // parts closer than a row apart
  a.pending.stride = 4;
  a.pending.count = 3;
  EXPECT_THROW(cuda::norm(a), Error);  // more parts than kNormMaxPendingParts
  a.pending.count = 1;
  a.dim = 9000;
  a.pending.stride = 9000;
  EXPECT_THROW(cuda::norm(a), Error);  // pending products beside a row wider than kNormMaxPendingDim
}

}  // namespace
}  // namespace kiln
