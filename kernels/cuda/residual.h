// residual_add_bias: the residual stream update after attention and MLP, incl. the parallel (GPT-J)
// form. The CUDA twin of kernels/cpu/residual.h.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace kiln::cuda {

// residual += a (+ a_bias) (+ b (+ b_bias)); any pointer but residual and a may be nullptr; b_bias is
// added only with b.
struct ResidualArgs {
  float* residual = nullptr;      // [n_tokens, dim]
  const float* a = nullptr;       // [n_tokens, dim]
  const float* a_bias = nullptr;  // [dim]
  const float* b = nullptr;       // [n_tokens, dim]
  const float* b_bias = nullptr;  // [dim]
  int64_t n_tokens = 0;
  int64_t dim = 0;
  cudaStream_t stream = nullptr;
};

void residual_add_bias(const ResidualArgs& args);

}  // namespace kiln::cuda
