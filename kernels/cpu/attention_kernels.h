// What attention.cpp hands each SIMD level. Internal to kernels/cpu.
#pragma once

#include <cstdint>

#include "kernels/cpu/attention.h"

namespace kiln::attention_detail {

// Work items are (token, kv head, key split) triples, flattened in that order: item
// (t * n_kv_heads + g) * n_splits + s covers split s of the keys token t sees, for the query heads of
// kv head g.
struct AttentionJob {
  const float* q = nullptr;        // [n_tokens, n_heads, head_dim]
  const float* k_cache = nullptr;  // [n_kv_heads, kv_stride, head_dim]
  const float* v_cache = nullptr;  // [n_kv_heads, kv_stride, head_dim]
  float* out = nullptr;            // [n_tokens, n_heads, head_dim], written when n_splits == 1
  AttentionParams p;
  int n_rep = 1;                   // query heads per kv head
  int64_t n_splits = 1;
  float* partial = nullptr;        // n_splits > 1: [n_tokens, n_heads, n_splits, 2 + head_dim] =
                                   // (max score, sum of exp(score - max), unnormalised output)
};

// The keys [begin, end) that the query token at `position` sees, of the `n_keys` in the cache.
inline void visible_keys(const AttentionParams& p, int64_t position, int64_t n_keys, int64_t& begin, int64_t& end) {
  end = p.causal ? position + 1 : n_keys;
  begin = 0;
  if (p.window > 0) {
    begin = position - p.window + 1 > 0 ? position - p.window + 1 : 0;
    if (!p.causal && position + p.window < end) end = position + p.window;
  }
}

// Floats of scratch one thread needs for items whose splits hold at most max_keys keys.
inline int64_t scratch_floats(const AttentionJob& job, int64_t max_keys) {
  return int64_t(job.n_rep) * (job.p.head_dim + max_keys);
}

// Runs items [begin, end); scratch: scratch_floats() floats.
using AttentionItemsFn = void (*)(const AttentionJob& job, int64_t begin, int64_t end, float* scratch);
void attention_items_avx2(const AttentionJob& job, int64_t begin, int64_t end, float* scratch);
void attention_items_avx512(const AttentionJob& job, int64_t begin, int64_t end, float* scratch);

}  // namespace kiln::attention_detail
