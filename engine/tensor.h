// A non-owning view of one tensor: into the mapped .kiln file, or into memory a test owns.
#pragma once

#include <array>
#include <cstdint>
#include <string>

#include "engine/kiln_format.h"

namespace kiln {

struct TensorView {
  std::string name;
  DType dtype = DType::F32;
  int n_dims = 0;
  std::array<int64_t, kKilnMaxDims> dims{1, 1, 1, 1};  // outermost first; a weight is [out, in]
  const void* data = nullptr;                           // [dims...] of dtype
  uint64_t bytes = 0;
  const uint16_t* scales = nullptr;  // int8 only: fp16 [rows(), cols() / group_size]
  uint32_t group_size = 0;           // int8 only

  int64_t cols() const { return n_dims == 0 ? 1 : dims[n_dims - 1]; }
  int64_t rows() const { return numel() / cols(); }
  int64_t numel() const {
    int64_t n = 1;
    for (int i = 0; i < n_dims; ++i) n *= dims[i];
    return n;
  }
  std::string shape_string() const;  // "[576, 1536]"
};

}  // namespace kiln
