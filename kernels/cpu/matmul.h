// y = x · Wᵀ for every weight dtype (f32, f16, bf16, int8 with group scales): GEMV when n_tokens is 1,
// GEMM for prompt batches. Dispatches at run time to AVX-512 / AVX2+FMA / scalar.
#pragma once

#include <cstdint>

#include "engine/tensor.h"
#include "kernels/cpu/thread_pool.h"

namespace kiln {

// weight: [n_out, n_in] · x: [n_tokens, n_in] f32 · y: [n_tokens, n_out] f32 (overwritten).
void matmul(const TensorView& weight, const float* x, float* y, int64_t n_tokens, ThreadPool& pool);

// The naive scalar reference the fast paths are tested against; never optimised.
void matmul_reference(const TensorView& weight, const float* x, float* y, int64_t n_tokens);

// Row `row` of any weight dtype as f32 (embedding lookup): out: [cols].
void dequantize_row(const TensorView& weight, int64_t row, float* out);

}  // namespace kiln
