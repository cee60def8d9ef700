// AVX2 helpers shared by the AVX2 kernels. Include inside a target_avx2_begin.h region, after
// <immintrin.h> and engine/kiln_format.h; everything here has internal linkage.
#pragma once

namespace kiln {
namespace {

// 8 weights of dtype D starting at element i, widened to f32.
template <DType D>
inline __m256 load_w8(const void* w, int64_t i) {
  if constexpr (D == DType::F32) {
    return _mm256_loadu_ps(static_cast<const float*>(w) + i);
  } else {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(w) + i));
    if constexpr (D == DType::F16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));  // bf16: the high half
  }
}

// The first n < 8 weights at element i (the rest 0), without touching memory past them.
template <DType D>
inline __m256 load_w8_partial(const void* w, int64_t i, int64_t n) {
  alignas(32) float part[8] = {};
  if constexpr (D == DType::F32) {
    for (int64_t j = 0; j < n; ++j) part[j] = static_cast<const float*>(w)[i + j];
  } else {
    alignas(16) uint16_t half[8] = {};
    for (int64_t j = 0; j < n; ++j) half[j] = static_cast<const uint16_t*>(w)[i + j];
    return load_w8<D>(half, 0);
  }
  return _mm256_load_ps(part);
}

// Lane n of the result is the sum of the 8 lanes of v[n].
inline __m256 hsum8(const __m256 v[8]) {
  const __m256 a0 = _mm256_hadd_ps(v[0], v[1]);
  const __m256 a1 = _mm256_hadd_ps(v[2], v[3]);
  const __m256 a2 = _mm256_hadd_ps(v[4], v[5]);
  const __m256 a3 = _mm256_hadd_ps(v[6], v[7]);
  const __m256 b0 = _mm256_hadd_ps(a0, a1);  // 128-bit half h: the sums over half h of v[0 .. 3]
  const __m256 b1 = _mm256_hadd_ps(a2, a3);
  return _mm256_add_ps(_mm256_permute2f128_ps(b0, b1, 0x20), _mm256_permute2f128_ps(b0, b1, 0x31));
}

}  // namespace
}  // namespace kiln
