#include "kernels/cuda/norm.h"

#include <cmath>

#include "engine/error.h"
#include "kernels/cuda/cuda_util.h"
#include "kernels/cuda/device_common.cuh"

namespace kiln::cuda {
namespace {

constexpr int kThreads = 256;

// One block per token. LayerNorm takes the variance about the mean in a second pass (no E[x^2] - mean^2
// cancellation); x stays in L1/L2 between the passes.
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

void norm_launch(const NormArgs& a) {
  const dim3 grid(unsigned(a.n_tokens));
  if (a.kind == NormKind::Layer)
    norm_kernel<true><<<grid, kThreads, 0, a.stream>>>(a.x, a.weight, a.bias, a.y, a.y16, a.dim, a.eps);
  else
    norm_kernel<false><<<grid, kThreads, 0, a.stream>>>(a.x, a.weight, a.bias, a.y, a.y16, a.dim, a.eps);
  KILN_CUDA_CHECK_LAUNCH();
}

}  // namespace

void norm(const NormArgs& a) {
  KILN_CHECK(a.n_tokens >= 0 && a.n_tokens < (int64_t(1) << 31) && a.dim > 0, "cuda norm: bad shape [{}, {}]",
             a.n_tokens, a.dim);
  KILN_CHECK(a.eps >= 0 && std::isfinite(a.eps), "cuda norm: eps is {}, it must be finite and >= 0", a.eps);
  if (a.n_tokens == 0) return;
  KILN_CHECK(a.x != nullptr && a.weight != nullptr && a.y != nullptr, "cuda norm: null input, weight or output");
  norm_launch(a);
}

}  // namespace kiln::cuda
