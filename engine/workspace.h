// Every activation buffer of the forward, sized once for up to max_tokens tokens per call: the forward
// never allocates.
#pragma once

#include <cstdint>
#include <vector>

#include "engine/model_config.h"

namespace kiln {

struct Workspace {
  int64_t max_tokens = 0;
  std::vector<float> x;          // [max_tokens, dim] the residual stream
  std::vector<float> xn;         // [max_tokens, dim] normalised input of a stage
  std::vector<float> qkv;        // [max_tokens, q_dim + 2 * kv_dim] fused projection output
  std::vector<float> q;          // [max_tokens, n_heads, head_dim] queries, rotated
  std::vector<float> k;          // [max_tokens, n_kv_heads, head_dim] keys, rotated
  std::vector<float> att;        // [max_tokens, n_heads, head_dim] attention output
  std::vector<float> attn_proj;  // [max_tokens, dim] output projection
  std::vector<float> up;         // [max_tokens, 2 * ffn_dim or ffn_dim] MLP up (and gate) projection
  std::vector<float> act;        // [max_tokens, ffn_dim] activated MLP hidden state
  std::vector<float> ffn_out;    // [max_tokens, dim] down projection
  std::vector<float> embd;       // [max_tokens, embd_dim] a projected embedding's narrow rows; else empty
  std::vector<int32_t> positions;  // [max_tokens]
};

// Throws kiln::Error when max_tokens is outside [1, 65536].
[[nodiscard]] Workspace make_workspace(const ModelConfig& config, int64_t max_tokens);

}  // namespace kiln
