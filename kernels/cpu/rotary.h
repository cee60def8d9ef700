// Rotary position embedding applied in place to the first rotary_dim values of every head.
#pragma once

#include <cstdint>

namespace kiln {

enum class RotaryMode {
  RotateHalf,     // pairs (i, i + rotary_dim/2): HF llama, GPT-NeoX
  RotateEveryTwo  // pairs (2i, 2i + 1): GPT-J, GGUF llama files
};

struct RotaryParams {
  RotaryMode mode = RotaryMode::RotateHalf;
  int rotary_dim = 0;         // even, <= head_dim
  float theta = 10000.0f;     // base
  float position_scale = 1;   // linear scaling: angle uses position / position_scale
};

// x: [n_tokens, n_heads, head_dim] · positions: [n_tokens]
void rotary(float* x, const int32_t* positions, int64_t n_tokens, int n_heads, int head_dim,
            const RotaryParams& params);
void rotary_reference(float* x, const int32_t* positions, int64_t n_tokens, int n_heads, int head_dim,
                      const RotaryParams& params);

}  // namespace kiln
