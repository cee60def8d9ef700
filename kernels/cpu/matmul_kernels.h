// What matmul.cpp hands a SIMD level: one job, and per level a plan of how to split it over threads.
// Internal to kernels/cpu.
#pragma once

#include <cstddef>
#include <cstdint>

#include "engine/kiln_format.h"
#include "kernels/cpu/quantize.h"

namespace kiln::matmul_detail {

struct MatmulJob {
  DType dtype = DType::F32;
  const void* w = nullptr;            // [n_out, n_in] of dtype
  const uint16_t* w_scales = nullptr; // int8: fp16 [n_out, n_in / group_size]
  int64_t group_size = 0;             // int8
  int64_t n_in = 0;
  int64_t n_out = 0;
  int64_t n_tokens = 0;
  const float* x = nullptr;           // [n_tokens, n_in]
  QuantizedActivations xq;            // int8: x quantized in groups of group_size
  float* y = nullptr;                 // [n_tokens, n_out]
};

// Computes y[:, row_begin:row_end] for every token; scratch: scratch_bytes of this thread's memory.
using MatmulRowsFn = void (*)(const MatmulJob& job, int64_t row_begin, int64_t row_end, void* scratch);

struct MatmulPlan {
  MatmulRowsFn run = nullptr;
  int64_t row_block = 16;  // threads split the rows in multiples of this
  size_t scratch_bytes = 0;
};

MatmulPlan plan_scalar(const MatmulJob& job);
MatmulPlan plan_avx2(const MatmulJob& job);    // only where cpu_level_supported() >= Avx2
MatmulPlan plan_avx512(const MatmulJob& job);  // only where cpu_level_supported() == Avx512
// The AVX-512 plan for many tokens: weights packed per panel of rows, reused over tiles of tokens.
MatmulPlan plan_avx512_gemm(const MatmulJob& job);

}  // namespace kiln::matmul_detail
