// AMX matmul for prompts with f16 or bf16 weights (Sapphire Rapids and later). The tile unit's TDPBF16PS
// multiplies bf16 pairs and sums them in f32: 16 tokens x 16 rows x 32 columns in one instruction.
//
// bf16 keeps 8 significant bits (rounding to it moves a value by up to 2^-8 of itself), so each operand
// becomes a sum of two bf16 values:
//   an f16 weight exactly, w = hi + lo (11 significant bits = 8 + 3); a bf16 weight is its own hi;
//   an f32 activation nearly, x = xh + xl + e with |xl| <= 2^-8 |x| and |e| <= 2^-16 |x|.
// The products hi*xh + hi*xl + lo*xh are summed; what is left out, lo*xl and w*e, is at most 2^-15 |w x|
// (about 2^-17 on average): far below the f16 weights' own rounding, at several times the f32 path's speed.
#include <cstdint>
#include <cstring>

#include "kernels/cpu/matmul_kernels.h"
#include "kernels/cpu/simd_config.h"

namespace kiln::matmul_detail {
namespace {
constexpr int64_t kTileTokens = 16;  // rows of an activation tile
constexpr int64_t kTileColumns = 32;  // bf16 columns of one tile step
constexpr int64_t kPanelRows = 32;    // weight rows per panel: two 16-row B tiles
int64_t round_up(int64_t value, int64_t to) { return (value + to - 1) / to * to; }
}  // namespace

bool amx_takes(const MatmulJob& job) {
  return (job.dtype == DType::F16 || job.dtype == DType::BF16) && job.n_tokens >= kAmxMinTokens;
}

size_t split_activations_bytes(int64_t n_tokens, int64_t n_in) {
  return size_t(2 * round_up(n_tokens, kTileTokens) * round_up(n_in, kTileColumns)) * sizeof(uint16_t);
}

SplitActivations split_activations_layout(int64_t n_tokens, int64_t n_in, void* buffer) {
  SplitActivations xs;
  xs.m_pad = round_up(n_tokens, kTileTokens);
  xs.k_pad = round_up(n_in, kTileColumns);
  xs.hi = static_cast<uint16_t*>(buffer);
  xs.lo = xs.hi + xs.m_pad * xs.k_pad;
  return xs;
}

}  // namespace kiln::matmul_detail

#if KILN_X86_SIMD
#include "kernels/cpu/x86_intrinsics.h"

#include "kernels/cpu/target_amx_begin.h"
#include "kernels/cpu/simd_avx512.h"

namespace kiln::matmul_detail {
namespace {

// The tile shapes, loaded per thread before its first tile instruction: every tile is 16 rows of 64
// bytes. Tiles 0-1 accumulate y (16 tokens x 16 rows, f32), 2-3 hold xh and xl (16 tokens x 32 columns),
// 4-7 hold the weights (pairs of columns for 16 rows: hi and lo of rows 0-15, then of rows 16-31).
struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t bytes_per_row[16] = {};
  uint8_t rows[16] = {};
};


// 16 bf16 values widened to f32 (exactly: bf16 is the top half of an f32).
inline __m512 widen_bf16(__m256i h) { return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)); }

inline __m256i as_si256(__m256bh h) {
  __m256i v;
  std::memcpy(&v, &h, sizeof v);
  return v;
}
inline __m512 as_ps(__m512bh h) {
  __m512 v;
  std::memcpy(&v, &h, sizeof v);
  return v;
}

}  // namespace

