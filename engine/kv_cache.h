// The attention KV cache, allocated once for n_ctx positions. Keys are stored after rotary, so a cached
// position is never touched again.
#pragma once

#include <cstdint>
#include <vector>

#include "engine/model_config.h"

namespace kiln {

struct KvCache {
  int64_t n_layers = 0;
  int64_t n_kv_heads = 0;
  int64_t n_ctx = 0;  // positions per head: the kv_stride of kernels/cpu/attention.h
  int64_t head_dim = 0;
  std::vector<float> k;  // [n_layers, n_kv_heads, n_ctx, head_dim]
  std::vector<float> v;  // [n_layers, n_kv_heads, n_ctx, head_dim]

  int64_t layer_floats() const { return n_kv_heads * n_ctx * head_dim; }
  float* k_layer(int64_t layer) { return k.data() + layer * layer_floats(); }  // [n_kv_heads, n_ctx, head_dim]
  float* v_layer(int64_t layer) { return v.data() + layer * layer_floats(); }  // [n_kv_heads, n_ctx, head_dim]
  uint64_t bytes() const { return (k.size() + v.size()) * sizeof(float); }
};

// Throws kiln::Error when n_ctx is not positive or the cache would exceed max_bytes.
[[nodiscard]] KvCache make_kv_cache(const ModelConfig& config, int64_t n_ctx, uint64_t max_bytes);

// Copies n_tokens rows of keys and values into the cache at positions [first_position, + n_tokens).
// k: [n_tokens, n_kv_heads, head_dim] with rows k_stride floats apart; v likewise with v_stride.
void kv_append(KvCache& cache, int64_t layer, const float* k, int64_t k_stride, const float* v, int64_t v_stride,
               int64_t n_tokens, int64_t first_position);

}  // namespace kiln
