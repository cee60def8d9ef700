// A weight matrix in device memory, in its .kiln layout (docs/FORMAT.md): row-major [rows, cols] of
// f32, f16, bf16 or int8; int8 has one fp16 scale per group of group_size values along a row.
#pragma once

#include <cstdint>

#include "engine/kiln_format.h"

namespace kiln::cuda {

struct DeviceMatrix {
  DType dtype = DType::F32;
  int64_t rows = 0;
  int64_t cols = 0;
  const void* data = nullptr;        // [rows, cols] of dtype
  const uint16_t* scales = nullptr;  // int8 only: fp16 [rows, cols / group_size]
  int64_t group_size = 0;            // int8 only
};

}  // namespace kiln::cuda