void split_activation_rows(const float* x, int64_t n_tokens, int64_t n_in, const SplitActivations& xs,
                           int64_t row_begin, int64_t row_end) {
  for (int64_t t = row_begin; t < row_end; ++t) {
    uint16_t* hi = xs.hi + t * xs.k_pad;
    uint16_t* lo = xs.lo + t * xs.k_pad;
    for (int64_t k = 0; k < xs.k_pad; k += 16) {
      const __mmask16 m = t < n_tokens && k < n_in ? tail_mask16(n_in - k) : __mmask16(0);
      const __m512 v = _mm512_maskz_loadu_ps(m, x + t * n_in + k);
      const __m256bh h = _mm512_cvtneps_pbh(v);
      const __m256bh l = _mm512_cvtneps_pbh(_mm512_sub_ps(v, widen_bf16(as_si256(h))));
      std::memcpy(hi + k, &h, sizeof h);
      std::memcpy(lo + k, &l, sizeof l);
    }
  }
}

namespace {

// panel: bf16 [k_pad / 32][4 tiles][16 column pairs][16 rows][2], the B tiles of rows r0 .. r0+31 for each
// 32-column step: hi of rows 0-15, lo of rows 0-15, hi of rows 16-31, lo of rows 16-31 (rows past n_out
// and columns past n_in are zero). For bf16 weights the lo tiles are not written (they would be zero).
template <DType D>
void pack_panel(const MatmulJob& job, int64_t r0, uint16_t* panel) {
  const int64_t n = job.n_in;
  const uint16_t* w = static_cast<const uint16_t*>(job.w);
  for (int half = 0; half < 2; ++half) {
    for (int64_t k = 0; k < n; k += kTileColumns) {
      const __mmask32 m = n - k >= 32 ? __mmask32(0xffffffff) : __mmask32((1u << (n - k)) - 1);
      __m512 hi[16], lo[16];  // per row: 16 lanes of column pairs, transposed below into tile rows
      for (int i = 0; i < 16; ++i) {
        const int64_t row = r0 + half * 16 + i;
        const __m512i raw = row < job.n_out ? _mm512_maskz_loadu_epi16(m, w + row * n + k) : _mm512_setzero_si512();
        if constexpr (D == DType::BF16) {
          hi[i] = _mm512_castsi512_ps(raw);
        } else {
          const __m512 f0 = _mm512_cvtph_ps(_mm512_castsi512_si256(raw));
          const __m512 f1 = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(raw, 1));
          const __m512bh h = _mm512_cvtne2ps_pbh(f1, f0);  // columns k .. k+31 in order
          const __m512i hv = _mm512_castps_si512(as_ps(h));
          const __m512 r0f = _mm512_sub_ps(f0, widen_bf16(_mm512_castsi512_si256(hv)));
          const __m512 r1f = _mm512_sub_ps(f1, widen_bf16(_mm512_extracti64x4_epi64(hv, 1)));
          hi[i] = as_ps(h);
          lo[i] = as_ps(_mm512_cvtne2ps_pbh(r1f, r0f));  // exact: the 3 bits hi could not hold
        }
      }
      uint16_t* step = panel + (k / kTileColumns) * 4 * 512 + half * 2 * 512;
      transpose16(hi);
      for (int j = 0; j < 16; ++j) _mm512_store_ps(step + j * 32, hi[j]);
      if constexpr (D == DType::F16) {
        transpose16(lo);
        for (int j = 0; j < 16; ++j) _mm512_store_ps(step + 512 + j * 32, lo[j]);
      }
    }
  }
}

