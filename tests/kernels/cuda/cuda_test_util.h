// Helpers shared by the CUDA tests: the skip when no GPU is present, and copies to and from the device.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "engine/half.h"
#include "kernels/cuda/cuda_util.h"

// Skips the test, with the reason, when cudaGetDeviceCount fails or finds no device.
#define KILN_REQUIRE_GPU()                                                                                       \
  if (!::kiln::cuda::device_available())                                                                      \
  GTEST_SKIP() << "no CUDA GPU here (cudaGetDeviceCount failed or found none): the CUDA tests run on a GPU "  \
                  "machine, see scripts/gpu-test"

namespace kiln::test {

template <typename T>
cuda::DeviceBuffer to_device(const std::vector<T>& host) {
  cuda::DeviceBuffer buffer(host.size() * sizeof(T));
  if (!host.empty()) KILN_CUDA_CHECK(cudaMemcpy(buffer.data(), host.data(), buffer.bytes(), cudaMemcpyHostToDevice));
  KILN_CUDA_CHECK(cudaDeviceSynchronize());  // a pageable copy may return before it lands; other streams do not wait
  return buffer;
}

template <typename T>
std::vector<T> to_host(const cuda::DeviceBuffer& buffer, size_t n) {
  std::vector<T> host(n);
  KILN_CUDA_CHECK(cudaDeviceSynchronize());
  if (n > 0) KILN_CUDA_CHECK(cudaMemcpy(host.data(), buffer.data(), n * sizeof(T), cudaMemcpyDeviceToHost));
  return host;
}

// A kernel's f16 copy of its f32 output: each value rounded to nearest even, bit for bit.
inline void expect_f16_copy(const cuda::DeviceBuffer& copy, const std::vector<float>& values) {
  const std::vector<uint16_t> got = to_host<uint16_t>(copy, values.size());
  for (size_t i = 0; i < values.size(); ++i)
    ASSERT_EQ(got[i], fp32_to_fp16(values[i])) << "the f16 copy at " << i << " of " << values[i];
}

// A device int32 scalar (the first position the kernels read from device memory).
inline cuda::DeviceBuffer device_scalar(int32_t value) { return to_device(std::vector<int32_t>{value}); }

}  // namespace kiln::test
