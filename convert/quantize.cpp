#include "convert/quantize.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "engine/error.h"
#include "engine/half.h"

namespace kiln {

void quantize_rows(const float* src, int64_t rows, int64_t cols, DType dtype, uint32_t group_size,
                   std::span<uint8_t> values, std::span<uint8_t> scales) {
  const int64_t n = rows * cols;
  KILN_CHECK(values.size() == uint64_t(n) * dtype_bytes(dtype), "quantize: {} value bytes for {} elements",
             values.size(), n);
  switch (dtype) {
    case DType::F32:
      std::memcpy(values.data(), src, values.size());
      return;
    case DType::F16:
    case DType::BF16: {
      auto* out = reinterpret_cast<uint16_t*>(values.data());
      for (int64_t i = 0; i < n; ++i) out[i] = dtype == DType::F16 ? fp32_to_fp16(src[i]) : fp32_to_bf16(src[i]);
      return;
    }
    case DType::I8: {
      KILN_CHECK(group_size > 0 && cols % group_size == 0, "quantize: group size {} does not divide {} columns",
                 group_size, cols);
      KILN_CHECK(scales.size() == uint64_t(n / group_size) * 2, "quantize: {} scale bytes for {} groups",
                 scales.size(), n / group_size);
      auto* q = reinterpret_cast<int8_t*>(values.data());
      auto* s = reinterpret_cast<uint16_t*>(scales.data());
      for (int64_t g = 0; g < n / group_size; ++g) {
        const float* x = src + g * group_size;
        float max_abs = 0;
        for (uint32_t i = 0; i < group_size; ++i) max_abs = std::max(max_abs, std::fabs(x[i]));
        KILN_CHECK(std::isfinite(max_abs), "quantize: the weights hold NaN or infinity");
        // Round the scale to fp16 first so q is computed against the scale the kernels will use.
        const uint16_t scale16 = fp32_to_fp16(max_abs / 127.0f);
        const float scale = fp16_to_fp32(scale16);
        const float inverse = scale > 0 ? 1.0f / scale : 0.0f;
        s[g] = scale16;
        for (uint32_t i = 0; i < group_size; ++i)
          q[g * group_size + i] = int8_t(std::clamp(std::nearbyint(x[i] * inverse), -127.0f, 127.0f));
      }
      return;
    }
    case DType::U8:
      break;
  }
  fail("quantize: cannot store weights as {}", dtype_name(dtype));
}

void dequantize_rows(std::span<const uint8_t> values, std::span<const uint8_t> scales, int64_t rows, int64_t cols,
                     DType dtype, uint32_t group_size, float* out) {
  const int64_t n = rows * cols;
  KILN_CHECK(values.size() == uint64_t(n) * dtype_bytes(dtype), "dequantize: {} value bytes for {} elements",
             values.size(), n);
  switch (dtype) {
    case DType::F32:
      std::memcpy(out, values.data(), values.size());
      return;
    case DType::F16:
    case DType::BF16: {
      const auto* in = reinterpret_cast<const uint16_t*>(values.data());
      for (int64_t i = 0; i < n; ++i) out[i] = dtype == DType::F16 ? fp16_to_fp32(in[i]) : bf16_to_fp32(in[i]);
      return;
    }
    case DType::I8: {
      KILN_CHECK(group_size > 0 && cols % group_size == 0 && scales.size() == uint64_t(n / group_size) * 2,
                 "dequantize: bad int8 groups");
      const auto* q = reinterpret_cast<const int8_t*>(values.data());
      const auto* s = reinterpret_cast<const uint16_t*>(scales.data());
      for (int64_t i = 0; i < n; ++i) out[i] = float(q[i]) * fp16_to_fp32(s[i / group_size]);
      return;
    }
    case DType::U8:
      break;
  }
  fail("dequantize: {} is not a weight dtype", dtype_name(dtype));
}

}  // namespace kiln
