// What attention.cu shares with the tiled prefill kernel: the arguments every attention kernel takes by
// value, and the tiled kernel (attention.cu chooses it for many query rows per kv head).
#pragma once

#include "kernels/cuda/attention.h"

namespace kiln::cuda {

struct AttentionKernelParams {
  const float* q;
  const void* k_cache;
  const void* v_cache;
  float* out;
  float* partial;
  int* counters;  // the decode kernel's fused merge, or nullptr
  const int32_t* first_position;
  const float* alibi_slopes;
  int64_t n_tokens, kv_stride, window;
  int n_heads, n_kv_heads, head_dim, n_splits;
  float scale;
  bool causal;
};

inline AttentionKernelParams kernel_params(const AttentionArgs& a) {
  return {a.q,        a.k_cache,  a.v_cache,   a.out,     a.partial,    a.split_counters, a.first_position,
          a.alibi_slopes, a.n_tokens, a.kv_stride, a.window, a.n_heads, a.n_kv_heads, a.head_dim,
          a.n_splits, a.scale,    a.causal};
}

// Query rows of a kv head per block (sizes the split count).
int attention_tiled_rows(int head_dim);
// Writes out, or the partial buffer (attention_merge.cuh layout) when n_splits > 1. Arguments checked.
void attention_tiled(const AttentionArgs& args);

}  // namespace kiln::cuda
