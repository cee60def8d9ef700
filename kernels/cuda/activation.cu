#include "kernels/cuda/activation.h"

#include <algorithm>
#include <type_traits>

#include "engine/error.h"
#include "kernels/cuda/activate.cuh"
#include "kernels/cuda/cuda_util.h"

namespace kiln::cuda {
namespace {

constexpr int kThreads = 256;

// Blocks over (column range blockIdx.x, rows from blockIdx.y): no 64-bit division by the row length for
// every value, which a flat index over all of them took.
template <Activation kAct>
__global__ void gated_activation_kernel(const float* __restrict__ gate_up, float* __restrict__ out,
                                        __half* __restrict__ out16, int64_t n_tokens, int ffn) {
  for (int64_t t = blockIdx.y; t < n_tokens; t += gridDim.y) {
    const float* row = gate_up + t * 2 * ffn;
    for (int col = blockIdx.x * blockDim.x + threadIdx.x; col < ffn; col += gridDim.x * blockDim.x) {
      const float v = activate<kAct>(row[col]) * row[ffn + col];
      if (out != nullptr) out[t * ffn + col] = v;
      if (out16 != nullptr) out16[t * ffn + col] = __float2half_rn(v);
    }
  }
}

template <Activation kAct>
__global__ void bias_activation_kernel(float* x, __half* __restrict__ x16, const float* __restrict__ bias,
                                       int64_t n_tokens, int dim) {
  for (int64_t t = blockIdx.y; t < n_tokens; t += gridDim.y)
    for (int col = blockIdx.x * blockDim.x + threadIdx.x; col < dim; col += gridDim.x * blockDim.x) {
      const int64_t i = t * dim + col;
      const float v = activate<kAct>(bias != nullptr ? x[i] + bias[col] : x[i]);
      x[i] = v;
      if (x16 != nullptr) x16[i] = __float2half_rn(v);
    }
}

dim3 grid_for(int64_t n_tokens, int64_t cols) {
  return dim3(unsigned(std::min<int64_t>((cols + kThreads - 1) / kThreads, 65535)),
              unsigned(std::min<int64_t>(n_tokens, 65535)));
}

// Calls launch with the activation as a compile-time constant (std::integral_constant), for the kernels'
// template argument.
template <typename Launch>
void with_activation(Activation act, Launch launch) {
  switch (act) {
    case Activation::Gelu: return launch(std::integral_constant<Activation, Activation::Gelu>{});
    case Activation::GeluTanh: return launch(std::integral_constant<Activation, Activation::GeluTanh>{});
    case Activation::Relu: return launch(std::integral_constant<Activation, Activation::Relu>{});
    case Activation::Silu: return launch(std::integral_constant<Activation, Activation::Silu>{});
  }
}

void gated_activation_launch(const GatedActivationArgs& a) {
  const int ffn = int(a.ffn);
  with_activation(a.act, [&](auto act) {
    gated_activation_kernel<decltype(act)::value>
        <<<grid_for(a.n_tokens, ffn), kThreads, 0, a.stream>>>(a.gate_up, a.out, a.out16, a.n_tokens, ffn);
  });
  KILN_CUDA_CHECK_LAUNCH();
}

void bias_activation_launch(const BiasActivationArgs& a) {
  const int dim = int(a.dim);
  with_activation(a.act, [&](auto act) {
    bias_activation_kernel<decltype(act)::value>
        <<<grid_for(a.n_tokens, dim), kThreads, 0, a.stream>>>(a.x, a.x16, a.bias, a.n_tokens, dim);
  });
  KILN_CUDA_CHECK_LAUNCH();
}

}  // namespace

void gated_activation(const GatedActivationArgs& a) {
  KILN_CHECK(a.n_tokens >= 0 && a.ffn > 0 && a.ffn < (int64_t(1) << 30), "cuda gated_activation: bad shape [{}, {}]",
             a.n_tokens, a.ffn);
  if (a.n_tokens == 0) return;
  KILN_CHECK(a.gate_up != nullptr && (a.out != nullptr || a.out16 != nullptr),
             "cuda gated_activation: null input or no output");
  gated_activation_launch(a);
}

void bias_activation(const BiasActivationArgs& a) {
  KILN_CHECK(a.n_tokens >= 0 && a.dim > 0 && a.dim < (int64_t(1) << 30), "cuda bias_activation: bad shape [{}, {}]",
             a.n_tokens, a.dim);
  if (a.n_tokens == 0) return;
  KILN_CHECK(a.x != nullptr, "cuda bias_activation: null input");
  bias_activation_launch(a);
}

}  // namespace kiln::cuda
