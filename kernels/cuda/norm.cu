#include "kernels/cuda/norm.h"

#include <cmath>

#include "engine/error.h"
#include "kernels/cuda/cuda_util.h"
#include "kernels/cuda/device_common.cuh"

namespace kiln::cuda {
namespace {

constexpr int kThreads = 256;

// One block per token. LayerNorm takes the variance about the mean in a second pass (no E[x^2] - mean^2
// cancellation); x stays in L1/L2 between the passes. The path for rows wider than kMaxKept * kThreads.
template <bool kLayer>
__global__ void norm_kernel(const float* x, const float* __restrict__ weight,
                            const float* __restrict__ bias, float* y, __half* __restrict__ y16, int64_t dim,
                            float eps) {
  __shared__ float scratch[32];
  const float* xt = x + blockIdx.x * dim;
  float* yt = y + blockIdx.x * dim;
  float mean = 0.0f;
  if constexpr (kLayer) {
    float sum = 0.0f;
    for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) sum += xt[i];
    mean = block_sum(sum, scratch) / float(dim);
  }
  float sum_sq = 0.0f;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
    const float v = xt[i] - mean;
    sum_sq += v * v;
  }
  const float scale = rsqrtf(block_sum(sum_sq, scratch) / float(dim) + eps);
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
    float v = (xt[i] - mean) * scale * weight[i];
    if (bias != nullptr) v += bias[i];
    yt[i] = v;
    if (y16 != nullptr) y16[blockIdx.x * dim + i] = __float2half_rn(v);
  }
}

// The same sums in the same order, with the row kept in registers (kPer values a thread, loaded together).
// The loop above re-reads x after each store to y, which may be x, so it waits on one load at a time: a
// 4096-wide row took 13 us.
// With kParts pending products, the row is completed first (pending.sum: x + parts + bias, in that order); a
// count known here lets every load of the row go out together.
template <bool kLayer, int kPer, int kParts>
__global__ void __launch_bounds__(kThreads) norm_kept_kernel(const float* x, const float* __restrict__ weight,
                                                             const float* __restrict__ bias, float* y,
                                                             __half* __restrict__ y16, int64_t dim, float eps,
                                                             PendingSum pending) {
  __shared__ float scratch[32];
  const int n = int(dim);  // at most kMaxKept * kThreads
  const float* xt = x + blockIdx.x * dim;
  const auto in_row = [&](int j) { return int(threadIdx.x) + j * kThreads < n; };
  float v[kPer], w[kPer];  // the weights load with the row, not after its sums
#pragma unroll
  for (int j = 0; j < kPer; ++j) {
    v[j] = in_row(j) ? xt[int(threadIdx.x) + j * kThreads] : 0.0f;
    w[j] = in_row(j) ? weight[int(threadIdx.x) + j * kThreads] : 0.0f;
  }
  if constexpr (kParts > 0) {
#pragma unroll
    for (int p = 0; p < kParts; ++p) {
      const float* part = pending.parts + p * pending.stride + blockIdx.x * dim;
#pragma unroll
      for (int j = 0; j < kPer; ++j)
        if (in_row(j)) v[j] += part[int(threadIdx.x) + j * kThreads];
    }
#pragma unroll
    for (int j = 0; j < kPer; ++j) {
      const int i = int(threadIdx.x) + j * kThreads;
      if (!in_row(j)) continue;
      if (pending.bias != nullptr) v[j] += pending.bias[i];
      pending.sum[blockIdx.x * dim + i] = v[j];
    }
  }
  float mean = 0.0f;
  if constexpr (kLayer) {
    float sum = 0.0f;
#pragma unroll
    for (int j = 0; j < kPer; ++j)
      if (in_row(j)) sum += v[j];
    mean = block_sum(sum, scratch) / float(dim);
  }
  float sum_sq = 0.0f;
#pragma unroll
  for (int j = 0; j < kPer; ++j)
    if (in_row(j)) sum_sq += (v[j] - mean) * (v[j] - mean);
  const float scale = rsqrtf(block_sum(sum_sq, scratch) / float(dim) + eps);
  float* yt = y + blockIdx.x * dim;
  __half* yt16 = y16 != nullptr ? y16 + blockIdx.x * dim : nullptr;
#pragma unroll
  for (int j = 0; j < kPer; ++j) {
    const int i = int(threadIdx.x) + j * kThreads;
    if (i >= n) continue;
    float o = (v[j] - mean) * scale * w[j];
    if (bias != nullptr) o += bias[i];
    yt[i] = o;
    if (yt16 != nullptr) yt16[i] = __float2half_rn(o);
  }
}

