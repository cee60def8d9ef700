// Helpers of the KV cache tests: caches of either KvDType on the device, and the f32 values an f16 cache
// holds (the reference attends over those, so an f16 cache is held to the f32 bound).
#pragma once

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

// values, rounded in place to what a cache of `dtype` holds (nan stays nan).
inline void round_to_kv(std::vector<float>& values, cuda::KvDType dtype) {
  if (dtype == cuda::KvDType::F16)
    for (float& v : values) v = fp16_to_fp32(fp32_to_fp16(v));
}

// A device cache of `dtype` holding values (already rounded or not: the upload rounds to nearest).
inline cuda::DeviceBuffer kv_to_device(const std::vector<float>& values, cuda::KvDType dtype) {
  return dtype == cuda::KvDType::F16 ? to_device(to_f16_bits(values)) : to_device(values);
}

// The f32 values of a device cache of n elements of `dtype`.
inline std::vector<float> kv_to_host(const cuda::DeviceBuffer& buffer, size_t n, cuda::KvDType dtype) {
  if (dtype == cuda::KvDType::F32) return to_host<float>(buffer, n);
  const std::vector<uint16_t> bits = to_host<uint16_t>(buffer, n);
  std::vector<float> values(n);
  for (size_t i = 0; i < n; ++i) values[i] = fp16_to_fp32(bits[i]);
  return values;
}

inline const char* kv_name(cuda::KvDType dtype) { return dtype == cuda::KvDType::F16 ? "f16" : "f32"; }

}  // namespace kiln::test
