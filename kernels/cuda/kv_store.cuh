// Device-side access to KV cache elements of any KvDType: one value written, and chunks of kW values
// read raw (one load of kv_chunk_values: 16 or 8 of fp8, 8 of f16, 4 of f32) and widened to f32 later, so
// a kernel can issue many loads before it waits for the first.
#pragma once

#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cstdint>
#include <type_traits>

#include "kernels/cuda/kv_dtype.h"

namespace kiln::cuda {

// Writes v as element i of a cache of `dtype`.
__device__ __forceinline__ void kv_store_value(void* cache, KvDType dtype, int64_t i, float v) {
  if (dtype == KvDType::F16) static_cast<__half*>(cache)[i] = __float2half_rn(v);
  else if (dtype == KvDType::F8) static_cast<__nv_fp8_e4m3*>(cache)[i] = __nv_fp8_e4m3(v);  // nearest, saturating
  else static_cast<float*>(cache)[i] = v;
}

// Calls f with a value of dtype's element type (float, __half or __nv_fp8_e4m3): a launch for each.
template <typename F>
void with_kv_type(KvDType dtype, F&& f) {
  switch (dtype) {
    case KvDType::F16: f(__half{}); break;
    case KvDType::F8: f(__nv_fp8_e4m3{}); break;
    default: f(float{}); break;
  }
}

// Values of a chunk the decode kernels load at once, in blocks of `rows` query rows: 16 bytes, but 8 of fp8
// beside more than one row (16 values would need twice the registers of f16 for the sums they feed).
template <typename T>
__host__ __device__ constexpr int kv_chunk_values(int rows) {
  return sizeof(T) == 1 && rows > 1 ? 8 : 16 / int(sizeof(T));
}

template <typename T, int kW, bool kVector = kW * sizeof(T) == 16 || (sizeof(T) == 1 && kW == 8)>
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
  using Raw = std::conditional_t<kW * sizeof(T) == 16, uint4, uint2>;
  Raw raw;
  __device__ __forceinline__ void load(const T* p) { raw = __ldg(reinterpret_cast<const Raw*>(p)); }
  __device__ __forceinline__ void clear() { raw = Raw{}; }
  // fp8 only: the values as f16 pairs (exact: e4m3 is a subset of f16).
  __device__ __forceinline__ void widen_half2(__half2 (&out)[kW / 2]) const {
    static_assert(sizeof(T) == 1, "f16 pairs are widened from fp8");
    const __nv_fp8x2_storage_t* pairs = reinterpret_cast<const __nv_fp8x2_storage_t*>(&raw);
#pragma unroll
    for (int i = 0; i < kW / 2; ++i) out[i] = __half2(__nv_cvt_fp8x2_to_halfraw2(pairs[i], __NV_E4M3));
  }
  __device__ __forceinline__ void widen(float (&out)[kW]) const {
    if constexpr (sizeof(T) == 1) {
      __half2 h[kW / 2];
      widen_half2(h);
#pragma unroll
      for (int i = 0; i < kW / 2; ++i) {
        const float2 f = __half22float2(h[i]);
        out[2 * i] = f.x;
        out[2 * i + 1] = f.y;
      }
    } else if constexpr (sizeof(T) == 2) {
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
