// A random weight matrix in any .kiln dtype, on the host (as a TensorView for the CPU references) and
// on the device (as a DeviceMatrix), for the CUDA matmul and embedding tests.
#pragma once

#include <cmath>
#include <cstring>
#include <vector>

#include "engine/half.h"
#include "engine/tensor.h"
#include "kernels/cuda/cuda_util.h"
#include "kernels/cuda/device_matrix.h"
#include "tests/kernels/cuda/cuda_test_util.h"
#include "tests/kernels/kernel_test_util.h"

namespace kiln::test {

struct WeightFixture {
  std::vector<unsigned char> data;
  std::vector<uint16_t> scales;
  TensorView view;
  cuda::DeviceBuffer d_data, d_scales;
  cuda::DeviceMatrix device;
};

// int8 covers the full range, -128 included (a file may hold it), with scales around 1/127.
inline WeightFixture make_weight(DType dtype, int64_t rows, int64_t cols, int64_t group_size, uint32_t seed) {
  WeightFixture w;
  const size_t elem = dtype_bytes(dtype), n = size_t(rows * cols);
  w.data.assign(n * elem, 0);
  const auto values = random_floats(n, seed);
  for (size_t i = 0; i < n; ++i) {
    const float v = values[i];
    if (dtype == DType::F32) {
      std::memcpy(w.data.data() + 4 * i, &v, 4);
    } else if (dtype == DType::F16 || dtype == DType::BF16) {
      const uint16_t h = dtype == DType::F16 ? fp32_to_fp16(v) : fp32_to_bf16(v);
      std::memcpy(w.data.data() + 2 * i, &h, 2);
    } else {
      const int q = i % 97 == 0 ? -128 : int(std::lround(v * 127));
      w.data[i] = static_cast<unsigned char>(int8_t(q));
    }
  }
  w.view.name = "test.weight";
  w.view.dtype = dtype;
  w.view.n_dims = 2;
  w.view.dims = {rows, cols, 1, 1};
  w.view.data = w.data.data();
  w.view.bytes = w.data.size();
  w.d_data = to_device(w.data);
  w.device.dtype = dtype;
  w.device.rows = rows;
  w.device.cols = cols;
  w.device.data = w.d_data.data();
  if (dtype == DType::I8) {
    const auto s = random_floats(size_t(rows * (cols / group_size)), seed + 7, 0.5f / 127, 1.5f / 127);
    for (float v : s) w.scales.push_back(fp32_to_fp16(v));
    w.view.scales = w.scales.data();
    w.view.group_size = uint32_t(group_size);
    w.d_scales = to_device(w.scales);
    w.device.scales = w.d_scales.as<uint16_t>();
    w.device.group_size = group_size;
  }
  return w;
}

}  // namespace kiln::test
