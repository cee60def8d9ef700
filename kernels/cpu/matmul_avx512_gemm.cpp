// AVX-512 matmul for many tokens (prompt processing), which is compute-bound: a thread packs a panel of
// 32 weight rows once (widened to f32, or int8 in VNNI order) into its scratch, then runs every tile of
// tokens over it. The tile's outputs stay in registers: 2 vectors of 16 rows times NT tokens.
#include <cstdint>
#include <cstring>

#include "kernels/cpu/matmul_kernels.h"
#include "kernels/cpu/simd_config.h"

#if KILN_X86_SIMD
#include "kernels/cpu/x86_intrinsics.h"

#include "kernels/cpu/target_avx512_begin.h"
#include "kernels/cpu/simd_avx512.h"

namespace kiln::matmul_detail {
namespace {

constexpr int64_t kPanelRows = 32;
constexpr int kFloatTileTokens = 12;  // 24 accumulators + 2 weight vectors + 1 broadcast
constexpr int kInt8TileTokens = 6;    // 12 int32 + 12 f32 accumulators + 2 weight vectors + 1 broadcast
// Columns of an f32 panel block (24 KB) run over all token tiles while the block is in L1.
constexpr int64_t kFloatColumnBlock = 192;

int64_t round_up(int64_t value, int64_t to) { return (value + to - 1) / to * to; }

// Calls tile(t0, nt) for tiles of at most max_tokens tokens covering [0, n_tokens), all of nearly
// the same size: 128 tokens in tiles of 12 become 8 x 12 + 3 x 11 rather than 10 x 12 + 8.
template <typename Tile>
void for_token_tiles(int64_t n_tokens, int64_t max_tokens, Tile tile) {
  const int64_t n_tiles = (n_tokens + max_tokens - 1) / max_tokens;
  int64_t t0 = 0;
  for (int64_t i = 0; i < n_tiles; ++i) {
    const int64_t nt = n_tokens / n_tiles + (i < n_tokens % n_tiles ? 1 : 0);
    tile(t0, nt);
    t0 += nt;
  }
}

// The row masks of the panel at r0: rows past n_out are not stored.
void panel_masks(const MatmulJob& job, int64_t r0, __mmask16& m0, __mmask16& m1) {
  const int64_t rows = job.n_out - r0;
  m0 = tail_mask16(rows);
  m1 = rows > 16 ? tail_mask16(rows - 16) : __mmask16(0);
}

// panel: [round_up(n_in, 16)][32] f32, weight rows r0 .. r0+31 as columns (rows past n_out are zero).
template <DType D>
void pack_float_panel(const MatmulJob& job, int64_t r0, float* panel) {
  const int64_t n = job.n_in;
  const int64_t row_bytes = n * (D == DType::F32 ? 4 : 2);
  for (int half = 0; half < 2; ++half) {
    for (int64_t k = 0; k < n; k += 16) {
      const __mmask16 m = tail_mask16(n - k);
      __m512 v[16];
      for (int i = 0; i < 16; ++i) {
        const int64_t row = r0 + half * 16 + i;
        // The next panel's row: its weights come from memory, as this one's did.
        prefetch_at(job.w, (row + kPanelRows) * row_bytes + k * (row_bytes / n));
        v[i] = row < job.n_out ? load_w16_masked<D>(static_cast<const char*>(job.w) + row * row_bytes, k, m)
                               : _mm512_setzero_ps();
      }
      transpose16(v);
      for (int j = 0; j < 16; ++j) _mm512_store_ps(panel + (k + j) * kPanelRows + half * 16, v[j]);
    }
  }
}

// y[t0 .. t0+NT, r0 .. r0+32] over columns [k0, k1) of a packed panel (added to y unless k0 is 0): per
// column, two weight vectors times NT broadcasts.
template <int NT>
void tile_float(const MatmulJob& job, const float* panel, int64_t r0, int64_t t0, int64_t k0, int64_t k1,
                __mmask16 m0, __mmask16 m1) {
  const int64_t n = job.n_in;
  const float* x[NT];
  for (int t = 0; t < NT; ++t) x[t] = job.x + (t0 + t) * n;
  __m512 c0[NT], c1[NT];
  for (int t = 0; t < NT; ++t) {
    float* y = job.y + (t0 + t) * job.n_out + r0;
    c0[t] = k0 == 0 ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(m0, y);
    c1[t] = k0 == 0 ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(m1, y + 16);
  }
  for (int64_t k = k0; k < k1; ++k) {
    const __m512 w0 = _mm512_load_ps(panel + k * kPanelRows);
    const __m512 w1 = _mm512_load_ps(panel + k * kPanelRows + 16);
#pragma GCC unroll 12
    for (int t = 0; t < NT; ++t) {
      const __m512 b = _mm512_set1_ps(x[t][k]);
      c0[t] = _mm512_fmadd_ps(w0, b, c0[t]);
      c1[t] = _mm512_fmadd_ps(w1, b, c1[t]);
    }
  }
  for (int t = 0; t < NT; ++t) {
    float* y = job.y + (t0 + t) * job.n_out + r0;
    _mm512_mask_storeu_ps(y, m0, c0[t]);
    _mm512_mask_storeu_ps(y + 16, m1, c1[t]);
  }
}

using FloatTileFn = void (*)(const MatmulJob&, const float*, int64_t, int64_t, int64_t, int64_t, __mmask16,
                             __mmask16);
constexpr FloatTileFn kFloatTiles[kFloatTileTokens + 1] = {
    nullptr,        tile_float<1>, tile_float<2>, tile_float<3>,  tile_float<4>,  tile_float<5>, tile_float<6>,
    tile_float<7>, tile_float<8>, tile_float<9>, tile_float<10>, tile_float<11>, tile_float<12>};

// for_token_tiles' callback (a functor: a lambda would not get this file's target).
struct FloatTileRun {
  const MatmulJob& job;
  const float* panel;
  int64_t r0, k0, k1;
  __mmask16 m0, m1;
  void operator()(int64_t t0, int64_t nt) const { kFloatTiles[nt](job, panel, r0, t0, k0, k1, m0, m1); }
};

template <DType D>
void rows_float(const MatmulJob& job, int64_t row_begin, int64_t row_end, void* scratch) {
  float* panel = static_cast<float*>(scratch);
  for (int64_t r0 = row_begin; r0 < row_end; r0 += kPanelRows) {
    pack_float_panel<D>(job, r0, panel);
    __mmask16 m0, m1;
    panel_masks(job, r0, m0, m1);
    for (int64_t k0 = 0; k0 < job.n_in; k0 += kFloatColumnBlock) {
      const int64_t k1 = job.n_in - k0 < kFloatColumnBlock ? job.n_in : k0 + kFloatColumnBlock;
      for_token_tiles(job.n_tokens, kFloatTileTokens, FloatTileRun{job, panel, r0, k0, k1, m0, m1});
    }
  }
}

// panel: u8 [round_up(n_in, 64) / 4][32][4], four consecutive columns of each of rows r0 .. r0+31 as
// w + 128 (the unsigned operand of VNNI); then scales: f32 [n_groups][32].
void pack_int8_panel(const MatmulJob& job, int64_t r0, uint8_t* panel, float* scales) {
  const int64_t n = job.n_in;
  const int64_t n_groups = n / job.group_size;
  const __m512i bias = _mm512_set1_epi8(char(0x80));
  const int8_t* w = static_cast<const int8_t*>(job.w);
  for (int half = 0; half < 2; ++half) {
    for (int64_t k = 0; k < n; k += 64) {
      const __mmask64 m = tail_mask64(n - k);
      __m512 v[16];  // 16 rows x 16 lanes of 4 bytes, transposed as if they were floats
      for (int i = 0; i < 16; ++i) {
        const int64_t row = r0 + half * 16 + i;
        prefetch_at(w, (row + kPanelRows) * n + k);  // the next panel
        v[i] = row < job.n_out ? _mm512_castsi512_ps(_mm512_maskz_loadu_epi8(m, w + row * n + k))
                               : _mm512_setzero_ps();
      }
      transpose16(v);
      for (int j = 0; j < 16; ++j) {
        uint8_t* dst = panel + ((k / 4 + j) * kPanelRows + half * 16) * 4;
        _mm512_store_si512(dst, _mm512_xor_si512(_mm512_castps_si512(v[j]), bias));
      }
    }
  }
  for (int64_t r = 0; r < kPanelRows; ++r) {
    const int64_t row = r0 + r;
    const uint16_t* src = job.w_scales + row * n_groups;
    for (int64_t g = 0; g < n_groups; ++g) scales[g * kPanelRows + r] = row < job.n_out ? _cvtsh_ss(src[g]) : 0.0f;
  }
}

// acc += VNNI(u, s). As inline asm because GCC 12 gives the intrinsic's accumulator its own register
// and copies it in and out on every iteration, which doubles the loop's instructions.
inline void dpbusd(__m512i& acc, __m512i u, __m512i s) {
#if defined(__GNUC__) && !defined(__clang__)
  __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(u), "v"(s));
#else
  acc = _mm512_dpbusd_epi32(acc, u, s);
#endif
}

inline int32_t load_i32(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// y[t0 .. t0+NT, r0 .. r0+32] from a packed int8 panel. Per group: integer sums start at
// -128 * sum(q) (undoing the +128 on the weights), VNNI over the group, then are scaled into f32.
template <int NT>
void tile_int8(const MatmulJob& job, const uint8_t* panel, const float* scales, int64_t r0, int64_t t0,
               __mmask16 m0, __mmask16 m1) {
  const QuantizedActivations& xq = job.xq;
  const int64_t gs = job.group_size;
  const int64_t n_groups = xq.n_groups;
  const int8_t* q[NT];
  for (int t = 0; t < NT; ++t) q[t] = xq.q + (t0 + t) * xq.k_pad;
  const int32_t* corr = xq.corr + t0 * n_groups;
  const float* x_scale = xq.scale + t0 * n_groups;

  __m512 f0[NT], f1[NT];
  for (int t = 0; t < NT; ++t) f0[t] = f1[t] = _mm512_setzero_ps();
  for (int64_t g = 0; g < n_groups; ++g) {
    __m512i i0[NT], i1[NT];
    for (int t = 0; t < NT; ++t) i0[t] = i1[t] = _mm512_set1_epi32(corr[t * n_groups + g]);
    const uint8_t* pw = panel + g * gs * kPanelRows;
    const int64_t k0 = g * gs;
    for (int64_t s = 0; s < gs / 4; ++s) {
      const __m512i w0 = _mm512_load_si512(pw + s * 4 * kPanelRows);
      const __m512i w1 = _mm512_load_si512(pw + s * 4 * kPanelRows + 64);
#pragma GCC unroll 6
      for (int t = 0; t < NT; ++t) {
        const __m512i b = _mm512_set1_epi32(load_i32(q[t] + k0 + 4 * s));
        dpbusd(i0[t], w0, b);
        dpbusd(i1[t], w1, b);
      }
    }
    const __m512 s0 = _mm512_load_ps(scales + g * kPanelRows);
    const __m512 s1 = _mm512_load_ps(scales + g * kPanelRows + 16);
    for (int t = 0; t < NT; ++t) {
      const __m512 xs = _mm512_set1_ps(x_scale[t * n_groups + g]);
      f0[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i0[t]), _mm512_mul_ps(s0, xs), f0[t]);
      f1[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i1[t]), _mm512_mul_ps(s1, xs), f1[t]);
    }
  }
  for (int t = 0; t < NT; ++t) {
    float* y = job.y + (t0 + t) * job.n_out + r0;
    _mm512_mask_storeu_ps(y, m0, f0[t]);
    _mm512_mask_storeu_ps(y + 16, m1, f1[t]);
  }
}

