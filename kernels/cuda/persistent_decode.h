// One decode step of every layer of a pre-norm (RMS), gated-MLP model with f16 or int8 weights (the Llama family)
// in one persistent kernel: a block per multiprocessor walks the stages of all layers, with a grid-wide
// barrier between dependent stages instead of a kernel launch. A small model's step is a chain of ~150 tiny
// stages, each bound by its latencies rather than its bytes; a large model's loses a memory latency at each
// kernel boundary. Each warp copies the weights of its next stage into shared memory before it waits at the
// barrier, so those loads overlap it (PersistentFeed says how). With int8 weights each matmul's input is
// quantized to int8 by chunks of 16 values as it is staged, for four-value dot products (dp4a).
//
// Stages of a layer: norm + QKV matmul with the rotary embedding in its epilogue (queries to scratch, keys
// and values straight into the cache) | attention, a block a query head (over long contexts, its keys
// split between blocks) | output projection | norm (adding the attention's output to the stream) + gate/up
// matmul + activation | down projection (added by the next layer's norm). A block's share of a matmul
// stage is dealt out to blocks in turn, so that small stages spread over the machine.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "kernels/cuda/activation.h"
#include "kernels/cuda/kv_dtype.h"
#include "kernels/cuda/rotary.h"

namespace kiln::cuda {

// A matrix [rows, k]: f16, or int8 with f16 scales [rows, k / group_size] (4-byte aligned, readable 2 bytes
// past their end: the forward pads its allocations to 256 bytes).
struct PersistentMatrix {
  const void* data = nullptr;
  const uint16_t* scales = nullptr;  // int8 only
};

struct PersistentLayer {
  const float* attn_norm = nullptr;  // [dim] (RMS norm)
  PersistentMatrix qkv;              // [q_dim + 2 kv_dim, dim]
  const float* qkv_bias = nullptr;   // or nullptr
  PersistentMatrix out;              // [dim, q_dim]
  const float* ffn_norm = nullptr;   // [dim]
  PersistentMatrix up;               // [2 ffn, dim]: gate rows, then up rows
  PersistentMatrix down;             // [dim, ffn]
};

// How the step brings each matmul's weights into shared memory: whole units of rows into each warp's buffer
// (small models: a stage is a few rows a warp), or each warp's rows streamed by 2 KB segments through its
// own ring of stages, which runs on into the next matmul's weights across the barriers (models whose rows
// do not fit, on sm_90). Auto: buffered when the rows fit, else streamed.
enum class PersistentFeed { Auto, Buffered, Streamed };

struct PersistentDecodeArgs {
  const PersistentLayer* layers = nullptr;  // device [n_layers]
  int n_layers = 0;
  int dim = 0, n_heads = 0, n_kv_heads = 0, head_dim = 0, ffn = 0;
  bool int8 = false;    // the matrices: int8 with group scales, else f16
  int group_size = 0;   // int8: values per scale, a multiple of 16
  float eps = 1e-5f;  // of the RMS norms
  Activation act = Activation::Silu;  // of the gate
  RotaryMode mode = RotaryMode::RotateHalf;
  int rotary_dim = 0;
  float theta = 10000.0f, position_scale = 1.0f;
  float scale = 0.125f;  // attention
  int64_t window = 0;    // > 0: keys (position - window, position]
  // The cache: k and v [n_layers, n_kv_heads, n_ctx, head_dim] of kv_dtype (f32 or f16)
  void* k_cache = nullptr;
  void* v_cache = nullptr;
  KvDType kv_dtype = KvDType::F16;
  int64_t n_ctx = 0;
  const int32_t* position = nullptr;  // device scalar: the token's position, < n_ctx (the caller checks)
  float* x = nullptr;  // device [dim], 16-byte aligned: the residual stream, in and out
  // device persistent_decode_scratch_floats(...) floats, 16-byte aligned and zero before the first launch:
  // the barrier and the attention's split counts (both left at zero after every launch), the stages' outputs
  // and the splits' parts
  float* scratch = nullptr;
  PersistentFeed feed = PersistentFeed::Auto;
  cudaStream_t stream = nullptr;
};

// The model's shapes, as the kernel's support and its shared memory depend on them.
struct PersistentShape {
  int n_layers = 0, dim = 0, n_heads = 0, n_kv_heads = 0, head_dim = 0, ffn = 0;
  bool int8 = false;   // the matrices: int8 with group scales, else f16
  int group_size = 0;  // int8
};

// Whether the shapes fit the kernel: head_dim 16, 32, 64, 128 or 256 (f32 cache: up to 128), dim, q_dim and ffn
// multiples of 8, query heads a multiple of key heads; int8: groups of a multiple of 16 values that divide
// dim, q_dim and ffn; and the feed asked for (or either, Auto) fitting this device's shared memory (the
// streamed feed: sm_90, int8 groups of 16 to 1,024 values, a power of two, an even number a row).
bool persistent_decode_supported(const PersistentShape& shape, KvDType kv_dtype,
                                 PersistentFeed feed = PersistentFeed::Auto);
size_t persistent_decode_scratch_floats(int dim, int n_heads, int head_dim, int ffn);
void persistent_decode(const PersistentDecodeArgs& args);

}  // namespace kiln::cuda