// y[t0 .. t0+16, r0 .. r0+32] (only the tokens and rows that exist) from the panel: per 32-column step,
// three products into each of the two accumulator tiles (two for bf16 weights, whose lo is zero).
template <DType D>
void tile_tokens(const MatmulJob& job, const uint16_t* panel, int64_t r0, int64_t t0, float* out /* [2][16][16] */) {
  const SplitActivations& xs = job.xs;
  const int64_t stride = xs.k_pad * int64_t(sizeof(uint16_t));
  const uint16_t* xh = xs.hi + t0 * xs.k_pad;
  const uint16_t* xl = xs.lo + t0 * xs.k_pad;
  _tile_zero(0);
  _tile_zero(1);
  for (int64_t k = 0; k < xs.k_pad; k += kTileColumns) {
    const uint16_t* step = panel + (k / kTileColumns) * 4 * 512;
    _tile_loadd(2, xh + k, stride);
    _tile_loadd(3, xl + k, stride);
    _tile_loadd(4, step, 64);
    _tile_loadd(6, step + 1024, 64);
    _tile_dpbf16ps(0, 2, 4);
    _tile_dpbf16ps(1, 2, 6);
    _tile_dpbf16ps(0, 3, 4);
    _tile_dpbf16ps(1, 3, 6);
    if constexpr (D == DType::F16) {
      _tile_loadd(5, step + 512, 64);
      _tile_loadd(7, step + 1536, 64);
      _tile_dpbf16ps(0, 2, 5);
      _tile_dpbf16ps(1, 2, 7);
    }
  }
  _tile_stored(0, out, 64);
  _tile_stored(1, out + 256, 64);

  const int64_t rows = job.n_out - r0;
  const __mmask16 m0 = tail_mask16(rows), m1 = rows > 16 ? tail_mask16(rows - 16) : __mmask16(0);
  const int64_t tokens = job.n_tokens - t0 < kTileTokens ? job.n_tokens - t0 : kTileTokens;
  for (int64_t t = 0; t < tokens; ++t) {
    float* y = job.y + (t0 + t) * job.n_out + r0;
    _mm512_mask_storeu_ps(y, m0, _mm512_load_ps(out + t * 16));
    _mm512_mask_storeu_ps(y + 16, m1, _mm512_load_ps(out + 256 + t * 16));
  }
}

size_t panel_bytes(const MatmulJob& job) { return size_t(job.xs.k_pad * kPanelRows * 2) * sizeof(uint16_t); }

template <DType D>
void rows_amx(const MatmulJob& job, int64_t row_begin, int64_t row_end, void* scratch) {
  uint16_t* panel = static_cast<uint16_t*>(scratch);
  float* out = reinterpret_cast<float*>(static_cast<char*>(scratch) + panel_bytes(job));
  load_amx_tile_config();
  for (int64_t r0 = row_begin; r0 < row_end; r0 += kPanelRows) {
    pack_panel<D>(job, r0, panel);
    for (int64_t t0 = 0; t0 < job.n_tokens; t0 += kTileTokens) tile_tokens<D>(job, panel, r0, t0, out);
  }
  _tile_release();  // a thread holding no tile state switches contexts as cheaply as before
}

}  // namespace

void load_amx_tile_config() {
  TileConfig config;
  for (int i = 0; i < 8; ++i) {
    config.bytes_per_row[i] = 64;
    config.rows[i] = 16;
  }
  // As asm with the config as a memory operand: GCC 12 takes _tile_loadconfig for a call that reads no
  // memory and drops the stores above once this function stands alone.
  __asm__ volatile("ldtilecfg %0" : : "m"(config));
}

MatmulPlan plan_amx(const MatmulJob& job) {
  if (job.dtype == DType::I8) return plan_amx_int8(job);
  if (!amx_takes(job) || job.xs.hi == nullptr) return plan_avx512(job);
  MatmulPlan plan;
  plan.row_block = kPanelRows;
  plan.run = job.dtype == DType::F16 ? rows_amx<DType::F16> : rows_amx<DType::BF16>;
  plan.scratch_bytes = panel_bytes(job) + 2 * 256 * sizeof(float);
  return plan;
}

}  // namespace kiln::matmul_detail

#include "kernels/cpu/target_end.h"

#else  // no x86 SIMD: cpu_level_supported() never offers this level

namespace kiln::matmul_detail {
void split_activation_rows(const float*, int64_t, int64_t, const SplitActivations&, int64_t, int64_t) {}
MatmulPlan plan_amx(const MatmulJob& job) { return plan_scalar(job); }
void load_amx_tile_config() {}
}  // namespace kiln::matmul_detail

#endif
