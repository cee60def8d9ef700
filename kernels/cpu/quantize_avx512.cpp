// Activation quantization for AVX-512, bit for bit the result of the scalar version (quantize.cpp): the
// same max, the same f32 products, and the conversion rounds to nearest even as its magic-number add does.
#include <cmath>
#include <cstdint>
#include <cstring>

#include "engine/kiln_format.h"
#include "kernels/cpu/quantize.h"
#include "kernels/cpu/simd_config.h"

#if KILN_X86_SIMD
#include "kernels/cpu/x86_intrinsics.h"

#include "kernels/cpu/target_avx512_begin.h"
#include "kernels/cpu/simd_avx512.h"

namespace kiln::quantize_detail {

namespace {

// One group at a time: any group size.
void quantize_groups(const float* xt, const QuantizedActivations& qa, int64_t t) {
  const int64_t gs = qa.group_size;
  const __m512i lo = _mm512_set1_epi32(-127), hi = _mm512_set1_epi32(127);
  int8_t* q = qa.q + t * qa.k_pad;
  for (int64_t g = 0; g < qa.n_groups; ++g) {
    const float* xg = xt + g * gs;
    int8_t* qg = q + g * gs;
    __m512 amax_v = _mm512_setzero_ps(), poison_v = _mm512_setzero_ps();
    for (int64_t i = 0; i < gs; i += 16) {
      const __m512 v = _mm512_maskz_loadu_ps(tail_mask16(gs - i), xg + i);
      amax_v = _mm512_max_ps(amax_v, _mm512_abs_ps(v));
      poison_v = _mm512_add_ps(poison_v, _mm512_mul_ps(v, _mm512_setzero_ps()));
    }
    float amax = _mm512_reduce_max_ps(amax_v);
    int32_t sum = 0;
    if (_mm512_reduce_add_ps(poison_v) != 0.0f) {
      amax = NAN;
      std::memset(qg, 0, size_t(gs));
    } else {
      const __m512 inv = _mm512_set1_ps(amax > 0 ? 127.0f / amax : 0.0f);
      __m512i sum_v = _mm512_setzero_si512();
      for (int64_t i = 0; i < gs; i += 16) {
        const __mmask16 m = tail_mask16(gs - i);
        const __m512i v = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, xg + i), inv));
        const __m512i c = _mm512_min_epi32(_mm512_max_epi32(v, lo), hi);
        sum_v = _mm512_add_epi32(sum_v, c);
        _mm512_mask_cvtepi32_storeu_epi8(qg + i, m, c);
      }
      sum = _mm512_reduce_add_epi32(sum_v);
    }
    qa.scale[t * qa.n_groups + g] = amax / 127.0f;
    qa.corr[t * qa.n_groups + g] = -128 * sum;
  }
}

