// The per-level activation entry points activation.cpp dispatches to. Internal to kernels/cpu.
#pragma once

#include <cstdint>

#include "kernels/cpu/activation.h"

namespace kiln::activation_detail {

// Shapes as gated_activation / bias_activation in activation.h.
void gated_avx2(const float* gate_up, float* out, int64_t n_tokens, int64_t ffn, Activation act);
void bias_avx2(float* x, const float* bias, int64_t n_tokens, int64_t dim, Activation act);
void gated_avx512(const float* gate_up, float* out, int64_t n_tokens, int64_t ffn, Activation act);
void bias_avx512(float* x, const float* bias, int64_t n_tokens, int64_t dim, Activation act);

}  // namespace kiln::activation_detail
