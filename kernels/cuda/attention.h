// Attention of new query tokens over the KV cache (f32, f16 or fp8): GQA, causal or bidirectional mask, ALiBi,
// local window, any number of keys. Few query rows per kv head (decode: a token's GQA group) take a
// flash-decoding kernel that streams each key split once in 16-byte loads; many rows (prefill) take a
// tiled flash-style kernel. Both split the keys across blocks when the rows alone would not fill the GPU,
// and a second kernel merges the partial softmaxes. The CUDA twin of kernels/cpu/attention.h.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "kernels/cuda/kv_dtype.h"

namespace kiln::cuda {

inline constexpr int kAttentionMaxHeadDim = 256;
inline constexpr int kAttentionMaxSplits = 256;
// Query rows per kv head (n_tokens * n_heads / n_kv_heads) up to which the decode kernel runs.
inline constexpr int64_t kAttentionDecodeMaxRows = 16;

struct AttentionArgs {
  const float* q = nullptr;        // [n_tokens, n_heads, head_dim]
  const void* k_cache = nullptr;   // [n_kv_heads, kv_stride, head_dim] of kv_dtype, positions [0, first_position + n_tokens) filled
  const void* v_cache = nullptr;   // [n_kv_heads, kv_stride, head_dim] of kv_dtype
  KvDType kv_dtype = KvDType::F32;
  float* out = nullptr;            // [n_tokens, n_heads, head_dim]
  const int32_t* first_position = nullptr;  // device scalar: position of the first query token
  int64_t n_tokens = 1;
  int n_heads = 1;
  int n_kv_heads = 1;              // query head h reads kv head h / (n_heads / n_kv_heads)
  int head_dim = 64;               // <= kAttentionMaxHeadDim
  int64_t kv_stride = 0;           // positions per head in the cache
  float scale = 0.125f;
  bool causal = true;              // false: every query sees every key in [0, first_position + n_tokens)
  int64_t window = 0;              // > 0: a query at p sees keys in (p - window, p] (bidirectional: |key - p| < window)
  const float* alibi_slopes = nullptr;  // device [n_heads] or nullptr: score += slope[h] * (key - p)
  int n_splits = 1;                // from attention_splits
  float* partial = nullptr;        // attention_partial_floats(n_splits, ...) floats when n_splits > 1
  // attention_counter_ints(n_kv_heads) ints, zero, or nullptr. Given, a split decode call merges the splits
  // in its own last block per kv head (and leaves the counters zero); else a merge kernel follows.
  int* split_counters = nullptr;
  cudaStream_t stream = nullptr;
};

// How many key ranges to split the work into: enough blocks for the GPU's multiprocessors, for a cache
// that holds up to max_keys keys. It depends on max_keys, not on the keys filled so far, so a captured
// decode step stays valid at every position and replays what an uncaptured step computes (each call
// shares the keys filled so far evenly among the splits; splits left without keys return at once).
int attention_splits(int64_t n_tokens, int n_heads, int n_kv_heads, int head_dim, int64_t max_keys,
                     int n_multiprocessors);
// Floats of the partial-result buffer for n_splits > 1 (0 for one split).
size_t attention_partial_floats(int n_splits, int64_t n_tokens, int n_heads, int head_dim);
// Ints of AttentionArgs::split_counters for calls with n_kv_heads kv heads.
size_t attention_counter_ints(int n_kv_heads);

void attention(const AttentionArgs& args);

}  // namespace kiln::cuda
