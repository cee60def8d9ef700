#include "kernels/cuda/residual.h"

#include <algorithm>

#include "engine/error.h"
#include "kernels/cuda/cuda_util.h"

namespace kiln::cuda {
namespace {

constexpr int kThreads = 256;

// The same order of additions as the CPU: (a + a_bias) + (b + b_bias), then added to the residual.
__global__ void residual_add_bias_kernel(float* residual, const float* __restrict__ a,
                                         const float* __restrict__ a_bias, const float* __restrict__ b,
                                         const float* __restrict__ b_bias, int64_t n, int64_t dim) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t col = i % dim;
    float update = a[i];
    if (a_bias != nullptr) update += a_bias[col];
    if (b != nullptr) {
      float other = b[i];
      if (b_bias != nullptr) other += b_bias[col];
      update += other;
    }
    residual[i] += update;
  }
}

void residual_add_bias_launch(const ResidualArgs& a) {
  const int64_t n = a.n_tokens * a.dim;
  const unsigned grid = unsigned(std::min<int64_t>((n + kThreads - 1) / kThreads, 65536));
  residual_add_bias_kernel<<<grid, kThreads, 0, a.stream>>>(a.residual, a.a, a.a_bias, a.b,
                                                            a.b != nullptr ? a.b_bias : nullptr, n, a.dim);
  KILN_CUDA_CHECK_LAUNCH();
}

}  // namespace

void residual_add_bias(const ResidualArgs& a) {
  KILN_CHECK(a.n_tokens >= 0 && a.dim >= 0, "cuda residual_add_bias: bad shape [{}, {}]", a.n_tokens, a.dim);
  if (a.n_tokens * a.dim == 0) return;
  KILN_CHECK(a.residual != nullptr && a.a != nullptr, "cuda residual_add_bias: residual and a must not be null");
  residual_add_bias_launch(a);
}

}  // namespace kiln::cuda
