// RMSNorm and LayerNorm over the last dimension.
#pragma once

#include <cstdint>

namespace kiln {

// x, y: [n_tokens, dim] (y may equal x) · weight: [dim] · bias: [dim] or nullptr.
void rms_norm(const float* x, const float* weight, float* y, int64_t n_tokens, int64_t dim, float eps);
void layer_norm(const float* x, const float* weight, const float* bias, float* y, int64_t n_tokens, int64_t dim,
                float eps);

void rms_norm_reference(const float* x, const float* weight, float* y, int64_t n_tokens, int64_t dim, float eps);
void layer_norm_reference(const float* x, const float* weight, const float* bias, float* y, int64_t n_tokens,
                          int64_t dim, float eps);

}  // namespace kiln
