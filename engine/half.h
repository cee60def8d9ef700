// IEEE fp16 and bfloat16 <-> fp32 conversions, exact and round-to-nearest-even, for any CPU.
#pragma once

#include <bit>
#include <cstdint>

namespace kiln {

inline float fp16_to_fp32(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000) << 16;
  const uint32_t exponent = (h >> 10) & 0x1f;
  uint32_t mantissa = h & 0x3ff;
  uint32_t bits;
  if (exponent == 0x1f) {
    bits = sign | 0x7f800000u | (mantissa << 13);  // inf or nan
  } else if (exponent != 0) {
    bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
  } else if (mantissa == 0) {
    bits = sign;
  } else {  // subnormal: normalise
    int shift = 0;
    while ((mantissa & 0x400) == 0) {
      mantissa <<= 1;
      ++shift;
    }
    bits = sign | uint32_t(113 - shift) << 23 | ((mantissa & 0x3ff) << 13);
  }
  return std::bit_cast<float>(bits);
}

inline uint16_t fp32_to_fp16(float f) {
  const uint32_t bits = std::bit_cast<uint32_t>(f);
  const uint16_t sign = uint16_t((bits >> 16) & 0x8000);
  const uint32_t abs = bits & 0x7fffffff;
  if (abs >= 0x7f800000u) return sign | (abs > 0x7f800000u ? 0x7e00 : 0x7c00);  // nan or inf
  if (abs >= 0x477ff000u) return sign | 0x7c00;                                 // rounds past 65504
  if (abs < 0x38800000u) {  // result is subnormal or zero: add the magic number to round
    const float magic = std::bit_cast<float>(0x3f000000u);  // 0.5
    const float value = std::bit_cast<float>(abs) + magic;
    return sign | uint16_t(std::bit_cast<uint32_t>(value) - 0x3f000000u);
  }
  const uint32_t rounded = abs + 0xfff + ((abs >> 13) & 1) - (uint32_t(112) << 23);
  return sign | uint16_t(rounded >> 13);
}

inline float bf16_to_fp32(uint16_t h) { return std::bit_cast<float>(uint32_t(h) << 16); }

inline uint16_t fp32_to_bf16(float f) {
  const uint32_t bits = std::bit_cast<uint32_t>(f);
  if ((bits & 0x7fffffff) > 0x7f800000u) return uint16_t((bits >> 16) | 0x40);  // keep nan a nan
  return uint16_t((bits + 0x7fff + ((bits >> 16) & 1)) >> 16);
}

}  // namespace kiln
