// residual_add_bias: the residual stream update after attention and MLP, incl. the parallel (GPT-J) form.
#pragma once

#include <cstdint>

namespace kiln {

// residual: [n_tokens, dim] += a (+ a_bias) (+ b (+ b_bias)); any pointer but residual/a may be nullptr.
void residual_add_bias(float* residual, const float* a, const float* a_bias, const float* b, const float* b_bias,
                       int64_t n_tokens, int64_t dim);

}  // namespace kiln
