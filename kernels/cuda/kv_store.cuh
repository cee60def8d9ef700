// Device-side access to KV cache elements of either KvDType: one value written, and chunks of kW values
// read raw (one 16-byte load when kW * sizeof(T) == 16: 8 of f16, 4 of f32) and widened to f32 later, so
// a kernel can issue many loads before it waits for the first.
#pragma once

#include <cuda_fp16.h>

#include <cstdint>

#include "kernels/cuda/kv_dtype.h"

namespace kiln::cuda {

// Writes v as element i of a cache of `dtype`.
__device__ __forceinline__ void kv_store_value(void* cache, KvDType dtype, int64_t i, float v) {
  if (dtype == KvDType::F16) static_cast<__half*>(cache)[i] = __float2half_rn(v);
  else static_cast<float*>(cache)[i] = v;
}

template <typename T, int kW, bool kVector = kW * sizeof(T) == 16>
struct KvChunk {
  T v[kW];
  __device__ __forceinline__ void load(const T* p) {
#pragma unroll
    for (int i = 0; i < kW; ++i) v[i] = p[i];
  }
  __device__ __forceinline__ void clear() {
#pragma unroll
    for (int i = 0; i < kW; ++i) v[i] = T(0.0f);
  }
  __device__ __forceinline__ void widen(float (&out)[kW]) const {
#pragma unroll
    for (int i = 0; i < kW; ++i) out[i] = float(v[i]);
  }
};

template <typename T, int kW>
struct KvChunk<T, kW, true> {
  uint4 raw;
  __device__ __forceinline__ void load(const T* p) { raw = __ldg(reinterpret_cast<const uint4*>(p)); }
  __device__ __forceinline__ void clear() { raw = make_uint4(0, 0, 0, 0); }
  __device__ __forceinline__ void widen(float (&out)[kW]) const {
    if constexpr (sizeof(T) == 2) {
      const __half2* h = reinterpret_cast<const __half2*>(&raw);
#pragma unroll
      for (int i = 0; i < kW / 2; ++i) {
        const float2 f = __half22float2(h[i]);
        out[2 * i] = f.x;
        out[2 * i + 1] = f.y;
      }
    } else {
      out[0] = __uint_as_float(raw.x);
      out[1] = __uint_as_float(raw.y);
      out[2] = __uint_as_float(raw.z);
      out[3] = __uint_as_float(raw.w);
    }
  }
};

}  // namespace kiln::cuda
