// MLP activations: the gated forms read [gate | up] halves of one fused GEMM output.
#pragma once

#include <cstdint>

namespace kiln {

enum class Activation { Gelu, GeluTanh, Relu, Silu };

// gate_up: [n_tokens, 2 * ffn] (gate first, then up) · out: [n_tokens, ffn] = act(gate) * up
void gated_activation(const float* gate_up, float* out, int64_t n_tokens, int64_t ffn, Activation act);
// x: [n_tokens, dim] in place · bias: [dim] or nullptr: x = act(x + bias)
void bias_activation(float* x, const float* bias, int64_t n_tokens, int64_t dim, Activation act);

void gated_activation_reference(const float* gate_up, float* out, int64_t n_tokens, int64_t ffn, Activation act);
void bias_activation_reference(float* x, const float* bias, int64_t n_tokens, int64_t dim, Activation act);

}  // namespace kiln
