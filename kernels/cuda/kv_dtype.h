// The element type of a KV cache (contiguous or paged): f32; f16 for half the memory traffic; or fp8
// (e4m3: 3 mantissa bits, finite values up to ±448, larger ones saturate) for a quarter. The kernels that
// write a cache and those that read it take the same field.
#pragma once

#include <cstddef>

namespace kiln::cuda {

enum class KvDType { F32, F16, F8 };

inline constexpr size_t kv_dtype_bytes(KvDType dtype) {
  return dtype == KvDType::F32 ? 4 : dtype == KvDType::F16 ? 2 : 1;
}

inline constexpr const char* kv_dtype_name(KvDType dtype) {
  return dtype == KvDType::F32 ? "f32" : dtype == KvDType::F16 ? "f16" : "fp8";
}

}  // namespace kiln::cuda
