// AVX-512 matmul for few tokens (decode): each weight row is streamed once from memory, widened or
// xor-ed in registers, and used for up to 4 tokens. Many tokens go to matmul_avx512_gemm.cpp.
#include <cstdint>

#include "kernels/cpu/matmul_kernels.h"
#include "kernels/cpu/simd_config.h"

#if KILN_X86_SIMD
#include "kernels/cpu/x86_intrinsics.h"

#include "kernels/cpu/target_avx512_begin.h"
#include "kernels/cpu/simd_avx512.h"

namespace kiln::matmul_detail {
namespace {

// From this many tokens on, the packed GEMM (matmul_avx512_gemm.cpp) beats streaming each row tile
// over groups of 4 tokens: packing a panel costs about as much as 8 tokens of f16 dot products, while
// the int8 dot products here cost more per token than the GEMM's per-group scaling.
constexpr int64_t kGemmMinTokensFloat = 12;
constexpr int64_t kGemmMinTokensInt8 = 4;

// Writes the R x T dot products in acc (index t * R + r) to y[t0 + t, r0 + r].
template <int R, int T>
inline void store_tile(const MatmulJob& job, const __m512 acc[R * T], int64_t r0, int64_t t0) {
  static_assert(R * T <= 16);
  __m512 v[16];
  for (int i = 0; i < 16; ++i) v[i] = i < R * T ? acc[i] : _mm512_setzero_ps();
  alignas(64) float sums[16];
  _mm512_store_ps(sums, hsum16(v));
  for (int t = 0; t < T; ++t)
    for (int r = 0; r < R; ++r) job.y[(t0 + t) * job.n_out + r0 + r] = sums[t * R + r];
}

// y[t0 .. t0+T, r0 .. r0+R] for f32 / f16 / bf16 weights: 16 columns at a time, R * T accumulators.
template <DType D, int R, int T>
void tile_float(const MatmulJob& job, int64_t r0, int64_t t0) {
  const int64_t n = job.n_in;
  constexpr int64_t kElem = D == DType::F32 ? 4 : 2;
  const void* rows[R];
  for (int r = 0; r < R; ++r) rows[r] = static_cast<const char*>(job.w) + (r0 + r) * n * kElem;
  const float* x[T];
  for (int t = 0; t < T; ++t) x[t] = job.x + (t0 + t) * n;

  __m512 acc[R * T];
  for (int i = 0; i < R * T; ++i) acc[i] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 16 <= n; k += 16) {
    prefetch_next_tile(rows[0], R * n * kElem, k * kElem * R, 16 * kElem * R);
    __m512 xv[T];
#pragma GCC unroll 4
    for (int t = 0; t < T; ++t) xv[t] = _mm512_loadu_ps(x[t] + k);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512 w = load_w16<D>(rows[r], k);
#pragma GCC unroll 4
      for (int t = 0; t < T; ++t) acc[t * R + r] = _mm512_fmadd_ps(w, xv[t], acc[t * R + r]);
    }
  }
  if (k < n) {
    const __mmask16 m = tail_mask16(n - k);
    for (int r = 0; r < R; ++r) {
      const __m512 w = load_w16_masked<D>(rows[r], k, m);
      for (int t = 0; t < T; ++t)
        acc[t * R + r] = _mm512_fmadd_ps(w, _mm512_maskz_loadu_ps(m, x[t] + k), acc[t * R + r]);
    }
  }
  store_tile<R, T>(job, acc, r0, t0);
}

// How an int8 row's fp16 group scales spread over the 16 lanes of a 64-column chunk (4 columns a lane).
enum class ScaleSpread {
  Broadcast,  // group_size % 64 == 0: one scale for the chunk
  Expand,     // 64 % group_size == 0: 64 / group_size scales, lane l takes scale 4l / group_size
};

// y[t0 .. t0+T, r0 .. r0+R] for int8 weights against the int8-quantized activations, 64 columns at a
// time: w + 128 as u8 times q as s8 (VNNI), corrected by corr4 = -128 * sum(q), so the lane sums are
// exact integer dot products; each chunk's sums are scaled by weight scale * activation scale.
template <int R, int T, ScaleSpread S>
void tile_int8(const MatmulJob& job, int64_t r0, int64_t t0) {
  const int64_t n = job.n_in;
  const int64_t gs = job.group_size;
  const int64_t n_groups = n / gs;
  const QuantizedActivations& xq = job.xq;
  const int8_t* rows[R];
  const uint16_t* scales[R];
  for (int r = 0; r < R; ++r) {
    rows[r] = static_cast<const int8_t*>(job.w) + (r0 + r) * n;
    scales[r] = job.w_scales + (r0 + r) * n_groups;
  }
  const int8_t* q[T];
  const int32_t* corr4[T];
  const float* scale4[T];
  for (int t = 0; t < T; ++t) {
    q[t] = xq.q + (t0 + t) * xq.k_pad;
    corr4[t] = xq.corr4 + (t0 + t) * (xq.k_pad / 4);
    scale4[t] = xq.scale4 + (t0 + t) * (xq.k_pad / 4);
  }
  __m512i spread = _mm512_setzero_si512();
  if constexpr (S == ScaleSpread::Expand) {
    alignas(64) int32_t lanes[16];
    for (int l = 0; l < 16; ++l) lanes[l] = int32_t(4 * l / gs);
    spread = _mm512_load_si512(lanes);
  }
  const __m512i bias = _mm512_set1_epi8(char(0x80));

  __m512 acc[R * T];
  for (int i = 0; i < R * T; ++i) acc[i] = _mm512_setzero_ps();
  for (int64_t k = 0; k < n; k += 64) {
    prefetch_next_tile(rows[0], R * n, k * R, 64 * R);
    const __mmask64 m = tail_mask64(n - k);
    __m512i u[R];
    __m512 w_scale[R];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      u[r] = _mm512_xor_si512(_mm512_maskz_loadu_epi8(m, rows[r] + k), bias);  // padding meets q = 0
      if constexpr (S == ScaleSpread::Broadcast) {
        w_scale[r] = _mm512_set1_ps(_cvtsh_ss(scales[r][k / gs]));
      } else {
        const __mmask16 sm = tail_mask16((n - k < 64 ? n - k : 64) / gs);
        const __m512 s = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(sm, scales[r] + k / gs));
        w_scale[r] = _mm512_permutexvar_ps(spread, s);
      }
    }
