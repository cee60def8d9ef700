// MLP activations: the gated forms read [gate | up] halves of one fused GEMM output.
#pragma once

#include <cstdint>

#include "kernels/cpu/cpu_level.h"

namespace kiln {

enum class Activation {
  Gelu,      // exact: 0.5 x (1 + erf(x / sqrt 2)); with gating this is GeGLU
  GeluTanh,  // 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))
  Relu,
  Silu       // x * sigmoid(x); with gating this is SwiGLU
};

// gate_up: [n_tokens, 2 * ffn] (gate first, then up) · out: [n_tokens, ffn] = act(gate) * up
void gated_activation(const float* gate_up, float* out, int64_t n_tokens, int64_t ffn, Activation act,
                      CpuLevel level = cpu_level_default());
// x: [n_tokens, dim] in place · bias: [dim] or nullptr: x = act(x + bias)
void bias_activation(float* x, const float* bias, int64_t n_tokens, int64_t dim, Activation act,
                     CpuLevel level = cpu_level_default());

// Naive references (double precision, libm erf / tanh / exp); never optimised.
void gated_activation_reference(const float* gate_up, float* out, int64_t n_tokens, int64_t ffn, Activation act);
void bias_activation_reference(float* x, const float* bias, int64_t n_tokens, int64_t dim, Activation act);

}  // namespace kiln
