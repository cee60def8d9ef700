#include "engine/kv_cache.h"

#include <cstring>

#include "engine/error.h"

namespace kiln {

KvCache make_kv_cache(const ModelConfig& config, int64_t n_ctx, uint64_t max_bytes) {
  KILN_CHECK(n_ctx > 0, "the context size must be positive, got {}", n_ctx);
  KvCache cache;
  cache.n_layers = config.n_layers;
  cache.n_kv_heads = config.n_kv_heads;
  cache.n_ctx = n_ctx;
  cache.head_dim = config.head_dim;
  // Every factor is bounded by ModelConfig::validate() and n_ctx by the caller, so this cannot overflow.
  const uint64_t floats = uint64_t(config.n_layers) * uint64_t(cache.layer_floats());
  const uint64_t bytes = 2 * floats * sizeof(float);
  KILN_CHECK(bytes <= max_bytes, "a KV cache for {} positions needs {:.1f} GiB, more than the {:.1f} GiB allowed: "
             "use a smaller context size", n_ctx, double(bytes) / (1u << 30), double(max_bytes) / (1u << 30));
  cache.k.assign(floats, 0.0f);
  cache.v.assign(floats, 0.0f);
  return cache;
}

void kv_append(KvCache& cache, int64_t layer, const float* k, int64_t k_stride, const float* v, int64_t v_stride,
               int64_t n_tokens, int64_t first_position) {
  KILN_CHECK(layer >= 0 && layer < cache.n_layers && first_position >= 0 && n_tokens >= 0 &&
                 first_position + n_tokens <= cache.n_ctx,
             "KV append of positions [{}, {}) in layer {} is outside the cache of {} positions", first_position,
             first_position + n_tokens, layer, cache.n_ctx);
  const int64_t hd = cache.head_dim;
  float* k_layer = cache.k_layer(layer);
  float* v_layer = cache.v_layer(layer);
  for (int64_t t = 0; t < n_tokens; ++t) {
    for (int64_t h = 0; h < cache.n_kv_heads; ++h) {
      const int64_t dst = (h * cache.n_ctx + first_position + t) * hd;
      std::memcpy(k_layer + dst, k + t * k_stride + h * hd, size_t(hd) * sizeof(float));
      std::memcpy(v_layer + dst, v + t * v_stride + h * hd, size_t(hd) * sizeof(float));
    }
  }
}

}  // namespace kiln