using Int8TileFn = void (*)(const MatmulJob&, const uint8_t*, const float*, int64_t, int64_t, __mmask16,
                            __mmask16);
constexpr Int8TileFn kInt8Tiles[kInt8TileTokens + 1] = {nullptr,      tile_int8<1>, tile_int8<2>, tile_int8<3>,
                                                         tile_int8<4>, tile_int8<5>, tile_int8<6>};

struct Int8TileRun {
  const MatmulJob& job;
  const uint8_t* panel;
  const float* scales;
  int64_t r0;
  __mmask16 m0, m1;
  void operator()(int64_t t0, int64_t nt) const { kInt8Tiles[nt](job, panel, scales, r0, t0, m0, m1); }
};

size_t int8_panel_bytes(const MatmulJob& job) { return size_t(round_up(job.n_in, 64) * kPanelRows); }

void rows_int8(const MatmulJob& job, int64_t row_begin, int64_t row_end, void* scratch) {
  uint8_t* panel = static_cast<uint8_t*>(scratch);
  float* scales = reinterpret_cast<float*>(panel + int8_panel_bytes(job));
  for (int64_t r0 = row_begin; r0 < row_end; r0 += kPanelRows) {
    pack_int8_panel(job, r0, panel, scales);
    __mmask16 m0, m1;
    panel_masks(job, r0, m0, m1);
    for_token_tiles(job.n_tokens, kInt8TileTokens, Int8TileRun{job, panel, scales, r0, m0, m1});
  }
}

}  // namespace

MatmulPlan plan_avx512_gemm(const MatmulJob& job) {
  MatmulPlan plan;
  plan.row_block = kPanelRows;
  switch (job.dtype) {
    case DType::F32: plan.run = rows_float<DType::F32>; break;
    case DType::F16: plan.run = rows_float<DType::F16>; break;
    case DType::BF16: plan.run = rows_float<DType::BF16>; break;
    default: plan.run = rows_int8; break;
  }
  if (job.dtype == DType::I8) {
    plan.scratch_bytes = int8_panel_bytes(job) + size_t(job.n_in / job.group_size * kPanelRows) * sizeof(float);
  } else {
    plan.scratch_bytes = size_t(round_up(job.n_in, 16) * kPanelRows) * sizeof(float);
  }
  return plan;
}

}  // namespace kiln::matmul_detail

#include "kernels/cpu/target_end.h"

#else  // no x86 SIMD: cpu_level_supported() never offers this level

namespace kiln::matmul_detail {
MatmulPlan plan_avx512_gemm(const MatmulJob& job) { return plan_scalar(job); }
}  // namespace kiln::matmul_detail

#endif
