// AMX matmul for int8 weights (Sapphire Rapids and later), from kAmxMinTokensInt8 tokens: a batch step or
// a prompt. The tile unit's TDPBSSD multiplies 16 weight rows by 16 tokens over 64 columns, signed by
// signed, into exact int32 sums. The weight tile is loaded straight from the row-major weight (no packed
// copy of the weights, which the AVX-512 GEMM must make for every call); only the quantized activations
// are rearranged, once per call, into the B operand's layout.
//
// Groups are a multiple of 64 columns, so a group is whole tile steps and its integer dot product is
// exact. Each group's sum is then scaled into f32 exactly as the AVX-512 GEMM does it, acc +=
// float(dot) * (weight scale * activation scale), group after group: both give the same bits, which
// keeps a batch step's rows the same whichever of the two runs them.
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "kernels/cpu/matmul_kernels.h"
#include "kernels/cpu/simd_config.h"

namespace kiln::matmul_detail {
namespace {
constexpr int64_t kTile = 16;        // weight rows and tokens of a tile
constexpr int64_t kStepColumns = 64;  // int8 columns of one tile step
constexpr int64_t kStepBytes = kTile * kStepColumns;
int64_t round_up(int64_t value, int64_t to) { return (value + to - 1) / to * to; }

// After the q tiles: the tokens' scales, f32 [token tiles][n_groups][16 tokens].
float* vnni_scales(const QuantizedActivations& xq, const int8_t* xv) {
  return reinterpret_cast<float*>(const_cast<int8_t*>(xv) + round_up(xq.n_tokens, kTile) * xq.k_pad);
}
}  // namespace

bool amx_int8_takes(const MatmulJob& job) {
  return job.dtype == DType::I8 && job.group_size % kStepColumns == 0 && job.n_tokens >= kAmxMinTokensInt8;
}

size_t vnni_activations_bytes(int64_t n_tokens, int64_t n_in, int64_t group_size) {
  const int64_t m_pad = round_up(n_tokens, kTile);
  return size_t(m_pad * round_up(n_in, kStepColumns)) + size_t(m_pad * (n_in / group_size)) * sizeof(float);
}

void vnni_activation_tiles(const QuantizedActivations& xq, int8_t* xv, int64_t tile_begin, int64_t tile_end) {
  const int64_t steps = xq.k_pad / kStepColumns;
  float* scales = vnni_scales(xq, xv);
  for (int64_t tile = tile_begin; tile < tile_end; ++tile) {
    int8_t* out = xv + tile * steps * kStepBytes;
    for (int64_t t = 0; t < kTile; ++t) {
      const int64_t token = tile * kTile + t;
      const bool real = token < xq.n_tokens;
      for (int64_t quad = 0; quad < xq.k_pad / 4; ++quad) {
        int8_t* dst = out + ((quad / kTile) * kTile + quad % kTile) * kTile * 4 + t * 4;
        if (real) std::memcpy(dst, xq.q + token * xq.k_pad + quad * 4, 4);
        else std::memset(dst, 0, 4);
      }
      for (int64_t g = 0; g < xq.n_groups; ++g)
        scales[(tile * xq.n_groups + g) * kTile + t] = real ? xq.scale[token * xq.n_groups + g] : 0.0f;
    }
  }
}

}  // namespace kiln::matmul_detail

#if KILN_X86_SIMD
#include "kernels/cpu/x86_intrinsics.h"

#include "kernels/cpu/target_amx_begin.h"
#include "kernels/cpu/simd_avx512.h"

