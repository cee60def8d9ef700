// Helpers of the KV cache tests: caches of any KvDType on the device, and the f32 values an f16 or fp8
// cache holds (the reference attends over those, so such a cache is held to the f32 bound).
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <vector>

#include "engine/half.h"
#include "kernels/cuda/kv_dtype.h"
#include "tests/kernels/cuda/cuda_test_util.h"

namespace kiln::test {

inline std::vector<uint16_t> to_f16_bits(const std::vector<float>& values) {
  std::vector<uint16_t> bits(values.size());
  for (size_t i = 0; i < values.size(); ++i) bits[i] = fp32_to_fp16(values[i]);
  return bits;
}

// fp8 e4m3 from its definition (OCP FP8, the "fn" form): sign, 4 exponent bits (bias 7), 3 mantissa
// bits; exponent 0 is subnormal (m x 2^-9); no infinities, S.1111.111 is nan, so the largest value is 448.
inline float e4m3_to_fp32(uint8_t bits) {
  const int e = (bits >> 3) & 15, m = bits & 7;
  if (e == 15 && m == 7) return NAN;
  const float magnitude = e == 0 ? std::ldexp(float(m), -9) : std::ldexp(float(8 + m), e - 10);
  return (bits & 0x80) != 0 ? -magnitude : magnitude;
}

// Nearest e4m3 value, ties to the even code; past 448 saturates to 448 (what the device's store does).
inline uint8_t fp32_to_e4m3(float x) {
  static const std::array<float, 127> magnitudes = [] {
    std::array<float, 127> m{};
    for (int c = 0; c < 127; ++c) m[size_t(c)] = e4m3_to_fp32(uint8_t(c));
    return m;
  }();
  if (std::isnan(x)) return 0x7F;
  const uint8_t sign = std::signbit(x) ? 0x80 : 0;
  const float a = std::fabs(x);
  const size_t hi = size_t(std::lower_bound(magnitudes.begin(), magnitudes.end(), a) - magnitudes.begin());
  if (hi == magnitudes.size()) return sign | 0x7E;
  if (hi == 0 || magnitudes[hi] == a) return sign | uint8_t(hi);
  const float below = a - magnitudes[hi - 1], above = magnitudes[hi] - a;
  const size_t code = below < above ? hi - 1 : above < below ? hi : (hi % 2 == 0 ? hi : hi - 1);
  return sign | uint8_t(code);
}

inline std::vector<uint8_t> to_e4m3_bits(const std::vector<float>& values) {
  std::vector<uint8_t> bits(values.size());
  for (size_t i = 0; i < values.size(); ++i) bits[i] = fp32_to_e4m3(values[i]);
  return bits;
}

// values, rounded in place to what a cache of `dtype` holds (nan stays nan).
inline void round_to_kv(std::vector<float>& values, cuda::KvDType dtype) {
  if (dtype == cuda::KvDType::F16)
    for (float& v : values) v = fp16_to_fp32(fp32_to_fp16(v));
  if (dtype == cuda::KvDType::F8)
    for (float& v : values) v = e4m3_to_fp32(fp32_to_e4m3(v));
}

// A device cache of `dtype` holding values (already rounded or not: the upload rounds to nearest).
inline cuda::DeviceBuffer kv_to_device(const std::vector<float>& values, cuda::KvDType dtype) {
  if (dtype == cuda::KvDType::F8) return to_device(to_e4m3_bits(values));
  return dtype == cuda::KvDType::F16 ? to_device(to_f16_bits(values)) : to_device(values);
}

// The f32 values of a device cache of n elements of `dtype`.
inline std::vector<float> kv_to_host(const cuda::DeviceBuffer& buffer, size_t n, cuda::KvDType dtype) {
  if (dtype == cuda::KvDType::F32) return to_host<float>(buffer, n);
  std::vector<float> values(n);
  if (dtype == cuda::KvDType::F8) {
    const std::vector<uint8_t> bits = to_host<uint8_t>(buffer, n);
    for (size_t i = 0; i < n; ++i) values[i] = e4m3_to_fp32(bits[i]);
    return values;
  }
  const std::vector<uint16_t> bits = to_host<uint16_t>(buffer, n);
  for (size_t i = 0; i < n; ++i) values[i] = fp16_to_fp32(bits[i]);
  return values;
}

inline const char* kv_name(cuda::KvDType dtype) { return cuda::kv_dtype_name(dtype); }

// What the decode kernel's f16 arithmetic over an fp8 cache (attention_decode.cuh) may add to an output's
// error; 0 for the other caches. Rounding at r = 2^-11 the query and each of the up to 8 partial sums of a
// lane's query-key pairs moves a score by at most 9 r s_max (s_max: the largest sum over a head of
// |q_i k_i| x scale), so each probability by 9 r s_max relative and the output by twice that times v_max;
// the probabilities in f16 and their 4-key sums of products with the values add 6 r v_max.
inline double kv_arithmetic_bound(cuda::KvDType dtype, double s_max, double v_max) {
  if (dtype != cuda::KvDType::F8) return 0;
  const double r = std::ldexp(1.0, -11);
  return (18 * r * s_max + 6 * r) * v_max;
}

}  // namespace kiln::test
