// Attention of new query tokens over a KV cache (softmax-context): GQA, causal or bidirectional mask,
// ALiBi, local window. Keys and values are already rotated and appended to the cache.
#pragma once

#include <cstdint>

#include "kernels/cpu/cpu_level.h"
#include "kernels/cpu/thread_pool.h"

namespace kiln {

struct AttentionParams {
  int64_t n_tokens = 1;      // query tokens in this call
  int64_t first_position = 0;  // position of the first query token (tokens before it are in the cache)
  int n_heads = 1;
  int n_kv_heads = 1;          // n_heads % n_kv_heads == 0 (GQA): query head h reads kv head h / (n_heads / n_kv_heads)
  int head_dim = 64;
  int64_t kv_stride = 0;       // positions per head in the cache (the cache's capacity)
  float scale = 0.125f;        // usually 1/sqrt(head_dim)
  bool causal = true;          // false: every query sees every key in [0, first_position + n_tokens)
  int64_t window = 0;          // > 0: a query at p sees keys in (p - window, p] (bidirectional: |key - p| < window)
  const float* alibi_slopes = nullptr;  // [n_heads] or nullptr: score += slope[h] * (key position - p)
};

// q: [n_tokens, n_heads, head_dim] · k_cache, v_cache: [n_kv_heads, kv_stride, head_dim], positions
// [0, first_position + n_tokens) filled · out: [n_tokens, n_heads, head_dim].
// Threads split the (token, kv head) pairs, and for few of them (decode) also the keys, merging the
// partial softmaxes. level: for tests; must be one this CPU supports.
void attention(const float* q, const float* k_cache, const float* v_cache, float* out, const AttentionParams& p,
               ThreadPool& pool, CpuLevel level = cpu_level_default());
// The naive reference (double precision, one query head at a time); never optimised.
void attention_reference(const float* q, const float* k_cache, const float* v_cache, float* out,
                         const AttentionParams& p);

}  // namespace kiln
