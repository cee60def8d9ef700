// AVX2 + FMA + F16C matmul: each weight row is streamed once per pair of tokens, widened in registers
// (f16, bf16) or multiplied as int8 with maddubs against the int8-quantized activations.
#include <cstdint>

#include "kernels/cpu/matmul_kernels.h"
#include "kernels/cpu/simd_config.h"

#if KILN_X86_SIMD
#include "kernels/cpu/x86_intrinsics.h"

#include "kernels/cpu/target_avx2_begin.h"
#include "kernels/cpu/simd_avx2.h"

namespace kiln::matmul_detail {
namespace {

// Writes the R x T dot products in acc (index t * R + r) to y[t0 + t, r0 + r].
template <int R, int T>
inline void store_tile(const MatmulJob& job, const __m256 acc[R * T], int64_t r0, int64_t t0) {
  static_assert(R * T <= 8);
  __m256 v[8];
  for (int i = 0; i < 8; ++i) v[i] = i < R * T ? acc[i] : _mm256_setzero_ps();
  alignas(32) float sums[8];
  _mm256_store_ps(sums, hsum8(v));
  for (int t = 0; t < T; ++t)
    for (int r = 0; r < R; ++r) job.y[(t0 + t) * job.n_out + r0 + r] = sums[t * R + r];
}

template <DType D, int R, int T>
void tile_float(const MatmulJob& job, int64_t r0, int64_t t0) {
  const int64_t n = job.n_in;
  constexpr int64_t kElem = D == DType::F32 ? 4 : 2;
  const void* rows[R];
  for (int r = 0; r < R; ++r) rows[r] = static_cast<const char*>(job.w) + (r0 + r) * n * kElem;
  const float* x[T];
  for (int t = 0; t < T; ++t) x[t] = job.x + (t0 + t) * n;

  __m256 acc[R * T];
  for (int i = 0; i < R * T; ++i) acc[i] = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 8 <= n; k += 8) {
    prefetch_next_tile(rows[0], R * n * kElem, k * kElem * R, 8 * kElem * R);
    __m256 xv[T];
    for (int t = 0; t < T; ++t) xv[t] = _mm256_loadu_ps(x[t] + k);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m256 w = load_w8<D>(rows[r], k);
      for (int t = 0; t < T; ++t) acc[t * R + r] = _mm256_fmadd_ps(w, xv[t], acc[t * R + r]);
    }
  }
  if (k < n) {
    for (int r = 0; r < R; ++r) {
      const __m256 w = load_w8_partial<D>(rows[r], k, n - k);
      for (int t = 0; t < T; ++t)
        acc[t * R + r] = _mm256_fmadd_ps(w, load_w8_partial<DType::F32>(x[t], k, n - k), acc[t * R + r]);
    }
  }
  store_tile<R, T>(job, acc, r0, t0);
}

// How an int8 row's fp16 group scales spread over the 8 lanes of a 32-column chunk (4 columns a lane).
enum class ScaleSpread {
  Broadcast,  // group_size % 32 == 0
  Expand,     // 32 % group_size == 0: lane l takes scale 4l / group_size
};