#pragma GCC unroll 4
    for (int t = 0; t < T; ++t) {
      const __m512i qv = _mm512_load_si512(q[t] + k);
      const __m512i c = _mm512_loadu_si512(corr4[t] + k / 4);
      const __m512 xs = _mm512_loadu_ps(scale4[t] + k / 4);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        const __m512i dot = _mm512_dpbusd_epi32(c, u[r], qv);
        acc[t * R + r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(w_scale[r], xs), acc[t * R + r]);
      }
    }
  }
  store_tile<R, T>(job, acc, r0, t0);
}

// Rows [row_begin, row_end), tokens in groups of up to 4: a tile's R rows stay in L1 across the groups.
template <DType D>
void rows_float(const MatmulJob& job, int64_t row_begin, int64_t row_end, void*) {
  const int64_t n_tokens = job.n_tokens;
  int64_t r = row_begin;
  if (n_tokens == 1) {
    for (; r + 8 <= row_end; r += 8) tile_float<D, 8, 1>(job, r, 0);
    for (; r < row_end; ++r) tile_float<D, 1, 1>(job, r, 0);
    return;
  }
  for (; r + 4 <= row_end; r += 4) {
    int64_t t = 0;
    for (; t + 4 <= n_tokens; t += 4) tile_float<D, 4, 4>(job, r, t);
    switch (n_tokens - t) {
      case 3: tile_float<D, 4, 3>(job, r, t); break;
      case 2: tile_float<D, 4, 2>(job, r, t); break;
      case 1: tile_float<D, 4, 1>(job, r, t); break;
      default: break;
    }
  }
  for (; r < row_end; ++r)
    for (int64_t t = 0; t < n_tokens; ++t) tile_float<D, 1, 1>(job, r, t);
}

template <ScaleSpread S>
void rows_int8(const MatmulJob& job, int64_t row_begin, int64_t row_end, void*) {
  const int64_t n_tokens = job.n_tokens;
  int64_t r = row_begin;
  if (n_tokens == 1) {
    for (; r + 8 <= row_end; r += 8) tile_int8<8, 1, S>(job, r, 0);
    for (; r < row_end; ++r) tile_int8<1, 1, S>(job, r, 0);
    return;
  }
  for (; r + 4 <= row_end; r += 4) {
    int64_t t = 0;
    for (; t + 4 <= n_tokens; t += 4) tile_int8<4, 4, S>(job, r, t);
    switch (n_tokens - t) {
      case 3: tile_int8<4, 3, S>(job, r, t); break;
      case 2: tile_int8<4, 2, S>(job, r, t); break;
      case 1: tile_int8<4, 1, S>(job, r, t); break;
      default: break;
    }
  }
  for (; r < row_end; ++r)
    for (int64_t t = 0; t < n_tokens; ++t) tile_int8<1, 1, S>(job, r, t);
}

}  // namespace

MatmulPlan plan_avx512(const MatmulJob& job) {
  const bool int8 = job.dtype == DType::I8;
  if (int8 && job.group_size % 4 != 0) return plan_scalar(job);
  const bool spreadable = !int8 || job.group_size % 64 == 0 || 64 % job.group_size == 0;
  const int64_t gemm_min_tokens = int8 ? kGemmMinTokensInt8 : kGemmMinTokensFloat;
  if (job.n_tokens >= gemm_min_tokens || !spreadable) return plan_avx512_gemm(job);
  MatmulPlan plan;
  switch (job.dtype) {
    case DType::F32: plan.run = rows_float<DType::F32>; break;
    case DType::F16: plan.run = rows_float<DType::F16>; break;
    case DType::BF16: plan.run = rows_float<DType::BF16>; break;
    default:
      plan.run = job.group_size % 64 == 0 ? rows_int8<ScaleSpread::Broadcast> : rows_int8<ScaleSpread::Expand>;
      break;
  }
  return plan;
}

}  // namespace kiln::matmul_detail

#include "kernels/cpu/target_end.h"

#else  // no x86 SIMD: cpu_level_supported() never offers this level

namespace kiln::matmul_detail {
MatmulPlan plan_avx512(const MatmulJob& job) { return plan_scalar(job); }
}  // namespace kiln::matmul_detail

#endif