constexpr int kMaxKept = 32;  // values a thread keeps: rows up to 8192 wide
static_assert(kMaxKept * kThreads == kNormMaxPendingDim, "pending products are added by the kept kernels only");

template <bool kLayer, int kParts>
void norm_launch(const NormArgs& a) {
  const dim3 grid(unsigned(a.n_tokens));
  const int64_t per = (a.dim + kThreads - 1) / kThreads;
  auto kept = [&](auto kernel) {
    kernel<<<grid, kThreads, 0, a.stream>>>(a.x, a.weight, a.bias, a.y, a.y16, a.dim, a.eps, a.pending);
  };
  if (per <= 1) kept(norm_kept_kernel<kLayer, 1, kParts>);
  else if (per <= 2) kept(norm_kept_kernel<kLayer, 2, kParts>);
  else if (per <= 4) kept(norm_kept_kernel<kLayer, 4, kParts>);
  else if (per <= 8) kept(norm_kept_kernel<kLayer, 8, kParts>);
  else if (per <= 16) kept(norm_kept_kernel<kLayer, 16, kParts>);
  else if (per <= kMaxKept) kept(norm_kept_kernel<kLayer, kMaxKept, kParts>);
  else norm_kernel<kLayer><<<grid, kThreads, 0, a.stream>>>(a.x, a.weight, a.bias, a.y, a.y16, a.dim, a.eps);
  KILN_CUDA_CHECK_LAUNCH();
}

template <bool kLayer>
void norm_launch(const NormArgs& a) {
  static_assert(kNormMaxPendingParts == 2, "a kernel for each count of pending products");
  if (a.pending.count == 0) norm_launch<kLayer, 0>(a);
  else if (a.pending.count == 1) norm_launch<kLayer, 1>(a);
  else norm_launch<kLayer, 2>(a);
}

}  // namespace

void norm(const NormArgs& a) {
  KILN_CHECK(a.n_tokens >= 0 && a.n_tokens < (int64_t(1) << 31) && a.dim > 0, "cuda norm: bad shape [{}, {}]",
             a.n_tokens, a.dim);
  KILN_CHECK(a.eps >= 0 && std::isfinite(a.eps), "cuda norm: eps is {}, it must be finite and >= 0", a.eps);
  if (a.n_tokens == 0) return;
  KILN_CHECK(a.x != nullptr && a.weight != nullptr && a.y != nullptr, "cuda norm: null input, weight or output");
  const PendingSum& p = a.pending;
  KILN_CHECK(p.count >= 0 && p.count <= kNormMaxPendingParts &&
                 (p.count == 0 || (p.parts != nullptr && p.sum != nullptr && p.stride >= a.n_tokens * a.dim &&
                                   a.dim <= kNormMaxPendingDim)),
             "cuda norm: {} pending products (at most {}, stride {}) for rows of {} need parts, a sum and rows of "
             "at most {}",
             p.count, kNormMaxPendingParts, p.stride, a.dim, kNormMaxPendingDim);
  if (a.kind == NormKind::Layer) norm_launch<true>(a);
  else norm_launch<false>(a);
}

}  // namespace kiln::cuda