// The int8 dot products per 32 columns: |w| as u8 times q with w's sign (maddubs cannot saturate:
// |w| <= 128, |q| <= 127), then pairs to int32, then scaled by weight scale * activation scale.
template <int R, int T, ScaleSpread S>
void tile_int8(const MatmulJob& job, int64_t r0, int64_t t0) {
  const int64_t n = job.n_in;
  const int64_t gs = job.group_size;
  const int64_t n_groups = n / gs;
  const QuantizedActivations& xq = job.xq;
  const int8_t* q[T];
  const float* scale4[T];
  for (int t = 0; t < T; ++t) {
    q[t] = xq.q + (t0 + t) * xq.k_pad;
    scale4[t] = xq.scale4 + (t0 + t) * (xq.k_pad / 4);
  }
  __m256i spread = _mm256_setzero_si256();
  if constexpr (S == ScaleSpread::Expand) {
    alignas(32) int32_t lanes[8];
    for (int l = 0; l < 8; ++l) lanes[l] = int32_t(4 * l / gs);
    spread = _mm256_load_si256(reinterpret_cast<const __m256i*>(lanes));
  }
  const __m256i ones = _mm256_set1_epi16(1);

  __m256 acc[R * T];
  for (int i = 0; i < R * T; ++i) acc[i] = _mm256_setzero_ps();
  const int8_t* tile = static_cast<const int8_t*>(job.w) + r0 * n;
  for (int64_t k = 0; k < n; k += 32) {
    prefetch_next_tile(tile, R * n, k * R, 32 * R);
    __m256i qv[T];
    __m256 xs[T];
    for (int t = 0; t < T; ++t) {
      qv[t] = _mm256_load_si256(reinterpret_cast<const __m256i*>(q[t] + k));
      xs[t] = _mm256_loadu_ps(scale4[t] + k / 4);
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      const int8_t* row = static_cast<const int8_t*>(job.w) + (r0 + r) * n;
      const uint16_t* scales = job.w_scales + (r0 + r) * n_groups;
      __m256i w;
      if (k + 32 <= n) {
        w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + k));
      } else {
        alignas(32) int8_t part[32] = {};
        for (int64_t j = k; j < n; ++j) part[j - k] = row[j];
        w = _mm256_load_si256(reinterpret_cast<const __m256i*>(part));
      }
      __m256 w_scale;
      if constexpr (S == ScaleSpread::Broadcast) {
        w_scale = _mm256_set1_ps(_cvtsh_ss(scales[k / gs]));
      } else {
        alignas(16) uint16_t part[8] = {};
        const int64_t n_scales = (n - k < 32 ? n - k : 32) / gs;
        for (int64_t j = 0; j < n_scales; ++j) part[j] = scales[k / gs + j];
        const __m128i halves = _mm_load_si128(reinterpret_cast<const __m128i*>(part));
        w_scale = _mm256_permutevar8x32_ps(_mm256_cvtph_ps(halves), spread);
      }
      const __m256i w_abs = _mm256_sign_epi8(w, w);
      for (int t = 0; t < T; ++t) {
        const __m256i pairs = _mm256_maddubs_epi16(w_abs, _mm256_sign_epi8(qv[t], w));
        const __m256i dot = _mm256_madd_epi16(pairs, ones);
        acc[t * R + r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_mul_ps(w_scale, xs[t]), acc[t * R + r]);
      }
    }
  }
  store_tile<R, T>(job, acc, r0, t0);
}

// Rows in tiles of 4 for one token, else of 2 rows x 2 tokens; leftovers one at a time. Tile is a
// functor (a lambda would not get this file's target) with template<int R, int T> void run(r, t).
template <typename Tile>
void run_tiles(const MatmulJob& job, int64_t row_begin, int64_t row_end, Tile tile) {
  const int64_t n_tokens = job.n_tokens;
  int64_t r = row_begin;
  if (n_tokens == 1) {
    for (; r + 4 <= row_end; r += 4) tile.template run<4, 1>(r, 0);
  } else {
    for (; r + 2 <= row_end; r += 2) {
      int64_t t = 0;
      for (; t + 2 <= n_tokens; t += 2) tile.template run<2, 2>(r, t);
      if (t < n_tokens) tile.template run<2, 1>(r, t);
    }
  }
  for (; r < row_end; ++r)
    for (int64_t t = 0; t < n_tokens; ++t) tile.template run<1, 1>(r, t);
}

template <DType D>
struct FloatTile {
  const MatmulJob& job;
  template <int R, int T>
  void run(int64_t r, int64_t t) const { tile_float<D, R, T>(job, r, t); }
};

template <ScaleSpread S>
struct Int8Tile {
  const MatmulJob& job;
  template <int R, int T>
  void run(int64_t r, int64_t t) const { tile_int8<R, T, S>(job, r, t); }
};

template <DType D>
void rows_float(const MatmulJob& job, int64_t row_begin, int64_t row_end, void*) {
  run_tiles(job, row_begin, row_end, FloatTile<D>{job});
}

template <ScaleSpread S>
void rows_int8(const MatmulJob& job, int64_t row_begin, int64_t row_end, void*) {
  run_tiles(job, row_begin, row_end, Int8Tile<S>{job});
}

}  // namespace

MatmulPlan plan_avx2(const MatmulJob& job) {
  MatmulPlan plan;
  switch (job.dtype) {
    case DType::F32: plan.run = rows_float<DType::F32>; break;
    case DType::F16: plan.run = rows_float<DType::F16>; break;
    case DType::BF16: plan.run = rows_float<DType::BF16>; break;
    default:
      if (job.group_size % 32 == 0) {
        plan.run = rows_int8<ScaleSpread::Broadcast>;
      } else if (job.group_size % 4 == 0 && 32 % job.group_size == 0) {
        plan.run = rows_int8<ScaleSpread::Expand>;
      } else {
        return plan_scalar(job);
      }
      break;
  }
  return plan;
}

}  // namespace kiln::matmul_detail

#include "kernels/cpu/target_end.h"

#else  // no x86 SIMD: cpu_level_supported() never offers this level

namespace kiln::matmul_detail {
MatmulPlan plan_avx2(const MatmulJob& job) { return plan_scalar(job); }
}  // namespace kiln::matmul_detail

#endif
