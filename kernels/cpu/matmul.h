// y = x · Wᵀ for every weight dtype (f32, f16, bf16, int8 with group scales): GEMV when n_tokens is 1,
// GEMM for prompt batches. Dispatches at run time to AVX-512 / AVX2+FMA / scalar.
//
// int8 weights: x is quantized to int8 per group on the fly (see kernels/cpu/quantize.h for the
// accuracy) and the dot products are integer ones. f16 and bf16 weights are widened to f32 in registers;
// accumulation is f32 throughout.
#pragma once

#include <cstdint>

#include "engine/tensor.h"
#include "kernels/cpu/cpu_level.h"
#include "kernels/cpu/thread_pool.h"

namespace kiln {

// weight: [n_out, n_in] · x: [n_tokens, n_in] f32 · y: [n_tokens, n_out] f32 (overwritten, must not
// overlap x). level: for tests and benchmarks; must be one this CPU supports.
void matmul(const TensorView& weight, const float* x, float* y, int64_t n_tokens, ThreadPool& pool,
            CpuLevel level = cpu_level_default());

// The naive scalar reference the fast paths are tested against; never optimised. int8 weights are
// dequantized and multiplied with the f32 x as it is (no activation quantization).
void matmul_reference(const TensorView& weight, const float* x, float* y, int64_t n_tokens);

// Row `row` of any weight dtype as f32 (embedding lookup): out: [cols].
void dequantize_row(const TensorView& weight, int64_t row, float* out);

}  // namespace kiln
