// Attention of new query tokens over a KV cache (softmax-context): GQA, causal or bidirectional mask,
// ALiBi, local window. Keys and values are already rotated and appended to the cache.
#pragma once

#include <cstdint>

#include "kernels/cpu/thread_pool.h"

namespace kiln {

struct AttentionParams {
  int64_t n_tokens = 1;      // query tokens in this call
  int64_t first_position = 0;  // position of the first query token (tokens before it are in the cache)
  int n_heads = 1;
  int n_kv_heads = 1;          // n_heads % n_kv_heads == 0 (GQA)
  int head_dim = 64;
  int64_t kv_stride = 0;       // positions per head in the cache (the cache's capacity)
  float scale = 0.125f;        // usually 1/sqrt(head_dim)
  bool causal = true;          // false: every query sees every key in [0, first_position + n_tokens)
  int64_t window = 0;          // > 0: a query at p sees keys in (p - window, p]
  const float* alibi_slopes = nullptr;  // [n_heads] or nullptr
};

// q: [n_tokens, n_heads, head_dim] · k_cache, v_cache: [n_kv_heads, kv_stride, head_dim]
// out: [n_tokens, n_heads, head_dim]
void attention(const float* q, const float* k_cache, const float* v_cache, float* out, const AttentionParams& p,
               ThreadPool& pool);
void attention_reference(const float* q, const float* k_cache, const float* v_cache, float* out,
                         const AttentionParams& p);

}  // namespace kiln
