// Rotary position embedding fused with the KV append: splits one fused QKV projection into rotated
// queries (to the workspace) and rotated keys plus values (straight into the KV cache, f32 or f16). The
// CUDA twin of kernels/cpu/rotary.h followed by kv_append.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/cuda/kv_dtype.h"

namespace kiln::cuda {

enum class RotaryMode {
  None,           // no rotary: copy only (learned, ALiBi or no positions)
  RotateHalf,     // pairs (i, i + rotary_dim/2): HF llama, GPT-NeoX
  RotateEveryTwo  // pairs (2i, 2i + 1): GPT-J, GGUF llama files
};

// Pair i of a head at position p turns by p / position_scale * theta^(-2i / rotary_dim) radians; the
// angle, its cosine and sine are computed in double and rounded once, as on the CPU.
struct RotaryAppendArgs {
  const float* qkv = nullptr;      // [n_tokens, qkv_stride]: q [n_heads, head_dim], k, v [n_kv_heads, head_dim]
  int64_t qkv_stride = 0;
  float* q_out = nullptr;          // [n_tokens, n_heads, head_dim]
  float* k_out = nullptr;          // [n_tokens, n_kv_heads, head_dim] or nullptr (debugging output)
  void* k_cache = nullptr;         // [n_kv_heads, kv_stride, head_dim] of kv_dtype (one layer)
  void* v_cache = nullptr;         // [n_kv_heads, kv_stride, head_dim] of kv_dtype
  KvDType kv_dtype = KvDType::F32; // f16, fp8: keys and values rounded to nearest once, after the rotation
  int64_t kv_stride = 0;           // positions per head in the cache
  const int32_t* first_position = nullptr;  // device scalar; first_position + n_tokens <= kv_stride (the caller checks)
  int64_t n_tokens = 0;
  int n_heads = 1;
  int n_kv_heads = 1;
  int head_dim = 64;
  RotaryMode mode = RotaryMode::RotateHalf;
  int rotary_dim = 0;              // even, <= head_dim
  float theta = 10000.0f;
  float position_scale = 1.0f;     // linear scaling: the angle uses position / position_scale
  cudaStream_t stream = nullptr;
};

void rotary_kv_append(const RotaryAppendArgs& args);

}  // namespace kiln::cuda
