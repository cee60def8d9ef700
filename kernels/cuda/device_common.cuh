// Device-side helpers shared by the CUDA kernels: reductions and the widening of every weight dtype.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "engine/kiln_format.h"

namespace kiln::cuda {

// log2(e): the attention kernels score in the exp2 domain (scale and ALiBi slopes times this).
inline constexpr float kLog2e = 1.4426950408889634f;

// The 32-bit shared-memory address of p (a pointer into shared memory) that PTX's shared:: forms take.
__device__ __forceinline__ uint32_t shared_address(const void* p) { return uint32_t(__cvta_generic_to_shared(p)); }

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// warp(v) reduced over the block (blockDim.x a multiple of 32, at most 1024), `none` the value of an absent
// warp; every thread gets the result. scratch: 32 floats of shared memory, free again when this returns.
template <typename WarpReduce>
__device__ __forceinline__ float block_reduce(float v, float* scratch, WarpReduce warp, float none) {
  const int lane = threadIdx.x % 32, warp_index = threadIdx.x / 32, n_warps = blockDim.x / 32;
  v = warp(v);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp_index] = v;
  __syncthreads();
  v = lane < n_warps ? scratch[lane] : none;
  return warp(v);
}

__device__ __forceinline__ float block_sum(float v, float* scratch) {
  return block_reduce(v, scratch, [](float x) { return warp_sum(x); }, 0.0f);
}
__device__ __forceinline__ float block_max(float v, float* scratch) {
  return block_reduce(v, scratch, [](float x) { return warp_max(x); }, -INFINITY);
}

__device__ __forceinline__ float fp16_bits_to_float(uint16_t bits) { return __half2float(__ushort_as_half(bits)); }
__device__ __forceinline__ float bf16_bits_to_float(uint16_t bits) {
  return __uint_as_float(uint32_t(bits) << 16);
}

// Element (row, col) of a row-major weight as f32. scales/group_size: int8 only.
template <DType kDType>
__device__ __forceinline__ float weight_value(const void* data, const uint16_t* scales, int64_t group_size,
                                              int64_t cols, int64_t row, int64_t col) {
  const int64_t i = row * cols + col;
  if constexpr (kDType == DType::F32) return static_cast<const float*>(data)[i];
  else if constexpr (kDType == DType::F16) return fp16_bits_to_float(static_cast<const uint16_t*>(data)[i]);
  else if constexpr (kDType == DType::BF16) return bf16_bits_to_float(static_cast<const uint16_t*>(data)[i]);
  else {
    const float scale = fp16_bits_to_float(scales[row * (cols / group_size) + col / group_size]);
    return float(static_cast<const int8_t*>(data)[i]) * scale;
  }
}

}  // namespace kiln::cuda
