// MLP activations (f32): the gated forms read [gate | up] halves of one fused GEMM output. The CUDA
// twin of kernels/cpu/activation.h.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

namespace kiln::cuda {

enum class Activation {
  Gelu,      // exact: 0.5 x (1 + erf(x / sqrt 2)); with gating this is GeGLU
  GeluTanh,  // 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))
  Relu,
  Silu       // x * sigmoid(x); with gating this is SwiGLU
};

// out = act(gate) * up
struct GatedActivationArgs {
  const float* gate_up = nullptr;  // [n_tokens, 2 * ffn]: gate, then up
  float* out = nullptr;            // [n_tokens, ffn], or nullptr when out16 is all the caller reads
  __half* out16 = nullptr;         // [n_tokens, ffn] or nullptr: out rounded to f16 too (the next GEMM's input)
  int64_t n_tokens = 0;
  int64_t ffn = 0;
  Activation act = Activation::Silu;
  cudaStream_t stream = nullptr;
};

// x = act(x + bias)
struct BiasActivationArgs {
  float* x = nullptr;           // [n_tokens, dim], in place
  __half* x16 = nullptr;        // [n_tokens, dim] or nullptr: the result rounded to f16 too
  const float* bias = nullptr;  // [dim] or nullptr
  int64_t n_tokens = 0;
  int64_t dim = 0;
  Activation act = Activation::Gelu;
  cudaStream_t stream = nullptr;
};

void gated_activation(const GatedActivationArgs& args);
void bias_activation(const BiasActivationArgs& args);

}  // namespace kiln::cuda
