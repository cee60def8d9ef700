#include "kernels/cuda/activation.h"

#include <algorithm>

#include "engine/error.h"
#include "kernels/cuda/activate.cuh"
#include "kernels/cuda/cuda_util.h"

namespace kiln::cuda {
namespace {

constexpr int kThreads = 256;

template <Activation kAct>
__global__ void gated_activation_kernel(const float* __restrict__ gate_up, float* __restrict__ out,
                                        __half* __restrict__ out16, int64_t n, int64_t ffn) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = i / ffn, col = i % ffn;
    const float* row = gate_up + t * 2 * ffn;
    const float v = activate<kAct>(row[col]) * row[ffn + col];
    out[i] = v;
    if (out16 != nullptr) out16[i] = __float2half_rn(v);
  }
}

template <Activation kAct>
__global__ void bias_activation_kernel(float* x, __half* __restrict__ x16, const float* __restrict__ bias, int64_t n,
                                       int64_t dim) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float v = activate<kAct>(bias != nullptr ? x[i] + bias[i % dim] : x[i]);
    x[i] = v;
    if (x16 != nullptr) x16[i] = __float2half_rn(v);
  }
}

unsigned grid_for(int64_t n) { return unsigned(std::min<int64_t>((n + kThreads - 1) / kThreads, 65536)); }

void gated_activation_launch(const GatedActivationArgs& a) {
  const int64_t n = a.n_tokens * a.ffn;
  const unsigned grid = grid_for(n);
  switch (a.act) {
    case Activation::Gelu: gated_activation_kernel<Activation::Gelu><<<grid, kThreads, 0, a.stream>>>(a.gate_up, a.out, a.out16, n, a.ffn); break;
    case Activation::GeluTanh: gated_activation_kernel<Activation::GeluTanh><<<grid, kThreads, 0, a.stream>>>(a.gate_up, a.out, a.out16, n, a.ffn); break;
    case Activation::Relu: gated_activation_kernel<Activation::Relu><<<grid, kThreads, 0, a.stream>>>(a.gate_up, a.out, a.out16, n, a.ffn); break;
    case Activation::Silu: gated_activation_kernel<Activation::Silu><<<grid, kThreads, 0, a.stream>>>(a.gate_up, a.out, a.out16, n, a.ffn); break;
  }
  KILN_CUDA_CHECK_LAUNCH();
}

void bias_activation_launch(const BiasActivationArgs& a) {
  const int64_t n = a.n_tokens * a.dim;
  const unsigned grid = grid_for(n);
  switch (a.act) {
    case Activation::Gelu: bias_activation_kernel<Activation::Gelu><<<grid, kThreads, 0, a.stream>>>(a.x, a.x16, a.bias, n, a.dim); break;
    case Activation::GeluTanh: bias_activation_kernel<Activation::GeluTanh><<<grid, kThreads, 0, a.stream>>>(a.x, a.x16, a.bias, n, a.dim); break;
    case Activation::Relu: bias_activation_kernel<Activation::Relu><<<grid, kThreads, 0, a.stream>>>(a.x, a.x16, a.bias, n, a.dim); break;
    case Activation::Silu: bias_activation_kernel<Activation::Silu><<<grid, kThreads, 0, a.stream>>>(a.x, a.x16, a.bias, n, a.dim); break;
  }
  KILN_CUDA_CHECK_LAUNCH();
}

}  // namespace

void gated_activation(const GatedActivationArgs& a) {
  KILN_CHECK(a.n_tokens >= 0 && a.ffn > 0, "cuda gated_activation: bad shape [{}, {}]", a.n_tokens, a.ffn);
  if (a.n_tokens == 0) return;
  KILN_CHECK(a.gate_up != nullptr && a.out != nullptr, "cuda gated_activation: null input or output");
  gated_activation_launch(a);
}

void bias_activation(const BiasActivationArgs& a) {
  KILN_CHECK(a.n_tokens >= 0 && a.dim > 0, "cuda bias_activation: bad shape [{}, {}]", a.n_tokens, a.dim);
  if (a.n_tokens == 0) return;
  KILN_CHECK(a.x != nullptr, "cuda bias_activation: null input");
  bias_activation_launch(a);
}

}  // namespace kiln::cuda
