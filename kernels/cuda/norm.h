// RMSNorm and LayerNorm over the last dimension (f32): the CUDA twin of kernels/cpu/norm.h.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "engine/model_config.h"

namespace kiln::cuda {

// Products that x still lacks (a K-split GEMM's outputs): the norm's input is x + parts[0] + ... +
// parts[count - 1] (+ bias), added in that order, and it is written to `sum` (the residual stream, which may
// be x) on the way. Rows up to kNormMaxPendingDim wide, kNormMaxPendingParts parts.
struct PendingSum {
  const float* parts = nullptr;  // row t of part p at parts + p * stride + t * dim
  int count = 0;
  int64_t stride = 0;
  const float* bias = nullptr;   // [dim] or nullptr
  float* sum = nullptr;          // [n_tokens, dim]
};

inline constexpr int64_t kNormMaxPendingDim = 8192;
inline constexpr int kNormMaxPendingParts = 2;

struct NormArgs {
  NormKind kind = NormKind::Rms;
  const float* x = nullptr;       // [n_tokens, dim]
  const float* weight = nullptr;  // [dim]
  const float* bias = nullptr;    // [dim] or nullptr; RMSNorm adds it after scaling (as the CPU forward does)
  float* y = nullptr;             // [n_tokens, dim]; may equal x
  __half* y16 = nullptr;          // [n_tokens, dim] or nullptr: y rounded to f16 too (a GEMM's input)
  int64_t n_tokens = 0;
  int64_t dim = 0;
  float eps = 1e-5f;
  PendingSum pending;
  cudaStream_t stream = nullptr;
};

void norm(const NormArgs& args);

}  // namespace kiln::cuda
