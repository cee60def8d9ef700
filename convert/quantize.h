// Float weights to the .kiln storage dtypes. int8: symmetric, one fp16 scale per group of `group_size`
// values along a row (the input dimension): q = round(x / s), s = max|x| / 127, so |x - q*s| <= s/2.
#pragma once

#include <cstdint>
#include <span>

#include "engine/kiln_format.h"

namespace kiln {

// src: [rows, cols] f32 -> values (and scales for int8) exactly as the .kiln file stores them.
void quantize_rows(const float* src, int64_t rows, int64_t cols, DType dtype, uint32_t group_size,
                   std::span<uint8_t> values, std::span<uint8_t> scales);

// The inverse, for tests and tools: [rows, cols] f32.
void dequantize_rows(std::span<const uint8_t> values, std::span<const uint8_t> scales, int64_t rows, int64_t cols,
                     DType dtype, uint32_t group_size, float* out);

}  // namespace kiln