namespace kiln::matmul_detail {
namespace {

// A thread's scratch: a stored accumulator tile, the row block's weight scales and the last rows of the
// weight padded to a whole tile (a tile load must not read past the weight).
struct Scratch {
  int32_t* dots;      // [16 rows][16 tokens]
  float* w_scales;    // [n_groups][16 rows]
  int8_t* tail_rows;  // [16][n_in]
};

size_t scratch_bytes(const MatmulJob& job) {
  return size_t(kTile * kTile) * sizeof(int32_t) + size_t(job.xq.n_groups * kTile) * sizeof(float) +
         size_t(kTile * job.n_in);
}

Scratch scratch_at(const MatmulJob& job, void* memory) {
  Scratch s;
  s.dots = static_cast<int32_t*>(memory);
  s.w_scales = reinterpret_cast<float*>(s.dots + kTile * kTile);
  s.tail_rows = reinterpret_cast<int8_t*>(s.w_scales + job.xq.n_groups * kTile);
  return s;
}

// One row block and token tile: the weight rows (n_in bytes apart), the token tile's activations
// and scales, and the next rows to prefetch. Tiles: 1 the weights, 2 the activations, 0 and 3 the dot
// products of alternate groups, so that one group's sums are scaled while the next group's multiply.
struct Block {
  const int8_t* w;
  const int8_t* x_tiles;
  const float* x_scales;  // [n_groups][16 tokens]
  const int8_t* next_rows;
  int64_t n_next;
  int64_t steps_per_group;
};

// Group g's exact integer dot products into accumulator tile C; a tile load waits for all of its 16
// rows, so the next row block is prefetched into L2 a step at a time.
template <int C>  // 0 or 3
void multiply_group(const Block& b, int64_t n_in, int64_t g) {
  if constexpr (C == 0) _tile_zero(0);  // the tile intrinsics take literal tile numbers only
  else _tile_zero(3);
  for (int64_t step = g * b.steps_per_group; step < (g + 1) * b.steps_per_group; ++step) {
    for (int64_t r = 0; r < b.n_next; ++r) _mm_prefetch(b.next_rows + r * n_in + step * kStepColumns, _MM_HINT_T1);
    _tile_loadd(1, b.w + step * kStepColumns, n_in);
    _tile_loadd(2, b.x_tiles + step * kStepBytes, 64);
    if constexpr (C == 0) _tile_dpbssd(0, 1, 2);
    else _tile_dpbssd(3, 1, 2);
  }
}

// acc[r] (row r's 16 tokens) += float(dot) * (weight scale * activation scale), as the AVX-512 GEMM does.
template <int C>
void scale_group(const Block& b, const Scratch& s, int64_t g, __m512 (&acc)[kTile]) {
  if constexpr (C == 0) _tile_stored(0, s.dots, 64);
  else _tile_stored(3, s.dots, 64);
  const __m512 x_scale = _mm512_loadu_ps(b.x_scales + g * kTile);
  for (int64_t r = 0; r < kTile; ++r) {
    const __m512 dot = _mm512_cvtepi32_ps(_mm512_load_si512(s.dots + r * kTile));
    acc[r] = _mm512_fmadd_ps(dot, _mm512_mul_ps(_mm512_set1_ps(s.w_scales[g * kTile + r]), x_scale), acc[r]);
  }
}

// y[t0 .. t0+16, r0 .. r0+16], the tokens and rows that exist.
void tile_tokens(const MatmulJob& job, const Block& b, int64_t r0, int64_t t0, const Scratch& s) {
  const int64_t n_groups = job.xq.n_groups, n_in = job.n_in;
  __m512 acc[kTile];
  for (auto& a : acc) a = _mm512_setzero_ps();
  multiply_group<0>(b, n_in, 0);
  for (int64_t g = 0; g < n_groups; g += 2) {
    if (g + 1 < n_groups) multiply_group<3>(b, n_in, g + 1);
    scale_group<0>(b, s, g, acc);
    if (g + 1 < n_groups) {
      if (g + 2 < n_groups) multiply_group<0>(b, n_in, g + 2);
      scale_group<3>(b, s, g + 1, acc);
    }
  }
  transpose16(acc);  // now per token: its 16 rows
  const int64_t tokens = job.n_tokens - t0 < kTile ? job.n_tokens - t0 : kTile;
  const __mmask16 row_mask = tail_mask16(job.n_out - r0);
  for (int64_t t = 0; t < tokens; ++t) _mm512_mask_storeu_ps(job.y + (t0 + t) * job.n_out + r0, row_mask, acc[t]);
}

void rows_amx_int8(const MatmulJob& job, int64_t row_begin, int64_t row_end, void* scratch) {
  const Scratch s = scratch_at(job, scratch);
  const auto* w = static_cast<const int8_t*>(job.w);
  const int64_t n_groups = job.xq.n_groups, n_in = job.n_in;
  const float* x_scales = vnni_scales(job.xq, job.xv);
  load_amx_tile_config();
  for (int64_t r0 = row_begin; r0 < row_end; r0 += kTile) {
    const int64_t rows = job.n_out - r0 < kTile ? job.n_out - r0 : kTile;
    Block b{w + r0 * n_in, nullptr, nullptr, w + (r0 + kTile) * n_in,
            r0 + kTile < row_end ? std::min(kTile, row_end - r0 - kTile) : 0, job.group_size / kStepColumns};
    if (rows < kTile) {  // the last rows, padded with zeros
      std::memcpy(s.tail_rows, b.w, size_t(rows * n_in));
      std::memset(s.tail_rows + rows * n_in, 0, size_t((kTile - rows) * n_in));
      b.w = s.tail_rows;
    }
    for (int64_t g = 0; g < n_groups; ++g)
      for (int64_t r = 0; r < kTile; ++r)
        s.w_scales[g * kTile + r] = r < rows ? _cvtsh_ss(job.w_scales[(r0 + r) * n_groups + g]) : 0.0f;
    for (int64_t t0 = 0; t0 < job.n_tokens; t0 += kTile) {
      b.x_tiles = job.xv + (t0 / kTile) * (job.xq.k_pad / kStepColumns) * kStepBytes;
      b.x_scales = x_scales + (t0 / kTile) * n_groups * kTile;
      tile_tokens(job, b, r0, t0, s);
      b.n_next = 0;  // prefetched by the first token tile
    }
  }
  _tile_release();
}

}  // namespace

MatmulPlan plan_amx_int8(const MatmulJob& job) {
  if (!amx_int8_takes(job) || job.xv == nullptr) return plan_avx512(job);
  MatmulPlan plan;
  plan.row_block = kTile;
  plan.run = rows_amx_int8;
  plan.scratch_bytes = scratch_bytes(job);
  return plan;
}

}  // namespace kiln::matmul_detail

#include "kernels/cpu/target_end.h"

#else  // no x86 SIMD: cpu_level_supported() never offers this level

namespace kiln::matmul_detail {
MatmulPlan plan_amx_int8(const MatmulJob& job) { return plan_scalar(job); }
}  // namespace kiln::matmul_detail

#endif
