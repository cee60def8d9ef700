// What matmul.cpp hands a SIMD level: one job, and per level a plan of how to split it over threads.
// Internal to kernels/cpu.
#pragma once

#include <cstddef>
#include <cstdint>

#include "engine/kiln_format.h"
#include "kernels/cpu/quantize.h"

namespace kiln::matmul_detail {

// AMX: x as the sum of two bf16 matrices, hi = bf16(x) and lo = bf16(x - hi), rows padded with zeros to
// whole 16-token tiles and columns to whole 32-column tile steps.
struct SplitActivations {
  int64_t m_pad = 0;       // n_tokens rounded up to 16
  int64_t k_pad = 0;       // n_in rounded up to 32: the row stride of hi and lo
  uint16_t* hi = nullptr;  // bf16 [m_pad, k_pad]
  uint16_t* lo = nullptr;  // bf16 [m_pad, k_pad]
};

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
  SplitActivations xs;                // AMX plans only
  const int8_t* xv = nullptr;         // AMX int8 plans only: xq.q as tiles (vnni_activation_tiles)
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

// AMX (kernels/cpu/matmul_amx.cpp): f16 and bf16 weights for prompts of at least kAmxMinTokens tokens;
// other jobs go to plan_avx512. A job for the AMX plan needs job.xs filled first.
constexpr int64_t kAmxMinTokens = 16;
bool amx_takes(const MatmulJob& job);
size_t split_activations_bytes(int64_t n_tokens, int64_t n_in);
SplitActivations split_activations_layout(int64_t n_tokens, int64_t n_in, void* buffer);
// Fills rows [row_begin, row_end) of xs (rows past the tokens with zeros); x: [n_tokens, n_in].
void split_activation_rows(const float* x, int64_t n_tokens, int64_t n_in, const SplitActivations& xs,
                           int64_t row_begin, int64_t row_end);
MatmulPlan plan_amx(const MatmulJob& job);  // only where cpu_level_supported() == Amx
void load_amx_tile_config();                // every tile 16 rows of 64 bytes; AMX level only

// AMX int8 (kernels/cpu/matmul_amx_int8.cpp): weights whose groups are a multiple of 64 columns, from
// kAmxMinTokensInt8 tokens, bit for bit what the AVX-512 GEMM computes. plan_amx hands these jobs on; a
// job for it needs job.xv filled first.
constexpr int64_t kAmxMinTokensInt8 = 8;
bool amx_int8_takes(const MatmulJob& job);
size_t vnni_activations_bytes(int64_t n_tokens, int64_t n_in, int64_t group_size);
// xq.q rearranged as the tile unit's B operand: per tile of 16 tokens and 64 columns (1 KB), [16 column
// quads][16 tokens][4 values], tokens past n_tokens zero; then the scales, [token tiles][n_groups][16].
// Fills token tiles [tile_begin, tile_end).
void vnni_activation_tiles(const QuantizedActivations& xq, int8_t* xv, int64_t tile_begin, int64_t tile_end);
MatmulPlan plan_amx_int8(const MatmulJob& job);

}  // namespace kiln::matmul_detail
