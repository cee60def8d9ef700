// residual_add_bias: the residual stream update after attention and MLP, incl. the parallel (GPT-J) form.
#pragma once

#include <cstdint>

namespace kiln {

// residual: [n_tokens, dim] += a (+ a_bias) (+ b (+ b_bias)) · a, b: [n_tokens, dim] · a_bias, b_bias: [dim].
// Any pointer but residual/a may be nullptr; b_bias is added only with b.
void residual_add_bias(float* residual, const float* a, const float* a_bias, const float* b, const float* b_bias,
                       int64_t n_tokens, int64_t dim);

// The naive reference (double precision); never optimised.
void residual_add_bias_reference(float* residual, const float* a, const float* a_bias, const float* b,
                                 const float* b_bias, int64_t n_tokens, int64_t dim);

}  // namespace kiln