// 16 groups at a time (group_size % 16 == 0): their maxima, scales and sums are reduced together by
// transposing trees, so no group waits on its own chain of horizontal reductions and divisions.
void quantize_groups16(const float* xt, const QuantizedActivations& qa, int64_t t) {
  const int64_t gs = qa.group_size;
  const __m512i lo = _mm512_set1_epi32(-127), hi = _mm512_set1_epi32(127);
  int8_t* q = qa.q + t * qa.k_pad;
  for (int64_t g0 = 0; g0 < qa.n_groups; g0 += 16) {
    const int nb = int(qa.n_groups - g0 < 16 ? qa.n_groups - g0 : 16);
    __m512 amax[16], poison[16];
    for (int b = 0; b < 16; ++b) {
      amax[b] = poison[b] = _mm512_setzero_ps();
      if (b >= nb) continue;
      const float* xg = xt + (g0 + b) * gs;
      for (int64_t i = 0; i < gs; i += 16) {
        const __m512 v = _mm512_loadu_ps(xg + i);
        amax[b] = _mm512_max_ps(amax[b], _mm512_abs_ps(v));
        poison[b] = _mm512_add_ps(poison[b], _mm512_mul_ps(v, _mm512_setzero_ps()));
      }
    }
    const __mmask16 valid = tail_mask16(nb);
    const __mmask16 poisoned =
        _mm512_mask_cmp_ps_mask(valid, reduce16(poison, AddPs()),
                                _mm512_setzero_ps(), _CMP_NEQ_UQ);
    const __m512 group_max = _mm512_mask_blend_ps(poisoned, reduce16(amax, MaxPs()), _mm512_set1_ps(NAN));
    const __mmask16 positive = _mm512_cmp_ps_mask(group_max, _mm512_setzero_ps(), _CMP_GT_OQ);
    alignas(64) float inv[16];
    _mm512_store_ps(inv, _mm512_maskz_div_ps(positive, _mm512_set1_ps(127.0f), group_max));
    _mm512_mask_storeu_ps(qa.scale + t * qa.n_groups + g0, valid, _mm512_div_ps(group_max, _mm512_set1_ps(127.0f)));

    __m512 sums[16];  // per group, lane partial sums of q as f32 (exact: far below 2^24)
    for (int b = 0; b < 16; ++b) {
      sums[b] = _mm512_setzero_ps();
      if (b >= nb) continue;
      const float* xg = xt + (g0 + b) * gs;
      int8_t* qg = q + (g0 + b) * gs;
      if ((poisoned >> b) & 1) {
        std::memset(qg, 0, size_t(gs));
        continue;
      }
      const __m512 scale = _mm512_set1_ps(inv[b]);
      __m512i sum_v = _mm512_setzero_si512();
      for (int64_t i = 0; i < gs; i += 16) {
        const __m512i v = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(xg + i), scale));
        const __m512i c = _mm512_min_epi32(_mm512_max_epi32(v, lo), hi);
        sum_v = _mm512_add_epi32(sum_v, c);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(qg + i), _mm512_cvtepi32_epi8(c));
      }
      sums[b] = _mm512_cvtepi32_ps(sum_v);
    }
    const __m512i total = _mm512_cvtps_epi32(hsum16(sums));
    _mm512_mask_storeu_epi32(qa.corr + t * qa.n_groups + g0, valid,
                             _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_slli_epi32(total, 7)));
  }
}

}  // namespace

void quantize_tokens_avx512(const float* x, const QuantizedActivations& qa, int64_t token_begin, int64_t token_end) {
  const int64_t gs = qa.group_size;
  for (int64_t t = token_begin; t < token_end; ++t) {
    int8_t* q = qa.q + t * qa.k_pad;
    if (gs % 16 == 0) {
      quantize_groups16(x + t * qa.n_in, qa, t);
    } else {
      quantize_groups(x + t * qa.n_in, qa, t);
    }
    std::memset(q + qa.n_in, 0, size_t(qa.k_pad - qa.n_in));
    if (qa.scale4 == nullptr) continue;
    float* scale4 = qa.scale4 + t * (qa.k_pad / 4);
    int32_t* corr4 = qa.corr4 + t * (qa.k_pad / 4);
    for (int64_t g = 0; g < qa.n_groups; ++g) {
      const __m512 s = _mm512_set1_ps(qa.scale[t * qa.n_groups + g]);
      for (int64_t l = g * gs / 4; l < (g + 1) * gs / 4; l += 16)
        _mm512_mask_storeu_ps(scale4 + l, tail_mask16((g + 1) * gs / 4 - l), s);
    }
    for (int64_t l = qa.n_in / 4; l < qa.k_pad / 4; l += 16)
      _mm512_mask_storeu_ps(scale4 + l, tail_mask16(qa.k_pad / 4 - l), _mm512_setzero_ps());
    const __m512i ones = _mm512_set1_epi8(1);
    for (int64_t k = 0; k < qa.k_pad; k += 64) {
      const __m512i sums = _mm512_dpbusd_epi32(_mm512_setzero_si512(), ones, _mm512_load_si512(q + k));
      _mm512_storeu_si512(corr4 + k / 4, _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_slli_epi32(sums, 7)));
    }
  }
}

}  // namespace kiln::quantize_detail

#include "kernels/cpu/target_end.h"

#else  // no x86 SIMD: cpu_level_supported() never offers this level

namespace kiln::quantize_detail {
void quantize_tokens_avx512(const float* x, const QuantizedActivations& qa, int64_t token_begin, int64_t token_end) {
  quantize_tokens_scalar(x, qa, token_begin, token_end);
}
}  // namespace kiln::quantize_detail

#endif
